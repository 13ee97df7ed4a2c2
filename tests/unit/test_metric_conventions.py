"""Metric names and labels follow Prometheus conventions, and every query uses a metric somebody exports."""

from __future__ import annotations

import re

import pytest
from prometheus_client import CollectorRegistry

from kubetrain.observability import dashboard
from kubetrain.observability.rules import RECORDED, AlertSettings, alerts, rule_groups
from kubetrain.operator.metrics import OperatorMetrics
from kubetrain_trainer.metrics import TrainerMetrics

# The DCGM exporter's series we join (documented in docs/observability.md), with their labels.
DCGM = {"DCGM_FI_DEV_GPU_UTIL", "DCGM_FI_DEV_FB_USED", "DCGM_FI_DEV_POWER_USAGE", "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION"}
UNIT_SUFFIXES = ("_seconds", "_bytes", "_ratio", "_watts", "_joules", "_total", "_per_second")


def _families(registry: CollectorRegistry):
    return list(registry.collect())


def _trainer_registry() -> CollectorRegistry:
    r = CollectorRegistry()
    TrainerMetrics(r, job="j", namespace="ns", pod="p")
    return r


def _operator_registry() -> CollectorRegistry:
    r = CollectorRegistry()
    OperatorMetrics(r)
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


@pytest.mark.parametrize("registry,allowed", [
    (_trainer_registry(), {"job", "namespace", "pod", "local_rank"}),
    (_operator_registry(), {"namespace", "job", "phase", "role", "reason", "state"}),
], ids=["trainer", "operator"])
def test_names_and_labels_follow_conventions(registry, allowed):
    for fam in _families(registry):
        assert fam.name.startswith(("kubetrain_trainer_", "kubetrain_operator_")), fam.name
        assert re.fullmatch(r"[a-z_]+", fam.name), fam.name
        if fam.type in ("histogram",):
            assert fam.name.endswith("_seconds"), fam.name
        if fam.name.endswith("_ratio"):
            assert fam.type == "gauge"
        for sample in fam.samples:
            assert set(sample.labels) - {"le"} <= allowed, (fam.name, sample.labels)
    # Bounded: no step, restart count or rank-of-world labels anywhere.
    text = " ".join(str(s.labels) for f in _families(registry) for s in f.samples)
    assert "step" not in text and "restart" not in text


def test_operator_series_are_dropped_with_the_job():
    from kubetrain.operator.planner import Plan

    r = CollectorRegistry()
    m = OperatorMetrics(r)
    m.observe("ml", "gpt", Plan(restart_reasons=["NodeLost"], scaling_reason="PartialCapacity"),
              {"phase": "Running", "readyReplicas": 2, "desiredReplicas": 3}, 8, 10.0, 42.0)
    assert r.get_sample_value("kubetrain_operator_restarts_total", {"namespace": "ml", "job": "gpt", "reason": "NodeLost"}) == 1
    assert r.get_sample_value("kubetrain_operator_restarts_total", {"namespace": "ml", "job": "gpt", "reason": "OOMKilled"}) == 0
    assert r.get_sample_value("kubetrain_operator_job_gpu_seconds_total", {"namespace": "ml", "job": "gpt"}) == 160
    assert r.get_sample_value("kubetrain_operator_job_phase", {"namespace": "ml", "job": "gpt", "phase": "Running"}) == 1
    m.forget("ml", "gpt")
    leftover = [s for f in r.collect() for s in f.samples if s.labels.get("job") == "gpt"]
    assert leftover == []


def test_alert_thresholds_become_chart_values():
    rules = alerts(AlertSettings.markers())
    assert any("@@stalledWindow@@" in r["expr"] for r in rules)
    assert any("@@checkpointMaxAgeSeconds@@" in r["expr"] for r in rules)

