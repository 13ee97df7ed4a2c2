"""Level-triggered reconcile, as a pure function: what exists now -> what to do, and the status.

``plan`` compares the desired state (the spec) with the observed one (pods, the
store, capacity) and returns a ``Plan``. It performs no I/O, so every elastic and
lifecycle rule is unit-tested without a cluster, and running it twice on the same
observation gives the same plan: an operator restarted at any moment converges
to the same pods. Worker pods are named ``<job>-w<slot>-<attempt>``, so a create
is idempotent (a 409 means it already happened).
"""

from __future__ import annotations

import copy
import enum
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from kubetrain.api.advice import spec_warnings
from kubetrain.api.models import TrainingJob
from kubetrain.contract.vocabulary import TERMINAL_PHASES, USER_FAULTS, FailureReason, Phase
from kubetrain.operator import naming
from kubetrain.operator.failures import Failure, classify, image_pull_problem

# A gang held below min for this long is released so another job can run;
# the job's uid spreads the release over another interval of the same length,
# so two jobs stuck on the same GPUs do not release (and retry) in lockstep.
GANG_RELEASE_SECONDS = 60.0
# A pull that fails for this long (the kubelet retried it after 10, 20 and 40 s) is the job's error, not a
# registry's hiccup: the job fails with ImagePullError, using no restart. Counted from the first round that
# saw the failure (the ImagesPulled condition's lastTransitionTime), so a long pull that then fails gets it too.
IMAGE_PULL_GRACE_SECONDS = 60.0
IMAGES_PULLED = "ImagesPulled"
STORE_LOST = "StoreLost"
# Agents notice a lost store when a read fails: at once on a reset connection, after c10d's
# read timeout (60 s) when the node vanished. Failures until then belong to the store loss.
STORE_LOSS_GRACE_SECONDS = 120.0


@dataclass(frozen=True)
class PodView:
    """What the planner needs to know about one of the job's pods."""

    name: str
    role: str
    slot: int
    attempt: int
    phase: str
    ready: bool
    node: str | None
    deleting: bool
    accounted: bool
    tracked: bool
    unschedulable: bool
    created: datetime | None
    # The pod's resourceVersion. Kopf's index keeps a pod's old view while the new one compares equal,
    # and ``body`` is not compared: without this a pod whose container only went on to wait in
    # ImagePullBackOff (or got its IP) kept the view of its first event, and the job never failed.
    version: str = ""
    body: dict[str, Any] = field(repr=False, compare=False, default_factory=dict)
    # Why its node counts as lost ("was deleted", "has been NotReady for ..."; operator/nodes.py): it is
    # lost with it, even while the API still shows it Running. Set by the reconcile, never from the body.
    node_lost: str | None = None

    @property
    def active(self) -> bool:
        return not self.deleting and self.node_lost is None and self.phase not in ("Succeeded", "Failed")

    @property
    def ended_badly(self) -> bool:
        return self.phase == "Failed" or ((self.deleting or self.node_lost is not None) and self.phase != "Succeeded")

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> "PodView":
        """From a pod (a plain dict or Kopf's body: nothing of it is kept but copies)."""
        meta = body["metadata"]
        labels = meta.get("labels") or {}
        status = body.get("status") or {}
        conditions = status.get("conditions") or []
        ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)
        unschedulable = any(
            c.get("type") == "PodScheduled" and c.get("status") == "False" and c.get("reason") == "Unschedulable"
            for c in conditions
        )
        created = meta.get("creationTimestamp")
        slot, attempt = _int_label(labels, naming.LABEL_SLOT, -1), _int_label(labels, naming.LABEL_ATTEMPT, 0)
        return cls(
            name=meta["name"],
            role=labels.get(naming.LABEL_ROLE, ""),
            slot=slot,
            attempt=attempt,
            phase=status.get("phase", "Pending"),
            ready=ready,
            node=(body.get("spec") or {}).get("nodeName"),
            deleting=bool(meta.get("deletionTimestamp")),
            accounted=(meta.get("annotations") or {}).get(naming.ANNOTATION_ACCOUNTED) == "true",
            tracked=naming.TRACKING_FINALIZER in (meta.get("finalizers") or []),
            unschedulable=unschedulable,
            created=_parse_time(created) if isinstance(created, str) else created,
            version=str(meta.get("resourceVersion") or ""),
            body=_essentials(body),
        )


