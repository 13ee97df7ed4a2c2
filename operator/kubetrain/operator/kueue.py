"""Kueue's Workload-native route for a TrainingJob, pure: the Workload we create, what its status
means for the job, and the status changes a job's controller owes Kueue (docs/kueue.md).

Kueue's own job framework does this for the kinds built into it (jobframework/reconciler.go);
a TrainingJob is not one of them, so the operator does it: one Workload per queued job, owned by
it, with a pod set per role; the job runs only while its Workload is admitted, at the admitted
count, with the flavors' node labels and tolerations; after an eviction the operator stops the
pods and, once none is left, gives the quota back by clearing the admission; a job that ends
finishes its Workload; a job that shrinks reports the freed pods as reclaimable.

No API calls here: ``workloads.py`` reads and writes, these functions decide.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

from kubetrain.api.models import TrainingJob
from kubetrain.operator import builders, naming

GROUP = "kueue.x-k8s.io"
VERSION = "v1beta2"
API_VERSION = f"{GROUP}/{VERSION}"
PLURAL = "workloads"
FLAVORS = "resourceflavors"
# One pod set per role; the worker set is the only one Kueue may admit partially.
POD_SET_WORKERS = "workers"
POD_SET_STORE = "rendezvous"
POD_SETS = {naming.ROLE_WORKER: POD_SET_WORKERS, naming.ROLE_STORE: POD_SET_STORE}

# Workload condition types and the reasons we write (Kueue's names: apis/kueue/v1beta2/workload_types.go).
QUOTA_RESERVED = "QuotaReserved"
ADMITTED = "Admitted"
EVICTED = "Evicted"
REQUEUED = "Requeued"
FINISHED = "Finished"
# Kueue requeues a workload evicted for these by itself; others (Deactivated, ...) wait for the user.
REQUEUE_REASONS = ("Preempted", "NodeFailures")

# The job's Suspended condition while it waits: the reasons a user sees in `kubectl get tj`/describe.
WAIT_QUEUED = "WaitingForQueue"  # no quota reserved yet (the Workload's QuotaReserved message says why)
WAIT_INADMISSIBLE = "QueueInadmissible"  # Kueue cannot admit it as is: no such LocalQueue, a stopped queue...
WAIT_PREEMPTED = "Preempted"  # evicted to make room: stopping, then requeued
WAIT_EVICTED = "Evicted"  # evicted for another reason (deactivated, admission check, ...)


def workload_name(job: str, uid: str) -> str:
    """``trainingjob-<job>-<5 hex of the uid>``: one per job incarnation, so a restarted operator finds
    its Workload again and a job re-created under the same name never inherits the old one."""
    digest = hashlib.sha256(uid.encode()).hexdigest()[:5]
    return f"trainingjob-{job[:230]}-{digest}"


def _slim(container: dict[str, Any]) -> dict[str, Any]:
    return {k: container[k] for k in ("name", "image", "resources") if k in container}


def pod_set_template(pod: dict[str, Any]) -> dict[str, Any]:
    """The part of a pod manifest Kueue reads: its requests (containers and init containers), where it may
    run (nodeSelector, affinity, tolerations) and its priority. Not the commands and environment: the
    store's program alone is kilobytes that Kueue would only copy."""
    spec = pod["spec"]
    out: dict[str, Any] = {"containers": [_slim(c) for c in spec["containers"]]}
    if spec.get("initContainers"):
        out["initContainers"] = [_slim(c) for c in spec["initContainers"]]
    for key in ("nodeSelector", "affinity", "tolerations", "priorityClassName", "schedulerName", "overhead"):
        if spec.get(key):
            out[key] = spec[key]
    return {"metadata": {"labels": dict(pod["metadata"].get("labels") or {})}, "spec": out}


def workload(job: TrainingJob, body: dict[str, Any], cfg: builders.BuildConfig, priority: int | None) -> dict[str, Any]:
    """The job's Workload: the worker pods (``count: max``, ``minCount: min``: Kueue may admit fewer than
    max) and the store pod, each with the requests the builders give the real pods (one source).
    ``priority``: the value of the job's PriorityClass (Kueue requires it with the reference)."""
    spec = job.spec
    lo, hi = spec.replicas.min, spec.replicas.max
    workers: dict[str, Any] = {"name": POD_SET_WORKERS, "count": hi,
                               "template": pod_set_template(builders.worker_pod(job, body, 0, 0, cfg))}
    if lo < hi:
        workers["minCount"] = lo
    store = {"name": POD_SET_STORE, "count": 1, "template": pod_set_template(builders.store_pod(job, body, cfg))}
    wl_spec: dict[str, Any] = {
        "queueName": queue_name(job, body),
        "podSets": [workers, store],
        # A suspended job gives its quota back and is not admitted until it is resumed.
        "active": not spec.suspend,
    }
    if spec.scheduling.priority_class_name and priority is not None:
        wl_spec["priorityClassRef"] = {"group": "scheduling.k8s.io", "kind": "PriorityClass",
                                       "name": spec.scheduling.priority_class_name}
        wl_spec["priority"] = priority
    name = job.metadata.name
    return {
        "apiVersion": API_VERSION,
        "kind": "Workload",
        "metadata": {
            "name": workload_name(name, body["metadata"]["uid"]),
            "namespace": body["metadata"]["namespace"],
            "labels": {naming.LABEL_JOB: name},
            "ownerReferences": [builders.owner_reference(body)],
        },
        "spec": wl_spec,
    }


