"""One reconcile of a TrainingSweep, from its trial jobs: creation within parallelism, values recorded,
pruning, restarts that lose and duplicate nothing, suspension, the end of the sweep."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

from kubetrain.api.manifests import parse_sweep
from kubetrain.operator import naming
from kubetrain.tuning.plan import SweepMemory, plan_sweep
from support.variants import REPO, load_yaml

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=timezone.utc)


def _sweep(**patch):
    manifest = load_yaml(REPO / "examples" / "sweep.yaml", kind="TrainingSweep")
    manifest["spec"] = {**manifest["spec"], **patch}
    sweep = parse_sweep(manifest)
    body = {"metadata": {"name": "gpt-lr", "namespace": "ml", "uid": "u-1", "generation": 1}, "status": {}}
    return sweep, body


def _run(job: dict, phase: str | None, step: int | None = None, loss: float | None = None, **annotations) -> dict:
    job = json.loads(json.dumps(job))
    job["metadata"]["annotations"].update(annotations)
    if phase:
        job["status"] = {"phase": phase, "startTime": "2026-11-30T11:00:00Z"}
        if step is not None:
            job["status"]["throughput"] = {"step": step, "loss": loss}
    return job


def test_first_round_creates_parallelism_trials_and_says_so():
    sweep, body = _sweep()
    plan = plan_sweep(sweep, body, [], SweepMemory(), NOW)
    assert [j["metadata"]["name"] for j in plan.create] == ["gpt-lr-t0", "gpt-lr-t1"]
    assert plan.status["phase"] == "Running" and plan.status["trials"]["pending"] == 2
    assert plan.status["startTime"] == "2026-11-30T12:00:00Z"


def test_a_restarted_operator_neither_loses_nor_duplicates_a_trial():
    sweep, body = _sweep()
    first = plan_sweep(sweep, body, [], SweepMemory(), NOW)
    jobs = [_run(first.create[0], "Succeeded", 300, 1.7), _run(first.create[1], "Running", 120, 1.5)]
    # A new operator: nothing in memory, only the objects.
    plan = plan_sweep(sweep, body, jobs, SweepMemory(), NOW)
    assert [j["metadata"]["name"] for j in plan.create] == ["gpt-lr-t2"]  # one slot free, the next number
    params = [json.loads(j["metadata"]["annotations"][naming.ANNOTATION_TRIAL_PARAMETERS]) for j in first.create + plan.create]
    assert len({json.dumps(p, sort_keys=True) for p in params}) == 3
    assert plan.status["trials"]["succeeded"] == 1 and plan.status["bestTrial"]["job"] == "gpt-lr-t0"


def test_values_are_recorded_and_a_trial_far_behind_is_pruned():
    sweep, body = _sweep(maxTrials=8, parallelism=1)
    memory = SweepMemory()
    jobs = []
    for n in range(4):  # four trials that went well, their losses recorded on them by step
        job = plan_sweep(sweep, body, jobs, memory, NOW).create[0]
        job["metadata"]["annotations"][naming.ANNOTATION_TRIAL_VALUES] = json.dumps({"10": 3.0, "30": 2.2 + n / 100, "90": 1.9, "300": 1.6})
        jobs.append(_run(job, "Succeeded", 300, 1.6))
    bad = plan_sweep(sweep, body, jobs, memory, NOW).create[0]
    seen = plan_sweep(sweep, body, jobs + [_run(bad, "Running", 10, 5.4)], memory, NOW)
    assert seen.record_values == {"gpt-lr-t4": {10: 5.4}} and seen.prune == {}
    behind = plan_sweep(sweep, body, jobs + [_run(bad, "Running", 31, 5.1)], memory, NOW)
    assert list(behind.prune) == ["gpt-lr-t4"] and "step 31" in behind.prune["gpt-lr-t4"]
    assert any(e[1] == "TrialPruned" for e in behind.events)
    assert behind.status["trials"]["pruned"] == 1 and behind.status["prunedSteps"] == 300 - 31


def test_suspending_the_sweep_suspends_its_trials_and_starts_none():
    sweep, body = _sweep(suspend=True)
    running = _run(plan_sweep(*_sweep(), [], SweepMemory(), NOW).create[0], "Running", 50, 2.5)
    plan = plan_sweep(sweep, body, [running], SweepMemory(), NOW)
    assert plan.suspend == ["gpt-lr-t0"] and plan.create == [] and plan.status["phase"] == "Suspended"
    running["spec"]["suspend"] = True
    resumed = plan_sweep(*_sweep(), [running], SweepMemory(), NOW)
    assert resumed.resume == ["gpt-lr-t0"]


def test_the_sweep_ends_when_every_trial_has_and_ttl_deletes_it():
    sweep, body = _sweep(maxTrials=2, parallelism=2, ttlSecondsAfterFinished=60)
    created = plan_sweep(sweep, body, [], SweepMemory(), NOW).create
    jobs = [_run(created[0], "Succeeded", 300, 1.7), _run(created[1], "Failed")]
    done = plan_sweep(sweep, body, jobs, SweepMemory(), NOW)
    assert done.status["phase"] == "Succeeded" and done.status["completionTime"] == "2026-11-30T12:00:00Z"
    body["status"] = done.status
    assert not plan_sweep(sweep, body, jobs, SweepMemory(), NOW + timedelta(seconds=30)).delete_sweep
    assert plan_sweep(sweep, body, jobs, SweepMemory(), NOW + timedelta(seconds=61)).delete_sweep


def test_too_many_failed_trials_fail_the_sweep_and_stop_the_rest():
    sweep, body = _sweep(maxFailedTrials=0, parallelism=2)
    created = plan_sweep(sweep, body, [], SweepMemory(), NOW).create
    jobs = [_run(created[0], "Failed"), _run(created[1], "Running", 40, 2.0)]
    plan = plan_sweep(sweep, body, jobs, SweepMemory(), NOW)
    assert plan.status["phase"] == "Failed" and plan.suspend == ["gpt-lr-t1"] and plan.create == []
    assert plan.status["conditions"][0]["reason"] == "TooManyFailedTrials"


def test_grid_search_stops_when_every_combination_ran():
    sweep, body = _sweep(algorithm={"type": "grid"}, earlyStopping={"type": "none"}, maxTrials=50, parallelism=10,
                         parameters=[{"name": "batch", "target": "trainer.batchSize", "type": "int", "min": 4, "max": 8, "step": 4}])
    plan = plan_sweep(sweep, body, [], SweepMemory(), NOW)
    batches = sorted(j["spec"]["trainer"]["batchSize"] for j in plan.create)
    assert batches == [4, 8]


def test_a_pruned_trial_records_the_gpu_time_it_did_not_use():
    sweep, body = _sweep(maxTrials=8, parallelism=1)
    memory, jobs = SweepMemory(), []
    for n in range(4):
        job = plan_sweep(sweep, body, jobs, memory, NOW).create[0]
        job["metadata"]["annotations"][naming.ANNOTATION_TRIAL_VALUES] = json.dumps({"10": 3.0, "30": 2.2, "90": 1.9, "300": 1.6})
        jobs.append(_run(job, "Succeeded", 300, 1.6))
    bad = _run(plan_sweep(sweep, body, jobs, memory, NOW).create[0], "Running", 10, 5.4)
    plan_sweep(sweep, body, jobs + [bad], memory, NOW)
    # 2 ready replicas of 4 GPUs since 11:00, stopped at step 31 at 12:00: 8 GPUs x 3600 s / 31 steps per step,
    # and 269 steps it will not train.
    bad = _run(bad, "Running", 31, 5.1)
    bad["spec"]["container"]["gpusPerReplica"] = 4
    bad["status"]["readyReplicas"] = 2
    behind = plan_sweep(sweep, body, jobs + [bad], memory, NOW)
    expected = round(8 * 3600 / 31 * (300 - 31), 1)
    assert behind.saved_gpu_seconds == {"gpt-lr-t4": expected}
    assert behind.status["prunedGpuSeconds"] == expected
    # Fixed on the trial when it was pruned: a new operator reads it back from the annotation.
    bad["metadata"]["annotations"].update({naming.ANNOTATION_TRIAL_OUTCOME: behind.prune["gpt-lr-t4"],
                                           naming.ANNOTATION_TRIAL_SAVED_GPU_SECONDS: str(expected)})
    bad["spec"]["suspend"] = True
    later = plan_sweep(sweep, body, jobs + [bad], SweepMemory(), NOW + timedelta(hours=1))
    assert later.status["prunedGpuSeconds"] == expected and later.status["trials"]["pruned"] == 1


def test_cpu_trials_save_no_gpu_time():
    from kubetrain.tuning.trials import saved_gpu_seconds

    job = {"spec": {"container": {"gpusPerReplica": 0}}, "status": {"startTime": "2026-11-30T11:00:00Z", "readyReplicas": 2}}
    assert saved_gpu_seconds(job, 31, 300, NOW) == 0.0
    job["spec"]["container"]["gpusPerReplica"] = 1
    assert saved_gpu_seconds(job, 0, 300, NOW) == 0.0  # no step made yet: no pace to go by
    assert saved_gpu_seconds(job, 150, 300, NOW) == 2 * 3600.0
