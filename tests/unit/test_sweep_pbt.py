"""Population-based training: which parameters may change on resume, the exploit-and-explore decisions,
generations as trial jobs that start from a checkpoint, and an operator restart that changes no decision."""

from __future__ import annotations

import json
import random
from datetime import datetime, timezone

import pytest

from kubetrain.api.manifests import ManifestError, parse_sweep
from kubetrain.api.models import TrainingJob
from kubetrain.api.sweep import PBT_MUTABLE, SearchParameter
from kubetrain.operator import naming
from kubetrain.trainer_env import contract_for
from kubetrain.tuning import pbt
from kubetrain.tuning.plan import SweepMemory, plan_sweep
from kubetrain.tuning.trials import TrialRecord
from support.variants import REPO, load_yaml

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=timezone.utc)
BODY = {"metadata": {"name": "gpt-pbt", "namespace": "ml", "uid": "u-1", "generation": 1}, "status": {}}


def _sweep(**patch):
    manifest = load_yaml(REPO / "examples" / "sweep-pbt.yaml", kind="TrainingSweep")
    manifest["spec"] = {**manifest["spec"], **patch}
    return parse_sweep(manifest)


def _ended(job: dict, phase: str, step: int | None = None, loss: float | None = None) -> dict:
    job = json.loads(json.dumps(job))
    job["status"] = {"phase": phase, "startTime": "2026-11-30T11:00:00Z"}
    if step is not None:
        job["status"]["throughput"] = {"step": step, "loss": loss}
    return job


def _params(job: dict) -> dict:
    return json.loads(job["metadata"]["annotations"][naming.ANNOTATION_TRIAL_PARAMETERS])


def _origin(job: dict) -> dict | None:
    raw = job["metadata"]["annotations"].get(naming.ANNOTATION_TRIAL_ORIGIN)
    return json.loads(raw) if raw else None


@pytest.mark.parametrize("target", ["trainer.sequenceLength", "precision", "compression.powerSGD.rank", "trainer.args.layers"])
def test_only_what_fits_a_copied_checkpoint_may_be_a_pbt_parameter(target):
    assert target not in PBT_MUTABLE
    kind = {"precision": "categorical", "trainer.args.layers": "categorical"}.get(target, "int")
    param = {"name": "p", "target": target, "type": kind}
    param.update({"values": ["bf16", "fp32"]} if kind == "categorical" else {"min": 64, "max": 256})
    with pytest.raises(ManifestError, match="may change on resume"):
        _sweep(parameters=[param])
    # The learning rate and the batch may.
    assert set(PBT_MUTABLE) == {"trainer.learningRate", "trainer.batchSize"}
    _sweep()


def test_explore_perturbs_within_the_range_and_onto_the_step_grid():
    lr = SearchParameter(name="lr", target="trainer.learningRate", type="float", min=1e-4, max=1e-2, log=True)
    batch = SearchParameter(name="batch", target="trainer.batchSize", type="int", min=4, max=16, step=4)
    rng = random.Random(0)
    lrs = {round(pbt.explore(lr, 1e-3, rng, [0.8, 1.2], 0.0), 12) for _ in range(50)}
    assert sorted(lrs) == pytest.approx([8e-4, 1.2e-3])
    assert pbt.explore(lr, 1e-2, random.Random(1), [1.2], 0.0) == 1e-2  # clipped at max
    batches = {pbt.explore(batch, 12, rng, [0.8, 1.2], 0.0) for _ in range(50)}
    assert batches <= {8, 12, 16} and all(isinstance(b, int) for b in batches)
    fresh = [pbt.explore(lr, 1e-3, rng, [0.8, 1.2], 1.0) for _ in range(50)]
    assert all(1e-4 <= x <= 1e-2 for x in fresh) and len(set(fresh)) == 50  # resampled from the range


def _records(losses: list[float | None], base: int = 0) -> list[TrialRecord]:
    return [TrialRecord(base + m, f"gpt-pbt-t{base + m}", "Failed" if loss is None else "Succeeded",
                        {"lr": 1e-3 * (m + 1), "batch": 8}, {100: loss} if loss is not None else {})
            for m, loss in enumerate(losses)]


def test_the_bottom_quantile_and_the_failed_copy_a_top_member():
    sweep = _sweep(maxTrials=8, parallelism=2)  # quantile 0.25 of 8: the bottom two copy one of the top two
    previous = _records([2.0, 1.5, 3.0, 1.8, 2.5, 1.6, 2.2, None])
    decisions = pbt.decide(sweep.spec, previous, "7")
    exploited = {m for m, (_, _, copied) in decisions.items() if copied}
    # Member 7 failed; members 2 (3.0) and 4 (2.5) are the bottom two of those that finished.
    assert exploited == {2, 4, 7}
    for m in exploited:
        parent, params, _ = decisions[m]
        assert parent.number in (1, 5)  # the top two (1.5, 1.6)
        ratio = params["lr"] / parent.params["lr"]
        assert params != parent.params or ratio == pytest.approx(1.0)
    for m in set(range(8)) - exploited:  # everyone else continues its own checkpoint with its own values
        parent, params, _ = decisions[m]
        assert parent.number == m and params == previous[m].params
    # Maximising turns the ranking over.
    up = pbt.decide(_sweep(maxTrials=8, parallelism=2, objective={"metric": "tokensPerSecond", "goal": "maximize"}).spec,
                    previous, "7")
    assert {m for m, (_, _, c) in up.items() if c} == {1, 5, 7}


