"""Prometheus recording and alerting rules for training jobs, generated from ``promql``.

``rule_groups(AlertSettings())`` gives the rule file promtool checks and tests;
the chart's PrometheusRule is rendered from the same function with Helm value
references as the settings, so the alert thresholds are chart values.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from kubetrain.contract.metric_names import OperatorMetric as O, TrainerMetric as T
from kubetrain.observability import promql as q


@dataclass(frozen=True)
class AlertSettings:
    """Alert thresholds. Strings, so the chart can substitute ``{{ .Values... }}`` for each."""

    stalled_window: str = "15m"  # no step progress, or no step series at all, for this long while active
    throughput_drop_ratio: str = "0.5"  # tokens/s below this share of the last hour's average
    restarts_per_hour: str = "3"
    gpu_idle_ratio: str = "0.1"  # mean GPU utilisation below this while Running
    gpu_idle_for: str = "15m"
    checkpoint_max_age_seconds: str = "3600"

    @classmethod
    def markers(cls) -> "AlertSettings":
        """Placeholders the chart renderer turns into ``{{ .Values.monitoring.alerts.<name> }}``."""
        return cls(**{f.name: f"@@{_camel(f.name)}@@" for f in fields(cls)})


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(w.title() for w in rest)


RECORDED = {
    "kubetrain:job_tokens_per_second:sum": q.tokens_per_second(),
    "kubetrain:job_samples_per_second:sum": q.samples_per_second(),
    "kubetrain:job_step:max": q.step(),
    q.POD_TO_JOB: q.pod_to_job(),
    "kubetrain:job_gpu_utilization:ratio": q.gpu_utilization(),
    # DCGM exporter, joined by pod (its utilisation is 0-100, its energy in millijoules).
    "kubetrain:job_dcgm_gpu_utilization:ratio": q.dcgm_by_job("DCGM_FI_DEV_GPU_UTIL", "avg", 100),
    "kubetrain:job_dcgm_framebuffer_used:bytes": q.dcgm_by_job("DCGM_FI_DEV_FB_USED", "sum", 1 / (1024 * 1024)),
    "kubetrain:job_dcgm_power:watts": q.dcgm_by_job("DCGM_FI_DEV_POWER_USAGE", "sum"),
    "kubetrain:job_dcgm_energy:joules": q.dcgm_by_job("DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION", "sum", 1000),
}


def _alert(name: str, expr: str, duration: str, severity: str, summary: str, description: str) -> dict[str, Any]:
    return {
        "alert": name,
        "expr": expr,
        "for": duration,
        "labels": {"severity": severity},
        "annotations": {"summary": summary, "description": description},
    }


def alerts(s: AlertSettings) -> list[dict[str, Any]]:
    running = f"on ({q.BY_JOB}) ({q.running()})"
    w = s.stalled_window
    # A job whose trainer exports nothing (stuck in rendezvous, crash-looping) has no step series for
    # changes() to see: catch it from the operator's side. Active at every minute of the window, and
    # already active a window ago (min_over_time alone would pass a job that started minutes ago).
    active_throughout = f"min_over_time(({q.active()})[{w}:1m]) == 1 and on ({q.BY_JOB}) {q.active(offset=w)} == 1"
    # Only jobs whose trainer was asked to export metrics (spec.metrics.enabled) can go silent.
    exporting = f"on ({q.BY_JOB}) {O.JOB_TRAINER_METRICS} == 1"
    silent = f"({active_throughout} and {exporting}) unless on ({q.BY_JOB}) max_over_time({T.STEP}[{w}])"
    return [
        _alert(
            "KubetrainJobStalled",
            f"(max by ({q.BY_JOB}) (changes({T.STEP}[{w}])) == 0 and {running}) or ({silent})",
            "1m", "warning",
            "Training job {{ $labels.namespace }}/{{ $labels.trainingjob }} makes no progress",
            f"The job-wide step has not advanced for {w} while the job is Running, "
            f"or its trainer has exported no step for {w} while the operator keeps the job active.",
        ),
        _alert(
            "KubetrainThroughputDropped",
            f"kubetrain:job_tokens_per_second:sum < {s.throughput_drop_ratio} * "
            "avg_over_time(kubetrain:job_tokens_per_second:sum[1h] offset 10m)",
            "10m", "warning",
            "Throughput of {{ $labels.namespace }}/{{ $labels.trainingjob }} dropped sharply",
            f"Tokens/s are below {s.throughput_drop_ratio} of the previous hour's average.",
        ),
        _alert(
            "KubetrainRestartsClimbing",
            f"sum by ({q.BY_JOB}) (increase({O.RESTARTS}[1h])) >= {s.restarts_per_hour}",
            "0m", "warning",
            "{{ $labels.namespace }}/{{ $labels.trainingjob }} keeps restarting",
            f"At least {s.restarts_per_hour} restarts in the last hour.",
        ),
        _alert(
            "KubetrainGPUsIdle",
            f"kubetrain:job_gpu_utilization:ratio < {s.gpu_idle_ratio} and {running}",
            s.gpu_idle_for, "warning",
            "GPUs of {{ $labels.namespace }}/{{ $labels.trainingjob }} are idle",
            f"Mean GPU utilisation is below {s.gpu_idle_ratio} while the job is Running.",
        ),
        _alert(
            "KubetrainJobFailed",
            f'{O.JOB_PHASE}{{phase="Failed"}} == 1',
            "0m", "critical",
            "Training job {{ $labels.namespace }}/{{ $labels.trainingjob }} failed",
            "See `kubectl describe tj {{ $labels.trainingjob }} -n {{ $labels.namespace }}` for the reason.",
        ),
        _alert(
            "KubetrainCheckpointStale",
            f"({q.checkpoint_age_seconds()}) > {s.checkpoint_max_age_seconds} and {running}",
            "5m", "warning",
            "Checkpoint of {{ $labels.namespace }}/{{ $labels.trainingjob }} is old",
            f"The newest complete checkpoint is older than {s.checkpoint_max_age_seconds} s: "
            "a failure now would lose that much progress.",
        ),
    ]


def rule_groups(settings: AlertSettings = AlertSettings()) -> dict[str, Any]:
    return {
        "groups": [
            {"name": "kubetrain.recording", "interval": "30s",
             "rules": [{"record": name, "expr": expr} for name, expr in RECORDED.items()]},
            {"name": "kubetrain.alerts", "rules": alerts(settings)},
        ]
    }
