"""A sweep's series, fed the way the sweep handler feeds them: from the status plan_sweep writes."""

from __future__ import annotations

from datetime import datetime, timezone

from prometheus_client import CollectorRegistry

from kubetrain.api.manifests import parse_sweep
from kubetrain.contract.metric_names import OPERATOR_SWEEP_LABELS, OperatorMetric
from kubetrain.operator.sweep_metrics import TRIAL_STATES, SweepMetrics
from kubetrain.tuning.plan import SweepMemory, plan_sweep
from support.variants import REPO, load_yaml

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=timezone.utc)


def _value(r: CollectorRegistry, name: str, **labels) -> float | None:
    return r.get_sample_value(name, {"namespace": "ml", "trainingsweep": "gpt-lr", **labels})


def test_trials_by_state_best_value_and_savings_follow_the_status():
    r = CollectorRegistry()
    m = SweepMetrics(r)
    m.observe("ml", "gpt-lr", {"trials": {"pending": 1, "running": 2, "succeeded": 3, "pruned": 4, "failed": 0},
                                "bestTrial": {"number": 2, "job": "gpt-lr-t2", "state": "Succeeded", "value": 1.25},
                                "prunedSteps": 900, "prunedGpuSeconds": 7200.0})
    assert [_value(r, OperatorMetric.SWEEP_TRIALS, state=s) for s in TRIAL_STATES] == [1, 2, 3, 4, 0]
    assert _value(r, OperatorMetric.SWEEP_BEST_VALUE) == 1.25
    assert _value(r, OperatorMetric.SWEEP_SAVED_TRIAL_STEPS) == 900 and _value(r, OperatorMetric.SWEEP_SAVED_GPU_SECONDS) == 7200.0
    # No best trial yet (a sweep just started): no best-value series rather than a made-up 0.
    m.observe("ml", "gpt-lr", {"trials": {"running": 2}})
    assert _value(r, OperatorMetric.SWEEP_BEST_VALUE) is None and _value(r, OperatorMetric.SWEEP_TRIALS, state="Running") == 2
    assert _value(r, OperatorMetric.SWEEP_TRIALS, state="Succeeded") == 0


def test_a_deleted_sweeps_series_go():
    r = CollectorRegistry()
    m = SweepMetrics(r)
    m.observe("ml", "gpt-lr", {"trials": {"running": 1}, "bestTrial": {"value": 2.0}, "prunedSteps": 0})
    m.observe("ml", "other", {"trials": {"running": 1}})
    m.forget("ml", "gpt-lr")
    names = {s.labels.get("trainingsweep") for f in r.collect() for s in f.samples}
    assert names == {"other"}
    m.forget("ml", "never-seen")  # a sweep deleted before its first round: nothing to remove, no error


def test_the_series_of_a_planned_sweep_and_their_labels():
    manifest = load_yaml(REPO / "examples" / "sweep.yaml", kind="TrainingSweep")
    body = {"metadata": {"name": "gpt-lr", "namespace": "ml", "uid": "u-1", "generation": 1}, "status": {}}
    plan = plan_sweep(parse_sweep(manifest), body, [], SweepMemory(), NOW)
    r = CollectorRegistry()
    SweepMetrics(r).observe("ml", "gpt-lr", plan.status)
    assert _value(r, OperatorMetric.SWEEP_TRIALS, state="Pending") == 2
    for fam in r.collect():
        assert fam.type == "gauge" and not fam.name.endswith("_total")
        for sample in fam.samples:
            # Bounded labels, and never Prometheus' own job/instance.
            assert set(sample.labels) <= {*OPERATOR_SWEEP_LABELS, "state"}, sample
            assert sample.labels.get("state", "Pending") in TRIAL_STATES
