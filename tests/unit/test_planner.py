"""The reconcile rules, as a pure function: observations in, actions and status out."""

from __future__ import annotations

from dataclasses import replace
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
    p = plan(job, _body(), _obs([], missing=(("PersistentVolumeClaim", "nope", "spec.checkpoint.persistentVolumeClaim.claimName"),), placeable=4))
    cond = next(c for c in p.status["conditions"] if c["type"] == "Schedulable")
    assert cond["reason"] == "CheckpointVolumeMissing" and "nope" in cond["message"] and p.create_workers == []
    assert not p.create_store
    sa = plan(_job(), _body(), _obs([], missing=(("ServiceAccount", "reader", "spec.pod.serviceAccountName"),), placeable=4))
    cond = next(c for c in sa.status["conditions"] if c["type"] == "Schedulable")
    assert cond["reason"] == "ReferencedObjectMissing" and cond["message"].startswith("spec.pod.serviceAccountName: ServiceAccount 'reader'")
    assert sa.create_workers == [] and not sa.create_store
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


def test_deadline_counts_from_the_start_even_while_waiting_for_capacity():
    job = _job(activeDeadlineSeconds=60)
    first = plan(job, _body(), _obs([], placeable=0))
    assert first.status["startTime"] == "2026-11-22T12:00:00Z" and first.status["phase"] == "Pending"
    later = plan(job, _body(first.status), _obs([_store()], placeable=0, now=NOW + timedelta(seconds=61)))
    assert later.status["phase"] == "Failed" and "DeadlineExceeded" in str(later.status["conditions"])


def test_first_running_is_reported_once_and_not_after_a_restart_or_resume():
    pods = [_store(), _pod(0), _pod(1)]
    pending = plan(_job(), _body(), _obs([_store(), _pod(0, ready=False)], placeable=4))
    assert not pending.first_running
    first = plan(_job(), _body(pending.status), _obs(pods, placeable=2))
    assert first.first_running and first.status["phase"] in ("Running", "Scaling")
    again = plan(_job(), _body(first.status), _obs(pods, placeable=2))
    assert not again.first_running
    restarted = {**first.status, "restarts": 1, "conditions": [{"type": "Running", "status": "False", "lastTransitionTime": NOW.isoformat()}]}
    assert not plan(_job(), _body(restarted), _obs(pods, placeable=2)).first_running


def test_create_failure_is_a_condition_and_one_event_until_creates_work_again():
    from kubetrain.operator.planner import record_create_failure

    p = plan(_job(), _body(), _obs([], placeable=4))
    record_create_failure(p, {}, "creating Pod j-w0-0: exceeded quota: pods", NOW)
    cond = next(c for c in p.status["conditions"] if c["type"] == "ReplicaFailure")
    assert cond["status"] == "True" and cond["reason"] == "FailedCreate" and "exceeded quota" in cond["message"]
    assert [e[1] for e in p.events].count("FailedCreate") == 1
    # The same refusal next round: no new Event, the transition time stays.
    q = plan(_job(), _body(p.status), _obs([], placeable=4, now=NOW + timedelta(seconds=5)))
    record_create_failure(q, p.status, "creating Pod j-w0-0: exceeded quota: pods", NOW + timedelta(seconds=5))
    assert "FailedCreate" not in [e[1] for e in q.events]
    assert next(c for c in q.status["conditions"] if c["type"] == "ReplicaFailure")["lastTransitionTime"] == cond["lastTransitionTime"]
    # Creates go through again: the condition turns False.
    r = plan(_job(), _body(q.status), _obs([], placeable=4))
    record_create_failure(r, q.status, None, NOW)
    assert next(c for c in r.status["conditions"] if c["type"] == "ReplicaFailure")["status"] == "False"


def test_success_message_names_agents_that_did_not_exit_0():
    done = {"exitCode": 0, "reason": "Completed"}
    crashed = _pod(1, phase="Failed", ready=False, accounted=True, terminated={"exitCode": 1})
    p = plan(_job(), _body({"phase": "Running", "restarts": 1}), _obs([_store(), _pod(0, phase="Succeeded", terminated=done), crashed]))
    cond = next(c for c in p.status["conditions"] if c["type"] == "Succeeded")
    assert cond["message"] == "1 agents exited 0; j-w1-0 ended otherwise after training finished"


def test_a_pod_with_malformed_labels_does_not_break_the_index():
    view = PodView.from_body({"metadata": {"name": "x", "labels": {naming.LABEL_JOB: "j", naming.LABEL_SLOT: "one",
                                                                      naming.LABEL_ATTEMPT: "?"}}})
    assert (view.slot, view.attempt, view.phase) == (-1, 0, "Pending")


def _cond(status, ctype):
    return next(c for c in status["conditions"] if c["type"] == ctype)


