"""A queued job's reconcile with Kueue on (operator/workloads.py): against a fake Kube, no cluster."""

from __future__ import annotations

import copy

from kubetrain.operator import kueue, planner
from kubetrain.operator.reconcile import Indexes
from kubetrain.operator.runtime import JobMemo, OperatorRuntime
from kubetrain.operator.settings import OperatorConfig
from test_reconcile import FakeKube, _body, _run

QUEUED = {"replicas": {"min": 1, "max": 2}, "container": {"gpusPerReplica": 0}, "scheduling": {"queueName": "gpus"}}
FLAVORS = {"gpu": {"nodeLabels": {"pool": "h100"}, "tolerations": [{"key": "kwok", "operator": "Exists"}]},
           "any": {"tolerations": [{"key": "kwok", "operator": "Exists"}]}}


class KueueKube(FakeKube):
    """FakeKube with one namespace's Workloads; status writes are recorded and applied."""

    def __init__(self):
        super().__init__()
        self.workloads: dict[str, dict] = {}
        self.status_writes: list[dict] = []
        self.workload_creates = 0
        self.manifests: dict[str, dict] = {}

    def create(self, manifest):
        self.manifests[manifest["metadata"]["name"]] = manifest
        return super().create(manifest)

    def get_workload(self, namespace, name):
        return copy.deepcopy(self.workloads.get(name))

    def create_workload(self, manifest):
        self.workload_creates += 1
        self.workloads[manifest["metadata"]["name"]] = {**manifest, "metadata": {**manifest["metadata"], "resourceVersion": "1", "generation": 1}}
        return copy.deepcopy(self.workloads[manifest["metadata"]["name"]])

    def set_workload_active(self, namespace, name, active):
        self.workloads[name]["spec"]["active"] = active

    def replace_workload_status(self, workload, status):
        self.status_writes.append(status)
        self.workloads[workload["metadata"]["name"]]["status"] = status

    def resource_flavor(self, name):
        return FLAVORS.get(name, {})

    def priority_class_value(self, name):
        return 100

    def job_workloads(self, namespace, job):
        return list(self.workloads.values())

    def delete_workload(self, namespace, name):
        self.workloads.pop(name, None)

    def admit(self, workers: int) -> None:
        (wl,) = self.workloads.values()
        cond = lambda t: {"type": t, "status": "True", "reason": t, "message": "", "lastTransitionTime": "2026-01-01T00:00:00Z"}
        wl["status"] = {"conditions": [cond("QuotaReserved"), cond("Admitted")], "admission": {
            "clusterQueue": "team-a", "podSetAssignments": [
                {"name": "workers", "count": workers, "flavors": {"nvidia.com/gpu": "gpu"}},
                {"name": "rendezvous", "count": 1, "flavors": {"cpu": "any"}}]}}

    def evict(self) -> None:
        (wl,) = self.workloads.values()
        wl["status"]["conditions"].append({"type": "Evicted", "status": "True", "reason": "Preempted",
                                           "message": "preempted", "lastTransitionTime": "2026-01-01T00:01:00Z"})


def _runtime(kube: FakeKube) -> OperatorRuntime:
    return OperatorRuntime(OperatorConfig(metrics_port=0, kueue=True), kube)


def _pods(*names: str) -> Indexes:
    views = [planner.PodView.from_body({"metadata": {"name": n, "labels": {"kubetrain.dev/job-name": "j",
                                                                          "kubetrain.dev/role": "worker", "kubetrain.dev/replica-index": "0"}},
                                        "status": {"phase": "Running"}}) for n in names]
    return Indexes(job_pods={("ns", "j"): views}, gpu_nodes={}, gpus_in_use={}, gpus_pending={})


def test_a_queued_job_gets_one_workload_and_no_pods_until_admitted():
    kube = KueueKube()
    runtime, state = _runtime(kube), JobMemo()
    patch, events = _run(runtime, state, _body(QUEUED))
    assert dict(patch) == {}  # with Kueue, the Workload admits: spec.suspend is left alone
    assert kube.workload_creates == 1 and kube.created == []
    assert kube.status_patches[-1]["phase"] == "Suspended" and kube.status_patches[-1]["queue"] == kueue.WAIT_QUEUED
    assert {c["type"]: c for c in kube.status_patches[-1]["conditions"]}["Suspended"]["reason"] == kueue.WAIT_QUEUED
    _run(runtime, state, _body(QUEUED))
    assert kube.workload_creates == 1  # found again, never created twice


