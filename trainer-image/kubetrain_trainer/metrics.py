"""Prometheus metrics of a worker pod: one exporter per pod, served by local rank 0.

Every metric lives in an injected ``CollectorRegistry`` (never the global one).
Labels are only ``job``, ``namespace``, ``pod`` and, for per-process series,
``local_rank`` — never step, rank or restart count, so series stay bounded.

The trainer all-gathers a small row of per-rank figures every step (it needs
the job-wide loss anyway); local rank 0 exports from it:

pod level (labels job, namespace, pod) — summing over pods gives the job:
  kubetrain_trainer_tokens_per_second        tokens/s of this pod's processes (last ≤20 steps)
  kubetrain_trainer_samples_per_second       samples/s of this pod's processes
  kubetrain_trainer_tokens_total             tokens trained by this pod's processes
  kubetrain_trainer_samples_total            samples trained by this pod's processes
  kubetrain_trainer_mfu_ratio                this pod's MFU (0–1); absent on CPUs/unknown GPUs and fp8
job level, the same value on every pod (aggregate with max/avg, not sum):
  kubetrain_trainer_step                     job-wide step (continues across restarts)
  kubetrain_trainer_max_steps                the step the job stops at
  kubetrain_trainer_loss                     mean training loss of the latest step, all ranks
  kubetrain_trainer_world_size               processes in the current rendezvous round
  kubetrain_trainer_goodput_ratio            kept productive step time ÷ wall time since the job's first start
  kubetrain_trainer_gradient_noise_scale     gradient noise scale B_noise in samples (McCandlish et al. 2018), from
                                             the local and all-reduced gradient norms of the DDP hooks, smoothed
                                             over steps; absent while unknown (world size 1, FSDP, smoothed |G|² ≤ 0)
  kubetrain_trainer_last_checkpoint_timestamp_seconds  when the newest checkpoint was completed
  kubetrain_trainer_step_duration_seconds    histogram of step wall time (data loading included)
  kubetrain_trainer_checkpoint_duration_seconds histogram of checkpoint save time
per pod agent:
  kubetrain_trainer_restarts_total           worker-group restarts of this pod's torchrun agent
                                             (TORCHELASTIC_RESTART_COUNT: per agent, not per job)
per process (labels + local_rank):
  kubetrain_trainer_communicated_bytes_total gradient/parameter collective payload bytes sent by the process
  kubetrain_trainer_data_loading_seconds_total  time waiting for the next batch
  kubetrain_trainer_process_cpu_seconds_total   CPU time of the process (psutil)
  kubetrain_trainer_process_resident_memory_bytes  RSS of the process (psutil)
  kubetrain_trainer_gpu_utilization_ratio    NVML utilisation of the process's GPU (0–1)
  kubetrain_trainer_gpu_memory_used_bytes    NVML memory used on that GPU
  kubetrain_trainer_gpu_power_watts          NVML power draw
  kubetrain_trainer_gpu_energy_joules_total  NVML energy since this worker started
  kubetrain_trainer_compression_error_ratio  PowerSGD: ‖error carried to the next step‖ ÷ ‖gradient + carried error‖
                                             of the latest step (0–1, capped); only while compressing with error
                                             feedback. Rising towards 1: the rank is too low for the gradients.
"""

from __future__ import annotations

import collections
import logging
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

log = logging.getLogger(__name__)

POD_LABELS = ("job", "namespace", "pod")
PROCESS_LABELS = ("job", "namespace", "pod", "local_rank")
ALLOWED_LABELS = frozenset(PROCESS_LABELS)

STEP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
CHECKPOINT_BUCKETS = (0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)


@dataclass(frozen=True)
class ProcessFigures:
    """One process's cumulative figures, from the per-step all-gather."""

    local_rank: int
    communicated_bytes: float
    data_loading_seconds: float
    cpu_seconds: float
    rss_bytes: float
    gpu_utilization: float = -1.0  # < 0: no GPU figures
    gpu_memory_bytes: float = -1.0
    gpu_power_watts: float = -1.0
    gpu_energy_joules: float = -1.0
    compression_error: float = -1.0  # < 0: not compressing with PowerSGD this step


