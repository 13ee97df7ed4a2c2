"""Metric names and labels follow Prometheus conventions, and every query uses a metric somebody exports.

The one conventions check of kubetrain's series (``check_conventions``): it serves the trainer's
registry and the operator's alike.
"""

from __future__ import annotations

import re

import pytest
from prometheus_client import REGISTRY, CollectorRegistry, Gauge

from kubetrain.contract.metric_names import OPERATOR_LABELS, TARGET_LABELS, TRAINER_PROCESS_LABELS, TRAININGJOB, OperatorMetric, TrainerMetric
from kubetrain.observability import dashboard
from kubetrain.observability.rules import RECORDED, AlertSettings, alerts, rule_groups
from kubetrain.operator.metrics import OperatorMetrics
from kubetrain.operator.planner import Plan
from kubetrain.operator.sweep_metrics import SweepMetrics
from kubetrain_trainer.metrics import TrainerMetrics
from kubetrain_trainer.stats import StepStats

# The DCGM exporter's series we join (documented in docs/observability.md), with their labels.
DCGM = {"DCGM_FI_DEV_GPU_UTIL", "DCGM_FI_DEV_FB_USED", "DCGM_FI_DEV_POWER_USAGE", "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION"}
# Base units only, spelled out as the name's suffix (prometheus_client drops a counter's _total from the family name).
UNIT_SUFFIXES = ("_seconds", "_bytes", "_ratio", "_watts", "_joules")
NON_BASE_UNIT = re.compile(r"(milli|micro|nano|kilo|mega|giga)(seconds|bytes|watts|joules)|_(ms|us|percent|minutes|hours)(_|$)")
# Counts and rates of samples or tokens have no base unit to suffix (the gradient noise scale is a batch size, in samples).
UNITLESS_GAUGES = {"kubetrain_trainer_loss", "kubetrain_trainer_step", "kubetrain_trainer_max_steps", "kubetrain_trainer_world_size",
                   "kubetrain_trainer_tokens_per_second", "kubetrain_trainer_samples_per_second",
                   "kubetrain_trainer_gradient_noise_scale", "kubetrain_operator_job_phase", "kubetrain_operator_job_pods",
                   "kubetrain_operator_job_replicas", "kubetrain_operator_job_gpus", "kubetrain_operator_job_trainer_metrics",
                   "kubetrain_operator_job_allocated_replicas", OperatorMetric.SWEEP_TRIALS, OperatorMetric.SWEEP_BEST_VALUE,
                   OperatorMetric.SWEEP_SAVED_TRIAL_STEPS}


def _families(registry: CollectorRegistry):
    return list(registry.collect())


def _trainer_registry() -> CollectorRegistry:
    """A trainer registry after one step, one checkpoint and GPU readings: every family has samples.

    A labelled family has no samples until something is recorded, so an empty registry would let
    any label name through the label check below.
    """
    r = CollectorRegistry()
    m = TrainerMetrics(r, trainingjob="j", namespace="ns", pod="p")
    m.observe_start(step=0, world_size=2, max_steps=100, restart_count=1)
    m.observe_step(step=1, loss=2.5, step_seconds=0.5, pod_tokens=4096, pod_samples=8, tokens_per_second=8192,
                   samples_per_second=16, mfu=0.4, goodput=0.9, noise_scale=120.0,
                   processes=[StepStats(local_rank=0, communicated_bytes=1e6, data_loading_seconds=0.1, cpu_seconds=1.0,
                                        rss_bytes=1e9, gpu_utilization=0.8, gpu_memory_bytes=1e9, gpu_power_watts=300,
                                        gpu_energy_joules=1000, compression_error=0.2)])
    m.observe_checkpoint(completed_at=1_700_000_000, seconds=2.0)
    return r


