"""Every PromQL expression kubetrain ships, in one place.

The dashboard, the recording and alerting rules and the operator's throughput
reader all build on these, so a renamed metric breaks one function, and the
tests that check each expression against what the trainer and operator export.
``sel`` is a label matcher list without braces (e.g. ``namespace="ml", trainingjob=~"gpt.*"``).
Metric and label names come from :mod:`kubetrain.contract.metric_names`.
"""

from __future__ import annotations

from kubetrain.contract.metric_names import (
    NAMESPACE,
    OPERATOR_SWEEP_LABELS,
    POD,
    TRAININGJOB,
    OperatorMetric as O,
    TrainerMetric as T,
)

# A job is its namespace and its TrainingJob name (never Prometheus' own ``job``, the scrape job).
BY_JOB = f"{NAMESPACE}, {TRAININGJOB}"


def _m(metric: str, sel: str = "", extra: str = "") -> str:
    matchers = ", ".join(m for m in (sel, extra) if m)
    return f"{metric}{{{matchers}}}" if matchers else metric


# Job-level figures from the trainer (one exporter per pod; summed or averaged per job).
def tokens_per_second(sel: str = "") -> str:
    return f"sum by ({BY_JOB}) ({_m(T.TOKENS_PER_SECOND, sel)})"


def samples_per_second(sel: str = "") -> str:
    return f"sum by ({BY_JOB}) ({_m(T.SAMPLES_PER_SECOND, sel)})"


def step(sel: str = "") -> str:
    return f"max by ({BY_JOB}) ({_m(T.STEP, sel)})"


def mfu(sel: str = "") -> str:
    return f"avg by ({BY_JOB}) ({_m(T.MFU, sel)})"


def loss(sel: str = "") -> str:
    return f"avg by ({BY_JOB}) ({_m(T.LOSS, sel)})"


def goodput(sel: str = "") -> str:
    return f"min by ({BY_JOB}) ({_m(T.GOODPUT, sel)})"


def world_size(sel: str = "") -> str:
    return f"max by ({BY_JOB}) ({_m(T.WORLD_SIZE, sel)})"


def step_time_quantile(q: float, sel: str = "", window: str = "5m") -> str:
    bucket = _m(f"{T.STEP_DURATION}_bucket", sel)
    return f"histogram_quantile({q}, sum by ({BY_JOB}, le) (rate({bucket}[{window}])))"


def checkpoint_age_seconds(sel: str = "") -> str:
    return f"time() - max by ({BY_JOB}) ({_m(T.LAST_CHECKPOINT, sel)})"


def data_loading_ratio(sel: str = "", window: str = "5m") -> str:
    return f"avg by ({BY_JOB}) (rate({_m(T.DATA_LOADING_SECONDS, sel)}[{window}]))"


def communicated_bytes_per_second(sel: str = "", window: str = "5m") -> str:
    return f"sum by ({BY_JOB}) (rate({_m(T.COMMUNICATED_BYTES, sel)}[{window}]))"


def compression_error(sel: str = "") -> str:
    """PowerSGD's relative compression error, the worst process of each job (absent unless compressing)."""
    return f"max by ({BY_JOB}) ({_m(T.COMPRESSION_ERROR, sel)})"


def gradient_noise_scale(sel: str = "") -> str:
    """The smoothed gradient noise scale in samples (the same on every pod of a job; absent at world size 1 and under FSDP)."""
    return f"max by ({BY_JOB}) ({_m(T.GRADIENT_NOISE_SCALE, sel)})"


def process_cpu(sel: str = "", window: str = "5m") -> str:
    return f"sum by ({BY_JOB}) (rate({_m(T.PROCESS_CPU_SECONDS, sel)}[{window}]))"


def process_rss(sel: str = "") -> str:
    return f"sum by ({BY_JOB}) ({_m(T.PROCESS_RESIDENT_MEMORY, sel)})"


