"""The operator's own Prometheus metrics. The registry is injected: tests use their own, never the global one.

Labels are bounded: namespace, trainingjob, phase, role, reason and state (a closed set; kubetrain.contract.metric_names).
Never `job` or `instance`: Prometheus owns those (the scrape target).
Series of a deleted job are removed, so the operator's memory and its
exposition stay proportional to the jobs that exist.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from kubetrain.contract.vocabulary import ACTIVE_PHASES, RETRYABLE_REASONS, Phase
from kubetrain.contract.metric_names import OPERATOR_JOB_LABELS, OperatorMetric as M
from kubetrain.operator.planner import STORE_LOST, Plan

PHASES: tuple[str, ...] = tuple(p.value for p in Phase)
# Every reason a restart can have: counters start at 0 for each, so "no restarts"
# is a 0 on the dashboard rather than no data.
RESTART_REASONS: tuple[str, ...] = (*(r.value for r in RETRYABLE_REASONS), STORE_LOST)
SCALING_REASONS = ("CapacityAvailable", "PartialCapacity", "GoodputAllocation", "InsufficientCapacity", "CheckpointVolumeMissing", "ReferencedObjectMissing", "NoNodeFits")
RECONCILE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
STARTUP_BUCKETS = (1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1800, 3600)
# What a goodput-allocator round can decide for a job (allocation.decision_reason): a closed set.
ALLOCATION_REASONS = ("Started", "Grown", "Shrunk", "Stopped")


class OperatorMetrics:
    def __init__(self, registry: CollectorRegistry):
        job = list(OPERATOR_JOB_LABELS)
        self.phase = Gauge(M.JOB_PHASE, "1 for the phase the job is in, 0 for the others.", [*job, "phase"], registry=registry)
        self.reconcile = Histogram(M.RECONCILE_DURATION, "Time to reconcile one TrainingJob.",
                                   registry=registry, buckets=RECONCILE_BUCKETS)
        self.reconcile_errors = Counter(M.RECONCILE_ERRORS, "Reconciles that raised (retried with backoff).", registry=registry)
        self.scaling = Counter(M.SCALING_EVENTS, "Changes of a job's desired replicas, by reason.", [*job, "reason"], registry=registry)
        self.restarts = Counter(M.RESTARTS, "Restarts used by a job, by failure reason.", [*job, "reason"], registry=registry)
        self.time_to_running = Histogram(M.TIME_TO_RUNNING, "From a job's creation to its first Running.",
                                         ["namespace"], registry=registry, buckets=STARTUP_BUCKETS)
        # Workers only: the store pod is one per job whatever its size, and observe() sees the plan's status, not the pods.
        self.pods = Gauge(M.JOB_PODS, "A job's unfinished worker pods (role=worker); its rendezvous-store pod is not counted.",
                          [*job, "role"], registry=registry)
        self.replicas = Gauge(M.JOB_REPLICAS, "A job's worker replicas: desired and ready.", [*job, "state"], registry=registry)
        self.gpus = Gauge(M.JOB_GPUS, "GPUs held by a job's ready workers.", job, registry=registry)
        self.gpu_seconds = Counter(M.JOB_GPU_SECONDS, "GPU time held by a job's ready workers (divide by 3600 for GPU-hours).",
                                   job, registry=registry)
        # Lets an alert tell a trainer that went silent from one that was never asked to speak.
        self.trainer_metrics = Gauge(M.JOB_TRAINER_METRICS, "1 when the job's pods export trainer metrics "
                                     "(spec.metrics.enabled), else 0.", job, registry=registry)
        # The goodput allocator (allocation.py): one histogram and one counter per operator, one gauge per managed job.
        self.allocator_round = Histogram(M.ALLOCATOR_ROUND_DURATION,
                                         "Time of one goodput-allocator round (models, allocation, targets).",
                                         registry=registry, buckets=RECONCILE_BUCKETS)
        self.allocator_decisions = Counter(M.ALLOCATOR_DECISIONS,
                                           "Jobs the goodput allocator resized, started or stopped, by reason.", ["reason"], registry=registry)
        for reason in ALLOCATION_REASONS:
            self.allocator_decisions.labels(reason)
        self.allocated = Gauge(M.JOB_ALLOCATED_REPLICAS,
                               "Replicas the goodput allocator gives an opted-in job (its desired replicas follow).", job, registry=registry)
        self._known: set[tuple[str, str]] = set()

    def observe(self, namespace: str, job: str, plan: Plan, status: dict, gpus_per_replica: int, elapsed: float,
                first_running_after: float | None, *, trainer_metrics: bool) -> None:
        """Record one reconcile's outcome; ``elapsed`` is the time since the previous one."""
        if (namespace, job) not in self._known:
            for reason in RESTART_REASONS:
                self.restarts.labels(namespace, job, reason)
            for reason in SCALING_REASONS:
                self.scaling.labels(namespace, job, reason)
            self.gpu_seconds.labels(namespace, job)
        self._known.add((namespace, job))
        self.trainer_metrics.labels(namespace, job).set(1 if trainer_metrics else 0)
        phase = status.get("phase")
        for p in PHASES:
            self.phase.labels(namespace, job, p).set(1 if p == phase else 0)
        for reason in plan.restart_reasons:
            self.restarts.labels(namespace, job, reason).inc()
        if plan.scaling_reason:
            self.scaling.labels(namespace, job, plan.scaling_reason).inc()
        if first_running_after is not None:
            self.time_to_running.labels(namespace).observe(first_running_after)
        ready = int(status.get("readyReplicas") or 0)
        self.replicas.labels(namespace, job, "desired").set(int(status.get("desiredReplicas") or 0))
        self.replicas.labels(namespace, job, "ready").set(ready)
        self.pods.labels(namespace, job, "worker").set(int(status.get("currentReplicas") or 0))
        self.gpus.labels(namespace, job).set(ready * gpus_per_replica)
        if phase in ACTIVE_PHASES and elapsed > 0:
            self.gpu_seconds.labels(namespace, job).inc(ready * gpus_per_replica * elapsed)

    def forget(self, namespace: str, job: str) -> None:
        """Drop every series of a deleted job."""
        self._known.discard((namespace, job))
        for metric in (self.phase, self.scaling, self.restarts, self.pods, self.replicas, self.gpus, self.gpu_seconds, self.trainer_metrics,
                       self.allocated):
            for labels in list(metric._metrics):  # noqa: SLF001 - prometheus_client has no public "remove matching"
                if labels[:2] == (namespace, job):
                    metric.remove(*labels)