def queue_name(job: TrainingJob, body: dict[str, Any]) -> str | None:
    """The job's LocalQueue: spec.scheduling.queueName, else the kueue.x-k8s.io/queue-name label."""
    return job.spec.scheduling.queue_name or (body["metadata"].get("labels") or {}).get(naming.KUEUE_QUEUE_LABEL)


def _conditions(wl: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in (wl.get("status") or {}).get("conditions") or []}


def _true(conds: dict[str, dict[str, Any]], ctype: str) -> bool:
    return conds.get(ctype, {}).get("status") == "True"


@dataclass(frozen=True)
class Admission:
    """What a job's Workload says, in the planner's terms."""

    admitted: bool = False  # run: quota reserved, every admission check ready, not evicted, not finished
    reserved: bool = False  # status.admission is set: the job holds quota (until we release it)
    evicted: bool = False
    finished: bool = False
    workers: int | None = None  # the admitted count of the worker pod set
    # {pod set: {resource: flavor}} from status.admission.podSetAssignments.
    flavors: dict[str, dict[str, str]] = field(default_factory=dict)
    # Why the job waits (the job's Suspended condition): None while it runs.
    waiting: tuple[str, str] | None = None
    reclaimable: int = 0  # worker pods already reported reclaimable in this admission


def read(wl: dict[str, Any] | None) -> Admission:
    """The Admission a Workload's status shows (None: not created yet)."""
    if wl is None:
        return Admission(waiting=(WAIT_QUEUED, "creating the Kueue Workload"))
    conds = _conditions(wl)
    status = wl.get("status") or {}
    admission = status.get("admission") or None
    flavors: dict[str, dict[str, str]] = {}
    workers = None
    for a in (admission or {}).get("podSetAssignments") or []:
        flavors[a["name"]] = dict(a.get("flavors") or {})
        if a["name"] == POD_SET_WORKERS and a.get("count") is not None:
            workers = int(a["count"])
    evicted = _true(conds, EVICTED)
    finished = _true(conds, FINISHED)
    admitted = bool(admission) and _true(conds, QUOTA_RESERVED) and _true(conds, ADMITTED) and not evicted and not finished
    reclaimable = sum(int(r.get("count", 0)) for r in status.get("reclaimablePods") or [] if r.get("name") == POD_SET_WORKERS)
    return Admission(admitted=admitted, reserved=bool(admission), evicted=evicted, finished=finished, workers=workers,
                     flavors=flavors, waiting=None if admitted else _why_waiting(conds, evicted, bool(admission)),
                     reclaimable=reclaimable)


def _why_waiting(conds: dict[str, dict[str, Any]], evicted: bool, reserved: bool) -> tuple[str, str]:
    # Evicted stays True until Kueue reserves quota again: once the quota is given back, the job is queued.
    if evicted and reserved:
        ev = conds[EVICTED]
        reason = WAIT_PREEMPTED if ev.get("reason") == "Preempted" else WAIT_EVICTED
        return reason, f"evicted by Kueue ({ev.get('reason')}): {ev.get('message', '')}; stopping with a checkpoint, then requeued"
    if reserved:
        return WAIT_QUEUED, "quota reserved; waiting for Kueue's admission checks"
    qr = conds.get(QUOTA_RESERVED) or {}
    message = qr.get("message") or "waiting for Kueue to reserve quota"
    requeued = conds.get(REQUEUED) or {}
    if requeued.get("status") == "True" and requeued.get("reason") in REQUEUE_REASONS:
        message = f"requeued after {requeued['reason'].lower()}; {message}"
    reason = WAIT_INADMISSIBLE if qr.get("reason") == "Inadmissible" else WAIT_QUEUED
    return reason, f"Kueue: {message}"


@dataclass(frozen=True)
class Placement:
    """What an admission adds to one role's pods: the flavors' node labels and tolerations."""

    node_selector: dict[str, str] = field(default_factory=dict)
    tolerations: tuple[dict[str, Any], ...] = ()