def test_losing_the_store_uses_one_restart_and_the_agents_it_takes_down_use_none():
    pods = [_store(), _pod(0), _pod(1), _pod(2)]
    running = plan(_job(), _body({"desiredReplicas": 3}), _obs(pods, placeable=0))
    assert _cond(running.status, "StoreReady")["reason"] == "Serving"
    # The store's node is gone: one restart, a StoreLost event, a new store.
    lost = plan(_job(), _body(running.status), _obs([_pod(0), _pod(1), _pod(2)], placeable=0, now=NOW + timedelta(seconds=30)))
    assert lost.status["restarts"] == 1 and lost.create_store and lost.restart_reasons == ["StoreLost"]
    assert _cond(lost.status, "StoreReady")["reason"] == "StoreLost" and any(e[1] == "StoreLost" for e in lost.events)
    # Every agent drops out after it; the new store serves already. None of them uses a restart.
    preempted = {"exitCode": 1, "message": "Preempted: stopped by signal at step 40; checkpoint written"}
    ended = [_pod(s, phase="Failed", ready=False, terminated=preempted) for s in range(3)]
    after = plan(_job(), _body(lost.status), _obs([_store(), *ended], placeable=3, now=NOW + timedelta(seconds=50)))
    assert after.status["restarts"] == 1 and set(after.release) >= {p.name for p in ended}
    assert after.create_workers == [(0, 1), (1, 1), (2, 1)] and after.status["phase"] != "Failed"
    assert _cond(after.status, "StoreReady")["reason"] == "Recovered"
    # An agent that drops out a few rounds later is still the store's doing.
    replaced = [_store(), _pod(0, attempt=1), _pod(1, attempt=1), _pod(2, attempt=1)]
    steady = plan(_job(), _body(after.status), _obs(replaced, placeable=0, now=NOW + timedelta(seconds=60)))
    straggler = [_store(), _pod(0, attempt=1), _pod(1, attempt=1), _pod(2, 1, phase="Failed", ready=False, terminated=preempted)]
    assert plan(_job(), _body(steady.status), _obs(straggler, placeable=0, now=NOW + timedelta(seconds=90))).status["restarts"] == 1
    # Past the grace period, a failure is a failure again; and a user's bug is never the store's fault.
    late = [_store(), _pod(0, attempt=1), _pod(1, attempt=1), _pod(2, 1, phase="Failed", ready=False, terminated=preempted)]
    later = plan(_job(), _body(after.status), _obs(late, placeable=0, now=NOW + timedelta(seconds=50 + 121)))
    assert later.status["restarts"] == 2
    bug = _pod(1, phase="Failed", ready=False, terminated={"exitCode": 5, "message": "UserError: KeyError: 'x'"})
    blamed = plan(_job(), _body(lost.status), _obs([_store(), _pod(0), bug], placeable=0, now=NOW + timedelta(seconds=40)))
    assert blamed.status["phase"] == "Failed" and _cond(blamed.status, "Failed")["reason"] == "UserError"


def test_a_suspended_job_did_not_lose_its_store():
    pods = [_store(), _pod(0), _pod(1)]
    running = plan(_job(), _body({"desiredReplicas": 2}), _obs(pods, placeable=0))
    suspended = plan(_job(suspend=True), _body(running.status), _obs(pods))
    assert _cond(suspended.status, "StoreReady")["status"] == "False"
    resumed = plan(_job(), _body(suspended.status), _obs([], placeable=4))
    assert resumed.status.get("restarts", 0) == 0 and resumed.create_store and resumed.restart_reasons == []


def test_store_loss_past_the_restart_cap_fails_the_job():
    job = _job(failurePolicy={"maxRestarts": 0})
    running = plan(job, _body({"desiredReplicas": 2}), _obs([_store(), _pod(0), _pod(1)], placeable=0))
    lost = plan(job, _body(running.status), _obs([_pod(0), _pod(1)], placeable=0))
    assert lost.status["phase"] == "Failed" and "StoreLost" in _cond(lost.status, "Failed")["message"]


def test_a_worker_on_a_lost_node_is_counted_lost_and_replaced_in_the_same_round():
    """Its node is gone (or NotReady too long) while the API still shows the pod Running and Ready."""
    lost = replace(_pod(1, node="n1"), node_lost="was deleted")
    pods = [_store(), _pod(0), lost, _pod(2, node="n2"), _pod(3, node="n3")]
    p = plan(_job(), _body({"desiredReplicas": 4, "phase": "Running"}), _obs(pods, placeable=1))
    assert p.release == ["j-w1-0"] and p.delete == ["j-w1-0"] and p.lost == ["j-w1-0"]
    assert p.create_workers == [(1, 1)]  # the same slot, the next attempt, at once
    assert p.status["restarts"] == 1 and p.status["readyReplicas"] == 3 and p.status["phase"] == "Scaling"
    assert ("Warning", "NodeLost", "worker j-w1-0 ended: its node n1 was deleted; restart 1 of 3") in p.events
    # The next round sees it accounted (released) and deleting: nothing counted twice.
    again = replace(lost, deleting=True, accounted=True, tracked=False)
    p2 = plan(_job(), _body(p.status), _obs([_store(), _pod(0), again, _pod(2, node="n2"), _pod(3, node="n3")], placeable=0))
    assert p2.status["restarts"] == 1 and p2.release == [] and p2.lost == []


