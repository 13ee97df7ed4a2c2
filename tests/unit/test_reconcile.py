"""The reconcile's steps against a fake Kube and a runtime built for the test: no cluster, no patched globals."""

from __future__ import annotations

import json
import logging

import kopf
import pytest
from kubernetes.client.exceptions import ApiException

from kubetrain.api.manifests import parse_trainingjob
from kubetrain.operator import naming, planner, reconcile
from kubetrain.operator.reconcile import Indexes
from kubetrain.operator.runtime import JobMemo, OperatorRuntime
from kubetrain.operator.settings import OperatorConfig

LOG = logging.getLogger("test")


class FakeKube:
    """Records every write; ``refuse`` makes creates fail with that ApiException."""

    def __init__(self, refuse: ApiException | None = None, raced: frozenset[str] = frozenset()):
        self.refuse, self.raced = refuse, raced
        self.created: list[str] = []
        self.released: list[str] = []
        self.deleted: list[str] = []
        self.forced: list[str] = []  # deleted with grace 0
        self.pods: list[dict] = []
        self.status_patches: list[dict] = []

    def create(self, manifest: dict) -> bool:
        if self.refuse is not None:
            raise self.refuse
        self.created.append(f"{manifest['kind']}/{manifest['metadata']['name']}")
        return True

    def release(self, namespace: str, name: str) -> bool:
        if name in self.raced:
            return False
        self.released.append(name)
        return True

    def delete_pod(self, namespace: str, name: str, grace_seconds: int | None = None) -> None:
        self.deleted.append(name)
        if grace_seconds == 0:
            self.forced.append(name)

    def delete_job(self, namespace: str, name: str) -> None:
        self.deleted.append(f"job/{name}")

    def service_exists(self, namespace: str, name: str) -> bool:
        return any(c == f"Service/{name}" for c in self.created)

    def object_exists(self, kind: str, namespace: str, name: str) -> bool:
        return True

    def job_exists(self, namespace: str, name: str) -> bool:
        return False

    def patch_job_status(self, namespace: str, name: str, status: dict) -> None:
        self.status_patches.append(status)

    def job_pods(self, namespace: str, job: str) -> list[dict]:
        return self.pods

    def close(self) -> None:
        pass


def _api_error(status: int, message: str = "", reason: str = "") -> ApiException:
    exc = ApiException(status=status, reason=reason or "Error")
    exc.body = json.dumps({"message": message, "reason": reason})
    return exc


def _body(spec: dict | None = None, **meta) -> dict:
    return {"apiVersion": "kubetrain.dev/v1alpha1", "kind": "TrainingJob",
            "metadata": {"name": "j", "namespace": "ns", "uid": "u-1", "creationTimestamp": "2026-01-01T00:00:00Z", **meta},
            "spec": {"replicas": {"min": 1, "max": 2}, **(spec or {})}}


NO_PODS = Indexes(job_pods={}, gpu_nodes={}, gpus_in_use={}, gpus_pending={})


def _run(runtime: OperatorRuntime, state: JobMemo, body: dict, idx: Indexes = NO_PODS) -> tuple[kopf.Patch, list[tuple[str, str]]]:
    patch, events = kopf.Patch(), []
    reconcile.reconcile_job(body, patch, runtime, state, LOG, idx,
                            post=lambda _body, *, type, reason, message: events.append((type, reason)))
    return patch, events


def _runtime(kube: FakeKube) -> OperatorRuntime:
    return OperatorRuntime(OperatorConfig(metrics_port=0), kube)


def _errors(runtime: OperatorRuntime) -> float:
    return runtime.registry.get_sample_value("kubetrain_operator_reconcile_errors_total")


