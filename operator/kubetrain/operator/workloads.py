"""A queued job's Kueue Workload around one reconcile: read (and create) it before the plan, and
after it write what the job owes Kueue. ``kueue.py`` decides; this module only reads and writes.

Only with ``kueue.enabled`` (KUBETRAIN_KUEUE): without a Kueue in the cluster the Workload CRD does
not exist and a queued job waits suspended, as before, until something sets spec.suspend false.
"""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import datetime, timezone
from typing import Any

from kubetrain.api.models import Toleration, TrainingJob
from kubetrain.contract.vocabulary import TERMINAL_PHASES
from kubetrain.operator import kueue, naming, planner
from kubetrain.operator.runtime import JobMemo, OperatorRuntime


def queued(job: TrainingJob, body: dict[str, Any], runtime: OperatorRuntime) -> bool:
    """Whether Kueue admits this job: Kueue is enabled and the job names a queue."""
    return runtime.config.kueue and kueue.queue_name(job, body) is not None


def before(job: TrainingJob, body: dict[str, Any], runtime: OperatorRuntime, state: JobMemo) -> kueue.Admission:
    """The job's Workload (created if missing, ``active`` kept in step with spec.suspend), what it
    admits, and the admitted flavors' placement for the pods this round creates (in ``state``)."""
    kube, meta = runtime.kube, body["metadata"]
    wl = kube.get_workload(meta["namespace"], kueue.workload_name(job.metadata.name, meta["uid"]))
    if wl is None and (body.get("status") or {}).get("phase") in TERMINAL_PHASES:
        # Finished before Kueue was enabled (or its Workload deleted by hand): nothing left to queue.
        state.workload, state.placement, state.placement_key = None, {}, None
        return kueue.Admission(finished=True)
    if wl is None:
        pcn = job.spec.scheduling.priority_class_name
        priority = kube.priority_class_value(pcn) if pcn else None
        wl = kube.create_workload(kueue.workload(job, body, runtime.config.build, priority))
    elif (wl.get("spec") or {}).get("active", True) == job.spec.suspend:
        kube.set_workload_active(meta["namespace"], wl["metadata"]["name"], not job.spec.suspend)
    state.workload = wl
    adm = kueue.read(wl)
    if not adm.admitted:
        state.placement, state.placement_key = {}, None
    else:
        key = json.dumps(adm.flavors, sort_keys=True)
        if state.placement_key != key:  # the flavors are read once per admission
            names = {f for flavors in adm.flavors.values() for f in flavors.values()}
            state.placement = kueue.placements(adm, {f: kube.resource_flavor(f) for f in names})
            state.placement_key = key
    return adm


def placed(job: TrainingJob, state: JobMemo) -> TrainingJob:
    """The job as its admitted workers must run: the flavors' node labels and tolerations added to
    spec.scheduling, so the capacity estimate and the pod builders see what the pods will carry."""
    place = state.placement.get(naming.ROLE_WORKER)
    if place is None or not (place.node_selector or place.tolerations):
        return job
    sched = job.spec.scheduling
    own = [t.to_k8s() for t in sched.tolerations or []]
    tolerations = own + [t for t in place.tolerations if t not in own]
    sched = sched.model_copy(update={"node_selector": {**(sched.node_selector or {}), **place.node_selector},
                                     "tolerations": [Toleration.model_validate(t) for t in tolerations]})
    return job.model_copy(update={"spec": job.spec.model_copy(update={"scheduling": sched})})


def observed(obs: planner.Observed, adm: kueue.Admission) -> planner.Observed:
    """What the planner sees of the admission: whether to run, at most how many workers, why it waits."""
    cap = None if adm.workers is None else adm.workers - adm.reclaimable
    return replace(obs, admitted=adm.admitted, admitted_replicas=cap, waiting=adm.waiting)


def after(job: TrainingJob, body: dict[str, Any], obs: planner.Observed, result: planner.Plan, adm: kueue.Admission,
          runtime: OperatorRuntime, state: JobMemo) -> list[tuple[str, str, str]]:
    """Tell Kueue what this round did; the Events to post about it.

    The job ended: Finished (its quota is free). Evicted, or deactivated by a suspend, and no pod
    left (each stopped through SIGTERM, with its checkpoint): the admission cleared, so the quota is
    released and a preemptor can be admitted. Running below the admitted count: the freed workers
    reported as reclaimable.
    """
    wl = state.workload
    if wl is None:
        return []
    kube, now = runtime.kube, datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    status = body["status"] | result.status
    phase = status.get("phase")
    events: list[tuple[str, str, str]] = []
    admitted_before, state.admission_seen = state.admission_seen, adm.admitted
    result.status["queue"] = queue_state(adm, wl, job.spec.replicas.max)
    if phase in TERMINAL_PHASES:
        if not adm.finished:
            cond = next((c for c in status.get("conditions") or [] if c.get("type") == phase), {})
            kube.replace_workload_status(wl, kueue.finished(wl, phase, cond.get("message") or phase, now))
        return events
    if adm.reserved and adm.evicted:
        left = [p.name for p in obs.pods if p.active or p.deleting] + [f"new:{w}" for w in result.create_workers]
        if not left:
            kube.replace_workload_status(wl, kueue.released(wl, now))
            events.append(("Normal", "QuotaReleased", "every pod stopped; its Kueue quota is released and the job is requeued"))
        return events
    if adm.admitted:
        if not admitted_before:
            pods = f"{adm.workers} of {job.spec.replicas.min}..{job.spec.replicas.max} workers" if adm.workers is not None else "the job"
            queue = ((wl.get("status") or {}).get("admission") or {}).get("clusterQueue", "?")
            events.append(("Normal", "Admitted", f"Kueue admitted {pods} in ClusterQueue {queue}"))
        n = kueue.reclaimable(adm, int(result.status.get("desiredReplicas") or 0), job.spec.replicas.min)
        if n != adm.reclaimable:
            kube.replace_workload_status(wl, kueue.with_reclaimable(wl, n))
            events.append(("Normal", "ReclaimablePods", f"{n} admitted workers given back to Kueue; growing past "
                                                        f"{(adm.workers or 0) - n} waits for a new admission"))
    return events


def queue_state(adm: kueue.Admission, wl: dict[str, Any], hi: int) -> str:
    """status.queue, the job's `kubectl get tj` column: admitted where and how big, or why it waits."""
    if adm.finished:
        return "Finished"
    if adm.admitted:
        cq = ((wl.get("status") or {}).get("admission") or {}).get("clusterQueue", "?")
        return f"Admitted {adm.workers if adm.workers is not None else hi}/{hi} ({cq})"
    return adm.waiting[0] if adm.waiting else kueue.WAIT_QUEUED


def finish_deleted(runtime: OperatorRuntime, namespace: str, job: str) -> None:
    """The job is being deleted: finish its Workloads (Kueue frees the quota at once) and delete them,
    not waiting for garbage collection."""
    if not runtime.config.kueue:
        return
    now = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    for wl in runtime.kube.job_workloads(namespace, job):
        if not kueue.read(wl).finished:
            runtime.kube.replace_workload_status(wl, kueue.finished(wl, "Deleted", "the TrainingJob was deleted", now))
        runtime.kube.delete_workload(namespace, wl["metadata"]["name"])


__all__ = ["after", "before", "finish_deleted", "observed", "placed", "queued"]
