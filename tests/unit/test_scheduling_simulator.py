"""The trace-driven simulator (bench/scheduling_sim.py) on a tiny synthetic trace, and node packing."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from bench.scheduling_sim import POLICIES, Simulator, load_app  # noqa: E402
from kubetrain.scheduling.allocator import AllocatorConfig  # noqa: E402
from kubetrain.scheduling.placement import place  # noqa: E402

# (name, arrival s, model, requested replicas, requested batch): small real models of Pollux's data.
TRACE = [
    ("ncf-0", 0.0, "ncf", 1, 32768),
    ("cifar10-1", 30.0, "cifar10", 4, 1024),
    ("ncf-2", 90.0, "ncf", 1, 32768),
    ("cifar10-3", 200.0, "cifar10", 2, 512),
    ("ncf-4", 400.0, "ncf", 2, 32768),
]


def run(policy: str, trace=TRACE, **kw) -> dict:
    return Simulator(list(trace), policy, nodes=2, gpus_per_node=4, **kw).run()


@pytest.mark.parametrize("policy", POLICIES)
def test_every_job_finishes_and_the_books_balance(policy):
    r = run(policy)
    assert r["finished"] == r["jobs"] == len(TRACE)
    assert 0 < r["gpu_utilisation"] <= 1.0 + 1e-9
    assert 0 < r["goodput_utilisation"] <= r["gpu_utilisation"]
    assert r["p99_jct"] >= r["avg_jct"] > 0
    assert r["makespan"] >= r["p99_jct"]
    if policy == "fifo":
        assert r["restarts_per_job"] == 0
    if policy == "elastic":
        assert r["rounds"] > 0  # the allocator really ran


def test_deterministic():
    a, b = run("elastic"), run("elastic")
    # Everything but the allocator's wall time, which is measured.
    for k in set(a) - {"round_seconds_median", "round_seconds_max"}:
        assert a[k] == b[k], k


def test_a_lone_elastic_job_grows_and_beats_its_rigid_self():
    lone = [("cifar10-0", 0.0, "cifar10", 1, 256)]
    elastic, fifo = run("elastic", lone), run("fifo", lone)
    assert elastic["avg_jct"] < fifo["avg_jct"]
    assert elastic["gpu_utilisation"] > fifo["gpu_utilisation"]


def test_restart_time_is_charged():
    # Without the minimum gain, which at 250 s a restart keeps this small trace's jobs from growing at all.
    eager = AllocatorConfig(payback_seconds=0.0)
    slow, fast = run("elastic", restart=250.0, config=eager), run("elastic", restart=0.0, config=eager)
    assert slow["lost_seconds_per_job"] > fast["lost_seconds_per_job"] == 0.0
    assert slow["avg_jct"] > fast["avg_jct"]


def test_the_minimum_gain_cuts_restarts():
    with_it, without = run("elastic", restart=250.0), run("elastic", restart=250.0, config=AllocatorConfig(payback_seconds=0.0))
    assert with_it["restarts_per_job"] < without["restarts_per_job"]
    assert with_it["restarts_per_job_hour"] < without["restarts_per_job_hour"]


def test_measured_models_load_with_their_noise_scale():
    app = load_app("cifar10")
    assert app.base_batch == 128 and app.max_batch == 4096
    assert app.fit_rms_log_error < 0.2
    # The noise scale grows as training goes on (big batches pay off late), per Pollux's data.
    assert app.noise_scale(app.total_progress * 0.9) > app.noise_scale(0.0)


def test_place_packs_keeps_and_refuses():
    got = place({"a": 3, "b": 4, "c": 1}, {}, nodes=2, gpus_per_node=4)
    assert got["b"] == {0: 4} and len(got["a"]) == 1 and sum(got["c"].values()) == 1
    # An unchanged job keeps its nodes; a bigger one spans the emptiest nodes.
    again = place({"a": 3, "d": 5}, {"a": got["a"]}, nodes=3, gpus_per_node=4)
    assert again["a"] == got["a"] and sum(again["d"].values()) == 5 and len(again["d"]) == 2
    with pytest.raises(ValueError):
        place({"a": 9}, {}, nodes=2, gpus_per_node=4)


def test_learning_throughput_online_fits_each_new_configuration():
    r = run("elastic", learn=True)
    assert r["finished"] == r["jobs"]
    # Every job reports at least its first configuration; each new one triggers a refit.
    assert r["fits"] >= len(TRACE)
    assert run("elastic")["fits"] == 0


def test_restart_costs_by_model_are_charged_and_learned_after_a_jobs_first_resize():
    by_app = {"cifar10": 200.0, "ncf": 5.0}
    sim = Simulator(list(TRACE), "elastic", nodes=2, gpus_per_node=4, restart=25.0, restart_by_app=by_app,
                    learn_restart=True, config=AllocatorConfig(payback_seconds=0.0))
    fresh = sim.jobs[1]  # cifar10, not resized yet: the allocator charges the default
    assert sim._charged(fresh) == 25.0 and sim._true_restart(fresh) == 200.0  # noqa: SLF001
    fresh.restarts = 1
    assert sim._charged(fresh) == 200.0  # noqa: SLF001 - what its resizes cost, once it has had one
    r = Simulator(list(TRACE), "elastic", nodes=2, gpus_per_node=4, restart=25.0, restart_by_app=by_app,
                  config=AllocatorConfig(payback_seconds=0.0)).run()
    flat = run("elastic", restart=25.0, config=AllocatorConfig(payback_seconds=0.0))
    assert r["finished"] == r["jobs"] and r["avg_jct"] != flat["avg_jct"]  # the per-model cost is what is charged
