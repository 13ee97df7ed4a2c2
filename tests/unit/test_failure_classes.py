"""How a pod's end is classified on a real kubelet, and what the planner does with it (pure)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from kubetrain.api.manifests import parse_trainingjob
from kubetrain.operator import naming
from kubetrain.operator.failures import classify
from kubetrain.operator.planner import Observed, PodView, plan

NOW = datetime(2026, 11, 30, 15, 0, tzinfo=timezone.utc)


def _job(**spec):
    base = {"replicas": {"min": 1, "max": 2}}
    base.update(spec)
    return parse_trainingjob({"apiVersion": "kubetrain.dev/v1alpha1", "kind": "TrainingJob",
                              "metadata": {"name": "j", "namespace": "ns"}, "spec": base})


def _body(status=None):
    return {"metadata": {"name": "j", "namespace": "ns", "uid": "u-1", "generation": 1}, "status": status or {}}


def _pod(slot=0, role="worker", phase="Running", ready=True, deleting=False, state=None, created=NOW - timedelta(minutes=5)):
    """A pod as a real kubelet reports it; ``state`` is the trainer container's state (running if None)."""
    name = naming.worker_pod_name("j", slot, 0) if role == naming.ROLE_WORKER else naming.store_name("j")
    container = "trainer" if role == naming.ROLE_WORKER else "store"
    meta = {"name": name, "creationTimestamp": created.isoformat(),
            "labels": {naming.LABEL_JOB: "j", naming.LABEL_ROLE: role, naming.LABEL_SLOT: str(slot), naming.LABEL_ATTEMPT: "0"},
            "finalizers": [naming.TRACKING_FINALIZER] if role == naming.ROLE_WORKER else []}
    if deleting:
        meta["deletionTimestamp"] = NOW.isoformat()
    status = {"phase": phase, "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
              "containerStatuses": [{"name": container, "state": state or {"running": {}}}]}
    return {"metadata": meta, "spec": {"nodeName": "kubetrain-node"}, "status": status}


KILLED = {"terminated": {"exitCode": 137, "reason": "Error", "message": "W1130 torch.distributed.elastic ... Signals.SIGKILL"}}
RUNNING = {"phase": "Running", "desiredReplicas": 2, "restarts": 0, "startTime": "2026-11-30T14:00:00Z",
           "conditions": [{"type": "StoreReady", "status": "True", "reason": "Serving", "lastTransitionTime": "2026-11-30T14:00:00Z"}]}


def test_a_force_deleted_worker_is_a_lost_pod_whether_or_not_the_kubelet_reported_the_kill():
    before_kill = classify(_pod(deleting=True))
    after_kill = classify(_pod(phase="Failed", ready=False, deleting=True, state=KILLED))
    assert before_kill.reason == after_kill.reason == "NodeLost"
    assert after_kill.exit_code == 137 and "deleted" in after_kill.message


def test_exit_137_without_a_deletion_stays_unknown():
    # The kill came from inside the pod (or an unknown cause): not a lost pod.
    assert classify(_pod(phase="Failed", ready=False, state=KILLED)).reason == "Unknown"


def test_the_trainers_own_reason_wins_over_the_deletion():
    preempted = {"terminated": {"exitCode": 143, "message": "Preempted: checkpointed at step 40 on SIGTERM"}}
    assert classify(_pod(phase="Failed", ready=False, deleting=True, state=preempted)).reason == "Preempted"
    oom = {"terminated": {"exitCode": 137, "reason": "OOMKilled"}}
    assert classify(_pod(phase="Failed", ready=False, deleting=True, state=oom)).reason == "OOMKilled"


