"""The operator's own Prometheus metrics. The registry is injected: tests use their own, never the global one.

Labels are bounded: namespace, trainingjob, phase, role, reason and state (a closed set; kubetrain.contract.metric_names).
Never `job` or `instance`: Prometheus owns those (the scrape target).
Series of a deleted job are removed, so the operator's memory and its
exposition stay proportional to the jobs that exist.

The per-job series come from one collector over one small record per job, built at scrape time:
as prometheus_client labelled children they were ~32 metric objects per job (a state per phase,
a zero for every reason), each with its own lock and value, and the largest single holder of the
operator's memory at 1,000 jobs (bench/results/control_plane.md).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

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


@dataclass(slots=True)
class _JobSeries:
    """What the per-job series say about one job: the last reconcile's figures and its counters."""

    created: float
    phase: str | None = None
    desired: int = 0
    ready: int = 0
    workers: int = 0
    gpus: int = 0
    gpu_seconds: float = 0.0
    trainer_metrics: int = 0
    restarts: dict[str, float] = field(default_factory=dict)  # only the reasons seen; the others export 0
    scaling: dict[str, float] = field(default_factory=dict)


class _JobCollector:
    """The per-job families, from the records at scrape time (``registry.register`` calls ``describe`` once)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()  # reconciles run in Kopf's executor threads; scrapes in the HTTP server's
        self.jobs: dict[tuple[str, str], _JobSeries] = {}

    def describe(self) -> list[Metric]:
        return [f for f, _ in self._families()]

    def _families(self):
        job = list(OPERATOR_JOB_LABELS)
        return [
            (GaugeMetricFamily(M.JOB_PHASE, "1 for the phase the job is in, 0 for the others.", labels=[*job, "phase"]), "phase"),
            (CounterMetricFamily(M.SCALING_EVENTS, "Changes of a job's desired replicas, by reason.", labels=[*job, "reason"]),
             "scaling"),
            (CounterMetricFamily(M.RESTARTS, "Restarts used by a job, by failure reason.", labels=[*job, "reason"]), "restarts"),
            # Workers only: the store pod is one per job whatever its size, and observe() sees the plan's status, not the pods.
            (GaugeMetricFamily(M.JOB_PODS, "A job's unfinished worker pods (role=worker); its rendezvous-store pod is not "
                               "counted.", labels=[*job, "role"]), "pods"),
            (GaugeMetricFamily(M.JOB_REPLICAS, "A job's worker replicas: desired and ready.", labels=[*job, "state"]), "replicas"),
            (GaugeMetricFamily(M.JOB_GPUS, "GPUs held by a job's ready workers.", labels=job), "gpus"),
            (CounterMetricFamily(M.JOB_GPU_SECONDS, "GPU time held by a job's ready workers (divide by 3600 for GPU-hours).",
                                 labels=job), "gpu_seconds"),
            # Lets an alert tell a trainer that went silent from one that was never asked to speak.
            (GaugeMetricFamily(M.JOB_TRAINER_METRICS, "1 when the job's pods export trainer metrics (spec.metrics.enabled), "
                               "else 0.", labels=job), "trainer_metrics"),
        ]

    def collect(self) -> Iterator[Metric]:
        families = self._families()
        with self.lock:
            for (ns, name), j in self.jobs.items():
                for family, kind in families:
                    if kind == "phase":
                        for p in PHASES:
                            family.add_metric([ns, name, p], 1.0 if p == j.phase else 0.0)
                    elif kind == "scaling":
                        for reason in SCALING_REASONS:
                            family.add_metric([ns, name, reason], j.scaling.get(reason, 0.0), created=j.created)
                    elif kind == "restarts":
                        for reason in RESTART_REASONS:
                            family.add_metric([ns, name, reason], j.restarts.get(reason, 0.0), created=j.created)
                    elif kind == "pods":
                        family.add_metric([ns, name, "worker"], j.workers)
                    elif kind == "replicas":
                        family.add_metric([ns, name, "desired"], j.desired)
                        family.add_metric([ns, name, "ready"], j.ready)
                    elif kind == "gpus":
                        family.add_metric([ns, name], j.gpus)
                    elif kind == "gpu_seconds":
                        family.add_metric([ns, name], j.gpu_seconds, created=j.created)
                    else:
                        family.add_metric([ns, name], j.trainer_metrics)
        for family, _ in families:
            yield family


class OperatorMetrics:
    def __init__(self, registry: CollectorRegistry):
        job = list(OPERATOR_JOB_LABELS)
        self._jobs = _JobCollector()
        registry.register(self._jobs)
        self.reconcile = Histogram(M.RECONCILE_DURATION, "Time to reconcile one TrainingJob.",
                                   registry=registry, buckets=RECONCILE_BUCKETS)
        self.reconcile_errors = Counter(M.RECONCILE_ERRORS, "Reconciles that raised (retried with backoff).", registry=registry)
        self.time_to_running = Histogram(M.TIME_TO_RUNNING, "From a job's creation to its first Running.",
                                         ["namespace"], registry=registry, buckets=STARTUP_BUCKETS)
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

    def observe(self, namespace: str, job: str, plan: Plan, status: dict, gpus_per_replica: int, elapsed: float,
                first_running_after: float | None, *, trainer_metrics: bool) -> None:
        """Record one reconcile's outcome; ``elapsed`` is the time since the previous one."""
        if first_running_after is not None:
            self.time_to_running.labels(namespace).observe(first_running_after)
        phase = status.get("phase")
        ready = int(status.get("readyReplicas") or 0)
        with self._jobs.lock:
            j = self._jobs.jobs.get((namespace, job))
            if j is None:
                j = self._jobs.jobs[(namespace, job)] = _JobSeries(created=time.time())
            j.trainer_metrics = 1 if trainer_metrics else 0
            j.phase = phase
            for reason in plan.restart_reasons:
                j.restarts[reason] = j.restarts.get(reason, 0.0) + 1
            if plan.scaling_reason:
                j.scaling[plan.scaling_reason] = j.scaling.get(plan.scaling_reason, 0.0) + 1
            j.desired, j.ready = int(status.get("desiredReplicas") or 0), ready
            j.workers = int(status.get("currentReplicas") or 0)
            j.gpus = ready * gpus_per_replica
            if phase in ACTIVE_PHASES and elapsed > 0:
                j.gpu_seconds += ready * gpus_per_replica * elapsed

    def forget(self, namespace: str, job: str) -> None:
        """Drop every series of a deleted job."""
        with self._jobs.lock:
            self._jobs.jobs.pop((namespace, job), None)
        for labels in list(self.allocated._metrics):  # noqa: SLF001 - prometheus_client has no public "remove matching"
            if labels[:2] == (namespace, job):
                self.allocated.remove(*labels)
