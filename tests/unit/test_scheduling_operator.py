"""The goodput allocator wired into the operator: the observation feed, the rounds, the planner honouring a target."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from prometheus_client import CollectorRegistry

from kubetrain.api.manifests import parse_trainingjob
from kubetrain.operator import naming
from kubetrain.operator.allocation import GoodputAllocator, History, JobFacts, managed, reading
from kubetrain.operator.metrics import OperatorMetrics
from kubetrain.operator.planner import Observed, PodView, Target, plan
from kubetrain.operator.settings import OperatorConfig
from kubetrain.scheduling.allocator import AllocatorConfig, JobInput, allocate

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=timezone.utc)
T0 = NOW.timestamp()


def _iso(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def _job(goodput=None, lo=1, hi=6, gpus=4):
    spec = {"replicas": {"min": lo, "max": hi}, "container": {"gpusPerReplica": gpus}}
    if goodput is not None:
        spec["scheduling"] = {"goodput": goodput}
    return parse_trainingjob({"apiVersion": "kubetrain.dev/v1alpha1", "kind": "TrainingJob",
                              "metadata": {"name": "j", "namespace": "ns"}, "spec": spec})


# --- opt-in ---

def test_opt_in_follows_the_job_then_the_cluster_default_and_needs_an_elastic_gpu_job():
    assert managed(_job({"enabled": True}), default=False)
    assert not managed(_job({"enabled": False}), default=True)
    assert managed(_job(), default=True) and not managed(_job(), default=False)
    assert not managed(_job({"enabled": True}, lo=2, hi=2), default=False)  # rigid: nothing to move
    assert not managed(_job({"enabled": True}, gpus=0), default=False)  # CPU: not in the GPU pool


def test_the_chart_env_reaches_the_operator_config():
    cfg = OperatorConfig.from_env({"KUBETRAIN_GOODPUT_DEFAULT": "true", "KUBETRAIN_GOODPUT_INTERVAL": "2",
                                   "KUBETRAIN_GOODPUT_MIN_DWELL": "5", "KUBETRAIN_GOODPUT_RESTART_SECONDS": "1"})
    assert (cfg.goodput_default, cfg.goodput_interval_seconds, cfg.goodput_min_dwell_seconds, cfg.goodput_restart_seconds) == (True, 2, 5, 1)
    plain = OperatorConfig.from_env({})
    assert (plain.goodput_default, plain.goodput_interval_seconds, plain.goodput_min_dwell_seconds) == (False, 60, 180)
    # The minimum gain: unset (the chart's null renders "") is one interval; 0 turns it off.
    assert (plain.goodput_payback_seconds, plain.goodput_payback_restarts) == (None, 2)
    tuned = OperatorConfig.from_env({"KUBETRAIN_GOODPUT_PAYBACK_SECONDS": "0", "KUBETRAIN_GOODPUT_PAYBACK_RESTARTS": "3"})
    assert (tuned.goodput_payback_seconds, tuned.goodput_payback_restarts) == (0, 3)
    assert OperatorConfig.from_env({"KUBETRAIN_GOODPUT_PAYBACK_SECONDS": ""}).goodput_payback_seconds is None


# --- the observation feed ---

def _status(ready, rate, observed=NOW, phase="Running", resized=None, unit="samplesPerSecond", step=None, noise=None):
    s = {"phase": phase, "readyReplicas": ready, "throughput": {unit: rate, "observedTime": _iso(observed)}}
    if resized is not None:
        s["lastScaling"] = {"time": _iso(resized)}
    if step is not None:
        s["throughput"]["step"] = step
    if noise is not None:
        s["throughput"]["gradientNoiseScale"] = noise
    return s


def test_a_reading_is_a_step_time_at_a_stable_size_after_the_last_resize():
    r = reading(_status(3, 300.0), local_batch=8, nodes=2)
    assert (r.replicas, r.nodes, r.unit) == (3, 2, "samples") and abs(r.step_time - 3 * 8 / 300) < 1e-12
    assert reading(_status(3, 300.0, phase="Scaling"), 8, 2) is None  # mid-resize: a mix of two sizes
    assert reading(_status(3, 300.0, resized=NOW), 8, 2) is None  # read before (or as) it was resized
    assert reading(_status(3, 300.0, resized=NOW - timedelta(seconds=5)), 8, 2) is not None
    assert reading(_status(3, 1200.0, unit="tokensPerSecond"), 8, 2).unit == "tokens"
    assert reading({"phase": "Running", "readyReplicas": 3}, 8, 2) is None


def _history(curve, sizes, nodes=lambda r: (r + 1) // 2):
    h = History()
    for i, r in enumerate(sizes):
        h.add(reading(_status(r, curve(r), observed=NOW + timedelta(seconds=i)), 8, nodes(r)))
    return h


def test_the_model_learns_which_job_scales_from_its_readings():
    linear = _history(lambda r: 100.0 * r, [1, 3])
    flat = _history(lambda r: 100.0 * r ** 0.1, [1, 3])
    a, b = linear.table(6, 8, 2), flat.table(6, 8, 2)
    assert a[0] == 0 and b[0] == 0
    assert a[6] / a[1] > 4.5  # close to linear
    assert b[6] / b[1] < 2.0  # hardly scales (1.1x at 3 replicas; the sync cost extrapolated past it)
    # The same reading counted once; an unknown job has no table (the allocator's linear prior).
    h = History()
    h.add(reading(_status(2, 200.0), 8, 1))
    assert not h.add(reading(_status(2, 200.0), 8, 1))
    assert History().table(6, 8, 2) == ()


def test_a_steady_job_is_not_refitted_every_reading():
    h = _history(lambda r: 100.0 * r, [1, 3])
    h.table(6, 8, 2)
    fitted = h.params
    h.add(reading(_status(3, 302.0, observed=NOW + timedelta(seconds=30)), 8, 2))  # within 5%: the same model
    assert h.params is fitted
    h.add(reading(_status(3, 200.0, observed=NOW + timedelta(seconds=31)), 8, 2))  # slower now: refit
    assert h.params is None and h.table(6, 8, 2)[3] < 300


def test_no_round_without_an_opted_in_job():
    alloc, registry, _ = _allocator()
    alloc.report(("ns", "fixed"), _facts(replicas=2, managed=False), {}, 1)
    assert alloc.run_round() is None
    assert registry.get_sample_value("kubetrain_operator_allocator_round_duration_seconds_count") == 0


def test_a_job_seen_at_one_size_keeps_the_optimistic_prior():
    one = _history(lambda r: 100.0, [1])
    t = one.table(4, 8, 2)
    assert t[4] / t[1] > 3.5


# --- capacity counted in GPUs ---

def test_capacity_is_counted_in_gpus_across_replica_sizes():
    jobs = [JobInput("big", 1, 4, gpus_per_replica=8), JobInput("small", 1, 8, gpus_per_replica=2)]
    out = allocate(jobs, capacity=16, now=0)
    assert out.replicas["big"] * 8 + out.replicas["small"] * 2 <= 16
    assert out.replicas["big"] >= 1 and out.replicas["small"] >= 1 and out.used <= 16
    assert allocate([JobInput("a", 1, 4)], capacity=3, now=0).replicas["a"] == 3  # the default stays 1 GPU per replica


# --- rounds ---

def _facts(hi=6, replicas=0, managed=True, arrival=0.0, lo=1):
    return JobFacts(managed=managed, min_replicas=lo, max_replicas=hi, gpus_per_replica=4, replicas=replicas,
                    arrival=arrival, local_batch=8, started=T0 - 600 if replicas else None)


def _allocator(**cfg):
    registry = CollectorRegistry()
    clock = {"t": T0}
    alloc = GoodputAllocator(AllocatorConfig(**({"min_dwell_seconds": 0} | cfg)), OperatorMetrics(registry),
                             restart_seconds=1.0, clock=lambda: clock["t"])
    alloc.set_nodes({f"n{i}": 8 for i in range(4)})  # 32 GPUs: 8 replicas of 4
    return alloc, registry, clock


def test_gpus_move_to_the_job_that_scales_and_an_opted_out_job_keeps_its_size():
    alloc, registry, clock = _allocator()
    alloc.report(("ns", "fixed"), _facts(hi=4, replicas=2, managed=False), {}, 1)
    alloc.report(("ns", "a"), _facts(arrival=1), {}, 0)
    alloc.report(("ns", "b"), _facts(arrival=2), {}, 0)
    first = alloc.run_round()
    # No data: both predicted to scale; the opted-out job's 8 GPUs are counted, never moved.
    assert first.replicas["ns/fixed"] == 2
    assert alloc.target(("ns", "a")).replicas == alloc.target(("ns", "b")).replicas == 3
    assert alloc.target(("ns", "fixed")) is None
    assert alloc.target(("ns", "a")).reason == "Started"
    # Readings at 1 and 3 replicas: a scales linearly, b hardly.
    for i, r in enumerate((1, 3)):
        t = NOW + timedelta(seconds=10 + i)
        alloc.report(("ns", "a"), _facts(replicas=r, arrival=1), _status(r, 100.0 * r, observed=t), (r + 1) // 2)
        alloc.report(("ns", "b"), _facts(replicas=r, arrival=2), _status(r, 100.0 * r ** 0.1, observed=t), (r + 1) // 2)
    clock["t"] += 60
    second = alloc.run_round()
    a, b = alloc.target(("ns", "a")), alloc.target(("ns", "b"))
    assert a.replicas > 3 > b.replicas >= 1 and a.replicas + b.replicas == 6
    assert a.reason == "Grown" and "goodput x" in a.message and b.reason == "Shrunk"
    assert second.replicas["ns/fixed"] == 2
    assert registry.get_sample_value("kubetrain_operator_allocator_decisions_total", {"reason": "Grown"}) == 1
    assert registry.get_sample_value("kubetrain_operator_allocator_round_duration_seconds_count") == 2
    assert registry.get_sample_value("kubetrain_operator_job_allocated_replicas", {"namespace": "ns", "trainingjob": "a"}) == a.replicas
    # A third job's arrival: its min comes first, the others shrink for it.
    alloc.report(("ns", "c"), _facts(lo=2, arrival=3), {}, 0)
    clock["t"] += 60
    alloc.run_round()
    assert alloc.target(("ns", "c")).replicas >= 2
    assert sum(alloc.target(("ns", j)).replicas for j in "abc") <= 6


def test_no_flapping_a_recent_resize_holds_for_the_dwell():
    alloc, _, clock = _allocator(min_dwell_seconds=300)
    alloc.report(("ns", "a"), _facts(replicas=3, arrival=1), {}, 2)
    alloc.report(("ns", "b"), _facts(replicas=3, arrival=2), {}, 2)
    alloc.run_round()
    # b is shrunk by hand-fed data for a; within the dwell nothing moves again.
    before = {j: alloc.target(("ns", j)).replicas for j in "ab"}
    for i, r in enumerate((3,)):
        alloc.report(("ns", "a"), _facts(replicas=r, arrival=1), _status(r, 300.0, observed=NOW + timedelta(seconds=i)), 2)
    clock["t"] += 60
    alloc.run_round()
    assert {j: alloc.target(("ns", j)).replicas for j in "ab"} == before


def test_arrival_and_finish_start_a_round_without_waiting_for_the_interval():
    alloc, _, _ = _allocator()
    alloc.report(("ns", "a"), _facts(), {}, 0)
    assert alloc._poke.is_set()  # noqa: SLF001 - the round thread's trigger
    alloc._poke.clear()  # noqa: SLF001
    alloc.report(("ns", "a"), _facts(), {}, 0)
    assert not alloc._poke.is_set()  # noqa: SLF001 - the same job again is no news
    alloc.report(("ns", "a"), None, {"phase": "Succeeded"}, 0)
    assert alloc._poke.is_set() and alloc.target(("ns", "a")) is None  # noqa: SLF001


def test_the_round_thread_runs_on_a_poke_and_stops():
    alloc, registry, _ = _allocator(interval_seconds=3600)
    alloc.start()
    try:
        alloc.report(("ns", "a"), _facts(), {}, 0)
        deadline = datetime.now().timestamp() + 5
        while alloc.target(("ns", "a")) is None and datetime.now().timestamp() < deadline:
            pass
        assert alloc.target(("ns", "a")).replicas == 6
    finally:
        alloc.stop()
    assert not alloc._thread.is_alive()  # noqa: SLF001


# --- the planner honours the target ---

def _pod(slot, ready=True):
    name = naming.worker_pod_name("j", slot, 0)
    return PodView.from_body({
        "metadata": {"name": name, "creationTimestamp": (NOW - timedelta(minutes=5)).isoformat(),
                     "labels": {naming.LABEL_JOB: "j", naming.LABEL_ROLE: "worker", naming.LABEL_SLOT: str(slot),
                                naming.LABEL_ATTEMPT: "0"},
                     "finalizers": [naming.TRACKING_FINALIZER]},
        "spec": {"nodeName": "n0"}, "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": ready and "True" or "False"}]}})


def _store():
    return PodView.from_body({"metadata": {"name": "j-rdzv", "labels": {naming.LABEL_JOB: "j", naming.LABEL_ROLE: "rendezvous"}},
                              "spec": {"nodeName": "n0"}, "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}})


def _body(desired):
    return {"metadata": {"name": "j", "namespace": "ns", "uid": "u", "generation": 1},
            "status": {"phase": "Running", "desiredReplicas": desired, "currentReplicas": desired, "readyReplicas": desired}}


def test_the_planner_shrinks_to_the_target_and_says_why():
    pods = [_pod(s) for s in range(4)] + [_store()]
    target = Target(2, "Shrunk", "2 replicas (was 4): shrunk: its GPUs raise other jobs' speedup more")
    p = plan(_job({"enabled": True}), _body(4), Observed(pods=pods, now=NOW, placeable=4, target=target))
    assert sorted(p.delete) == [naming.worker_pod_name("j", s, 0) for s in (2, 3)]
    assert set(p.release) >= set(p.delete)  # accounted: a shrink is not a failure
    assert p.status["desiredReplicas"] == 2 and not p.create_workers
    allocated = next(c for c in p.status["conditions"] if c["type"] == "Allocated")
    assert allocated["reason"] == "Shrunk" and "shrunk" in allocated["message"]
    assert ("Normal", "GoodputAllocation", allocated["message"]) in p.events
    assert any(e[1] == "Scaling" and "4 -> 2" in e[2] for e in p.events)
    assert p.scaling_reason == "GoodputAllocation"


def test_the_planner_grows_to_the_target_only_as_far_as_gpus_fit_and_never_below_min():
    pods = [_pod(0), _store()]
    grow = plan(_job({"enabled": True}), _body(1), Observed(pods=pods, now=NOW, placeable=2, target=Target(5, "Grown", "5 replicas (was 1): grown")))
    assert len(grow.create_workers) == 2  # 3 fit now; the rest as the shrinking job frees its GPUs
    low = plan(_job({"enabled": True}, lo=2), _body(2), Observed(pods=[_pod(0), _pod(1), _store()], now=NOW, placeable=0,
                                                                 target=Target(0, "Shrunk", "0")))
    assert not low.delete and low.status["desiredReplicas"] == 2


def test_the_same_decision_posts_its_event_once_and_a_job_without_a_target_grows_to_max():
    pods = [_pod(0), _pod(1), _store()]
    target = Target(2, "Grown", "2 replicas (was 1): grown: goodput x1.90 pays for the restart")
    first = plan(_job({"enabled": True}), _body(2), Observed(pods=pods, now=NOW, placeable=0, target=target))
    body = _body(2)
    body["status"]["conditions"] = first.status["conditions"]
    again = plan(_job({"enabled": True}), body, Observed(pods=pods, now=NOW, placeable=0, target=target))
    assert not [e for e in again.events if e[1] == "GoodputAllocation"]
    free = plan(_job(), _body(2), Observed(pods=pods, now=NOW, placeable=8))
    assert free.status["desiredReplicas"] == 6 and not [c for c in free.status["conditions"] if c["type"] == "Allocated"]


# --- statistical efficiency from the reported gradient noise scale ---

def _two_jobs_at_4_that_scale_alike(noise_a=None, noise_b=None):
    """a and b report the same linear throughput at 1 and 4 replicas (and, optionally, a noise scale); they fill the pool."""
    alloc, _, clock = _allocator()
    for i, r in enumerate((1, 4)):
        t = NOW + timedelta(seconds=10 + i)
        for name, arrival, noise in (("a", 1, noise_a), ("b", 2, noise_b)):
            alloc.report(("ns", name), _facts(replicas=r, arrival=arrival),
                         _status(r, 100.0 * r, observed=t, noise=noise), (r + 1) // 2)
    clock["t"] += 600
    alloc.run_round()
    return alloc.target(("ns", "a")).replicas, alloc.target(("ns", "b")).replicas


def test_a_reported_noise_scale_moves_gpus_to_the_job_whose_samples_keep_their_worth():
    # Throughput alone: the two are the same job, so they keep an even split.
    assert _two_jobs_at_4_that_scale_alike() == (4, 4)
    # a's gradients are noisy (B = 10,000 samples: a global batch of 48 is far below it, every sample counts);
    # b's are not (B = 4: beyond a batch of 8 a sample is worth little): b's GPUs go to a.
    a, b = _two_jobs_at_4_that_scale_alike(noise_a=10_000.0, noise_b=4.0)
    assert a > 4 > b >= 1 and a + b == 8


def test_a_job_that_reports_no_noise_scale_is_weighed_by_throughput_alone():
    h = _history(lambda r: 100.0 * r, [1, 3])
    plain = h.table(6, 8, 2)
    h.noise_scale = 4.0
    weighed = h.table(6, 8, 2)
    assert weighed[1] == plain[1] and weighed[6] / weighed[1] < plain[6] / plain[1] / 2  # E(M) falls as r x 8 passes B = 4
    # The noise scale stays when the job stops reporting it (world size 1 exports none): it belongs to the gradients.
    alloc, _, _ = _allocator()
    alloc.report(("ns", "a"), _facts(replicas=2), _status(2, 200.0, noise=50.0), 1)
    alloc.report(("ns", "a"), _facts(replicas=1), _status(1, 100.0, observed=NOW + timedelta(seconds=30)), 1)
    assert alloc._history[("ns", "a")].noise_scale == 50.0  # noqa: SLF001
    # Before any throughput reading, the noise scale alone bends the linear prior.
    fresh = History(noise_scale=4.0)
    assert fresh.table(4, 8, 2)[4] < 4 * fresh.table(4, 8, 2)[1]


# --- the restart cost, learned per job ---

def _resized_job(alloc, key, lost, before_step=1000, arrival=1):
    """A job read at 2 replicas (0.16 s a step), resized at +10 s to 4, read again at +60 s having lost ``lost`` seconds."""
    t0 = NOW + timedelta(seconds=10)
    alloc.report(key, _facts(replicas=2, arrival=arrival), _status(2, 100.0, step=before_step), 1)
    step_after = 0.16  # 4 replicas x 8 samples at 200 samples/s
    made = round((50.0 - lost) / step_after)
    expected_at_resize = before_step + round(10.0 / 0.16)
    alloc.report(key, _facts(replicas=4, arrival=arrival),
                 _status(4, 200.0, observed=t0 + timedelta(seconds=50), resized=t0, step=expected_at_resize + made), 2)


def test_what_a_resize_cost_is_measured_from_the_readings_around_it_and_becomes_the_jobs_penalty():
    alloc, _, clock = _allocator()
    _resized_job(alloc, ("ns", "slow"), lost=40.0)
    h = alloc._history[("ns", "slow")]  # noqa: SLF001
    assert h.restarts_measured == 1 and abs(h.restart_seconds - 40.0) < 0.2
    # A job not resized yet is charged the operator's default.
    alloc.report(("ns", "new"), _facts(replicas=1, arrival=2), {}, 1)
    clock["t"] += 60
    alloc.run_round()
    slow, new = alloc.target(("ns", "slow")), alloc.target(("ns", "new"))
    assert abs(slow.restart_seconds - 40.0) < 0.2 and slow.restarts_measured == 1
    assert new.restart_seconds == 1.0 and new.restarts_measured == 0
    # A second, cheaper resize moves the estimate half way (EMA), not all the way.
    t1 = NOW + timedelta(seconds=120)
    alloc.report(("ns", "slow"), _facts(replicas=2), _status(2, 100.0, observed=t1 + timedelta(seconds=40),
                                                              resized=t1, step=10_000), 1)
    assert h.restarts_measured == 2 and 0 < h.restart_seconds < 40.0


def test_a_learned_restart_cost_holds_back_a_move_the_default_would_make():
    def round_with(lost):
        alloc, _, clock = _allocator()
        alloc.report(("ns", "fixed"), _facts(hi=4, replicas=2, managed=False), {}, 1)  # fills the pool with a and b
        # Both jobs at 3 (a scales, b does not), young: a resize is weighed against their age.
        for name, arrival, curve in (("a", 1, lambda r: 100.0 * r), ("b", 2, lambda r: 100.0)):
            alloc.report(("ns", name), JobFacts(True, 1, 6, 4, 3, arrival, 8, started=T0 - 120),
                         _status(3, curve(3), step=100), 2)
        if lost is not None:
            for name in "ab":
                alloc._history[("ns", name)].restart_seconds = lost  # noqa: SLF001 - as _resized_job would leave it
                alloc._history[("ns", name)].restarts_measured = 1  # noqa: SLF001
        for name, arrival, curve in (("a", 1, lambda r: 100.0 * r), ("b", 2, lambda r: 100.0)):
            alloc.report(("ns", name), JobFacts(True, 1, 6, 4, 1, arrival, 8, started=T0 - 120),
                         _status(1, curve(1), observed=NOW + timedelta(seconds=5), step=110), 1)
        alloc._targets = {("ns", n): Target(3, "Kept", "") for n in "ab"}  # noqa: SLF001 - both hold 3
        alloc.run_round()
        return alloc.target(("ns", "a")).replicas, alloc.target(("ns", "b")).replicas

    assert round_with(None) == (5, 1)  # the default (1 s) is cheap against a 2-minute-old job: move
    assert round_with(100.0) == (3, 3)  # this job loses 100 s a resize: the move would not pay for it


def test_an_operator_restart_keeps_the_learned_cost_from_the_jobs_status():
    alloc, _, clock = _allocator()
    status = {"allocation": {"replicas": 3, "restartSeconds": 42.0, "restartsMeasured": 2}}
    alloc.report(("ns", "a"), _facts(replicas=3), status, 2)
    clock["t"] += 60
    alloc.run_round()
    assert alloc.target(("ns", "a")).restart_seconds == 42.0 and alloc.target(("ns", "a")).restarts_measured == 2
    # The planner shows it in status.allocation, and keeps the last operator's before this one's first round.
    pods = [_pod(s) for s in range(3)] + [_store()]
    p = plan(_job({"enabled": True}), _body(3), Observed(pods=pods, now=NOW, placeable=0, target=alloc.target(("ns", "a"))))
    assert p.status["allocation"] == {"replicas": alloc.target(("ns", "a")).replicas, "restartSeconds": 42.0, "restartsMeasured": 2}
    body = _body(3)
    body["status"]["allocation"] = {"replicas": 3, "restartSeconds": 42.0, "restartsMeasured": 2}
    kept = plan(_job({"enabled": True}), body, Observed(pods=pods, now=NOW, placeable=0, target=Target(3, "Kept", "until the first round")))
    assert kept.status["allocation"] == {"replicas": 3, "restartSeconds": 42.0, "restartsMeasured": 2}