def _essentials(body: Mapping[str, Any]) -> dict[str, Any]:
    """What ``classify``, ``image_pull_problem`` and the throughput reader read of a pod, copied: the index
    keeps this, not the pod's spec, environment and managedFields (most of its size, at 1,000 jobs most of
    the operator's memory)."""
    meta, status = body["metadata"], body.get("status") or {}
    kept: dict[str, Any] = {k: status[k] for k in ("reason", "message", "podIP") if status.get(k)}
    disrupted = [dict(c) for c in status.get("conditions") or [] if c.get("type") == "DisruptionTarget"]
    if disrupted:
        kept["conditions"] = disrupted
    for key in ("initContainerStatuses", "containerStatuses"):  # an init container's image can fail to pull too
        containers = [{k: copy.deepcopy(c[k]) for k in ("name", "state", "lastState") if k in c} for c in status.get(key) or []]
        if containers:
            kept[key] = containers
    return {"metadata": {k: meta[k] for k in ("name", "deletionTimestamp") if meta.get(k)}, "status": kept}


def _int_label(labels: dict[str, str], key: str, default: int) -> int:
    # Anyone may label a pod: a malformed value must not break the pod index.
    try:
        return int(labels.get(key, default))
    except ValueError:
        return default


def just_created(name: str, role: str, slot: int, attempt: int, now: datetime) -> PodView:
    """A pod this operator created a moment ago that its watch has not delivered yet."""
    return PodView(name=name, role=role, slot=slot, attempt=attempt, phase="Pending", ready=False, node=None,
                   deleting=False, accounted=False, tracked=role == naming.ROLE_WORKER, unschedulable=False, created=now)


@dataclass(frozen=True)
class Target:
    """The goodput allocator's replicas for a job (operator/allocation.py), and why."""

    replicas: int
    reason: str  # Started, Grown, Shrunk, Stopped, Kept
    message: str
    restart_seconds: float | None = None  # the job's restart penalty in the allocator (None: before its first round)
    restarts_measured: int = 0  # resizes that penalty was learned from


@dataclass(frozen=True)
class Observed:
    """Everything the planner sees besides the job itself."""

    pods: list[PodView]
    now: datetime
    service_exists: bool = True
    placeable: int | None = None  # more replicas that fit now; None: unknown (CPU jobs)
    fits_anywhere: bool = True
    # Objects the pods refer to that do not exist: (kind, name, the spec field naming it).
    missing: tuple[tuple[str, str, str], ...] = ()
    admitted: bool = True  # False while a Kueue-queued job waits for admission
    # With Kueue (operator/kueue.py): the workers its admission allows (None: no cap), and why a job
    # that is not admitted waits (reason, message), for its Suspended condition.
    admitted_replicas: int | None = None
    waiting: tuple[str, str] | None = None
    # The goodput allocator's replicas for an opted-in job; None: the job is not managed (grows to max).
    target: Target | None = None


@dataclass
class Plan:
    create_service: bool = False
    create_store: bool = False
    create_workers: list[tuple[int, int]] = field(default_factory=list)  # (slot, attempt)
    # Pods to account for: drop the tracking finalizer and mark them accounted.
    release: list[str] = field(default_factory=list)
    delete: list[str] = field(default_factory=list)  # released first, then deleted
    # Of those, the pods on a lost node: deleted at once (grace 0), as PodGC would, so a store's fixed name is free again.
    lost: list[str] = field(default_factory=list)
    delete_job: bool = False
    status: dict[str, Any] = field(default_factory=dict)
    events: list[tuple[str, str, str]] = field(default_factory=list)  # (type, reason, message)
    # For the operator's metrics: what this round decided, as data.
    restart_reasons: list[str] = field(default_factory=list)
    scaling_reason: str | None = None
    first_running: bool = False  # the job trains for the first time (time-to-Running metric)
    # Seconds until a rule that acts on elapsed time alone (TTL, deadline, image-pull grace, gang release) is
    # due: no event may come then, and the timer is only a slow safety net. None: no such rule pending.
    recheck_after: float | None = None

    def recheck_in(self, seconds: float) -> None:
        """Ask for a reconcile ``seconds`` from now (the earliest of every rule's)."""
        seconds = max(seconds, 0.0)
        self.recheck_after = seconds if self.recheck_after is None else min(self.recheck_after, seconds)


