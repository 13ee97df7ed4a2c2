"""The loss-cost benchmark's arithmetic, on made-up loss curves (no training, no timing)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from bench import compression_loss as cl  # noqa: E402

P = dict(cl.FULL, steps=100, seeds=[0, 1], ablation_both_off=True)


def _rec(mode: str, losses: list[float], bytes_per_step: list[int]) -> dict:
    return {"mode": mode, "ok": True, "losses": losses, "comm_bytes": bytes_per_step, "step_seconds": [0.1] * len(losses),
            "params": 10}


def test_trailing_means_average_the_last_window_and_fewer_at_the_start():
    assert cl.trailing_means([4, 2, 6, 0], 2) == [4, 3, 4, 3]


def test_first_step_at_or_below_is_one_based_and_none_when_never_reached():
    assert cl.first_step_at_or_below([3, 2, 1], 2) == 2
    assert cl.first_step_at_or_below([3, 2.5], 2) is None


def test_start_iteration_is_a_fraction_of_the_steps_but_at_least_two_with_error_feedback_or_warm_start():
    assert cl.start_iteration(0.05, 300) == 15
    assert cl.start_iteration(0.01, 100) == 2
    assert cl.start_iteration(0.01, 100, needs_two=False) == 1


def test_every_mode_runs_at_every_seed_seed_major_from_the_same_base():
    spec = cl.worker_spec(P)
    keys = [m["key"] for m in spec["modes"]]
    n = len(cl.configs(P))
    assert len(keys) == len(set(keys)) == 2 * n
    assert all(k.endswith("@0") for k in keys[:n]) and all(k.endswith("@1") for k in keys[n:])
    assert {m["contract"]["seed"] for m in spec["modes"]} == {0, 1}
    psgd = [m["contract"] for m in spec["modes"] if m["contract"]["compression"] == "powersgd"]
    assert {1, 2, 4, 8} <= {c["powersgd_rank"] for c in psgd}
    assert {0.01, 0.2} <= {f for _, f in P["powersgd"]}
    assert {(c["powersgd_error_feedback"], c["powersgd_warm_start"]) for c in psgd} == {(True, True), (False, True),
                                                                                          (True, False), (False, False)}
    assert spec["contract"]["max_steps"] == 100


def test_loss_cost_steps_to_reference_and_saving_against_the_same_seed():
    steps = 100
    ref = _rec("none@0", [2.0] * steps, [1000] * steps)
    # Compressed: 10 warm-up steps of full bytes, then 1/100; its loss 5% higher until step 50, then equal.
    losses = [2.1] * 50 + [2.0] * 50
    rec = _rec("x@0", losses, [1000] * 10 + [10] * 90)
    r = cl.per_run(rec, ref, window=10)
    assert r["loss_cost"] == pytest.approx(0.0)
    assert r["steps_to_reference"] == 60  # the trailing 10-step mean is back to 2.0 at step 60
    assert r["seconds_to_reference"] == pytest.approx(6.0)
    assert r["saving"] == pytest.approx(1000 / ((10 * 1000 + 90 * 10) / 100))
    assert r["curve_relative"][0] == pytest.approx(1.05) and r["curve_relative"][-1] == pytest.approx(1.0)

    worse = cl.per_run(_rec("y@0", [2.2] * steps, [10] * steps), ref, window=10)
    assert worse["loss_cost"] == pytest.approx(0.1)
    assert worse["steps_to_reference"] is None and worse["seconds_to_reference"] is None
    learning = cl.per_run(_rec("z@0", [3.0] * 50 + [2.5] * 50, [10] * steps), _rec("none@0", [4.0] * 20 + [2.5] * 80, [1000] * steps), window=10)
    assert learning["reference_steps_to_final"] == 30  # none's trailing mean reached z's final loss (2.5) at step 30


def test_goal_and_trade_off_come_from_the_median_over_seeds_and_the_whole_job_bytes():
    p = dict(P, powersgd=[[1, 0.05], [2, 0.05]], ablation=[1, 0.05], casts=["fp16"])
    steps = p["steps"]
    records = []
    for seed in p["seeds"]:
        records.append(_rec(f"none@{seed}", [2.0] * steps, [1000] * steps))
        records.append(_rec(f"fp16@{seed}", [2.0] * steps, [500] * steps))
        for c in cl.configs(p):
            if c["key"].startswith("powersgd/"):
                start = c["contract"]["powersgd_start_iteration"]
                cost = 0.005 if c["rank"] == 2 and c["error_feedback"] and c["warm_start"] else 0.05
                records.append(_rec(f"{c['key']}@{seed}", [2.0 * (1 + cost)] * steps, [1000] * start + [50] * (steps - start)))
    res = cl.analyse({"records": records, "world_size": 2, "device_name": "cpu"}, p)
    m = res["modes"]
    assert m["fp16"]["saving"] == pytest.approx(2.0) and not m["fp16"]["meets_goal"]
    good = "powersgd/r2/s0.05/ef+ws"
    assert m[good]["loss_cost"]["median"] == pytest.approx(0.005) and m[good]["loss_cost"]["n"] == 2
    assert m[good]["saving"] == pytest.approx(1000 / ((5 * 1000 + 95 * 50) / 100))  # 10.3x: the warm-up counts
    assert m[good]["meets_goal"]
    assert res["trade_off"]["meeting_goal"] == [good]
    assert res["trade_off"]["best_cost_at_saving"] == good == res["trade_off"]["best_saving_at_cost"]
    md = cl.markdown(res, p)
    assert "**yes**" in md and "not reached in 100" in md


def test_a_mode_without_its_seed_reference_is_left_out_not_compared_to_another_seed():
    p = dict(P, powersgd=[[1, 0.05]], ablation=[1, 0.05], casts=[])
    res = cl.analyse({"records": [_rec("none@0", [2.0] * 100, [1000] * 100), _rec("powersgd/r1/s0.05/ef+ws@1", [1.0] * 100, [1] * 100)],
                      "world_size": 2, "device_name": "cpu"}, p)
    assert "powersgd/r1/s0.05/ef+ws" not in res["modes"]


def test_the_page_is_rebuilt_from_the_raw_figures_kept_in_the_json():
    p = dict(P, powersgd=[[1, 0.05]], ablation=[1, 0.05], casts=[])
    records = [_rec("none@0", [2.0] * 100, [1000] * 100), _rec("powersgd/r1/s0.05/ef+ws@0", [2.2] * 100, [1000] * 5 + [10] * 95)]
    res = cl.analyse({"records": records, "world_size": 2, "device_name": "cpu"}, p)
    assert [r["mode"] for r in res["raw"]["records"]] == ["none@0", "powersgd/r1/s0.05/ef+ws@0"]
    res["modes"] = {}  # what an older analysis left, or nothing: render re-analyses the raw figures
    md = cl.render({"results": res, "params": p})
    assert "+10.0%" in md and "PowerSGD r1, start 5% (5)" in md
