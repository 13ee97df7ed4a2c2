"""The generated rules: promtool checks them, and unit-tests every alert firing and not firing."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from kubetrain.observability.rules import AlertSettings, alerts, rule_groups

PROMTOOL = shutil.which("promtool")
pytestmark = pytest.mark.skipif(PROMTOOL is None, reason="promtool is installed by `make tools` (Debian's prometheus)")


# The scrape job Prometheus gives each series (the chart's two PodMonitors, the DCGM exporter): the rules must join the
# trainer's series and the operator's on the TrainingJob (namespace, trainingjob), never on `job`.
SCRAPE_JOBS = {"kubetrain_trainer_": "kubetrain-trainers", "kubetrain_operator_": "kubetrain", "DCGM_": "dcgm-exporter"}


def _series(metric: str, values: str, **labels: str) -> dict:
    scrape = next((job for prefix, job in SCRAPE_JOBS.items() if metric.startswith(prefix)), None)
    labels = {**labels, **({"job": scrape} if scrape else {})}
    inner = ", ".join(f'{k}="{v}"' for k, v in labels.items())
    return {"series": f"{metric}{{{inner}}}", "values": values}


def _job(job: str, **extra: str) -> dict:
    return {"namespace": "ml", "trainingjob": job, **extra}


def _running(job: str, minutes: int = 120) -> dict:
    return _series("kubetrain_operator_job_phase", f"1x{minutes}", **_job(job, phase="Running"))


def _expected(name: str, job: str) -> dict:
    rule = next(r for r in alerts(AlertSettings()) if r["alert"] == name)
    subst = lambda text: text.replace("{{ $labels.namespace }}", "ml").replace("{{ $labels.trainingjob }}", job)  # noqa: E731
    # KubetrainJobFailed alerts on the operator's series itself: its labels, the scrape job's included.
    failed = {"phase": "Failed", "job": SCRAPE_JOBS["kubetrain_operator_"]} if name == "KubetrainJobFailed" else {}
    return {
        "exp_labels": {"severity": rule["labels"]["severity"], "namespace": "ml", "trainingjob": job, **failed},
        "exp_annotations": {k: subst(v) for k, v in rule["annotations"].items()},
    }


# Each case: series for a job that must alert ("bad") and one that must not ("good").
CASES = {
    "KubetrainJobStalled": (
        [_series("kubetrain_trainer_step", "100x60", **_job("bad", pod="bad-w0-0")), _running("bad"),
         _series("kubetrain_trainer_step", "0+10x60", **_job("good", pod="good-w0-0")), _running("good")],
        "30m",
    ),
    "KubetrainThroughputDropped": (
        [_series("kubetrain_trainer_tokens_per_second", "1000x60 100x60", **_job("bad", pod="bad-w0-0")),
         _series("kubetrain_trainer_tokens_per_second", "1000x120", **_job("good", pod="good-w0-0"))],
        "80m",
    ),
    "KubetrainRestartsClimbing": (
        [_series("kubetrain_operator_restarts_total", "0 1 2 3 4x60", **_job("bad", reason="NodeLost")),
         _series("kubetrain_operator_restarts_total", "0 1x60", **_job("good", reason="NodeLost"))],
        "10m",
    ),
    "KubetrainGPUsIdle": (
        [_series("kubetrain_trainer_gpu_utilization_ratio", "0.02x60", **_job("bad", pod="bad-w0-0", local_rank="0")), _running("bad"),
         _series("kubetrain_trainer_gpu_utilization_ratio", "0.9x60", **_job("good", pod="good-w0-0", local_rank="0")), _running("good")],
        "30m",
    ),
    "KubetrainJobFailed": (
        [_series("kubetrain_operator_job_phase", "0 0 1x10", **_job("bad", phase="Failed")),
         _series("kubetrain_operator_job_phase", "0x12", **_job("good", phase="Failed"))],
        "5m",
    ),
    "KubetrainCheckpointStale": (
        # Timestamps in seconds since the test's epoch: "bad" checkpointed at t=0 and never again.
        [_series("kubetrain_trainer_last_checkpoint_timestamp_seconds", "0x120", **_job("bad", pod="bad-w0-0")), _running("bad"),
         _series("kubetrain_trainer_last_checkpoint_timestamp_seconds", "0+60x120", **_job("good", pod="good-w0-0")), _running("good")],
        "90m",
    ),
}


def _write_rules(tmp_path: Path) -> Path:
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump(rule_groups(), sort_keys=False))
    return path


def test_promtool_checks_the_rules(tmp_path):
    proc = subprocess.run([PROMTOOL, "check", "rules", str(_write_rules(tmp_path))], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS: 15 rules found" in proc.stdout


def test_every_alert_has_a_case():
    assert set(CASES) == {r["alert"] for r in alerts(AlertSettings())}


def _promtool_test(tmp_path: Path, series: list[dict], tests: dict) -> None:
    rules = _write_rules(tmp_path)
    test = {
        "rule_files": [rules.name],
        "evaluation_interval": "1m",
        "tests": [{"interval": "1m", "input_series": series, **tests}],
    }
    path = tmp_path / "test.yaml"
    path.write_text(yaml.safe_dump(test, sort_keys=False))
    proc = subprocess.run([PROMTOOL, "test", "rules", str(path)], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("alert", sorted(CASES))
def test_alert_fires_for_the_bad_job_only(tmp_path, alert):
    series, at = CASES[alert]
    _promtool_test(tmp_path, series, {"alert_rule_test": [
        {"eval_time": at, "alertname": alert, "exp_alerts": [_expected(alert, "bad")]},
        # At the very start nothing has gone wrong long enough.
        {"eval_time": "0m", "alertname": alert, "exp_alerts": []},
    ]})


def _alternating(*values: str, times: int) -> str:
    return " ".join(list(values) * times)


# Jobs whose trainer never exports a step, so changes() has nothing to look at: only the
# operator's phase says they should be training. Each case has one such "bad" job next to
# a job that trains ("good") and one that went active minutes ago ("young"), which must not alert.
def _exports(job: str, flag: int = 1) -> dict:
    return _series("kubetrain_operator_job_trainer_metrics", f"{flag}x120", **_job(job))


NO_TRAINER_SERIES = {
    "stuck-in-rendezvous": [_running("bad"), _exports("bad")],
    "crash-looping": [
        _series("kubetrain_operator_job_phase", _alternating("1", "0", times=60), **_job("bad", phase="Running")),
        _series("kubetrain_operator_job_phase", _alternating("0", "1", times=60), **_job("bad", phase="Restarting")),
        _exports("bad"),
    ],
}
HEALTHY = [
    _series("kubetrain_trainer_step", "0+10x120", **_job("good", pod="good-w0-0")), _running("good"), _exports("good"),
    _series("kubetrain_operator_job_phase", "1x25 0x95", **_job("young", phase="Pending")),
    _series("kubetrain_operator_job_phase", "0x25 1x95", **_job("young", phase="Running")), _exports("young"),
    # spec.metrics.enabled: false — silent by request, never "stalled" for it.
    _running("quiet"), _exports("quiet", 0),
]


@pytest.mark.parametrize("case", sorted(NO_TRAINER_SERIES))
def test_stalled_fires_for_an_active_job_without_trainer_series(tmp_path, case):
    alert = "KubetrainJobStalled"
    _promtool_test(tmp_path, NO_TRAINER_SERIES[case] + HEALTHY, {"alert_rule_test": [
        # Past the window (15m) and the alert's 1m "for"; "young" has been active for 5 minutes only.
        {"eval_time": "30m", "alertname": alert, "exp_alerts": [_expected(alert, "bad")]},
        # Active for less than the window: not yet.
        {"eval_time": "10m", "alertname": alert, "exp_alerts": []},
    ]})


def test_dcgm_series_are_joined_to_jobs_by_pod(tmp_path):
    """The DCGM exporter knows pods, not TrainingJobs: the recording rules join them through the trainer's pod labels."""
    pod = lambda name: {"namespace": "ml", "pod": name}  # noqa: E731
    series = [
        _series("kubetrain_trainer_world_size", "16x10", **_job("gpt", pod="gpt-w0-0")),
        _series("kubetrain_trainer_world_size", "16x10", **_job("gpt", pod="gpt-w1-0")),
        _series("DCGM_FI_DEV_GPU_UTIL", "50x10", **pod("gpt-w0-0"), gpu="0"),
        _series("DCGM_FI_DEV_GPU_UTIL", "100x10", **pod("gpt-w1-0"), gpu="0"),
        _series("DCGM_FI_DEV_POWER_USAGE", "500x10", **pod("gpt-w0-0"), gpu="0"),
        _series("DCGM_FI_DEV_POWER_USAGE", "300x10", **pod("gpt-w1-0"), gpu="0"),
        _series("DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION", "2000000x10", **pod("gpt-w0-0"), gpu="0"),
        # Another workload's GPU on the same node: not part of the job.
        _series("DCGM_FI_DEV_GPU_UTIL", "100x10", **pod("someone-else"), gpu="1"),
    ]
    job = {"namespace": "ml", "trainingjob": "gpt"}
    _promtool_test(tmp_path, series, {"promql_expr_test": [
        {"expr": "kubetrain:job_dcgm_gpu_utilization:ratio", "eval_time": "5m",
         "exp_samples": [{"labels": f"kubetrain:job_dcgm_gpu_utilization:ratio{_labels(job)}", "value": 0.75}]},
        {"expr": "kubetrain:job_dcgm_power:watts", "eval_time": "5m",
         "exp_samples": [{"labels": f"kubetrain:job_dcgm_power:watts{_labels(job)}", "value": 800}]},
        {"expr": "kubetrain:job_dcgm_energy:joules", "eval_time": "5m",
         "exp_samples": [{"labels": f"kubetrain:job_dcgm_energy:joules{_labels(job)}", "value": 2000}]},
    ]})


def _labels(labels: dict) -> str:
    return "{" + ", ".join(f'{k}="{v}"' for k, v in labels.items()) + "}"
