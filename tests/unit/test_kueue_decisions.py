"""Kueue's Workload-native route, pure: the Workload a queued job gets, what a Workload's status means
for the job, and the status changes the operator writes back (operator/kubetrain/operator/kueue.py)."""

from __future__ import annotations

from datetime import datetime, timezone

from kubetrain.api.manifests import parse_trainingjob
from kubetrain.operator import builders, kueue, naming
from kubetrain.operator.planner import Observed, plan

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=timezone.utc)
T0, T1 = "2026-11-30T11:00:00Z", "2026-11-30T12:00:00Z"
CFG = builders.BuildConfig()


def _job(labels=None, **spec):
    base = {"replicas": {"min": 2, "max": 4}, "container": {"gpusPerReplica": 8,
                                                            "resources": {"requests": {"cpu": "4", "memory": "32Gi"}}},
            "scheduling": {"queueName": "team-a", "nodeSelector": {"pool": "gpu"}}}
    base.update(spec)
    meta = {"name": "j", "namespace": "ns", **({"labels": labels} if labels else {})}
    return parse_trainingjob({"apiVersion": "kubetrain.dev/v1alpha1", "kind": "TrainingJob", "metadata": meta, "spec": base})


def _body(labels=None):
    return {"metadata": {"name": "j", "namespace": "ns", "uid": "0b5e-uid", "generation": 1, "labels": labels or {}}}


def _cond(ctype, status, reason="R", message="m", when=T0):
    return {"type": ctype, "status": status, "reason": reason, "message": message, "lastTransitionTime": when}


def _admitted(workers=4, flavors=None, extra=()):
    flavors = flavors or {"workers": {"nvidia.com/gpu": "h100", "cpu": "default", "memory": "default"},
                          "rendezvous": {"cpu": "default", "memory": "default"}}
    return {
        "metadata": {"name": "trainingjob-j-abcde", "namespace": "ns", "generation": 1, "resourceVersion": "7"},
        "spec": {},
        "status": {
            "conditions": [_cond("QuotaReserved", "True"), _cond("Admitted", "True"), *extra],
            "admission": {"clusterQueue": "team-a", "podSetAssignments": [
                {"name": "workers", "flavors": flavors["workers"], "count": workers},
                {"name": "rendezvous", "flavors": flavors["rendezvous"], "count": 1}]},
        },
    }


# -- the Workload ------------------------------------------------------------------------------

def test_workload_has_a_partially_admissible_worker_set_and_a_store_set_with_the_pods_real_requests():
    job, body = _job(), _body()
    wl = kueue.workload(job, body, CFG, None)
    workers, store = wl["spec"]["podSets"]
    assert (workers["name"], workers["count"], workers["minCount"]) == ("workers", 4, 2)
    assert (store["name"], store["count"]) == ("rendezvous", 1) and "minCount" not in store
    # The same requests the builders give the real pods: one source.
    real_worker = builders.worker_pod(job, body, 0, 0, CFG)["spec"]["containers"][0]["resources"]
    real_store = builders.store_pod(job, body, CFG)["spec"]["containers"][0]["resources"]
    assert workers["template"]["spec"]["containers"][0]["resources"] == real_worker
    assert real_worker["requests"] == {"cpu": "4", "memory": "32Gi", "nvidia.com/gpu": "8"}
    assert store["template"]["spec"]["containers"][0]["resources"] == real_store
    # Where the workers may run is Kueue's to match against flavors; the store takes no GPU nodeSelector.
    assert workers["template"]["spec"]["nodeSelector"] == {"pool": "gpu"}
    assert "nodeSelector" not in store["template"]["spec"]
    # Commands and environment stay out (the store's program is kilobytes).
    assert all(set(c) <= {"name", "image", "resources"} for ps in (workers, store) for c in ps["template"]["spec"]["containers"])
    assert wl["spec"]["queueName"] == "team-a" and wl["spec"]["active"] is True
    owner = wl["metadata"]["ownerReferences"][0]
    assert owner["kind"] == "TrainingJob" and owner["uid"] == "0b5e-uid" and owner["controller"] is True
    assert wl["apiVersion"] == "kueue.x-k8s.io/v1beta2" and wl["metadata"]["labels"] == {naming.LABEL_JOB: "j"}


def test_rigid_job_has_no_min_count_and_a_suspended_job_is_inactive():
    wl = kueue.workload(_job(replicas={"min": 3, "max": 3}, suspend=True), _body(), CFG, None)
    assert "minCount" not in wl["spec"]["podSets"][0] and wl["spec"]["podSets"][0]["count"] == 3
    assert wl["spec"]["active"] is False