def test_a_new_job_gets_its_store_and_workers_once_and_status_only_on_a_change():
    kube = FakeKube()
    runtime, state = _runtime(kube), JobMemo()
    patch, events = _run(runtime, state, _body())
    assert kube.created == ["Service/j-rdzv", "Pod/j-rdzv", "Pod/j-w0-0", "Pod/j-w1-0"]
    # Status is written by the reconcile itself, not left to Kopf's patch (see reconcile's docstring).
    assert [s["phase"] for s in kube.status_patches] == ["Pending"] and state.status == kube.status_patches[0]
    assert dict(patch) == {} and ("Normal", "Starting") in events
    assert runtime.registry.get_sample_value("kubetrain_operator_job_phase", {"namespace": "ns", "trainingjob": "j", "phase": "Pending"}) == 1
    # The watch has not delivered the pods yet: the ledger counts them, nothing is created twice,
    # and a status that did not change is not patched again.
    patch, events = _run(runtime, state, _body())
    assert kube.created == ["Service/j-rdzv", "Pod/j-rdzv", "Pod/j-w0-0", "Pod/j-w1-0"]
    assert len(kube.status_patches) == 1 and events == []


def test_a_refused_create_is_said_in_status_and_frees_its_reservations():
    kube = FakeKube(refuse=_api_error(403, 'pods "j-rdzv" is forbidden: exceeded quota', "Forbidden"))
    runtime, state = _runtime(kube), JobMemo()
    _, events = _run(runtime, state, _body())
    assert ("Warning", "FailedCreate") in events
    assert "exceeded quota" in json.dumps(kube.status_patches)
    assert runtime.reservations.unseen(lambda *k: False) == {} and _errors(runtime) == 1


def test_transient_api_trouble_is_retried_after_the_backoff_and_frees_reservations():
    runtime = _runtime(FakeKube(refuse=_api_error(500, reason="InternalError")))
    with pytest.raises(kopf.TemporaryError) as info:
        _run(runtime, JobMemo(), _body())
    assert info.value.delay == reconcile.RETRY_BACKOFF
    assert runtime.reservations.unseen(lambda *k: False) == {} and _errors(runtime) == 1


def test_a_terminating_namespace_ends_the_round_quietly():
    kube = FakeKube(refuse=_api_error(403, "namespace ns is being terminated", "NamespaceTerminating"))
    _, events = _run(_runtime(kube), JobMemo(), _body())
    assert kube.status_patches == [] and events == []


def test_an_invalid_spec_fails_the_job_once():
    kube = FakeKube()
    runtime, state = _runtime(kube), JobMemo()
    body = _body({"replicas": {"min": 3, "max": 2}})
    _, events = _run(runtime, state, body)
    [failed] = kube.status_patches
    assert failed["phase"] == "Failed" and failed["conditions"][0]["reason"] == "InvalidSpec"
    assert events == [("Warning", "InvalidSpec")]
    # Once: the next round's body may not show the write yet, the job's memo does.
    assert _run(runtime, state, body)[1] == [] and len(kube.status_patches) == 1
    assert _run(runtime, JobMemo(), body | {"status": {"phase": "Failed"}})[1] == [] and len(kube.status_patches) == 1


def test_a_queued_job_starts_suspended_and_waits_for_kueue():
    kube = FakeKube()
    patch, _ = _run(_runtime(kube), JobMemo(), _body({"scheduling": {"queueName": "team-a"}}))
    assert patch["spec"] == {"suspend": True}
    assert patch["metadata"]["labels"] == {naming.KUEUE_QUEUE_LABEL: "team-a"} and kube.created == []


def test_a_job_being_deleted_is_left_alone():
    kube = FakeKube()
    patch, _ = _run(_runtime(kube), JobMemo(), _body(deletionTimestamp="2026-01-01T00:00:01Z"))
    assert dict(patch) == {} and kube.created == []


def test_a_release_that_raced_a_change_neither_deletes_nor_hides_the_pod():
    kube = FakeKube(raced=frozenset({"j-w1-0"}))
    state = JobMemo()
    job = parse_trainingjob(_body())
    plan = planner.Plan(release=["j-w0-0", "j-w1-0"], delete=["j-w0-0", "j-w1-0"])
    reconcile.execute(plan, job, _body(), _runtime(kube), state)
    assert kube.released == ["j-w0-0"] and kube.deleted == ["j-w0-0"] and state.released == {"j-w0-0"}


