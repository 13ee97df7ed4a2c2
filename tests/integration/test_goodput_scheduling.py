"""The goodput allocator in the operator, on the real control plane with KWOK's 4 nodes x 8 GPUs.

The pods run nothing, so the test plays the operator's throughput reader: it writes each job's
status.throughput at the job's current size, as the reconcile does from the trainer's metrics.
The operator runs with a short allocator interval (the chart's KUBETRAIN_GOODPUT_* env).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import datetime, timezone

import pytest

from crd_helpers import Jobs, wait_gone
from kubetrain_dev.devcluster import gpu_pool
from test_operator import Operator, gpu_job, ready_workers, running_operator

INTERVAL = 4.0  # seconds between allocator rounds in this test (60 by default)


@pytest.fixture(scope="module")
def goodput_operator(cluster, tmp_path_factory) -> Iterator[Operator]:
    env = {"KUBETRAIN_GOODPUT_INTERVAL": str(INTERVAL), "KUBETRAIN_GOODPUT_MIN_DWELL": "2",
           "KUBETRAIN_GOODPUT_RESTART_SECONDS": "1"}
    with running_operator(cluster, tmp_path_factory, env) as op:
        yield op


def _job(name: str, lo: int, hi: int, opted: bool) -> dict:
    # 4 GPUs per replica: the pool holds 8 replicas.
    return gpu_job(name, lo, hi, container={"gpusPerReplica": 4}, scheduling={
        "tolerations": [gpu_pool.KWOK_TOLERATION], "goodput": {"enabled": opted}})


def _feed(jobs: Jobs, name: str, samples_per_second: float) -> None:
    """What the reconcile writes from the trainer's metrics: the job-wide rate, read now."""
    now = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    jobs.patch_status(name, {"throughput": {"samplesPerSecond": samples_per_second, "step": 100, "observedTime": now}})


def _running(jobs: Jobs, name: str, n: int, timeout: float = 60) -> None:
    jobs.wait(name, lambda s: s.get("phase") == "Running" and s.get("readyReplicas") == n == s.get("currentReplicas"),
              f"{name} running {n} replicas", timeout)


def _settled(jobs: Jobs, name: str, n: int) -> None:
    """Running at n, and a second past the resize: a reading stamped now is after it (1 s timestamps)."""
    _running(jobs, name, n)
    time.sleep(1.1)


def _condition(status: dict, ctype: str) -> dict:
    return next((c for c in status.get("conditions") or [] if c["type"] == ctype), {})


def test_gpus_move_to_the_job_that_scales_and_an_arrival_gets_its_min(cluster, goodput_operator, namespace):
    jobs = Jobs(cluster.api, namespace)
    try:
        # Opted out, elastic and at its max: the allocator counts its GPUs and never touches it.
        jobs.create(_job("fixed", 1, 2, opted=False))
        _running(jobs, "fixed", 2)
        fixed_pods = sorted(p.metadata.name for p in ready_workers(jobs, "fixed"))
        # Opted out and rigid: holds half the pool until it finishes.
        jobs.create(_job("hog", 4, 4, opted=False))
        _running(jobs, "hog", 4)

        # Two opted-in jobs arrive with 2 replicas free: each gets its min (nobody grabs both).
        jobs.create(_job("a", 1, 6, opted=True))
        jobs.create(_job("b", 1, 6, opted=True))
        _settled(jobs, "a", 1)
        _settled(jobs, "b", 1)
        _feed(jobs, "a", 100.0)
        _feed(jobs, "b", 100.0)
        time.sleep(2)  # a reconcile (1 s) carries the readings to the allocator

        # The hog finishes: its 16 GPUs go to a and b at once, evenly (both seen at one size: both may scale).
        finished = time.monotonic()
        for p in ready_workers(jobs, "hog"):
            gpu_pool.finish_pod(cluster.api, namespace, p.metadata.name, 0)
        jobs.wait_phase("hog", "Succeeded", 30)
        _settled(jobs, "a", 3)
        _settled(jobs, "b", 3)
        print(f"hog finished -> a and b at 3 replicas each: {time.monotonic() - finished:.1f} s")

        # At 3 replicas a runs 3x its 1-replica rate and b no faster than at 1: a scales, b does not.
        # (A milder curve for b, 1.1x, does not pay for the restarts of jobs this young: the penalty
        # weighs a resize against the job's age, here 15 s.)
        _feed(jobs, "a", 300.0)
        _feed(jobs, "b", 100.0)
        fed = time.monotonic()
        # Each job's next reconcile (1 s timer) carries its reading to the allocator; a round between the
        # two would see only one, so "within one interval" counts from when both are there.
        time.sleep(1.5)
        known = time.monotonic()
        jobs.wait("a", lambda s: (s.get("desiredReplicas") or 0) > 3, "a given more replicas", INTERVAL + 5)
        decided = time.monotonic() - known
        a = jobs.status("a")
        b = jobs.wait("b", lambda s: (s.get("desiredReplicas") or 9) < 3, "b shrunk", 10)
        assert a["desiredReplicas"] + b["desiredReplicas"] == 6
        _running(jobs, "a", a["desiredReplicas"], timeout=30)
        moved = time.monotonic() - fed
        print(f"readings in the allocator -> a's desired replicas 3 -> {a['desiredReplicas']}: {decided:.1f} s; "
              f"throughput fed -> a running at it: {moved:.1f} s (interval {INTERVAL:.0f} s); b 3 -> {b['desiredReplicas']}")
        # The next round (within one interval), then a's reconcile (1 s timer, a second more on this shared machine).
        assert decided <= INTERVAL + 3, goodput_operator.logs()
        allocated = _condition(jobs.status("a"), "Allocated")
        assert allocated["reason"] == "Grown" and "goodput x" in allocated["message"]
        assert _condition(jobs.status("b"), "Allocated")["reason"] == "Shrunk"
        events = {(e.reason, e.message) for e in jobs.events("a")}
        assert any(r == "GoodputAllocation" and "grown: goodput x" in m for r, m in events), events

        # A third opted-in job arrives with no GPU free: its min comes first.
        arrived = time.monotonic()
        jobs.create(_job("c", 2, 4, opted=True))
        c = jobs.wait("c", lambda s: s.get("phase") == "Running" and (s.get("readyReplicas") or 0) >= 2,
                      "c running at least its min", INTERVAL + 10)
        took = time.monotonic() - arrived
        print(f"c created -> running {c['readyReplicas']} replicas (min 2): {took:.1f} s")
        assert took <= INTERVAL + 6, goodput_operator.logs()
        assert _condition(jobs.status("c"), "Allocated")["reason"] == "Started"

        # The opted-out job: the same pods all along, never scaled, no allocation.
        assert sorted(p.metadata.name for p in ready_workers(jobs, "fixed")) == fixed_pods
        fixed = jobs.status("fixed")
        assert fixed["desiredReplicas"] == 2 and not _condition(fixed, "Allocated")
        assert not [e for e in jobs.events("fixed") if e.reason in ("Scaling", "GoodputAllocation")]
        # The operator's metrics show the rounds and decisions.
        import urllib.request

        text = urllib.request.urlopen(f"http://127.0.0.1:{goodput_operator.metrics_port}/metrics", timeout=5).read().decode()
        assert 'kubetrain_operator_allocator_decisions_total{reason="Grown"}' in text
        assert "kubetrain_operator_allocator_round_duration_seconds_count" in text
    finally:
        for name in ("fixed", "hog", "a", "b", "c"):
            jobs.delete(name)
        wait_gone(lambda: jobs.core.list_namespaced_pod(namespace).items, f"pods in {namespace}", timeout=90)
