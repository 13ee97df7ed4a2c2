"""The reconcile rules, as a pure function: observations in, actions and status out."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from kubetrain.api.manifests import parse_trainingjob
from kubetrain.operator import naming
from kubetrain.operator.failures import classify
from kubetrain.operator.planner import Observed, PodView, plan

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=timezone.utc)


def _job(**spec):
    base = {"replicas": {"min": 2, "max": 4}, "container": {"gpusPerReplica": 8}}
    base.update(spec)
    return parse_trainingjob({"apiVersion": "kubetrain.dev/v1alpha1", "kind": "TrainingJob",
                              "metadata": {"name": "j", "namespace": "ns"}, "spec": base})


def _body(status=None):
    return {"metadata": {"name": "j", "namespace": "ns", "uid": "u-1", "generation": 1}, "status": status or {}}


def _pod(slot, attempt=0, phase="Running", ready=True, node="n0", role="worker", deleting=False, accounted=False,
         terminated=None, conditions=(), created=NOW - timedelta(minutes=5)):
    name = naming.worker_pod_name("j", slot, attempt) if role == "worker" else "j-rdzv"
    conds = [{"type": "Ready", "status": "True" if ready else "False"}, *conditions]
    status = {"phase": phase, "conditions": conds}
    if terminated is not None:
        status["containerStatuses"] = [{"name": "trainer", "state": {"terminated": terminated}}]
    meta = {"name": name, "creationTimestamp": created.isoformat(),
            "labels": {naming.LABEL_JOB: "j", naming.LABEL_ROLE: role, naming.LABEL_SLOT: str(slot), naming.LABEL_ATTEMPT: str(attempt)},
            "finalizers": [naming.TRACKING_FINALIZER] if role == "worker" else [],
            "annotations": {naming.ANNOTATION_ACCOUNTED: "true"} if accounted else {}}
    if deleting:
        meta["deletionTimestamp"] = NOW.isoformat()
    return PodView.from_body({"metadata": meta, "spec": {"nodeName": node}, "status": status})


def _store(ready=True):
    return _pod(0, role="rendezvous", ready=ready)


def _obs(pods, **kw):
    return Observed(pods=pods, now=kw.pop("now", NOW), **kw)


def test_new_job_gets_store_service_and_as_many_workers_as_fit():
    p = plan(_job(), _body(), _obs([], service_exists=False, placeable=3))
    assert p.create_service and p.create_store
    assert p.create_workers == [(0, 0), (1, 0), (2, 0)]
    assert p.status["desiredReplicas"] == 3 and p.status["phase"] == "Pending"
    assert any(e[1] == "Starting" for e in p.events)


def test_cpu_job_asks_for_max_and_lets_the_scheduler_place():
    p = plan(_job(container={"gpusPerReplica": 0}), _body(), _obs([], placeable=None))
    assert len(p.create_workers) == 4


def test_below_min_capacity_starts_nothing_and_says_why():
    p = plan(_job(), _body(), _obs([], placeable=1))
    assert p.create_workers == [] and p.status["phase"] == "Pending"
    sched = next(c for c in p.status["conditions"] if c["type"] == "Schedulable")
    assert sched["status"] == "False" and sched["reason"] == "InsufficientCapacity" and "min 2" in sched["message"]


def test_all_ready_is_running_with_world_size():
    pods = [_store(), *(_pod(s) for s in range(4))]
    p = plan(_job(), _body({"desiredReplicas": 4}), _obs(pods, placeable=0))
    assert p.status["phase"] == "Running" and p.status["readyReplicas"] == 4
    assert p.status["worldSize"] == 32 and p.status["startTime"] == "2026-11-22T12:00:00Z"
    assert p.create_workers == [] and p.release == [] and p.delete == []


def test_node_lost_keeps_survivors_counts_a_restart_and_grows_back():
    running = {"desiredReplicas": 4, "phase": "Running", "startTime": "2026-11-22T11:00:00Z", "restarts": 0}
    lost = _pod(3, phase="Running", deleting=True)
    pods = [_store(), _pod(0), _pod(1), _pod(2), lost]
    p = plan(_job(), _body(running), _obs(pods, placeable=0))
    assert p.release == [lost.name] and p.status["restarts"] == 1
    assert p.create_workers == [] and p.status["desiredReplicas"] == 3 and p.status["phase"] == "Running"
    assert p.status["lastScaling"]["reason"] == "PartialCapacity" and p.status["lastScaling"]["toReplicas"] == 3
    assert any(e[1] == "NodeLost" for e in p.events)
    # The node comes back: grow to max again, in the free slot.
    after = running | {"desiredReplicas": 3, "restarts": 1}
    p2 = plan(_job(), _body(after), _obs([_store(), _pod(0), _pod(1), _pod(2)], placeable=1))
    assert p2.create_workers == [(3, 0)] and p2.status["desiredReplicas"] == 4 and p2.status["phase"] == "Scaling"


def test_failed_worker_is_replaced_under_a_new_name_and_counted_once():
    failed = _pod(1, phase="Failed", ready=False, terminated={"exitCode": 1, "message": "CommunicationTimeout: gloo timed out"})
    pods = [_store(), _pod(0), failed]
    p = plan(_job(replicas={"min": 1, "max": 2}, container={}), _body({"restarts": 0, "desiredReplicas": 2}), _obs(pods))
    assert p.status["restarts"] == 1 and failed.name in p.release
    assert p.create_workers == [(1, 1)]
    # Once accounted, the same failed pod never counts again.
    accounted = _pod(1, phase="Failed", ready=False, accounted=True, terminated={"exitCode": 1})
    p2 = plan(_job(replicas={"min": 1, "max": 2}, container={}), _body({"restarts": 1, "desiredReplicas": 2}), _obs([_store(), _pod(0), accounted]))
    assert p2.status["restarts"] == 1 and p2.create_workers == [(1, 1)]


def test_restart_cap_fails_the_job_with_the_last_reason():
    failed = _pod(0, phase="Failed", ready=False, terminated={"exitCode": 137, "reason": "OOMKilled"})
    job = _job(failurePolicy={"maxRestarts": 1, "retryOn": ["OOMKilled"]}, replicas={"min": 1, "max": 1})
    p = plan(job, _body({"restarts": 1, "phase": "Running"}), _obs([_store(), failed]))
    assert p.status["phase"] == "Failed" and p.status["restarts"] == 2
    cond = next(c for c in p.status["conditions"] if c["type"] == "Failed")
    assert cond["reason"] == "RestartLimitExceeded" and "OOMKilled" in cond["message"]
    assert "j-rdzv" in p.delete


def test_non_retryable_failure_fails_at_once():
    failed = _pod(0, phase="Failed", ready=False, terminated={"exitCode": 5, "message": "UserError: ValueError: bad shape"})
    p = plan(_job(), _body({"restarts": 0, "phase": "Running"}), _obs([_store(), _pod(1), failed]))
    cond = next(c for c in p.status["conditions"] if c["type"] == "Failed")
    assert p.status["phase"] == "Failed" and cond["reason"] == "UserError" and "bad shape" in cond["message"]
    assert naming.worker_pod_name("j", 1, 0) in p.delete  # the survivor is stopped
    assert failed.name not in p.delete  # keepPods: Failed keeps it for its logs


def test_success_needs_every_agent_done():
    done = {"exitCode": 0, "reason": "Completed"}
    half = plan(_job(), _body({"phase": "Running"}), _obs([_store(), _pod(0, phase="Succeeded", terminated=done), _pod(1)]))
    assert half.status["phase"] == "Running" and half.create_workers == []
    pods = [_store(), _pod(0, phase="Succeeded", terminated=done), _pod(1, phase="Succeeded", terminated=done)]
    p = plan(_job(), _body({"phase": "Running"}), _obs(pods))
    assert p.status["phase"] == "Succeeded" and p.status["completionTime"]
    assert set(p.delete) == {"j-w0-0", "j-w1-0", "j-rdzv"}


def test_suspend_deletes_pods_and_resume_recreates_them():
    pods = [_store(), _pod(0), _pod(1)]
    p = plan(_job(suspend=True), _body({"phase": "Running", "startTime": "2026-11-22T11:00:00Z"}), _obs(pods))
    assert set(p.delete) == {"j-w0-0", "j-w1-0", "j-rdzv"} and p.status["phase"] == "Suspended"
    assert p.status["startTime"] is None
    suspended = {"phase": "Suspended", "conditions": [{"type": "Suspended", "status": "True", "lastTransitionTime": "2026-11-22T11:00:00Z"}]}
    r = plan(_job(), _body(suspended), _obs([], placeable=4))
    assert len(r.create_workers) == 4 and r.create_store
    assert next(c for c in r.status["conditions"] if c["type"] == "Suspended")["status"] == "False"


def test_waiting_for_kueue_admission_is_suspended():
    p = plan(_job(), _body(), _obs([], admitted=False))
    assert p.status["phase"] == "Suspended" and p.create_workers == []


def test_deadline_fails_cleanly():
    job = _job(activeDeadlineSeconds=60)
    p = plan(job, _body({"phase": "Running", "startTime": (NOW - timedelta(seconds=61)).isoformat()}), _obs([_store(), _pod(0), _pod(1)]))
    assert p.status["phase"] == "Failed" and "DeadlineExceeded" in str(p.status["conditions"])
    assert {"j-w0-0", "j-w1-0", "j-rdzv"} <= set(p.delete)


def test_ttl_deletes_the_finished_job():
    job = _job(ttlSecondsAfterFinished=30)
    young = plan(job, _body({"phase": "Succeeded", "completionTime": (NOW - timedelta(seconds=10)).isoformat()}), _obs([]))
    old = plan(job, _body({"phase": "Succeeded", "completionTime": (NOW - timedelta(seconds=31)).isoformat()}), _obs([]))
    assert not young.delete_job and old.delete_job


def test_same_observation_same_plan():
    pods = [_store(), _pod(0)]
    a = plan(_job(), _body({"desiredReplicas": 4}), _obs(pods, placeable=2))
    b = plan(_job(), _body({"desiredReplicas": 4}), _obs(pods, placeable=2))
    assert a.create_workers == b.create_workers == [(1, 0), (2, 0)]


def test_partial_gang_below_min_is_released_after_a_while():
    held = {"desiredReplicas": 0, "conditions": [{"type": "Schedulable", "status": "False", "reason": "InsufficientCapacity",
                                                  "lastTransitionTime": (NOW - timedelta(minutes=10)).isoformat()}]}
    pending = _pod(1, phase="Pending", ready=False, node=None,
                   conditions=[{"type": "PodScheduled", "status": "False", "reason": "Unschedulable"}])
    p = plan(_job(), _body(held), _obs([_store(), _pod(0), pending], placeable=0))
    assert {"j-w0-0", "j-w1-0"} <= set(p.delete) and any(e[1] == "ReleasedPartialGang" for e in p.events)
    fresh = held | {"conditions": [held["conditions"][0] | {"lastTransitionTime": NOW.isoformat()}]}
    p2 = plan(_job(), _body(fresh), _obs([_store(), _pod(0), pending], placeable=0))
    assert p2.delete == []


def test_missing_pvc_and_impossible_fit_are_reported():
    job = _job(checkpoint={"persistentVolumeClaim": {"claimName": "nope"}})
    p = plan(job, _body(), _obs([], missing_pvc="nope", placeable=4))
    cond = next(c for c in p.status["conditions"] if c["type"] == "Schedulable")
    assert cond["reason"] == "CheckpointVolumeMissing" and "nope" in cond["message"] and p.create_workers == []
    p2 = plan(_job(), _body(), _obs([], fits_anywhere=False, placeable=0))
    assert next(c for c in p2.status["conditions"] if c["type"] == "Schedulable")["reason"] == "NoNodeFits"


@pytest.mark.parametrize(
    "status,reason",
    [
        ({"containerStatuses": [{"name": "trainer", "state": {"terminated": {"exitCode": 137, "reason": "OOMKilled"}}}]}, "OOMKilled"),
        ({"containerStatuses": [{"name": "trainer", "state": {"terminated": {"exitCode": 3}}}]}, "OOMKilled"),
        ({"containerStatuses": [{"name": "trainer", "state": {"terminated": {"exitCode": 1, "message": "OutOfMemory: CUDA out of memory"}}}]}, "OOMKilled"),
        ({"containerStatuses": [{"name": "trainer", "state": {"terminated": {"exitCode": 2, "message": "ConfigError: fp8 needs Hopper"}}}]}, "ConfigError"),
        ({"containerStatuses": [{"name": "trainer", "state": {"terminated": {"exitCode": 1, "message": "Traceback...\nKeyError: x"}}}]}, "Unknown"),
        ({"reason": "Evicted", "message": "node low on memory"}, "Evicted"),
        ({"conditions": [{"type": "DisruptionTarget", "status": "True", "reason": "PreemptionByScheduler"}]}, "Preempted"),
        ({"conditions": [{"type": "DisruptionTarget", "status": "True", "reason": "DeletionByTaintManager"}]}, "NodeLost"),
    ],
)
def test_failure_classification(status, reason):
    assert classify({"metadata": {"name": "p"}, "status": status}).reason == reason