# GPU figures from the trainer's NVML readings (present only on GPU nodes).
def gpu_utilization(sel: str = "") -> str:
    return f"avg by ({BY_JOB}) ({_m(T.GPU_UTILIZATION, sel)})"


def gpu_memory(sel: str = "") -> str:
    return f"sum by ({BY_JOB}) ({_m(T.GPU_MEMORY_USED, sel)})"


def gpu_power(sel: str = "") -> str:
    return f"sum by ({BY_JOB}) ({_m(T.GPU_POWER, sel)})"


def gpu_energy_joules(sel: str = "", window: str = "$__range") -> str:
    return f"sum by ({BY_JOB}) (increase({_m(T.GPU_ENERGY, sel)}[{window}]))"


# From the operator.
def restarts(sel: str = "", window: str = "5m") -> str:
    return f"sum by ({BY_JOB}, reason) (increase({_m(O.RESTARTS, sel)}[{window}]))"


def replicas(sel: str = "") -> str:
    return f"max by ({BY_JOB}, state) ({_m(O.JOB_REPLICAS, sel)})"


def running(sel: str = "") -> str:
    return _m(O.JOB_PHASE, sel, 'phase=~"Running|Scaling"') + " == 1"


def active(sel: str = "", offset: str = "") -> str:
    """1 per job the operator keeps going (Running, Scaling or Restarting): a crash loop alternates among these."""
    selector = _m(O.JOB_PHASE, sel, 'phase=~"Running|Scaling|Restarting"')
    return f"sum by ({BY_JOB}) ({selector}{f' offset {offset}' if offset else ''})"


def jobs_by_phase(sel: str = "") -> str:
    return f"sum by (phase) ({_m(O.JOB_PHASE, sel)})"


def gpu_hours(sel: str = "", window: str = "$__range") -> str:
    return f"sum by ({BY_JOB}) (increase({_m(O.JOB_GPU_SECONDS, sel)}[{window}])) / 3600"


def scaling_events(sel: str = "", window: str = "1m") -> str:
    return f"sum by ({BY_JOB}, reason) (increase({_m(O.SCALING_EVENTS, sel)}[{window}])) > 0"


def reconcile_p99(window: str = "5m") -> str:
    return f"histogram_quantile(0.99, sum by (le) (rate({O.RECONCILE_DURATION}_bucket[{window}])))"


# DCGM exporter series, joined to jobs through the trainer's pod labels.
POD_TO_JOB = "kubetrain:pod_job:info"


def pod_to_job() -> str:
    # One series per (namespace, pod, trainingjob) whose value is 1: the join key for DCGM.
    return f"max by ({NAMESPACE}, {POD}, {TRAININGJOB}) ({T.WORLD_SIZE} * 0 + 1)"


def dcgm_by_job(metric: str, how: str = "avg", scale: float = 1.0) -> str:
    scaled = f"{metric} / {scale:g}" if scale != 1.0 else metric
    return f"{how} by ({BY_JOB}) ({scaled} * on ({NAMESPACE}, {POD}) group_left ({TRAININGJOB}) {POD_TO_JOB})"


# A sweep's figures, from the operator (one series per sweep: labels namespace, trainingsweep).
BY_SWEEP = ", ".join(OPERATOR_SWEEP_LABELS)


def sweep_trials(sel: str = "") -> str:
    return f"sum by ({BY_SWEEP}, state) ({_m(O.SWEEP_TRIALS, sel)})"


def sweep_best_value(sel: str = "") -> str:
    return f"max by ({BY_SWEEP}) ({_m(O.SWEEP_BEST_VALUE, sel)})"


def sweep_saved_gpu_hours(sel: str = "") -> str:
    return f"sum by ({BY_SWEEP}) ({_m(O.SWEEP_SAVED_GPU_SECONDS, sel)}) / 3600"


def sweep_saved_trial_steps(sel: str = "") -> str:
    return f"sum by ({BY_SWEEP}) ({_m(O.SWEEP_SAVED_TRIAL_STEPS, sel)})"
