"""Pods the operator created that its watch has not delivered yet still count as there."""

from __future__ import annotations

import kopf

from kubetrain.operator import handlers, planner


def test_created_pods_count_until_the_index_shows_them_or_they_expire(monkeypatch):
    memo = kopf.Memo()
    memo["created"] = {"j-w0-0": (100.0, "worker", 0, 0), "j-w1-0": (100.0, "worker", 1, 0), "j-rdzv": (100.0, "rendezvous", 0, 0)}
    monkeypatch.setattr(handlers.time, "monotonic", lambda: 101.0)
    shown = [planner.PodView.from_body({"metadata": {"name": "j-w0-0", "labels": {}}})]
    assert handlers._unseen_creates(memo, shown) == {"j-w1-0": ("worker", 1, 0), "j-rdzv": ("rendezvous", 0, 0)}
    assert "j-w0-0" not in memo["created"]  # shown once: forgotten
    monkeypatch.setattr(handlers.time, "monotonic", lambda: 100.0 + handlers.CREATED_TTL + 1)
    assert handlers._unseen_creates(memo, []) == {}  # never shown: a create that did not happen after all


def test_a_just_created_worker_occupies_its_slot_in_the_plan():
    from datetime import datetime, timezone

    from kubetrain.api.manifests import parse_trainingjob

    job = parse_trainingjob({"apiVersion": "kubetrain.dev/v1alpha1", "kind": "TrainingJob", "metadata": {"name": "j"},
                             "spec": {"replicas": {"min": 1, "max": 2}}})
    now = datetime.now(timezone.utc)
    pods = [planner.just_created("j-rdzv", "rendezvous", 0, 0, now), planner.just_created("j-w0-0", "worker", 0, 0, now),
            planner.just_created("j-w1-0", "worker", 1, 0, now)]
    body = {"metadata": {"name": "j", "namespace": "ns", "uid": "u"}, "status": {"desiredReplicas": 2}}
    p = planner.plan(job, body, planner.Observed(pods=pods, now=now))
    assert p.create_workers == [] and not p.create_store and p.status["phase"] == "Pending"