def _operator_registry() -> CollectorRegistry:
    """An operator registry fed the way reconcile.record_metrics feeds it, so every family has samples."""
    r = CollectorRegistry()
    m = OperatorMetrics(r)
    m.observe("ml", "gpt", Plan(restart_reasons=["NodeLost"], scaling_reason="PartialCapacity"),
              {"phase": "Running", "desiredReplicas": 2, "currentReplicas": 2, "readyReplicas": 2}, 8, 5.0, 30.0, trainer_metrics=True)
    m.reconcile.observe(0.01)
    SweepMetrics(r).observe("ml", "lr", {"trials": {"running": 1, "pruned": 1}, "bestTrial": {"value": 1.5},
                                         "prunedSteps": 200, "prunedGpuSeconds": 3600.0})
    m.reconcile_errors.inc()
    m.allocated.labels("ml", "gpt").set(2)
    return r


def exported_series() -> set[str]:
    """Every series name the trainer and operator can expose (histogram and counter suffixes included)."""
    names = set()
    for registry in (_trainer_registry(), _operator_registry()):
        for fam in _families(registry):
            if fam.type == "counter":
                names.add(fam.name + "_total")
            elif fam.type == "histogram":
                names |= {fam.name + s for s in ("_bucket", "_sum", "_count")}
            else:
                names.add(fam.name)
    return names


METRIC = re.compile(r"\b(kubetrain[_:][a-zA-Z0-9_:]*|DCGM_[A-Z0-9_]+)")


def unknown_metrics(expr: str) -> set[str]:
    known = exported_series() | set(RECORDED) | DCGM
    return {m for m in METRIC.findall(expr) if m not in known}


def _all_queries() -> list[str]:
    exprs = [e for p in dashboard.panels() for e, _ in p.queries]
    exprs.append(dashboard.build_dashboard().build().annotations.list_val[0].expr)
    exprs += [v.query for v in dashboard.build_dashboard().build().templating.list_val if isinstance(v.query, str)]
    for group in rule_groups()["groups"]:
        exprs += [r["expr"] for r in group["rules"]]
    return exprs


@pytest.mark.parametrize("expr", _all_queries())
def test_every_query_uses_exported_metrics(expr):
    assert unknown_metrics(expr) == set(), expr


def test_the_check_catches_a_metric_nobody_exports():
    assert unknown_metrics("sum(kubetrain_trainer_tokens_per_secnd)") == {"kubetrain_trainer_tokens_per_secnd"}
    assert unknown_metrics("rate(kubetrain_operator_reconcile_duration_seconds_bucket[5m])") == set()


def check_conventions(registry: CollectorRegistry, allowed: set[str] | frozenset[str]) -> None:
    """Every kubetrain family in ``registry``: Prometheus' naming conventions, and labels from ``allowed`` only."""
    for fam in _families(registry):
        assert fam.name.startswith(("kubetrain_trainer_", "kubetrain_operator_")), fam.name
        assert re.fullmatch(r"[a-z_]+", fam.name), fam.name
        assert not NON_BASE_UNIT.search(fam.name), fam.name
        units = [u for u in UNIT_SUFFIXES if u + "_" in fam.name]
        assert not units, f"{fam.name}: a unit belongs at the end of the name"
        if fam.type == "histogram":
            assert fam.name.endswith("_seconds"), fam.name
        if fam.type == "counter":
            assert all(s.name.endswith(("_total", "_created")) for s in fam.samples), fam.name
        else:
            assert not fam.name.endswith("_total"), fam.name
        if fam.type == "gauge" and fam.name not in UNITLESS_GAUGES:
            assert fam.name.endswith(UNIT_SUFFIXES), f"{fam.name}: base-unit suffix missing"
        if fam.name.endswith("_ratio"):
            assert fam.type == "gauge"
            assert all(0 <= s.value <= 1 for s in fam.samples), fam.name
        # Without samples the label check below would pass whatever the labels are.
        assert fam.samples, f"{fam.name} has no samples: record something for it in the registry helper"
        for sample in fam.samples:
            labels = set(sample.labels) - {"le"}
            # Prometheus' own target labels: a plain scrape renames ours (exported_job), honor_labels lets ours
            # overwrite the scrape job that up{job=...} relies on.
            assert not labels & TARGET_LABELS, (fam.name, sample.labels)
            # A closed set: a step, restart count or global rank label fails here.
            assert labels <= allowed, (fam.name, sample.labels)