def _parse_time(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def _iso(t: datetime) -> str:
    return t.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class _Status:
    """Builds the status patch, keeping conditions' lastTransitionTime honest."""

    def __init__(self, old: dict[str, Any], now: datetime, generation: int):
        self.old = old
        self.now = now
        self.generation = generation
        self.patch: dict[str, Any] = {"observedGeneration": generation}
        self.conditions = {c["type"]: dict(c) for c in old.get("conditions") or []}

    def set(self, **fields: Any) -> None:
        # Plain strings in the patch, not the vocabulary's enum members: it is written as JSON and compared.
        self.patch.update({k: v.value if isinstance(v, enum.Enum) else v for k, v in fields.items()})

    def condition(self, ctype: str, status: bool, reason: str, message: str) -> None:
        ctype, reason = str(ctype), str(reason)  # a phase or a failure reason names some
        value = "True" if status else "False"
        prev = self.conditions.get(ctype)
        since = prev["lastTransitionTime"] if prev and prev.get("status") == value and prev.get("lastTransitionTime") else _iso(self.now)
        self.conditions[ctype] = {
            "type": ctype,
            "status": value,
            "reason": reason,
            "message": message,
            "lastTransitionTime": since,
            "observedGeneration": self.generation,
        }

    def old_condition(self, ctype: str) -> dict[str, Any] | None:
        return next((c for c in self.old.get("conditions") or [] if c.get("type") == ctype), None)

    def true_since(self, ctype: str) -> datetime | None:
        cond = self.conditions.get(ctype)
        if cond and cond.get("status") == "True" and cond.get("lastTransitionTime"):
            return _parse_time(cond["lastTransitionTime"])
        return None

    def build(self) -> dict[str, Any]:
        order = ["Running", "Succeeded", "Failed", "Suspended", "Restarting", "Scaling", "Schedulable", "Allocated", "StoreReady",
                 "ReplicaFailure", "Admitted"]
        self.patch["conditions"] = sorted(self.conditions.values(), key=lambda c: order.index(c["type"]) if c["type"] in order else 99)
        return self.patch


def _advise(job: TrainingJob, st: _Status, plan: Plan) -> None:
    """Valid settings likely to hurt the model (kubetrain.api.advice): the SpecWarning condition names each field,
    since the CRD's rules can only refuse; one Warning event when the warnings appear or change, not every round."""
    warnings = spec_warnings(job)
    prev = st.conditions.get("SpecWarning")
    if warnings:
        message = "; ".join(map(str, warnings))
        if not prev or prev.get("status") != "True" or prev.get("message") != message:
            plan.events.append(("Warning", "SpecWarning", message))
        st.condition("SpecWarning", True, "LikelyToHurt", message)
    elif prev:
        st.condition("SpecWarning", False, "NoneKnown", "no setting of the spec is known to hurt the model")


def _finish(plan: Plan, st: _Status, phase: str, reason: str, message: str) -> None:
    st.set(phase=phase, completionTime=_iso(st.now))
    st.condition(phase, True, reason, message)
    st.condition("Running", False, reason, message)
    plan.events.append(("Normal" if phase == "Succeeded" else "Warning", reason, message))


def _retire(plan: Plan, pods: list[PodView]) -> None:
    """Pods the operator removes on purpose: accounted, so they never count as failures."""
    for p in pods:
        if p.tracked or not p.accounted:
            plan.release.append(p.name)
        if not p.deleting:
            plan.delete.append(p.name)


def _retire_after_end(plan: Plan, job: TrainingJob, workers: list[PodView], store: list[PodView]) -> None:
    keep = job.spec.keep_pods
    gone = [
        p
        for p in workers
        if p.active or keep == "None" or (keep == "Failed" and p.phase == "Succeeded")
    ]
    _retire(plan, gone + store)
    # Kept pods still drop the tracking finalizer: nothing is left to account.
    plan.release.extend(p.name for p in workers if p not in gone and p.tracked)


@dataclass
class _Round:
    """What every step of one ``plan`` reads, and the plan and status they add to."""

    job: TrainingJob
    body: dict[str, Any]
    obs: Observed
    st: _Status
    result: Plan
    workers: list[PodView]
    store: list[PodView]
    restarts: int
    store_ready: bool = False
    # The StoreReady condition as the round found it (before a store loss is recorded).
    store_cond: dict[str, Any] = field(default_factory=dict)

    @property
    def spec(self) -> Any:
        return self.job.spec

    @property
    def old(self) -> dict[str, Any]:
        return self.st.old

    @property
    def now(self) -> datetime:
        return self.obs.now

    def fail(self, reason: str, message: str, workers: list[PodView] | None = None) -> bool:
        """End the job Failed; ``workers``: those to retire (default all). True: the round is decided."""
        _finish(self.result, self.st, Phase.FAILED, reason, message)
        _retire_after_end(self.result, self.job, self.workers if workers is None else workers, self.store)
        return True


def plan(job: TrainingJob, body: dict[str, Any], obs: Observed) -> Plan:
    old = body.get("status") or {}
    r = _Round(job, body, obs, _Status(old, obs.now, body["metadata"].get("generation", 0)), Plan(),
               workers=[p for p in obs.pods if p.role == naming.ROLE_WORKER],
               store=[p for p in obs.pods if p.role == naming.ROLE_STORE],
               restarts=int(old.get("restarts") or 0))
    r.store_cond = r.st.conditions.get("StoreReady") or {}
    if old.get("phase") in TERMINAL_PHASES:
        _finished(r)
    else:
        _advise(job, r.st, r.result)
        # In order, each step either decides the round (the job is suspended, fails or succeeds: True)
        # or leaves it to the next; a job that goes on training gets its replicas from the last.
        for step in (_suspended, _past_deadline, _store_lost, _account_ended_workers, _image_never_pulled, _succeeded):
            if step(r):
                break
        else:
            _train(r)
    r.result.status = r.st.build()
    return r.result


def _finished(r: _Round) -> None:
    """Succeeded or Failed: clean up, honour the TTL, and do nothing else."""
    _retire_after_end(r.result, r.job, r.workers, r.store)
    ttl = r.spec.ttl_seconds_after_finished
    done = r.old.get("completionTime")
    if ttl is not None and done:
        due = (_parse_time(done) + timedelta(seconds=ttl) - r.now).total_seconds()
        if due <= 0:
            r.result.delete_job = True
        else:
            r.result.recheck_in(due)


def _suspended(r: _Round) -> bool:
    """Suspended (by the user, or waiting for Kueue): no pods, checkpoint kept. Else say it resumed, once."""
    spec, st, result = r.spec, r.st, r.result
    if not (spec.suspend or not r.obs.admitted):
        if st.conditions.get("Suspended", {}).get("status") == "True":
            st.condition("Suspended", False, "Resumed", "spec.suspend is false")
            result.events.append(("Normal", "Resumed", "recreating pods; training resumes from the latest checkpoint"))
        return False
    reason = "Suspended" if spec.suspend else "WaitingForAdmission"
    msg = "spec.suspend is true: pods deleted, checkpoints kept" if spec.suspend else "waiting for Kueue to admit the job"
    if r.obs.waiting and not spec.suspend:
        reason, msg = r.obs.waiting
    _retire(result, [p for p in r.workers if not p.accounted or p.tracked or p.active] + r.store)
    if r.old.get("phase") != Phase.SUSPENDED:
        result.events.append(("Normal", reason, msg))
    st.set(phase=Phase.SUSPENDED, currentReplicas=0, readyReplicas=0, worldSize=0, desiredReplicas=0)
    st.condition("Suspended", True, reason, msg)
    st.condition("Running", False, reason, msg)
    if "StoreReady" in st.conditions:  # stopped on purpose: not a loss when the job resumes
        st.condition("StoreReady", False, reason, "the rendezvous store is stopped with the job")
    # As for a Kubernetes Job, the deadline restarts on resume.
    st.set(startTime=None)
    return True


def _past_deadline(r: _Round) -> bool:
    """As for a Kubernetes Job, the deadline counts from when the operator started the job, so
    waiting for capacity, images or a volume counts too."""
    start = r.old.get("startTime") or _iso(r.now)
    r.st.set(startTime=start)
    limit = r.spec.active_deadline_seconds
    if limit:
        due = (_parse_time(start) + timedelta(seconds=limit) - r.now).total_seconds()
        if due <= 0:
            return r.fail("DeadlineExceeded", f"the job ran longer than spec.activeDeadlineSeconds={limit}")
        r.result.recheck_in(due)
    return False


def _store_lost(r: _Round) -> bool:
    """The rendezvous store's state is gone with its pod (node lost, container restarted): every
    agent drops out and its pod ends. That is one event, so it uses one restart, and the workers
    that end because of it (within STORE_LOSS_GRACE_SECONDS of the new store) use none."""
    r.store_ready = any(p.active and p.ready for p in r.store)
    if r.store_cond.get("status") != "True" or r.store_ready:
        return False
    r.restarts += 1
    msg = "the rendezvous store was lost; agents rejoin a new store and resume from the latest checkpoint"
    if _out_of_restarts(r, r.workers, f"{msg} ({STORE_LOST})"):
        return True
    r.st.condition("StoreReady", False, STORE_LOST, msg)
    r.st.condition("Restarting", True, STORE_LOST, msg)
    r.result.restart_reasons.append(STORE_LOST)
    r.result.events.append(("Warning", STORE_LOST, f"{msg}; restart {r.restarts} of {r.spec.failure_policy.max_restarts}"))
    return False


def _account_ended_workers(r: _Round) -> bool:
    """Account for every worker that ended badly, exactly once: a restart, or the job's failure."""
    spec, st, result = r.spec, r.st, r.result
    covered_by_store_loss = _store_loss_window(st.conditions.get("StoreReady"), r.now)
    for p in r.workers:
        if p.phase == "Succeeded" and p.tracked:
            result.release.append(p.name)
        if not p.ended_badly or p.accounted:
            continue
        failure = _lost_with_its_node(p) or classify(p.body)
        result.release.append(p.name)
        # A user's bug or bad configuration is never blamed on the store.
        if covered_by_store_loss and failure.reason not in USER_FAULTS:
            result.events.append(("Normal", "EndedWithTheStore", f"worker {p.name} ended after the rendezvous store was lost "
                                                                  f"({failure.reason}); counted in that restart"))
            continue
        others = [w for w in r.workers if w is not p]
        if not failure.retryable(spec.failure_policy.retry_on):
            st.set(restarts=r.restarts)
            return r.fail(failure.reason, f"worker {p.name}: {failure.reason}: {failure.message} (not in spec.failurePolicy.retryOn)",
                          others)
        r.restarts += 1
        if _out_of_restarts(r, others, f"worker {p.name}: {failure.reason}: {failure.message}"):
            return True
        result.restart_reasons.append(failure.reason)
        st.condition("Restarting", True, failure.reason, f"worker {p.name}: {failure.message}")
        result.events.append(("Warning", failure.reason, f"worker {p.name} ended: {failure.message}; "
                                                         f"restart {r.restarts} of {spec.failure_policy.max_restarts}"))
    st.set(restarts=r.restarts)
    # Pods on a lost node (accounted above) go now, the store's too: their replacements are created this round.
    result.lost = [p.name for p in r.obs.pods if p.node_lost is not None and not p.deleting]
    result.delete.extend(result.lost)
    return False


def _image_never_pulled(r: _Round) -> bool:
    """Image pull problems that persist are configuration errors: the store's and the workers' (a missing image
    leaves every pod waiting, never Failed, so no other step would end the job)."""
    found = next(((p, problem) for p in [*r.store, *r.workers] if p.active and (problem := image_pull_problem(p.body))), None)
    if found is None:
        if (r.st.conditions.get(IMAGES_PULLED) or {}).get("status") == "False":
            r.st.condition(IMAGES_PULLED, True, "Pulled", "every pod's images are pulled or pulling")
        return False
    p, problem = found
    message = f"{p.role} pod {p.name}: {problem.message}"
    r.st.condition(IMAGES_PULLED, False, problem.waiting, message)
    failing_since = _false_since(r.st, IMAGES_PULLED)
    if problem.permanent or (failing_since and (r.now - failing_since).total_seconds() >= IMAGE_PULL_GRACE_SECONDS):
        return r.fail(problem.reason, message)
    r.result.recheck_in(IMAGE_PULL_GRACE_SECONDS - ((r.now - failing_since).total_seconds() if failing_since else 0.0))
    return False


def _succeeded(r: _Round) -> bool:
    """Training finished when agents exited 0 and none is left running (until then, it runs)."""
    if not any(p.phase == "Succeeded" for p in r.workers):
        return False
    active = [p for p in r.workers if p.active]
    if not active:
        _finish(r.result, r.st, Phase.SUCCEEDED, "TrainingFinished", _finished_message(r.workers))
        _retire_after_end(r.result, r.job, r.workers, r.store)
    else:
        r.st.set(phase=Phase.RUNNING, currentReplicas=len(active), readyReplicas=sum(p.ready for p in active))
    return True


def _train(r: _Round) -> None:
    """Pending, Running, Scaling or Restarting: the store, the replicas that fit, and the phase they make."""
    spec, st, result, obs, now = r.spec, r.st, r.result, r.obs, r.now
    active = [p for p in r.workers if p.active]
    ready = [p for p in active if p.ready]

    # The store and its Service come first: agents cannot rendezvous without them.
    result.create_service = not obs.service_exists
    live_store = [p for p in r.store if p.active]
    # Not while an object the pods refer to is missing: the store shares the job's ServiceAccount,
    # and admission would refuse it every round.
    result.create_store = not live_store and not obs.missing
    _retire(result, [p for p in r.store if not p.active and p.phase != "Pending"])

    desired, reason, message = _desired_replicas(r.job, obs, active, st)
    nproc = spec.container.nproc()

    occupied = {p.slot for p in active}
    next_attempt: dict[int, int] = {}
    for p in r.workers:
        next_attempt[p.slot] = max(next_attempt.get(p.slot, 0), p.attempt + 1)
    free = [s for s in range(spec.replicas.max) if s not in occupied]
    to_add = max(desired - len(active), 0)
    result.create_workers = [(s, next_attempt.get(s, 0)) for s in free[:to_add]]

    # Gang safety: holding GPUs below min for too long blocks others; let go.
    held_since = _false_since(st, "Schedulable")
    bound = [p for p in active if p.node]
    if desired < spec.replicas.min and bound and held_since:
        spread = (zlib.crc32(r.body["metadata"].get("uid", r.job.metadata.name).encode()) % 1000) / 1000.0
        release_in = GANG_RELEASE_SECONDS * (1 + spread) - (now - held_since).total_seconds()
        if release_in >= 0:
            result.recheck_in(release_in + 0.5)  # the rule is "more than": just past it
        else:
            _retire(result, active)
            result.create_workers = []
            result.events.append(("Warning", "ReleasedPartialGang",
                                  f"held {len(bound)} of min {spec.replicas.min} replicas for too long; released them so other jobs can run"))
            active, ready = [], []

    # Excess replicas (max lowered): drop the highest slots.
    if len(active) > spec.replicas.max:
        extra = sorted(active, key=lambda p: p.slot)[spec.replicas.max:]
        _retire(result, extra)
        active = [p for p in active if p not in extra]
    # The allocator gave this job's GPUs to another: drop what is not ready first, then the highest slots.
    if obs.target is not None and len(active) > desired >= spec.replicas.min:
        extra = sorted(active, key=lambda p: (not p.ready, p.slot))[desired:]
        _retire(result, extra)
        active = [p for p in active if p not in extra]
    _allocated(obs.target, st, result)

    current = len(active) + len(result.create_workers)
    prev_desired = r.old.get("desiredReplicas")
    if prev_desired is not None and prev_desired != desired:
        st.set(lastScaling={"time": _iso(now), "fromReplicas": prev_desired, "toReplicas": desired, "reason": reason})
        result.scaling_reason = reason
        result.events.append(("Normal", "Scaling", f"desired replicas {prev_desired} -> {desired}: {message}"))
    elif prev_desired is None:
        result.events.append(("Normal", "Starting", f"starting {desired} of {spec.replicas.min}..{spec.replicas.max} replicas: {message}"))

    st.set(
        desiredReplicas=desired,
        currentReplicas=current,
        readyReplicas=len(ready),
        worldSize=len(ready) * nproc,
        selector=naming.worker_selector(r.job.metadata.name),
        rendezvousId=r.body["metadata"].get("uid"),
    )
    if r.store_ready:
        # "Recovered" stays while it serves: its lastTransitionTime bounds the store-loss grace period.
        recovered = r.store_cond.get("reason") in (STORE_LOST, "Recovered")
        st.condition("StoreReady", True, "Recovered" if recovered else "Serving", "the rendezvous store is serving")
    elif "StoreReady" not in st.conditions or st.conditions["StoreReady"]["reason"] != STORE_LOST:
        st.condition("StoreReady", False, "Starting", "the rendezvous store is starting")
    if len(ready) >= spec.replicas.min and r.store_ready:
        was = st.old_condition("Running")
        # Never trained before: no restart, no suspension, not running already.
        result.first_running = (not (was and was.get("status") == "True") and r.restarts == 0
                                and "Suspended" not in {c.get("type") for c in r.old.get("conditions") or []})
        phase = Phase.RUNNING if len(ready) == current else Phase.SCALING
        st.condition("Running", True, "Training", f"{len(ready)} replicas, world size {len(ready) * nproc}")
        if st.conditions.get("Restarting", {}).get("status") == "True" and len(ready) == current:
            st.condition("Restarting", False, "Training", "training at a stable world size")
    else:
        phase = Phase.RESTARTING if r.restarts else Phase.PENDING
        st.condition("Running", False, reason, message)
    st.condition("Scaling", len(ready) != current, reason, message)
    st.set(phase=phase)


def _out_of_restarts(r: _Round, workers: list[PodView], last: str) -> bool:
    """Past spec.failurePolicy.maxRestarts: fail the job, retiring ``workers``; else False."""
    cap = r.spec.failure_policy.max_restarts
    if r.restarts <= cap:
        return False
    r.st.set(restarts=r.restarts)
    return r.fail("RestartLimitExceeded", f"restart limit spec.failurePolicy.maxRestarts={cap} exceeded; last failure: {last}", workers)


def _store_loss_window(cond: dict[str, Any] | None, now: datetime) -> bool:
    """While the store is lost, and for a grace period after the new one serves, agents may still drop out."""
    if not cond:
        return False
    if cond.get("status") == "False":
        return cond.get("reason") == STORE_LOST
    since = cond.get("lastTransitionTime")
    return (cond.get("reason") == "Recovered" and since is not None
            and (now - _parse_time(since)).total_seconds() < STORE_LOSS_GRACE_SECONDS)


def _lost_with_its_node(p: PodView) -> Failure | None:
    """A pod that had not ended when its node was lost ended with the node."""
    if p.node_lost is None or p.phase == "Failed":
        return None
    return Failure(FailureReason.NODE_LOST, f"its node {p.node} {p.node_lost}")


def _finished_message(workers: list[PodView]) -> str:
    latest: dict[int, PodView] = {}
    for p in workers:
        if p.slot not in latest or p.attempt > latest[p.slot].attempt:
            latest[p.slot] = p
    ok = [p for p in latest.values() if p.phase == "Succeeded"]
    if len(ok) == len(latest):
        return f"all {len(ok)} agents exited 0"
    bad = sorted(p.name for p in latest.values() if p.phase != "Succeeded")
    return f"{len(ok)} agents exited 0; {', '.join(bad)} ended otherwise after training finished"


def record_create_failure(plan: Plan, old: dict[str, Any], refused: str | None, now: datetime) -> None:
    """The ReplicaFailure condition (as a ReplicaSet has): the API refused a pod we must create.

    Quota, Pod Security admission or an invalid field keep a job from running
    though its spec passed the CRD; say so in status and once as an Event. Cleared
    when creates go through again.
    """
    if "conditions" not in plan.status:
        return
    st = _Status({"conditions": plan.status["conditions"]}, now, plan.status.get("observedGeneration", 0))
    prev = next((c for c in old.get("conditions") or [] if c.get("type") == "ReplicaFailure"), {})
    if refused is not None:
        message = refused[:1024]
        if prev.get("status") != "True" or prev.get("message") != message:
            plan.events.append(("Warning", "FailedCreate", message))
        st.condition("ReplicaFailure", True, "FailedCreate", message)
    elif prev.get("status") == "True":
        st.condition("ReplicaFailure", False, "Created", "pods are created again")
    plan.status["conditions"] = st.build()["conditions"]


def _allocated(target: Target | None, st: _Status, plan: Plan) -> None:
    """The Allocated condition says the allocator's latest decision for the job; an Event when it is new."""
    prev = st.conditions.get("Allocated")
    if target is None:
        if prev and prev.get("status") == "True":
            st.condition("Allocated", False, "NotManaged", "the goodput allocator does not manage this job")
            st.set(allocation=None)
        return
    # Before this operator's first round the cost the last one learned stays (the allocator reads it back).
    cost = ({k: v for k, v in (st.old.get("allocation") or {}).items() if k != "replicas"} if target.restart_seconds is None
            else {"restartSeconds": round(target.restart_seconds, 1), "restartsMeasured": target.restarts_measured})
    st.set(allocation={"replicas": target.replicas, **cost})
    message = f"goodput allocator: {target.message}"
    if target.reason != "Kept" and (not prev or prev.get("message") != message):
        plan.events.append(("Normal", "GoodputAllocation", message))
    st.condition("Allocated", True, target.reason, message)


def _false_since(st: _Status, ctype: str) -> datetime | None:
    cond = st.conditions.get(ctype)
    if cond and cond.get("status") == "False" and cond.get("lastTransitionTime"):
        return _parse_time(cond["lastTransitionTime"])
    return None


def _desired_replicas(job: TrainingJob, obs: Observed, active: list[PodView], st: _Status) -> tuple[int, str, str]:
    """How many replicas to run now, and why (also sets the Schedulable condition)."""
    spec = job.spec
    lo, hi = spec.replicas.min, spec.replicas.max
    if obs.missing:
        # Pods would wait in ContainerCreating (claims, ConfigMaps) or be refused (a ServiceAccount):
        # create none until the objects exist, and say which field names what is missing.
        msg = "; ".join(f"{path}: {kind} {name!r} does not exist in the namespace" for kind, name, path in obs.missing)
        checkpoint_only = all(path.startswith("spec.checkpoint.") for _, _, path in obs.missing)
        reason = "CheckpointVolumeMissing" if checkpoint_only else "ReferencedObjectMissing"
        st.condition("Schedulable", False, reason, msg)
        return len(active) if len(active) >= lo else 0, reason, msg
    if not obs.fits_anywhere:
        msg = (f"no node can ever fit one replica ({spec.container.gpus_per_replica} x {spec.container.gpu_resource_name} "
               "with the job's nodeSelector and tolerations)")
        st.condition("Schedulable", False, "NoNodeFits", msg)
        return 0, "NoNodeFits", msg
    unschedulable = [p for p in active if p.unschedulable]
    if obs.placeable is None:
        # CPU job, or capacity unknown: ask for max and let the scheduler decide.
        possible = hi - len(unschedulable)
    else:
        # Our own bound and pending-but-schedulable pods already hold their place.
        possible = len(active) - len(unschedulable) + obs.placeable
    # An opted-in job runs what the goodput allocator gives it (never below min), if it fits.
    cap = hi if obs.target is None else min(max(obs.target.replicas, lo), hi)
    if obs.admitted_replicas is not None:
        cap = min(cap, max(obs.admitted_replicas, lo))
    desired = max(min(possible, cap), 0)
    if desired >= lo:
        reason = "CapacityAvailable" if desired == hi else "PartialCapacity"
        msg = f"{desired} of max {hi} replicas fit now"
        if obs.admitted_replicas is not None and desired == obs.admitted_replicas < hi:
            reason, msg = "KueueAdmission", (f"Kueue admitted {desired} of max {hi} replicas; "
                                             "growing past them waits for a new admission")
        if obs.target is not None and desired == cap:
            reason, msg = "GoodputAllocation", f"the goodput allocator gives it {cap} of {lo}..{hi} replicas: {obs.target.message}"
        st.condition("Schedulable", True, reason, msg)
        return desired, reason, msg
    msg = f"only {desired} of min {lo} replicas fit on the free GPUs; waiting for capacity"
    st.condition("Schedulable", False, "InsufficientCapacity", msg)
    # Never start a partial gang below min; keep what is already placed if that is enough.
    placed = len(active) - len(unschedulable)
    return (placed if placed >= lo else 0), "InsufficientCapacity", msg


__all__ = ["Failure", "Observed", "Plan", "PodView", "Target", "plan", "record_create_failure"]