def test_priority_class_becomes_a_reference_with_its_value():
    job = _job(scheduling={"queueName": "q", "priorityClassName": "high"})
    wl = kueue.workload(job, _body(), CFG, 1000)
    assert wl["spec"]["priorityClassRef"] == {"group": "scheduling.k8s.io", "kind": "PriorityClass", "name": "high"}
    assert wl["spec"]["priority"] == 1000
    assert "priorityClassRef" not in kueue.workload(_job(), _body(), CFG, None)["spec"]


def test_queue_from_the_label_when_the_spec_names_none():
    labels = {naming.KUEUE_QUEUE_LABEL: "research"}
    job = _job(labels=labels, scheduling={})
    assert kueue.queue_name(job, _body(labels)) == "research"
    assert kueue.queue_name(_job(scheduling={}), _body()) is None


def test_workload_name_is_stable_per_incarnation():
    assert kueue.workload_name("j", "uid-1") == kueue.workload_name("j", "uid-1")
    assert kueue.workload_name("j", "uid-1") != kueue.workload_name("j", "uid-2")
    assert kueue.workload_name("j" * 300, "u").startswith("trainingjob-") and len(kueue.workload_name("j" * 300, "u")) <= 253


# -- reading a Workload ------------------------------------------------------------------------

def test_admitted_workload_runs_at_the_admitted_count_with_its_flavors():
    adm = kueue.read(_admitted(workers=2))
    assert adm.admitted and adm.reserved and adm.workers == 2 and adm.waiting is None
    assert adm.flavors["workers"]["nvidia.com/gpu"] == "h100"


def test_pending_workload_waits_and_says_why():
    wl = {"metadata": {}, "status": {"conditions": [
        _cond("QuotaReserved", "False", "Pending", "couldn't assign flavors to pod set workers: insufficient unused quota")]}}
    adm = kueue.read(wl)
    assert not adm.admitted and not adm.reserved
    assert adm.waiting[0] == kueue.WAIT_QUEUED and "insufficient unused quota" in adm.waiting[1]
    missing = {"metadata": {}, "status": {"conditions": [_cond("QuotaReserved", "False", "Inadmissible", "LocalQueue q doesn't exist")]}}
    assert kueue.read(missing).waiting[0] == kueue.WAIT_INADMISSIBLE
    assert kueue.read(None).waiting[0] == kueue.WAIT_QUEUED


def test_evicted_workload_stops_even_while_its_quota_is_still_reserved():
    wl = _admitted(extra=[_cond("Evicted", "True", "Preempted", "Preempted to accommodate a workload (UID: x)")])
    adm = kueue.read(wl)
    assert adm.evicted and adm.reserved and not adm.admitted
    assert adm.waiting[0] == kueue.WAIT_PREEMPTED and "accommodate" in adm.waiting[1]
    deactivated = kueue.read(_admitted(extra=[_cond("Evicted", "True", "Deactivated", "spec.active is false")]))
    assert deactivated.waiting[0] == kueue.WAIT_EVICTED


def test_once_its_quota_is_released_an_evicted_job_is_queued_again():
    wl = _admitted(extra=[_cond("Evicted", "True", "Preempted", "preempted")])
    wl["status"] = kq_released = kueue.released(wl, T1)
    adm = kueue.read(wl)
    assert adm.evicted and not adm.reserved and not adm.admitted and "admission" not in kq_released
    assert adm.waiting[0] == kueue.WAIT_QUEUED and "requeued after preempted" in adm.waiting[1]


def test_quota_reserved_but_not_admitted_waits_for_admission_checks():
    wl = _admitted()
    wl["status"]["conditions"][1] = _cond("Admitted", "False")
    adm = kueue.read(wl)
    assert not adm.admitted and adm.reserved and "admission checks" in adm.waiting[1]


# -- placement ---------------------------------------------------------------------------------

def test_flavors_node_labels_taints_and_tolerations_go_to_each_roles_pods():
    adm = kueue.read(_admitted())
    flavors = {
        "h100": {"nodeLabels": {"gpu": "h100"}, "nodeTaints": [{"key": "gpu", "value": "true", "effect": "NoSchedule"}],
                 "tolerations": [{"key": "kwok", "operator": "Exists", "effect": "NoSchedule"}]},
        "default": {"tolerations": [{"key": "kwok", "operator": "Exists", "effect": "NoSchedule"}]},
    }
    placed = kueue.placements(adm, flavors)
    worker, store = placed[naming.ROLE_WORKER], placed[naming.ROLE_STORE]
    assert worker.node_selector == {"gpu": "h100"} and store.node_selector == {}
    assert {"key": "gpu", "operator": "Equal", "value": "true", "effect": "NoSchedule"} in worker.tolerations
    # The same toleration from two flavors is added once.
    assert worker.tolerations.count({"key": "kwok", "operator": "Exists", "effect": "NoSchedule"}) == 1
    assert store.tolerations == ({"key": "kwok", "operator": "Exists", "effect": "NoSchedule"},)
    pod = kueue.place({"spec": {"nodeSelector": {"pool": "gpu", "gpu": "a100"}, "tolerations": [dict(store.tolerations[0])]}}, worker)
    assert pod["spec"]["nodeSelector"] == {"pool": "gpu", "gpu": "h100"}
    assert len(pod["spec"]["tolerations"]) == 2


