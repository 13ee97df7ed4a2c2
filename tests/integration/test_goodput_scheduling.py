"""The goodput allocator in the operator, on the real control plane with KWOK's 4 nodes x 8 GPUs.

The pods run nothing, so the test plays each job's trainer and the operator's throughput reader:
``Trainer`` exports the figures with the trainer's own exporter (job-wide samples/s, a step
counter that advances at that rate and loses ``LOST`` seconds to each resize, the gradient noise
scale), the operator's aggregation turns them into status.throughput, and the test writes that,
as the reconcile does. The operator runs with a short allocator interval (the chart's
KUBETRAIN_GOODPUT_* env).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import datetime, timezone

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from crd_helpers import Jobs, wait_gone
from kubetrain.operator.allocation import parse_time
from kubetrain.operator.throughput import aggregate_expositions
from kubetrain_trainer.metrics import TrainerMetrics
from kubetrain_dev.devcluster import gpu_pool
from test_operator import Operator, gpu_job, ready_workers, running_operator

INTERVAL = 4.0  # seconds between allocator rounds in this test (60 by default)
LOCAL_BATCH = 8 * 4  # samples one replica trains per step: the default batchSize x 4 processes (4 GPUs per replica)
LOST = 0.5  # seconds of progress each resize costs the played trainer (the operator should learn this)


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


class Trainer:
    """One job's trainer as the operator sees it: its exported figures, read and written to status.throughput."""

    def __init__(self, jobs: Jobs, name: str):
        self.jobs, self.name = jobs, name
        self.last: tuple[float, int, float] | None = None  # (when read, step, seconds per step)

    def feed(self, replicas: int, samples_per_second: float, noise_scale: float | None = None) -> None:
        now = float(int(time.time()))  # status times have 1 s resolution: count steps on the same clock
        step_time = replicas * LOCAL_BATCH / samples_per_second
        if self.last is None:
            step = 100
        else:
            t, s, prev = self.last
            resized = parse_time((self.jobs.status(self.name).get("lastScaling") or {}).get("time"))
            if resized is not None and t <= resized < now:
                # At the old rate until the resize, nothing for LOST seconds, then at the new rate.
                step = round(s + (resized - t) / prev + max(now - resized - LOST, 0.0) / step_time)
            else:
                step = round(s + (now - t) / step_time)
        self.last = (now, step, step_time)
        registry = CollectorRegistry()
        exporter = TrainerMetrics(registry, trainingjob=self.name, namespace=self.jobs.ns, pod=f"{self.name}-w0-0")
        exporter.observe_step(step=step, loss=2.0, step_seconds=step_time, pod_tokens=0.0, pod_samples=LOCAL_BATCH * replicas,
                              tokens_per_second=0.0, samples_per_second=samples_per_second, noise_scale=noise_scale)
        figures = aggregate_expositions([generate_latest(registry).decode()])
        self.jobs.patch_status(self.name, {"throughput": replace(figures, observed=datetime.fromtimestamp(now, timezone.utc)).status()})


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
        trainer = {name: Trainer(jobs, name) for name in "ab"}
        trainer["a"].feed(1, 100.0)
        trainer["b"].feed(1, 100.0)
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
        trainer["a"].feed(3, 300.0)
        trainer["b"].feed(3, 100.0)
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
        # What the 1 -> 3 resize cost each job, learned from the readings around it (the played trainer lost LOST s).
        for name in "ab":
            learned = jobs.status(name)["allocation"]
            print(f"{name}: learned restart cost {learned}")
            assert learned["restartsMeasured"] >= 1 and abs(learned["restartSeconds"] - LOST) < 0.5, learned
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


def test_a_reported_noise_scale_moves_gpus_to_the_job_whose_samples_keep_their_worth(cluster, goodput_operator, namespace):
    jobs = Jobs(cluster.api, namespace)
    try:
        # Two alike jobs split the pool (8 replicas of 4 GPUs) evenly and report the same throughput.
        jobs.create(_job("p", 1, 6, opted=True))
        jobs.create(_job("q", 1, 6, opted=True))
        _settled(jobs, "p", 4)
        _settled(jobs, "q", 4)
        trainer = {name: Trainer(jobs, name) for name in "pq"}
        for name in "pq":
            trainer[name].feed(4, 400.0)
        time.sleep(1.5 + INTERVAL + 1)  # the readings reach the allocator; a round passes
        # Throughput alone cannot tell them apart: nobody is moved.
        assert [jobs.status(n)["desiredReplicas"] for n in "pq"] == [4, 4]

        # Then each trainer reports its gradient noise scale: p's gradients are noisy (B = 100,000 samples: a
        # global batch of 192 is far below it, every sample counts), q's are not (B = 2: beyond one replica's
        # 32 samples a sample is worth little). The same samples/s are worth far more in p.
        trainer["p"].feed(4, 400.0, noise_scale=100_000.0)
        trainer["q"].feed(4, 400.0, noise_scale=2.0)
        time.sleep(1.5)  # each job's next reconcile carries its reading to the allocator
        known = time.monotonic()
        # status.allocation.replicas: the allocator's decision (desiredReplicas follows as q's GPUs free up).
        p = jobs.wait("p", lambda s: (s.get("allocation") or {}).get("replicas", 0) > 4, "p given more replicas", INTERVAL + 5)
        decided = time.monotonic() - known
        q = jobs.wait("q", lambda s: (s.get("allocation") or {}).get("replicas", 9) < 4, "q shrunk", 10)
        grown, shrunk = p["allocation"]["replicas"], q["allocation"]["replicas"]
        _running(jobs, "p", grown, timeout=30)
        print(f"noise scales in the allocator -> p 4 -> {grown}, q 4 -> {shrunk}: {decided:.1f} s; "
              f"p running at {grown}: {time.monotonic() - known:.1f} s")
        assert grown + shrunk <= 8
        assert p["throughput"]["gradientNoiseScale"] == 100_000.0 and q["throughput"]["gradientNoiseScale"] == 2.0
        assert _condition(jobs.status("p"), "Allocated")["reason"] == "Grown"
        assert _condition(jobs.status("q"), "Allocated")["reason"] == "Shrunk"
    finally:
        for name in ("p", "q"):
            jobs.delete(name)
        wait_gone(lambda: jobs.core.list_namespaced_pod(namespace).items, f"pods in {namespace}", timeout=90)
