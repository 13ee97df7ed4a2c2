"""Pods the operator created that its watch has not delivered yet still count as there."""

from __future__ import annotations

from datetime import datetime, timezone

from kubetrain.api.manifests import parse_trainingjob
from kubetrain.operator import capacity, naming, planner, reconcile
from kubetrain.operator.runtime import JobMemo, OperatorRuntime
from kubetrain.operator.settings import OperatorConfig


def test_created_pods_count_until_the_index_shows_them_or_they_expire(monkeypatch):
    runtime = OperatorRuntime(OperatorConfig(metrics_port=0), _NoApi())
    ledger = runtime.reservations
    monkeypatch.setattr(capacity.time, "monotonic", lambda: 100.0)
    job = parse_trainingjob({"apiVersion": "kubetrain.dev/v1alpha1", "kind": "TrainingJob", "metadata": {"name": "j"},
                             "spec": {"replicas": {"min": 1, "max": 2}}})
    body = {"metadata": {"name": "j", "namespace": "ns", "uid": "u"}, "status": {}}
    plan = planner.Plan(create_store=True, create_workers=[(0, 0), (1, 0)])
    assert reconcile.reserve(plan, job, "ns", ledger) == ["j-rdzv", "j-w0-0", "j-w1-0"]
    ledger.add("other", "j", "j-w5-0", naming.ROLE_WORKER, 5, 0, 0)  # same job name, another namespace
    shown = {"j-w0-0": planner.PodView.from_body({"metadata": {"name": "j-w0-0", "labels": {}}})}
    idx = reconcile.Indexes(job_pods={("ns", "j"): list(shown.values())}, gpu_nodes={}, gpus_in_use={}, gpus_pending={})
    observed = reconcile.observe(job, body, runtime, idx, JobMemo())
    assert {(p.name, p.role, p.slot, p.attempt, p.phase) for p in observed.pods if p.name not in shown} == {
        ("j-w1-0", "worker", 1, 0, "Pending"), ("j-rdzv", "rendezvous", 0, 0, "Pending")}
    assert ("ns", "j", "j-w0-0") not in ledger.unseen(lambda *k: False)  # shown once: forgotten
    monkeypatch.setattr(capacity.time, "monotonic", lambda: 100.0 + 30.0 + 1)
    assert ledger.unseen(lambda *k: False) == {}  # never shown: a create that did not happen after all


class _NoApi:
    """observe may look up the Service: say it exists, and nothing else."""

    def service_exists(self, namespace: str, name: str) -> bool:
        return True

    def close(self) -> None:
        pass


def test_a_just_created_worker_occupies_its_slot_in_the_plan():
    job = parse_trainingjob({"apiVersion": "kubetrain.dev/v1alpha1", "kind": "TrainingJob", "metadata": {"name": "j"},
                             "spec": {"replicas": {"min": 1, "max": 2}}})
    now = datetime.now(timezone.utc)
    pods = [planner.just_created("j-rdzv", "rendezvous", 0, 0, now), planner.just_created("j-w0-0", "worker", 0, 0, now),
            planner.just_created("j-w1-0", "worker", 1, 0, now)]
    body = {"metadata": {"name": "j", "namespace": "ns", "uid": "u"}, "status": {"desiredReplicas": 2}}
    p = planner.plan(job, body, planner.Observed(pods=pods, now=now))
    assert p.create_workers == [] and not p.create_store and p.status["phase"] == "Pending"