# -- what the operator writes ----------------------------------------------------------------------

def test_release_after_preemption_clears_admission_and_requeues():
    wl = _admitted(extra=[_cond("Evicted", "True", "Preempted", "preempted")])
    wl["status"]["reclaimablePods"] = [{"name": "workers", "count": 1}]
    status = kueue.released(wl, T1)
    assert "admission" not in status and "reclaimablePods" not in status
    conds = {c["type"]: c for c in status["conditions"]}
    assert conds["QuotaReserved"]["status"] == "False" and conds["QuotaReserved"]["lastTransitionTime"] == T1
    assert conds["Admitted"]["status"] == "False"
    assert conds["Requeued"]["status"] == "True" and conds["Requeued"]["reason"] == "Preempted"
    assert conds["Evicted"] == wl["status"]["conditions"][2]  # Kueue resets it on the next reservation


def test_release_after_deactivation_does_not_requeue():
    wl = _admitted(extra=[_cond("Evicted", "True", "Deactivated", "inactive")])
    assert "Requeued" not in {c["type"] for c in kueue.released(wl, T1)["conditions"]}


def test_finish_keeps_other_conditions_and_an_unchanged_condition_keeps_its_time():
    wl = _admitted()
    status = kueue.finished(wl, "Succeeded", "training finished", T1)
    conds = {c["type"]: c for c in status["conditions"]}
    assert conds["Finished"]["status"] == "True" and conds["Finished"]["reason"] == "Succeeded"
    assert conds["Admitted"]["lastTransitionTime"] == T0 and status["admission"] == wl["status"]["admission"]
    again = kueue.finished({**wl, "status": status}, "Succeeded", "training finished", "2026-11-30T13:00:00Z")
    assert {c["type"]: c for c in again["conditions"]}["Finished"]["lastTransitionTime"] == T1


def test_reclaimable_pods_only_grow_and_never_below_min():
    adm = kueue.read(_admitted(workers=4))
    assert kueue.reclaimable(adm, desired=4, lo=2) == 0
    assert kueue.reclaimable(adm, desired=3, lo=2) == 1  # shrank (node loss, the allocator): one back to Kueue
    assert kueue.reclaimable(adm, desired=0, lo=2) == 2  # restarting below min: only what is above min
    wl = _admitted(workers=4)
    wl["status"]["reclaimablePods"] = [{"name": "workers", "count": 1}]
    reported = kueue.read(wl)
    assert reported.reclaimable == 1 and kueue.reclaimable(reported, desired=4, lo=2) == 1  # never shrinks back
    assert kueue.with_reclaimable(wl, 2)["reclaimablePods"] == [{"name": "workers", "count": 2}]


# -- the planner under an admission ------------------------------------------------------------------

def test_planner_runs_at_the_admitted_count_and_says_growth_waits():
    p = plan(_job(), _body(), Observed(pods=[], now=NOW, placeable=4, admitted_replicas=2))
    assert p.status["desiredReplicas"] == 2 and len(p.create_workers) == 2
    sched = {c["type"]: c for c in p.status["conditions"]}["Schedulable"]
    assert sched["reason"] == "KueueAdmission" and "2 of max 4" in sched["message"]


def test_planner_says_why_a_queued_job_waits():
    waiting = (kueue.WAIT_QUEUED, "Kueue: insufficient unused quota for nvidia.com/gpu")
    p = plan(_job(), _body(), Observed(pods=[], now=NOW, admitted=False, waiting=waiting))
    cond = {c["type"]: c for c in p.status["conditions"]}["Suspended"]
    assert p.status["phase"] == "Suspended" and (cond["reason"], cond["message"]) == waiting
    assert p.create_workers == [] and not p.create_store
    # The user's suspend wins over Kueue's reason.
    p = plan(_job(suspend=True), _body(), Observed(pods=[], now=NOW, admitted=False, waiting=waiting))
    assert {c["type"]: c for c in p.status["conditions"]}["Suspended"]["reason"] == "Suspended"
