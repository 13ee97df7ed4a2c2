"""Every PromQL expression kubetrain ships, in one place.

The dashboard, the recording and alerting rules and the operator's throughput
reader all build on these, so a renamed metric breaks one function, and the
tests that check each expression against what the trainer and operator export.
``sel`` is a label matcher list without braces (e.g. ``namespace="ml", job=~"gpt.*"``).
"""

from __future__ import annotations

BY_JOB = "namespace, job"


def _m(metric: str, sel: str = "", extra: str = "") -> str:
    matchers = ", ".join(m for m in (sel, extra) if m)
    return f"{metric}{{{matchers}}}" if matchers else metric


# Job-level figures from the trainer (one exporter per pod; summed or averaged per job).
def tokens_per_second(sel: str = "") -> str:
    return f"sum by ({BY_JOB}) ({_m('kubetrain_trainer_tokens_per_second', sel)})"


def samples_per_second(sel: str = "") -> str:
    return f"sum by ({BY_JOB}) ({_m('kubetrain_trainer_samples_per_second', sel)})"


def step(sel: str = "") -> str:
    return f"max by ({BY_JOB}) ({_m('kubetrain_trainer_step', sel)})"


def mfu(sel: str = "") -> str:
    return f"avg by ({BY_JOB}) ({_m('kubetrain_trainer_mfu_ratio', sel)})"


def loss(sel: str = "") -> str:
    return f"avg by ({BY_JOB}) ({_m('kubetrain_trainer_loss', sel)})"


def goodput(sel: str = "") -> str:
    return f"min by ({BY_JOB}) ({_m('kubetrain_trainer_goodput_ratio', sel)})"


def world_size(sel: str = "") -> str:
    return f"max by ({BY_JOB}) ({_m('kubetrain_trainer_world_size', sel)})"


def step_time_quantile(q: float, sel: str = "", window: str = "5m") -> str:
    bucket = _m("kubetrain_trainer_step_duration_seconds_bucket", sel)
    return f"histogram_quantile({q}, sum by ({BY_JOB}, le) (rate({bucket}[{window}])))"


def checkpoint_age_seconds(sel: str = "") -> str:
    return f"time() - max by ({BY_JOB}) ({_m('kubetrain_trainer_last_checkpoint_timestamp_seconds', sel)})"


def data_loading_ratio(sel: str = "", window: str = "5m") -> str:
    return f"avg by ({BY_JOB}) (rate({_m('kubetrain_trainer_data_loading_seconds_total', sel)}[{window}]))"


def communicated_bytes_per_second(sel: str = "", window: str = "5m") -> str:
    return f"sum by ({BY_JOB}) (rate({_m('kubetrain_trainer_communicated_bytes_total', sel)}[{window}]))"


def compression_error(sel: str = "") -> str:
    """PowerSGD's relative compression error, the worst process of each job (absent unless compressing)."""
    return f"max by ({BY_JOB}) ({_m('kubetrain_trainer_compression_error_ratio', sel)})"


def gradient_noise_scale(sel: str = "") -> str:
    """The smoothed gradient noise scale in samples (the same on every pod of a job; absent at world size 1 and under FSDP)."""
    return f"max by ({BY_JOB}) ({_m('kubetrain_trainer_gradient_noise_scale', sel)})"


def process_cpu(sel: str = "", window: str = "5m") -> str:
    return f"sum by ({BY_JOB}) (rate({_m('kubetrain_trainer_process_cpu_seconds_total', sel)}[{window}]))"


def process_rss(sel: str = "") -> str:
    return f"sum by ({BY_JOB}) ({_m('kubetrain_trainer_process_resident_memory_bytes', sel)})"


# GPU figures from the trainer's NVML readings (present only on GPU nodes).
def gpu_utilization(sel: str = "") -> str:
    return f"avg by ({BY_JOB}) ({_m('kubetrain_trainer_gpu_utilization_ratio', sel)})"


def gpu_memory(sel: str = "") -> str:
    return f"sum by ({BY_JOB}) ({_m('kubetrain_trainer_gpu_memory_used_bytes', sel)})"


def gpu_power(sel: str = "") -> str:
    return f"sum by ({BY_JOB}) ({_m('kubetrain_trainer_gpu_power_watts', sel)})"


def gpu_energy_joules(sel: str = "", window: str = "$__range") -> str:
    return f"sum by ({BY_JOB}) (increase({_m('kubetrain_trainer_gpu_energy_joules_total', sel)}[{window}]))"


# From the operator.
def restarts(sel: str = "", window: str = "5m") -> str:
    return f"sum by ({BY_JOB}, reason) (increase({_m('kubetrain_operator_restarts_total', sel)}[{window}]))"


def replicas(sel: str = "") -> str:
    return f"max by ({BY_JOB}, state) ({_m('kubetrain_operator_job_replicas', sel)})"


def running(sel: str = "") -> str:
    return _m("kubetrain_operator_job_phase", sel, 'phase=~"Running|Scaling"') + " == 1"


def active(sel: str = "", offset: str = "") -> str:
    """1 per job the operator keeps going (Running, Scaling or Restarting): a crash loop alternates among these."""
    selector = _m("kubetrain_operator_job_phase", sel, 'phase=~"Running|Scaling|Restarting"')
    return f"sum by ({BY_JOB}) ({selector}{f' offset {offset}' if offset else ''})"


def jobs_by_phase(sel: str = "") -> str:
    return f"sum by (phase) ({_m('kubetrain_operator_job_phase', sel)})"


def gpu_hours(sel: str = "", window: str = "$__range") -> str:
    return f"sum by ({BY_JOB}) (increase({_m('kubetrain_operator_job_gpu_seconds_total', sel)}[{window}])) / 3600"


def scaling_events(sel: str = "", window: str = "1m") -> str:
    return f"sum by ({BY_JOB}, reason) (increase({_m('kubetrain_operator_scaling_events_total', sel)}[{window}])) > 0"


def reconcile_p99(window: str = "5m") -> str:
    return f"histogram_quantile(0.99, sum by (le) (rate(kubetrain_operator_reconcile_duration_seconds_bucket[{window}])))"


# DCGM exporter series, joined to jobs through the trainer's pod labels.
POD_TO_JOB = "kubetrain:pod_job:info"


def pod_to_job() -> str:
    # One series per (namespace, pod, job) whose value is 1: the join key for DCGM.
    return "max by (namespace, pod, job) (kubetrain_trainer_world_size * 0 + 1)"


def dcgm_by_job(metric: str, how: str = "avg", scale: float = 1.0) -> str:
    scaled = f"{metric} / {scale:g}" if scale != 1.0 else metric
    return f"{how} by ({BY_JOB}) ({scaled} * on (namespace, pod) group_left (job) {POD_TO_JOB})"