def test_a_generation_starts_only_when_the_previous_one_has_ended():
    sweep = _sweep()  # population 4, 300 steps in generations of 100: 12 trial jobs
    assert pbt.total_trials(sweep.spec) == 12
    first = plan_sweep(sweep, BODY, [], SweepMemory(), NOW).create
    assert [j["spec"]["trainer"]["maxSteps"] for j in first] == [100, 100] and all(_origin(j) is None for j in first)
    memory = SweepMemory()
    jobs = [_ended(j, "Succeeded", 100, loss) for j, loss in zip(first, (2.0, 3.0))]
    rest = plan_sweep(sweep, BODY, jobs, memory, NOW).create
    assert [j["metadata"]["name"] for j in rest] == ["gpt-pbt-t2", "gpt-pbt-t3"]
    jobs += [_ended(rest[0], "Succeeded", 100, 1.5), _ended(rest[1], "Running", 60, 2.5)]
    assert plan_sweep(sweep, BODY, jobs, memory, NOW).create == []  # t3 still trains: generation 1 waits
    jobs[-1] = _ended(rest[1], "Succeeded", 100, 2.8)
    second = plan_sweep(sweep, BODY, jobs, memory, NOW).create
    assert [j["metadata"]["name"] for j in second] == ["gpt-pbt-t4", "gpt-pbt-t5"]
    for job in second:
        assert job["spec"]["trainer"]["maxSteps"] == 200
        origin = _origin(job)
        # The checkpoint it starts from is its parent trial's, in the same volume, and the annotation says so.
        assert job["spec"]["checkpoint"]["initFrom"] == f"ml/{origin['job']}" == origin["checkpoint"]
        parsed = TrainingJob.model_validate({"metadata": job["metadata"], "spec": job["spec"]})
        assert contract_for(parsed).init_checkpoint_dir.endswith(f"/ml/{origin['job']}")
    # Member 0 (2.0) keeps its own line and values; member 1 (3.0, the worst of four: the bottom quarter) copies
    # the best (member 2, 1.5) with perturbed values.
    assert _origin(second[0]) == {"trial": 0, "job": "gpt-pbt-t0", "checkpoint": "ml/gpt-pbt-t0", "exploited": False}
    assert _params(second[0]) == _params(first[0])
    assert _origin(second[1]) == {"trial": 2, "job": "gpt-pbt-t2", "checkpoint": "ml/gpt-pbt-t2", "exploited": True}
    assert _params(second[1]) != _params(rest[0])


def test_a_restarted_operator_makes_the_same_decisions_and_the_sweep_ends_with_the_last_generation():
    sweep = _sweep(parallelism=4)
    memory, jobs = SweepMemory(), []
    losses = iter([2.0, 2.5, 1.5, 2.8, 1.9, 2.3, 1.2, 2.1, 1.8, 2.0, 1.3, 1.9])
    while True:
        created = plan_sweep(sweep, BODY, jobs, memory, NOW).create
        # A new operator with nothing in memory decides exactly the same trials from the same objects.
        assert plan_sweep(sweep, BODY, jobs, SweepMemory(), NOW).create == created
        if not created:
            break
        jobs += [_ended(j, "Succeeded", j["spec"]["trainer"]["maxSteps"], next(losses)) for j in created]
    assert len(jobs) == 12
    exploited = [_origin(j) for j in jobs[4:] if _origin(j)["exploited"]]
    assert len(exploited) == 2  # one of four per round, two rounds
    final = plan_sweep(sweep, BODY, jobs, SweepMemory(), NOW).status
    assert final["phase"] == "Succeeded"
    # The best is from the last generation (t10, 1.3), not an earlier generation's lower value at fewer steps.
    assert final["bestTrial"]["job"] == "gpt-pbt-t10" and final["bestTrial"]["step"] == 300


def test_a_whole_generation_failing_fails_the_sweep():
    sweep = _sweep(maxFailedTrials=10, parallelism=4)
    created = plan_sweep(sweep, BODY, [], SweepMemory(), NOW).create
    plan = plan_sweep(sweep, BODY, [_ended(j, "Failed") for j in created], SweepMemory(), NOW)
    assert plan.create == [] and plan.status["phase"] == "Failed"
    assert plan.status["conditions"][0]["reason"] == "PopulationFailed"