def test_a_released_pod_counts_as_accounted_until_the_index_shows_the_release():
    state = JobMemo(released={"j-w0-0"})
    view = planner.PodView.from_body({"metadata": {"name": "j-w0-0", "labels": {naming.LABEL_ROLE: naming.ROLE_WORKER}}})
    idx = Indexes(job_pods={("ns", "j"): [view]}, gpu_nodes={}, gpus_in_use={}, gpus_pending={})
    obs = reconcile.observe(parse_trainingjob(_body()), _body(), _runtime(FakeKube()), idx, state)
    assert [(p.name, p.accounted, p.tracked) for p in obs.pods] == [("j-w0-0", True, False)]


def test_a_pod_on_a_deleted_node_is_lost_removed_at_once_and_replaced():
    """The node watch saw its node deleted: the pod still shows Running and Ready in the index."""
    def pod(slot: int, node: str) -> planner.PodView:
        return planner.PodView.from_body({
            "metadata": {"name": f"j-w{slot}-0", "finalizers": [naming.TRACKING_FINALIZER],
                         "labels": {naming.LABEL_ROLE: naming.ROLE_WORKER, naming.LABEL_SLOT: str(slot), naming.LABEL_ATTEMPT: "0"}},
            "spec": {"nodeName": node}, "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}})
    kube = FakeKube()
    runtime, state = _runtime(kube), JobMemo()
    runtime.deleted_nodes.event("DELETED", "n1")
    idx = Indexes(job_pods={("ns", "j"): [pod(0, "n0"), pod(1, "n1")]}, gpu_nodes={}, gpus_in_use={}, gpus_pending={})
    _, events = _run(runtime, state, _body() | {"status": {"desiredReplicas": 2, "phase": "Running"}}, idx)
    assert kube.released == ["j-w1-0"] and kube.forced == ["j-w1-0"] and "Pod/j-w1-1" in kube.created
    assert ("Warning", "NodeLost") in events and kube.status_patches[-1]["restarts"] == 1


def test_an_existing_object_is_trusted_while_the_job_trains_and_for_a_ttl_otherwise(monkeypatch):
    clock = [1000.0]
    monkeypatch.setattr(reconcile.time, "monotonic", lambda: clock[0])
    looks = []
    answer = [True]

    def look() -> bool:
        looks.append(clock[0])
        return answer[0]

    state = JobMemo()
    assert reconcile.cached_exists(state, "service", look, settled=False) and looks == [1000.0]
    clock[0] += reconcile.EXISTS_TTL - 1
    assert reconcile.cached_exists(state, "service", look, settled=False) and len(looks) == 1
    clock[0] += 2
    assert reconcile.cached_exists(state, "service", look, settled=True) and len(looks) == 1  # training: trusted
    answer[0] = False
    assert not reconcile.cached_exists(state, "service", look, settled=False) and len(looks) == 2
    assert not reconcile.cached_exists(state, "service", look, settled=True) and len(looks) == 3  # a no: asked each round


def test_finalize_releases_and_deletes_every_pod_and_forgets_the_job():
    kube = FakeKube()
    kube.pods = [{"metadata": {"name": "j-w0-0"}}, {"metadata": {"name": "j-rdzv"}}]
    runtime = _runtime(kube)
    _run(runtime, JobMemo(), _body())
    assert runtime.registry.get_sample_value("kubetrain_operator_job_phase", {"namespace": "ns", "trainingjob": "j", "phase": "Pending"}) == 1
    reconcile.finalize(runtime, "ns", "j")
    assert kube.released == ["j-w0-0", "j-rdzv"] and kube.deleted == ["j-w0-0", "j-rdzv"]
    assert runtime.registry.get_sample_value("kubetrain_operator_job_phase", {"namespace": "ns", "trainingjob": "j", "phase": "Pending"}) is None


def test_an_orphan_is_released_only_when_its_job_is_gone():
    kube = FakeKube()
    assert reconcile.release_orphan(_runtime(kube), "ns", "j-w0-0", "j") and kube.released == ["j-w0-0"]
    kube.job_exists = lambda namespace, name: True
    assert not reconcile.release_orphan(_runtime(kube), "ns", "j-w1-0", "j") and kube.released == ["j-w0-0"]


def test_a_woken_reconcile_writes_status_itself_and_leaves_errors_to_the_timer(caplog):
    kube = FakeKube()
    runtime, state = _runtime(kube), JobMemo()
    reconcile.woken(_body(), runtime, state, LOG, NO_PODS)
    assert kube.created and [s["phase"] for s in kube.status_patches] == ["Pending"]
    kube.refuse = _api_error(500, reason="InternalError")
    reconcile.woken(_body(name="k"), runtime, JobMemo(), LOG, NO_PODS)  # no raise: nothing awaits this thread
    assert "the timer tries again" in caplog.text


def test_the_spec_is_parsed_once_per_generation():
    runtime, state = _runtime(FakeKube()), JobMemo()
    first = reconcile.parse(_body(generation=1), None, runtime, state, lambda *a, **k: None)
    assert reconcile.parse(_body(generation=1), None, runtime, state, lambda *a, **k: None) is first
    changed = reconcile.parse(_body({"replicas": {"min": 1, "max": 3}}, generation=2), None, runtime, state, lambda *a, **k: None)
    assert changed is not first and changed.spec.replicas.max == 3


class LookingKube(FakeKube):
    """Counts the Service look-ups."""

    def __init__(self) -> None:
        super().__init__()
        self.looks = 0

    def service_exists(self, namespace: str, name: str) -> bool:
        self.looks += 1
        return super().service_exists(namespace, name)


def test_a_new_job_s_service_is_created_without_a_look_and_trusted_while_its_store_lives(monkeypatch):
    clock = [1000.0]
    monkeypatch.setattr(reconcile.time, "monotonic", lambda: clock[0])
    kube = LookingKube()
    state = JobMemo()
    store = planner.PodView(name="j-rdzv", role=naming.ROLE_STORE, slot=-1, attempt=0, phase="Running", ready=True, node="n",
                            deleting=False, accounted=False, tracked=False, unschedulable=False, created=None)
    # Never reconciled: no look (it was a 404 per job), the create answers for it.
    assert not reconcile.service_exists(state, kube, "ns", "j", None, []) and kube.looks == 0
    state.exists["service"] = clock[0]  # what creating it notes
    clock[0] += reconcile.EXISTS_TTL + 1
    # Past the TTL, while the job waits (Pending) with its store alive: trusted, no look.
    assert reconcile.service_exists(state, kube, "ns", "j", "Pending", [store]) and kube.looks == 0
    # The store must be created again: the Service is looked up first.
    assert not reconcile.service_exists(state, kube, "ns", "j", "Restarting", []) and kube.looks == 1
    # An operator restarted under a job that has a status: it looks, never assumes.
    assert not reconcile.service_exists(JobMemo(), kube, "ns", "j", "Pending", []) and kube.looks == 2


def test_a_round_with_a_deadline_ahead_asks_the_wakes_for_a_recheck_when_it_is_due():
    asked: list[tuple[tuple[str, str], float]] = []
    _run(_runtime_with(asked), JobMemo(), _body({"activeDeadlineSeconds": 3600}))
    [(key, seconds)] = asked
    assert key == ("ns", "j") and 3590 < seconds <= 3600
    asked.clear()
    _run(_runtime_with(asked), JobMemo(), _body())
    assert asked == []  # nothing due: no recheck


def _runtime_with(asked: list) -> OperatorRuntime:
    """A runtime whose own wakes (not a module global) record the rechecks asked of them."""
    runtime = _runtime(FakeKube())
    runtime.wakes.recheck_from_thread = lambda key, seconds: asked.append((key, seconds))
    return runtime
