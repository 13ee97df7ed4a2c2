"""Every file generated from code: ``make generate`` (alias ``make crds``) writes them, a test fails on drift.

- the CRD (crds/ and the chart's copy) and docs/api-reference.md, from the API models;
- the Grafana dashboard JSON and the Prometheus rules, from kubetrain.observability.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from kubetrain.api import crd

DASHBOARD = Path("charts/kubetrain/dashboards/kubetrain-training.json")
# The chart's PrometheusRule reads this file and replaces each @@name@@ with .Values.monitoring.alerts.name.
CHART_RULES = Path("charts/kubetrain/files/rules.yaml")
# The same rules with the default thresholds: a plain Prometheus loads this file as it is.
PROMETHEUS_RULES = Path("docs/prometheus/kubetrain-rules.yaml")

HEADER = "# Generated from operator/kubetrain/observability by `make generate`. Do not edit.\n"


def _observability(repo_root: Path) -> dict[Path, str]:
    from kubetrain.observability.dashboard import render_dashboard
    from kubetrain.observability.rules import AlertSettings, rule_groups

    dump = lambda obj: HEADER + yaml.safe_dump(obj, sort_keys=False, width=200)  # noqa: E731
    return {
        repo_root / DASHBOARD: render_dashboard(),
        repo_root / CHART_RULES: dump(rule_groups(AlertSettings.markers())),
        repo_root / PROMETHEUS_RULES: dump(rule_groups()),
    }


def generated_files(repo_root: Path) -> dict[Path, str]:
    return {**crd.generated_files(repo_root), **_observability(repo_root)}


def write_all(repo_root: Path) -> list[Path]:
    written = []
    for path, text in generated_files(repo_root).items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        written.append(path)
    return written


def drifted(repo_root: Path) -> list[Path]:
    return [p for p, text in generated_files(repo_root).items() if not p.is_file() or p.read_text() != text]
