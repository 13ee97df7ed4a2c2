"""The sweep benchmark in its quickest mode: every strategy runs real trials and the page is written."""

from __future__ import annotations

import pytest

from test_bench_smoke import run_quick


@pytest.mark.torchrun
@pytest.mark.timeout(600)
def test_sweeps_quick(tmp_path):
    doc = run_quick("sweeps", tmp_path, 580)
    assert doc["errors"] == [], doc["errors"]
    runs = doc["results"]["runs"]
    assert {r["strategy"] for r in runs} == {"random", "tpe", "random + asha", "tpe + asha", "pbt"}
    # PBT spends the same compute as random search: each of its 2 members trains 12 steps over 4 generations.
    population = next(r for r in runs if r["strategy"] == "pbt")
    assert population["trial_steps"] == 2 * 12 and len(population["trials"]) == 2 * 4
    full = next(r for r in runs if r["strategy"] == "random")
    assert full["trial_steps"] == 2 * 12 and full["states"]["Succeeded"] == 2  # no early stopping: every trial to the end