class _Monotonic:
    """Feeds cumulative values into a Counter as increments."""

    def __init__(self) -> None:
        self._last: dict[tuple, float] = {}

    def set(self, counter, key: tuple, value: float) -> None:
        last = self._last.get(key)
        if last is None:
            delta = value
        else:
            delta = value - last
        if delta > 0:
            counter.inc(delta)
        if last is None or value > last:
            self._last[key] = value


class TrainerMetrics:
    """The trainer's Prometheus series, bound to one pod's labels."""

    def __init__(self, registry: CollectorRegistry, *, job: str, namespace: str, pod: str, window_steps: int = 20):
        self.registry = registry
        self.pod_labels = {"job": job, "namespace": namespace, "pod": pod}
        r = registry
        L = POD_LABELS

        def g(name, doc, labels=L):
            return Gauge(name, doc, labels, registry=r)

        def c(name, doc, labels=L):
            return Counter(name, doc, labels, registry=r)

        self.tokens_per_second = g("kubetrain_trainer_tokens_per_second", "Tokens per second trained by this pod's processes (last steps).")
        self.samples_per_second = g("kubetrain_trainer_samples_per_second", "Samples per second trained by this pod's processes (last steps).")
        self.tokens_total = c("kubetrain_trainer_tokens_total", "Tokens trained by this pod's processes.")
        self.samples_total = c("kubetrain_trainer_samples_total", "Samples trained by this pod's processes.")
        self.mfu = g("kubetrain_trainer_mfu_ratio", "Model FLOPs utilisation of this pod's GPUs (0-1), torchtitan formula.")
        self.step = g("kubetrain_trainer_step", "Job-wide training step (continues across restarts).")
        self.max_steps = g("kubetrain_trainer_max_steps", "The step at which the job stops.")
        self.loss = g("kubetrain_trainer_loss", "Mean training loss of the latest step over all ranks.")
        self.world_size = g("kubetrain_trainer_world_size", "Processes in the current rendezvous round.")
        self.goodput = g("kubetrain_trainer_goodput_ratio", "Kept productive step time divided by wall time since the job first started (0-1).")
        self.noise_scale = g("kubetrain_trainer_gradient_noise_scale",
                             "Gradient noise scale in samples (McCandlish et al. 2018) from local vs all-reduced DDP "
                             "gradient norms, smoothed over steps; absent while unknown (world size 1, FSDP).")
        self.last_checkpoint = g("kubetrain_trainer_last_checkpoint_timestamp_seconds", "Unix time the newest complete checkpoint was written.")
        self.step_duration = Histogram(
            "kubetrain_trainer_step_duration_seconds", "Wall time of a training step, data loading included.", L, registry=r, buckets=STEP_BUCKETS
        )
        self.checkpoint_duration = Histogram(
            "kubetrain_trainer_checkpoint_duration_seconds", "Time to write one checkpoint.", L, registry=r, buckets=CHECKPOINT_BUCKETS
        )
        self.restarts_total = c("kubetrain_trainer_restarts_total", "Worker-group restarts of this pod's torchrun agent (per agent, not per job).")
        P = PROCESS_LABELS
        self.comm_bytes = c("kubetrain_trainer_communicated_bytes_total", "Payload bytes of gradient/parameter collectives sent by the process.", P)
        self.data_seconds = c("kubetrain_trainer_data_loading_seconds_total", "Seconds the process waited for its next batch.", P)
        self.cpu_seconds = c("kubetrain_trainer_process_cpu_seconds_total", "CPU seconds used by the trainer process.", P)
        self.rss = g("kubetrain_trainer_process_resident_memory_bytes", "Resident memory of the trainer process.", P)
        self.gpu_util = g("kubetrain_trainer_gpu_utilization_ratio", "GPU utilisation of the process's device (0-1, NVML).", P)
        self.gpu_mem = g("kubetrain_trainer_gpu_memory_used_bytes", "GPU memory used on the process's device (NVML).", P)
        self.gpu_power = g("kubetrain_trainer_gpu_power_watts", "Power draw of the process's device (NVML).", P)
        self.gpu_energy = c("kubetrain_trainer_gpu_energy_joules_total", "Energy used by the process's device since the worker started (NVML).", P)
        self.compression_error = g("kubetrain_trainer_compression_error_ratio",
                                   "PowerSGD: norm of the error carried to the next step over the norm of the gradient plus "
                                   "the carried error, latest step (0-1, capped); only while compressing with error feedback.", P)

        self._mono = _Monotonic()
        self._window: collections.deque[tuple[float, float, float]] = collections.deque(maxlen=window_steps)
        self._gpu_energy_base: dict[int, float] = {}

    # -- helpers --------------------------------------------------------------
    def _pod(self, metric):
        return metric.labels(**self.pod_labels)

    def _proc(self, metric, local_rank: int):
        return metric.labels(**self.pod_labels, local_rank=str(local_rank))

    # -- updates ---------------------------------------------------------------
    def set_static(self, *, world_size: int, max_steps: int, restart_count: int) -> None:
        self._pod(self.world_size).set(world_size)
        self._pod(self.max_steps).set(max_steps)
        if restart_count > 0:
            self._pod(self.restarts_total).inc(restart_count)
        else:
            self._pod(self.restarts_total)  # expose 0

    def observe_step(
        self,
        *,
        step: int,
        loss: float,
        step_seconds: float,
        pod_tokens: float,
        pod_samples: float,
        goodput: float | None,
        flops_per_token: float | None,
        peak_flops: float | None,
        pod_devices: int,
        processes: list[ProcessFigures],
        noise_scale: float | None = None,
    ) -> tuple[float, float, float | None]:
        """Record one step; returns (pod tokens/s, pod samples/s, MFU or None)."""
        from kubetrain_trainer.mfu import mfu as mfu_of

        self._pod(self.step).set(step)
        self._pod(self.loss).set(loss)
        self._pod(self.step_duration).observe(step_seconds)
        self._pod(self.tokens_total).inc(pod_tokens)
        self._pod(self.samples_total).inc(pod_samples)
        self._window.append((step_seconds, pod_tokens, pod_samples))
        seconds = sum(w[0] for w in self._window)
        tps = sum(w[1] for w in self._window) / seconds if seconds > 0 else 0.0
        sps = sum(w[2] for w in self._window) / seconds if seconds > 0 else 0.0
        self._pod(self.tokens_per_second).set(tps)
        self._pod(self.samples_per_second).set(sps)
        ratio = mfu_of(flops_per_token, tps, peak_flops, pod_devices)
        if ratio is not None:
            self._pod(self.mfu).set(ratio)
        if goodput is not None:
            self._pod(self.goodput).set(max(0.0, min(1.0, goodput)))
        if noise_scale is not None:
            self._pod(self.noise_scale).set(noise_scale)
        else:
            # Unknown now: absent rather than a stale value (removing a series never set is a no-op).
            self.noise_scale.remove(*(self.pod_labels[k] for k in POD_LABELS))
        for p in processes:
            lr = p.local_rank
            self._mono.set(self._proc(self.comm_bytes, lr), ("comm", lr), p.communicated_bytes)
            self._mono.set(self._proc(self.data_seconds, lr), ("data", lr), p.data_loading_seconds)
            self._mono.set(self._proc(self.cpu_seconds, lr), ("cpu", lr), p.cpu_seconds)
            self._proc(self.rss, lr).set(p.rss_bytes)
            if p.gpu_utilization >= 0:
                self._proc(self.gpu_util, lr).set(p.gpu_utilization)
                self._proc(self.gpu_mem, lr).set(p.gpu_memory_bytes)
                self._proc(self.gpu_power, lr).set(p.gpu_power_watts)
            if p.compression_error >= 0:
                self._proc(self.compression_error, lr).set(p.compression_error)
            if p.gpu_energy_joules >= 0:
                base = self._gpu_energy_base.setdefault(lr, p.gpu_energy_joules)
                self._mono.set(self._proc(self.gpu_energy, lr), ("energy", lr), p.gpu_energy_joules - base)
        return tps, sps, ratio

    def observe_checkpoint(self, *, completed_at: float, seconds: float | None) -> None:
        self._pod(self.last_checkpoint).set(completed_at)
        if seconds is not None:
            self._pod(self.checkpoint_duration).observe(seconds)


def serve(registry: CollectorRegistry, port: int, addr: str = "0.0.0.0"):
    """Start the /metrics HTTP server for ``registry``; returns an object with ``shutdown()``."""
    from prometheus_client import start_http_server

    server, _thread = start_http_server(port, addr=addr, registry=registry)
    return server