@pytest.mark.parametrize("registry,allowed", [
    (_trainer_registry(), frozenset(TRAINER_PROCESS_LABELS)),
    (_operator_registry(), OPERATOR_LABELS),
], ids=["trainer", "operator"])
def test_names_and_labels_follow_conventions(registry, allowed):
    check_conventions(registry, allowed)


def test_metric_names_lists_exactly_what_is_exported():
    declared = {v for cls in (TrainerMetric, OperatorMetric) for k, v in vars(cls).items() if k.isupper()}
    exported = {f.name + ("_total" if f.type == "counter" else "")
                for r in (_trainer_registry(), _operator_registry()) for f in _families(r)}
    assert declared == exported


def test_nothing_goes_to_the_process_global_registry():
    _trainer_registry(), _operator_registry()
    assert not [f for f in REGISTRY.collect() if f.name.startswith("kubetrain")]


def test_the_job_is_named_trainingjob_on_both_sides():
    trainer = {s.labels.get(TRAININGJOB) for f in _families(_trainer_registry()) for s in f.samples}
    operator = {s.labels.get(TRAININGJOB) for f in _families(_operator_registry()) if f.name.startswith("kubetrain_operator_job")
                for s in f.samples}
    assert trainer == {"j"} and operator == {"gpt"}


@pytest.mark.parametrize("label", sorted(TARGET_LABELS))
def test_the_check_refuses_a_label_prometheus_owns(label):
    r = _operator_registry()
    Gauge("kubetrain_operator_job_things", "A job's things.", ["namespace", label], registry=r).labels("ml", "gpt").set(1)
    with pytest.raises(AssertionError, match=f"'{label}': 'gpt'"):
        check_conventions(r, OPERATOR_LABELS | {label})


def test_the_label_check_catches_an_unbounded_label():
    r = _operator_registry()
    Gauge("kubetrain_operator_job_step", "A label that grows without bound.", ["namespace", "trainingjob", "step"], registry=r).labels("ml", "gpt", "7").set(1)
    with pytest.raises(AssertionError, match="'step': '7'"):
        check_conventions(r, OPERATOR_LABELS)


def test_the_check_catches_a_ratio_outside_zero_to_one():
    r = CollectorRegistry()
    Gauge("kubetrain_trainer_goodput_ratio", "Out of range.", ["trainingjob"], registry=r).labels("j").set(1.5)
    with pytest.raises(AssertionError, match="kubetrain_trainer_goodput_ratio"):
        check_conventions(r, frozenset(TRAINER_PROCESS_LABELS))


def test_operator_series_are_dropped_with_the_job():
    r = CollectorRegistry()
    m = OperatorMetrics(r)
    m.observe("ml", "gpt", Plan(restart_reasons=["NodeLost"], scaling_reason="PartialCapacity"),
              {"phase": "Running", "readyReplicas": 2, "desiredReplicas": 3}, 8, 10.0, 42.0, trainer_metrics=True)
    job = {"namespace": "ml", "trainingjob": "gpt"}
    assert r.get_sample_value("kubetrain_operator_restarts_total", {**job, "reason": "NodeLost"}) == 1
    assert r.get_sample_value("kubetrain_operator_restarts_total", {**job, "reason": "OOMKilled"}) == 0
    assert r.get_sample_value("kubetrain_operator_job_gpu_seconds_total", job) == 160
    assert r.get_sample_value("kubetrain_operator_job_phase", {**job, "phase": "Running"}) == 1
    m.forget("ml", "gpt")
    leftover = [s for f in r.collect() for s in f.samples if s.labels.get("trainingjob") == "gpt"]
    assert leftover == []


def test_alert_thresholds_become_chart_values():
    rules = alerts(AlertSettings.markers())
    assert any("@@stalledWindow@@" in r["expr"] for r in rules)
    assert any("@@checkpointMaxAgeSeconds@@" in r["expr"] for r in rules)