def test_an_admitted_job_runs_at_the_admitted_count_with_the_flavors_placement():
    kube = KueueKube()
    runtime, state = _runtime(kube), JobMemo()
    _run(runtime, state, _body(QUEUED))
    kube.admit(workers=1)
    _, events = _run(runtime, state, _body(QUEUED))
    assert kube.created == ["Service/j-rdzv", "Pod/j-rdzv", "Pod/j-w0-0"]
    assert ("Normal", "Admitted") in events
    assert {k: v for p in kube.status_patches for k, v in p.items()}["queue"] == "Admitted 1/2 (team-a)"
    worker, store = kube.manifests["j-w0-0"]["spec"], kube.manifests["j-rdzv"]["spec"]
    assert worker["nodeSelector"] == {"pool": "h100"} and {"key": "kwok", "operator": "Exists"} in worker["tolerations"]
    assert "nodeSelector" not in store and {"key": "kwok", "operator": "Exists"} in store["tolerations"]


def test_an_evicted_job_stops_its_pods_then_gives_its_quota_back():
    kube = KueueKube()
    runtime, state = _runtime(kube), JobMemo()
    _run(runtime, state, _body(QUEUED))
    kube.admit(workers=2)
    kube.evict()
    _, events = _run(runtime, state, _body(QUEUED), _pods("j-w0-0", "j-w1-0"))
    assert sorted(kube.deleted) == ["j-w0-0", "j-w1-0"] and kube.status_writes == []  # still stopping: quota held
    _, events = _run(runtime, state, _body(QUEUED))  # no pod left
    (released,) = kube.status_writes
    assert "admission" not in released and ("Normal", "QuotaReleased") in events
    assert {c["type"]: c["status"] for c in released["conditions"]}["Requeued"] == "True"


def test_quota_reserved_while_admission_checks_run_is_not_given_back():
    kube = KueueKube()
    runtime, state = _runtime(kube), JobMemo()
    _run(runtime, state, _body(QUEUED))
    kube.admit(workers=1)
    (wl,) = kube.workloads.values()
    wl["status"]["conditions"][1]["status"] = "False"  # Admitted false: checks pending
    _run(runtime, state, _body(QUEUED))
    assert kube.status_writes == [] and kube.created == []


def test_a_finished_job_finishes_its_workload_and_a_deleted_one_removes_it():
    kube = KueueKube()
    runtime, state = _runtime(kube), JobMemo()
    _run(runtime, state, _body(QUEUED))
    kube.admit(workers=1)
    _run(runtime, JobMemo(), _body(QUEUED) | {"status": {"phase": "Succeeded", "conditions": [
        {"type": "Succeeded", "status": "True", "reason": "TrainingFinished", "message": "done"}]}})
    (done,) = kube.status_writes
    finished = {c["type"]: c for c in done["conditions"]}["Finished"]
    assert finished["status"] == "True" and finished["reason"] == "Succeeded" and finished["message"] == "done"
    from kubetrain.operator import reconcile

    reconcile.finalize(runtime, "ns", "j")
    assert kube.workloads == {}


def test_a_job_that_finished_without_a_workload_gets_none():
    kube = KueueKube()
    _run(_runtime(kube), JobMemo(), _body(QUEUED) | {"status": {"phase": "Succeeded"}})
    assert kube.workload_creates == 0 and kube.status_writes == []


def test_a_suspended_job_deactivates_its_workload():
    kube = KueueKube()
    runtime = _runtime(kube)
    _run(runtime, JobMemo(), _body(QUEUED))
    _run(runtime, JobMemo(), _body({**QUEUED, "suspend": True}))
    assert [wl["spec"]["active"] for wl in kube.workloads.values()] == [False]
