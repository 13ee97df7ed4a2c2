"""`kubetrain sweep` on this CPU: real trials of the built-in GPT over the learning rate, ASHA pruning the
clearly bad ones, and a best result as good as running every trial to the end."""

from __future__ import annotations

import io

import pytest

from kubetrain.api.manifests import parse_sweep
from kubetrain.local_sweep import run_sweep
from kubetrain.tuning.reports import ObjectiveReports

# Tiny on purpose: 6 trials x 45 steps twice (with and without early stopping) on 2 cores.
SWEEP = {
    "apiVersion": "kubetrain.dev/v1alpha1", "kind": "TrainingSweep", "metadata": {"name": "lr-cpu"},
    "spec": {
        "template": {"spec": {"trainer": {"maxSteps": 45, "batchSize": 8, "sequenceLength": 32,
                                          "args": {"layers": "1", "d_model": "64", "heads": "2", "corpus_chars": "60000"}}}},
        "parameters": [{"name": "lr", "target": "trainer.learningRate", "type": "float", "min": 1e-5, "max": 3e-2, "log": True}],
        # Random draws do not depend on results: both runs train the same six learning rates.
        "algorithm": {"type": "random", "seed": 3},
        "earlyStopping": {"type": "asha", "minSteps": 5, "reductionFactor": 3},
        "maxTrials": 6, "parallelism": 3,
    },
}


def _run(tmp_path, early_stopping: str):
    manifest = {**SWEEP, "spec": {**SWEEP["spec"], "earlyStopping": {**SWEEP["spec"]["earlyStopping"], "type": early_stopping}}}
    out = io.StringIO()
    result = run_sweep(parse_sweep(manifest), workdir=tmp_path / early_stopping, out=out)
    print(out.getvalue())
    return result


@pytest.mark.timeout(900)
def test_asha_prunes_bad_learning_rates_and_keeps_the_best(tmp_path):
    full = _run(tmp_path, "none")
    assert full.returncode == 0 and [r.state for r in full.trials] == ["Succeeded"] * 6
    asha = _run(tmp_path, "asha")
    assert asha.returncode == 0
    assert [r.params for r in asha.trials] == [r.params for r in full.trials]
    pruned = [r for r in asha.trials if r.state == "Pruned"]
    assert pruned, "ASHA stopped no trial"
    assert asha.saved_steps > 0
    final = {r.number: r.last[1] for r in full.trials}
    # What ASHA stopped was worse at the end than what it kept: the worst it pruned did not beat
    # the best it let finish (each judged by the full run, which trained it to the end).
    kept = [r.number for r in asha.trials if r.state == "Succeeded"]
    assert min(final[n] for n in kept) <= min(final[r.number] for r in pruned)
    # And the sweep's answer is as good as running all six to the end (same seed, same data: the
    # same trial trains the same way, so "within noise" is a few percent at most).
    assert asha.best.last[1] <= full.best.last[1] * 1.05
    assert asha.best.state == "Succeeded"


def test_reports_are_means_between_report_steps():
    reports = ObjectiveReports(every=10)
    assert reports.observe(0, 5.0) == {0: 5.0}
    assert reports.observe(4, 4.0) == {} and reports.observe(4, 9.9) == {}  # the same step again is not news
    assert reports.observe(10, 2.0) == {10: 3.0}
    assert reports.observe(31, 1.0) == {31: 1.0}


# Population-based training, small: 3 members x 45 steps in 3 generations of 15 (9 trial jobs). Seed 1 draws
# learning rates 2.8e-4, 3.2e-3 and 1e-5: the last learns almost nothing on its own. No resampling, so every
# copy is a top member's rate times 0.8 or 1.2.
PBT = {
    "apiVersion": "kubetrain.dev/v1alpha1", "kind": "TrainingSweep", "metadata": {"name": "pbt-cpu"},
    "spec": {
        "template": {"spec": {"trainer": {"maxSteps": 45, "batchSize": 8, "sequenceLength": 32,
                                          "args": {"layers": "1", "d_model": "64", "heads": "2", "corpus_chars": "60000"}},
                              "checkpoint": {"persistentVolumeClaim": {"claimName": "local"}, "intervalSteps": 15}}},
        "parameters": [{"name": "lr", "target": "trainer.learningRate", "type": "float", "min": 1e-5, "max": 3e-2, "log": True}],
        "algorithm": {"type": "pbt", "seed": 1, "pbt": {"intervalSteps": 15, "resampleProbability": 0}},
        "earlyStopping": {"type": "none"},
        "maxTrials": 3, "parallelism": 3,
    },
}


@pytest.mark.timeout(900)
def test_pbt_replaces_the_worst_member_with_a_copy_of_the_best(tmp_path):
    out = io.StringIO()
    result = run_sweep(parse_sweep(PBT), workdir=tmp_path, out=out)
    print(out.getvalue())
    assert result.returncode == 0 and [r.state for r in result.trials] == ["Succeeded"] * 9
    by = {r.number: r for r in result.trials}
    final = {n: by[n].last[1] for n in by}
    for number, rec in by.items():
        generation = number // 3
        # A later generation's trial trained on from its generation's start, from a checkpoint (not from step 0).
        assert rec.last[0] == 15 * (generation + 1) and min(rec.values) > 15 * generation
        # Its checkpoints are its own, under the sweep's one checkpoint root.
        assert (tmp_path / "checkpoints" / "default" / rec.job).is_dir()
    gen0 = {m: final[m] for m in range(3)}
    worst, best = max(gen0, key=gen0.get), min(gen0, key=gen0.get)
    # The worst member's next trial copied the best one's checkpoint with its learning rate perturbed.
    assert by[3 + worst].params["lr"] in (pytest.approx(by[best].params["lr"] * 0.8), pytest.approx(by[best].params["lr"] * 1.2))
    assert "from trial" in out.getvalue() and "exploited" in out.getvalue()
    # And it ended near the best member instead of where its own learning rate had left it.
    last = {m: final[6 + m] for m in range(3)}
    assert abs(last[worst] - min(last.values())) < abs(gen0[worst] - gen0[best])
    assert result.best.number in (6, 7, 8)