def test_a_pod_that_failed_before_its_node_was_lost_keeps_its_own_reason():
    failed = replace(_pod(1, phase="Failed", ready=False, terminated={"exitCode": 1, "message": "UserError: bad loss"}),
                     node_lost="was deleted")
    p = plan(_job(failurePolicy={"retryOn": ["UserError", "NodeLost"]}), _body({"desiredReplicas": 2}),
             _obs([_store(), _pod(0), failed], placeable=1))
    assert [e[1] for e in p.events if e[0] == "Warning"] == ["UserError"]


def test_the_store_on_a_lost_node_is_a_store_loss_and_removed_at_once():
    store = replace(_store(), node_lost="has been NotReady for 12 s (grace 10 s)")
    status = {"desiredReplicas": 2, "phase": "Running",
              "conditions": [{"type": "StoreReady", "status": "True", "reason": "Serving", "lastTransitionTime": "2026-11-22T11:00:00Z"}]}
    p = plan(_job(), _body(status), _obs([store, _pod(0), _pod(1, node="n1")], placeable=0))
    assert "j-rdzv" in p.lost and "j-rdzv" in p.delete and p.create_store
    assert p.status["restarts"] == 1 and any(e[1] == "StoreLost" for e in p.events)


def test_the_pod_index_keeps_what_the_planner_reads_not_the_whole_pod():
    spec = {"containers": [{"env": [{"name": f"KUBETRAIN_{i}", "value": "x" * 50} for i in range(40)]}]}
    body = {"metadata": {"name": "j-w0-0", "managedFields": [{"x": "y" * 1000}], "labels": {naming.LABEL_ROLE: "worker"}},
            "spec": spec, "status": {"phase": "Failed", "podIP": "10.0.0.1", "qosClass": "Guaranteed",
                                                   "containerStatuses": [{"name": "trainer", "imageID": "sha256:" + "f" * 64,
                                                                          "state": {"terminated": {"exitCode": 3, "message": "OutOfMemory: CUDA"}}}]}}
    view = PodView.from_body(body)
    assert view.body == {"metadata": {"name": "j-w0-0"},
                         "status": {"podIP": "10.0.0.1", "containerStatuses": [
                             {"name": "trainer", "state": {"terminated": {"exitCode": 3, "message": "OutOfMemory: CUDA"}}}]}}
    assert classify(view.body).reason == classify(body).reason == "OOMKilled"
    # Copies: the index holds nothing of Kopf's body.
    body["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"] = 99
    assert view.body["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 3


def test_rules_on_elapsed_time_ask_for_a_reconcile_when_they_are_due():
    """No event comes when a deadline, TTL or grace runs out, and the timer is a 30 s safety net: the plan says when."""
    running = {"phase": "Running", "startTime": (NOW - timedelta(seconds=40)).isoformat()}
    assert plan(_job(activeDeadlineSeconds=100), _body(running), _obs([_store(), _pod(0), _pod(1)])).recheck_after == 60
    assert plan(_job(), _body(running), _obs([_store(), _pod(0), _pod(1)])).recheck_after is None  # nothing pending
    done = {"phase": "Succeeded", "completionTime": (NOW - timedelta(seconds=10)).isoformat()}
    assert plan(_job(ttlSecondsAfterFinished=30), _body(done), _obs([])).recheck_after == 20
    # The gang hold: released just past 60-120 s (spread by uid) after Schedulable went False, here 10 s ago.
    held = {"desiredReplicas": 0, "conditions": [{"type": "Schedulable", "status": "False", "reason": "InsufficientCapacity",
                                                  "lastTransitionTime": (NOW - timedelta(seconds=10)).isoformat()}]}
    pending = _pod(1, phase="Pending", ready=False, node=None,
                   conditions=[{"type": "PodScheduled", "status": "False", "reason": "Unschedulable"}])
    kept = plan(_job(), _body(held), _obs([_store(), _pod(0), pending], placeable=0))
    assert not kept.delete and 50 < kept.recheck_after <= 110.5
    # The earliest rule wins: a deadline due sooner than the gang release.
    soon = plan(_job(activeDeadlineSeconds=15), _body(held | {"startTime": (NOW - timedelta(seconds=10)).isoformat()}),
                _obs([_store(), _pod(0), pending], placeable=0))
    assert soon.recheck_after == 5
