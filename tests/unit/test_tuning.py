"""Sweeps without a cluster: the search space onto the template, trials as objects and back,
the study rebuilt from them, pruning decisions and a status that stays small."""

from __future__ import annotations

import json
import random

import pytest

from kubetrain.api.manifests import load_sweeps, parse_sweep
from kubetrain.operator import naming
from kubetrain.tuning import space
from kubetrain.tuning.status import trial_status
from kubetrain.tuning.study import SweepStudy
from kubetrain.tuning.trials import MAX_VALUES, TrialRecord, record_from_job, thin, trial_job
from support.variants import REPO, load_yaml

BODY = {"metadata": {"name": "gpt-lr", "namespace": "ml", "uid": "sweep-uid"}}


def _sweep(**spec_patch):
    manifest = load_yaml(REPO / "examples" / "sweep.yaml", kind="TrainingSweep")
    manifest["spec"] = {**manifest["spec"], **spec_patch}
    return parse_sweep(manifest)


def test_values_land_on_their_template_fields():
    sweep = _sweep(parameters=[
        {"name": "lr", "target": "trainer.learningRate", "type": "float", "min": 1e-4, "max": 1e-2, "log": True},
        {"name": "batch", "target": "trainer.batchSize", "type": "int", "min": 4, "max": 16, "step": 4},
        {"name": "warmup", "target": "trainer.args.warmup_steps", "type": "int", "min": 0, "max": 100},
        {"name": "dropout", "target": "container.env.DROPOUT", "type": "float", "min": 0.0, "max": 0.5},
        {"name": "prec", "target": "precision", "type": "categorical", "values": ["fp32", "bf16"]},
    ])
    job = trial_job(sweep, BODY, 3, {"lr": 0.002, "batch": 8, "warmup": 10, "dropout": 0.1, "prec": "bf16"})
    spec = job["spec"]
    assert spec["trainer"]["learningRate"] == 0.002 and spec["trainer"]["batchSize"] == 8
    assert spec["trainer"]["args"] == {"warmup_steps": "10"} and spec["precision"] == "bf16"
    assert {"name": "DROPOUT", "value": "0.1"} in spec["container"]["env"]
    assert spec["trainer"]["maxSteps"] == 300  # the rest of the template is kept
    meta = job["metadata"]
    assert meta["name"] == "gpt-lr-t3" and meta["labels"][naming.LABEL_TRIAL] == "3"
    assert meta["labels"][naming.LABEL_SWEEP] == "gpt-lr"
    assert json.loads(meta["annotations"][naming.ANNOTATION_TRIAL_PARAMETERS])["lr"] == 0.002
    assert meta["ownerReferences"][0]["kind"] == "TrainingSweep" and meta["ownerReferences"][0]["uid"] == "sweep-uid"


def test_values_that_make_an_invalid_job_fail_the_trial_naming_the_field():
    sweep = _sweep(parameters=[{"name": "batch", "target": "trainer.batchSize", "type": "int", "min": 1, "max": 100000}])
    with pytest.raises(space.InvalidTrial, match="trainer.batchSize"):
        trial_job(sweep, BODY, 0, {"batch": 99999})


def test_grid_lists_every_value():
    sweep = _sweep(algorithm={"type": "grid"}, earlyStopping={"type": "none"}, parameters=[
        {"name": "batch", "target": "trainer.batchSize", "type": "int", "min": 4, "max": 16, "step": 4},
        {"name": "prec", "target": "precision", "type": "categorical", "values": ["fp32", "bf16"]}])
    assert space.grid(sweep.spec.parameters) == {"batch": [4, 8, 12, 16], "prec": ["fp32", "bf16"]}


def _job_of(sweep, number, values, phase=None, reported=None, outcome=None):
    job = trial_job(sweep, BODY, number, values)
    if reported:
        job["metadata"]["annotations"][naming.ANNOTATION_TRIAL_VALUES] = json.dumps(reported)
    if outcome:
        job["metadata"]["annotations"][naming.ANNOTATION_TRIAL_OUTCOME] = outcome
    if phase:
        job["status"] = {"phase": phase, "startTime": f"2026-11-30T10:{number:02d}:00Z"}
    return job


def test_the_study_is_rebuilt_from_the_trial_jobs_and_numbers_go_on():
    (sweep,) = load_sweeps(REPO / "examples" / "sweep.yaml")
    jobs = [
        _job_of(sweep, 0, {"lr": 1e-3, "batch": 8}, "Succeeded", {30: 3.0, 90: 2.0, 300: 1.5}),
        _job_of(sweep, 1, {"lr": 1e-2, "batch": 4}, "Running", {30: 4.0}, outcome="Pruned: behind at step 30"),
        _job_of(sweep, 2, {"lr": 3e-4, "batch": 16}, "Failed", {30: 3.5}),
        _job_of(sweep, 3, {"lr": 5e-4, "batch": 12}, "Running", {30: 2.9}),
        {"metadata": {"name": "stray", "labels": {naming.LABEL_TRIAL: "x"}}},  # malformed: ignored, not fatal
    ]
    records = [r for r in map(record_from_job, jobs) if r is not None]
    assert [(r.number, r.state) for r in records] == [(0, "Succeeded"), (1, "Pruned"), (2, "Failed"), (3, "Running")]
    study = SweepStudy.rebuild(sweep.spec, records)
    states = [t.state.name for t in study.study.trials]
    assert states == ["COMPLETE", "PRUNED", "FAIL", "RUNNING"]
    assert study.study.trials[0].value == 1.5 and study.study.trials[3].intermediate_values == {30: 2.9}
    values = study.ask(4)
    assert set(values) == {"lr", "batch"} and 1e-5 <= values["lr"] <= 0.03 and values["batch"] in (4, 8, 12, 16)
    assert study.trial_of[4] == 4 and study.best(records).number == 0


def test_asha_stops_the_trial_that_is_clearly_behind():
    (sweep,) = load_sweeps(REPO / "examples" / "sweep.yaml")
    finished = [TrialRecord(n, f"gpt-lr-t{n}", "Succeeded", {"lr": 1e-3, "batch": 8},
                            {30: 2.0 + n * 0.01, 90: 1.8, 270: 1.6, 300: 1.5}) for n in range(6)]
    study = SweepStudy.rebuild(sweep.spec, finished)
    study.ask(6)
    study.ask(7)
    assert study.should_prune(6, {30: 4.5}) is True      # far behind every finished trial at the first rung
    assert study.should_prune(7, {30: 1.9}) is False     # ahead: it goes on


def test_status_stays_small_at_ten_thousand_trials():
    rng = random.Random(0)
    states = ["Succeeded", "Pruned", "Failed", "Running", "Pending"]
    records = [TrialRecord(n, f"big-sweep-t{n}", rng.choice(states), {"lr": rng.random(), "batch": 8},
                           {s: rng.random() for s in range(0, 300, 30)}, reason="Pruned: behind" if n % 3 else None)
               for n in range(10_000)]
    (sweep,) = load_sweeps(REPO / "examples" / "sweep.yaml")
    best = SweepStudy(sweep.spec, None, {}).best(records)
    status = trial_status(records, best, None)
    size = len(json.dumps(status))
    assert size < 16 * 1024, size
    assert sum(status["trials"].values()) == 10_000 and len(status["recentTrials"]) == 5
    assert status["bestTrial"]["state"] == "Succeeded"


def test_values_are_thinned_but_keep_the_latest():
    values = {s: float(s) for s in range(0, 10_000, 10)}
    kept = thin(values)
    assert len(kept) <= MAX_VALUES and max(kept) == 9_990 and min(kept) == 0