def test_a_force_deleted_worker_uses_one_restart_and_is_replaced():
    store = PodView.from_body(_pod(role=naming.ROLE_STORE))
    lost = PodView.from_body(_pod(1, phase="Failed", ready=False, deleting=True, state=KILLED))
    p = plan(_job(), _body(RUNNING), Observed(pods=[store, PodView.from_body(_pod(0)), lost], now=NOW))
    assert p.status["phase"] != "Failed" and p.status["restarts"] == 1 and p.restart_reasons == ["NodeLost"]
    assert lost.name in p.release and p.create_workers == [(1, 1)]
    # With no restart left the same loss ends the job, naming it.
    capped = plan(_job(failurePolicy={"maxRestarts": 0}), _body(RUNNING),
                  Observed(pods=[store, PodView.from_body(_pod(0)), lost], now=NOW))
    failed = next(c for c in capped.status["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "RestartLimitExceeded" and "NodeLost" in failed["message"]


def _waiting(reason, message="failed to pull and unpack image \"localhost/nope:1\": connection refused"):
    return {"waiting": {"reason": reason, "message": message}}


def _pulling_job_round(pods, status, now):
    return plan(_job(), _body(status), Observed(pods=[PodView.from_body(p) for p in pods], now=now))


def test_a_missing_image_fails_the_job_after_the_grace_without_a_restart():
    pods = [_pod(role=naming.ROLE_STORE, phase="Pending", ready=False, state=_waiting("ErrImagePull")),
            *(_pod(s, phase="Pending", ready=False, state=_waiting("ImagePullBackOff")) for s in (0, 1))]
    first = _pulling_job_round(pods, {}, NOW)
    pulled = next(c for c in first.status["conditions"] if c["type"] == "ImagesPulled")
    assert first.status["phase"] == "Pending" and pulled["status"] == "False" and pulled["reason"] == "ErrImagePull"
    # The grace counts from the round that first saw it, not from the pods' creation five minutes ago.
    within = _pulling_job_round(pods, first.status, NOW + timedelta(seconds=30))
    assert within.status["phase"] == "Pending"
    after = _pulling_job_round(pods, within.status, NOW + timedelta(seconds=61))
    failed = next(c for c in after.status["conditions"] if c["type"] == "Failed")
    assert after.status["phase"] == "Failed" and failed["reason"] == "ImagePullError" and "localhost/nope:1" in failed["message"]
    assert after.status.get("restarts", 0) == 0 and {"j-rdzv", "j-w0-0", "j-w1-0"} <= set(after.delete)


def test_a_pull_error_that_clears_is_forgotten():
    failing = [_pod(role=naming.ROLE_STORE), _pod(0, phase="Pending", ready=False, state=_waiting("ErrImagePull"))]
    first = _pulling_job_round(failing, {}, NOW)
    pulled = _pulling_job_round([_pod(role=naming.ROLE_STORE), _pod(0)], first.status, NOW + timedelta(seconds=30))
    assert next(c for c in pulled.status["conditions"] if c["type"] == "ImagesPulled")["status"] == "True"
    # A new pull error later starts a new grace.
    again = _pulling_job_round(failing, pulled.status, NOW + timedelta(seconds=120))
    assert again.status["phase"] != "Failed"


def test_an_image_that_can_never_be_pulled_fails_at_once():
    never = [_pod(role=naming.ROLE_STORE), _pod(0, phase="Pending", ready=False, state=_waiting("ErrImageNeverPull", "image not present"))]
    assert _pulling_job_round(never, {}, NOW).status["phase"] == "Failed"


def test_an_init_containers_image_counts_too():
    body = _pod(0, phase="Pending", ready=False, state={"waiting": {"reason": "PodInitializing"}})
    body["status"]["initContainerStatuses"] = [{"name": "fetch-data", "state": _waiting("ImagePullBackOff")}]
    first = _pulling_job_round([_pod(role=naming.ROLE_STORE), body], {}, NOW)
    after = _pulling_job_round([_pod(role=naming.ROLE_STORE), body], first.status, NOW + timedelta(seconds=60))
    failed = next(c for c in after.status["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "ImagePullError" and "fetch-data" in failed["message"]


def _torchrun_gave_up(exitcode: str) -> dict:
    """The end of a torchrun log as the kubelet keeps it (FallbackToLogsOnError) after its workers kept failing."""
    summary = f"""[rank0]: Traceback (most recent call last):
[rank0]:   File "/scripts/train.py", line 3, in <module>
[rank0]: ValueError: bad shape
E1130 15:40:01.123000 1 torch/distributed/elastic/multiprocessing/api.py:874] failed (exitcode: 1) local_rank: 0
torch.distributed.elastic.multiprocessing.errors.ChildFailedError:
============================================================
/scripts/train.py FAILED
------------------------------------------------------------
Failures:
  <NO_OTHER_FAILURES>
------------------------------------------------------------
Root Cause (first observed failure):
[0]:
  time      : 2026-11-30_15:40:01
  host      : j-w0-0
  rank      : 0 (local_rank: 0)
  exitcode  : {exitcode}
  error_file: <N/A>
  traceback : To enable traceback see: https://pytorch.org/docs/stable/elastic/errors.html
============================================================"""
    return _pod(phase="Failed", ready=False, state={"terminated": {"exitCode": 1, "reason": "Error", "message": summary}})


def test_a_users_program_that_exits_by_itself_is_a_user_error_not_retried():
    failure = classify(_torchrun_gave_up("1 (pid: 42)"))
    assert failure.reason == "UserError" and "code 1" in failure.message
    store = PodView.from_body(_pod(role=naming.ROLE_STORE))
    p = plan(_job(), _body(RUNNING), Observed(pods=[store, PodView.from_body(_torchrun_gave_up("1 (pid: 42)"))], now=NOW))
    failed = next(c for c in p.status["conditions"] if c["type"] == "Failed")
    assert p.status["phase"] == "Failed" and failed["reason"] == "UserError" and p.status["restarts"] == 0


def test_a_users_program_keeps_the_contracts_exit_codes_and_a_signal_stays_unknown():
    assert classify(_torchrun_gave_up("4 (pid: 42)")).reason == "CommunicationTimeout"  # retried by default
    assert classify(_torchrun_gave_up("-9 (pid: 42) SIGKILL")).reason == "Unknown"


def test_a_pods_view_changes_with_any_change_of_the_pod():
    # Kopf's index replaces a pod's view only when the new one compares unequal: a container that goes on to
    # wait in ImagePullBackOff changes nothing but the body, and the view must still differ.
    first = _pod(0, phase="Pending", ready=False, state={"waiting": {"reason": "ContainerCreating"}})
    first["metadata"]["resourceVersion"] = "100"
    later = _pod(0, phase="Pending", ready=False, state=_waiting("ImagePullBackOff"))
    later["metadata"]["resourceVersion"] = "107"
    assert PodView.from_body(first) != PodView.from_body(later)
    assert PodView.from_body(later) == PodView.from_body(later)


def test_the_image_pull_grace_asks_for_a_reconcile_when_it_runs_out():
    """A pod stuck in ImagePullBackOff may send no event for minutes: the round says when the 60 s grace ends."""
    failing = [_pod(role=naming.ROLE_STORE), _pod(0, phase="Pending", ready=False, state=_waiting("ErrImagePull"))]
    first = _pulling_job_round(failing, {}, NOW)
    assert first.recheck_after == 60
    later = _pulling_job_round(failing, first.status, NOW + timedelta(seconds=45))
    assert later.status["phase"] != "Failed" and later.recheck_after == 15