def placements(adm: Admission, flavors: dict[str, dict[str, Any]]) -> dict[str, Placement]:
    """Per role, the union of the node labels and tolerations of the flavors its pod set was admitted
    with; ``flavors``: ResourceFlavor specs by name. A flavor's nodeTaints become tolerations too, as
    Kueue's own integrations do (its pods must land on the tainted nodes the flavor stands for)."""
    out: dict[str, Placement] = {}
    for role, pod_set in POD_SETS.items():
        selector: dict[str, str] = {}
        tolerations: list[dict[str, Any]] = []
        for name in sorted(set((adm.flavors.get(pod_set) or {}).values())):
            spec = flavors.get(name) or {}
            selector.update(spec.get("nodeLabels") or {})
            for taint in spec.get("nodeTaints") or []:
                tolerations.append({k: v for k, v in {"key": taint.get("key"), "operator": "Equal", "value": taint.get("value"),
                                                      "effect": taint.get("effect")}.items() if v is not None})
            tolerations += [dict(t) for t in spec.get("tolerations") or []]
        out[role] = Placement(selector, tuple(_unique(tolerations)))
    return out


def _unique(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    seen: list[dict[str, Any]] = []
    for item in items:
        if item not in seen:
            seen.append(item)
    return seen


def place(pod: dict[str, Any], placement: Placement | None) -> dict[str, Any]:
    """``pod`` with the placement added: node labels merged into its nodeSelector (the flavor's win, as
    in Kueue), tolerations appended unless already there."""
    if placement is None or not (placement.node_selector or placement.tolerations):
        return pod
    spec = pod["spec"]
    if placement.node_selector:
        spec["nodeSelector"] = {**(spec.get("nodeSelector") or {}), **placement.node_selector}
    if placement.tolerations:
        spec["tolerations"] = _unique([*(spec.get("tolerations") or []), *placement.tolerations])
    return pod


def _condition(ctype: str, status: bool, reason: str, message: str, now: str, generation: int | None) -> dict[str, Any]:
    cond = {"type": ctype, "status": "True" if status else "False", "reason": reason, "message": message,
            "lastTransitionTime": now}
    if generation is not None:
        cond["observedGeneration"] = generation
    return cond


def _with_conditions(status: dict[str, Any], changes: list[dict[str, Any]]) -> dict[str, Any]:
    """``status`` with ``changes`` set; an unchanged condition keeps its lastTransitionTime."""
    conds = {c["type"]: c for c in status.get("conditions") or []}
    for new in changes:
        old = conds.get(new["type"])
        if old and old.get("status") == new["status"]:
            new = {**new, "lastTransitionTime": old.get("lastTransitionTime", new["lastTransitionTime"])}
        conds[new["type"]] = new
    return {**status, "conditions": list(conds.values())}


def released(wl: dict[str, Any], now: str) -> dict[str, Any]:
    """The Workload's status once an evicted job has no pod left: admission cleared and QuotaReserved
    false, so Kueue counts the quota as free (the preemptor waits for exactly this), and Requeued when
    Kueue requeues for the eviction's reason (jobframework/reconciler.go does the same for its kinds)."""
    status = {k: v for k, v in (wl.get("status") or {}).items() if k not in ("admission", "reclaimablePods")}
    gen = wl["metadata"].get("generation")
    ev = _conditions(wl).get(EVICTED) or {}
    why = f"{ev.get('reason', 'Evicted')}: the job's pods are stopped"
    changes = [_condition(QUOTA_RESERVED, False, "Pending", why, now, gen),
               _condition(ADMITTED, False, "NoReservation", "the job's quota was released", now, gen)]
    if ev.get("reason") in REQUEUE_REASONS:
        changes.append(_condition(REQUEUED, True, ev["reason"], "requeued after the job stopped", now, gen))
    return _with_conditions(status, changes)


def finished(wl: dict[str, Any], reason: str, message: str, now: str) -> dict[str, Any]:
    """The Workload's status once the job ended (reason Succeeded or Failed): Kueue frees its quota."""
    return _with_conditions(dict(wl.get("status") or {}),
                            [_condition(FINISHED, True, reason, message[:32768], now, wl["metadata"].get("generation"))])


def with_reclaimable(wl: dict[str, Any], count: int) -> dict[str, Any]:
    """The Workload's status reporting ``count`` worker pods the job no longer uses in this admission."""
    status = dict(wl.get("status") or {})
    others = [r for r in status.get("reclaimablePods") or [] if r.get("name") != POD_SET_WORKERS]
    status["reclaimablePods"] = others + [{"name": POD_SET_WORKERS, "count": count}]
    return status


def reclaimable(adm: Admission, desired: int, lo: int) -> int:
    """Worker pods of the admission the job has given up, to report as reclaimable: the admitted count
    less the workers the planner wants now (not those running: a failed worker being replaced is
    not given back), never below what was already reported (Kueue only lets the count grow while the
    quota is reserved) and never eating into min (a job below min is restarting, not shrinking)."""
    if not adm.admitted or adm.workers is None:
        return adm.reclaimable
    freed = adm.workers - max(desired, lo)
    return max(adm.reclaimable, freed, 0)


__all__ = ["Admission", "Placement", "finished", "placements", "place", "read", "released", "reclaimable",
           "with_reclaimable", "workload", "workload_name"]
