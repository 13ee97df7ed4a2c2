"""Prometheus metrics of a worker pod: one exporter per pod, served by local rank 0.

Every metric lives in an injected ``CollectorRegistry`` (never the global one).
Names and labels come from :mod:`kubetrain.contract.metric_names`. Labels are only ``trainingjob``,
``namespace``, ``pod`` and, for per-process series, ``local_rank`` — never step, rank or restart
count, so series stay bounded, and never ``job`` or ``instance``, which Prometheus owns.

The trainer all-gathers a small row of per-rank figures every step (it needs
the job-wide loss anyway); its metrics processor computes the rates and local
rank 0 exports them with its pod's ranks' figures (the exporter only records what it is given):

pod level (labels trainingjob, namespace, pod) — summing over pods gives the job:
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

import logging
from typing import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from kubetrain.contract.metric_names import TRAINER_POD_LABELS, TRAINER_PROCESS_LABELS, TrainerMetric as M

from kubetrain_trainer.stats import StepStats

log = logging.getLogger(__name__)

STEP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
CHECKPOINT_BUCKETS = (0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)


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

    def __init__(self, registry: CollectorRegistry, *, trainingjob: str, namespace: str, pod: str):
        self.registry = registry
        self.pod_labels = dict(zip(TRAINER_POD_LABELS, (trainingjob, namespace, pod)))
        r = registry
        L = TRAINER_POD_LABELS

        def g(name, doc, labels=L):
            return Gauge(name, doc, labels, registry=r)

        def c(name, doc, labels=L):
            return Counter(name, doc, labels, registry=r)

        self.tokens_per_second = g(M.TOKENS_PER_SECOND, "Tokens per second trained by this pod's processes (last steps).")
        self.samples_per_second = g(M.SAMPLES_PER_SECOND, "Samples per second trained by this pod's processes (last steps).")
        self.tokens_total = c(M.TOKENS_TOTAL, "Tokens trained by this pod's processes.")
        self.samples_total = c(M.SAMPLES_TOTAL, "Samples trained by this pod's processes.")
        self.mfu = g(M.MFU, "Model FLOPs utilisation of this pod's GPUs (0-1), torchtitan formula.")
        self.step = g(M.STEP, "Job-wide training step (continues across restarts).")
        self.max_steps = g(M.MAX_STEPS, "The step at which the job stops.")
        self.loss = g(M.LOSS, "Mean training loss of the latest step over all ranks.")
        self.world_size = g(M.WORLD_SIZE, "Processes in the current rendezvous round.")
        self.goodput = g(M.GOODPUT, "Kept productive step time divided by wall time since the job first started (0-1).")
        self.noise_scale = g(M.GRADIENT_NOISE_SCALE,
                             "Gradient noise scale in samples (McCandlish et al. 2018) from local vs all-reduced DDP "
                             "gradient norms, smoothed over steps; absent while unknown (world size 1, FSDP).")
        self.last_checkpoint = g(M.LAST_CHECKPOINT, "Unix time the newest complete checkpoint was written.")
        self.step_duration = Histogram(M.STEP_DURATION, "Wall time of a training step, data loading included.", L, registry=r,
                                       buckets=STEP_BUCKETS)
        self.checkpoint_duration = Histogram(M.CHECKPOINT_DURATION, "Time to write one checkpoint.", L, registry=r,
                                             buckets=CHECKPOINT_BUCKETS)
        self.restarts_total = c(M.RESTARTS, "Worker-group restarts of this pod's torchrun agent (per agent, not per job).")
        P = TRAINER_PROCESS_LABELS
        self.comm_bytes = c(M.COMMUNICATED_BYTES, "Payload bytes of gradient/parameter collectives sent by the process.", P)
        self.data_seconds = c(M.DATA_LOADING_SECONDS, "Seconds the process waited for its next batch.", P)
        self.cpu_seconds = c(M.PROCESS_CPU_SECONDS, "CPU seconds used by the trainer process.", P)
        self.rss = g(M.PROCESS_RESIDENT_MEMORY, "Resident memory of the trainer process.", P)
        self.gpu_util = g(M.GPU_UTILIZATION, "GPU utilisation of the process's device (0-1, NVML).", P)
        self.gpu_mem = g(M.GPU_MEMORY_USED, "GPU memory used on the process's device (NVML).", P)
        self.gpu_power = g(M.GPU_POWER, "Power draw of the process's device (NVML).", P)
        self.gpu_energy = c(M.GPU_ENERGY, "Energy used by the process's device since the worker started (NVML).", P)
        self.compression_error = g(M.COMPRESSION_ERROR,
                                   "PowerSGD: norm of the error carried to the next step over the norm of the gradient plus "
                                   "the carried error, latest step (0-1, capped); only while compressing with error feedback.", P)

        self._mono = _Monotonic()
        self._gpu_energy_base: dict[int, float] = {}
        self._children: dict[tuple, object] = {}

    # -- helpers --------------------------------------------------------------
    # The labelled children, looked up once: labels() costs more than the update itself, ~16 times a step.
    def _pod(self, metric):
        child = self._children.get((metric, None))
        if child is None:
            child = self._children[(metric, None)] = metric.labels(**self.pod_labels)
        return child

    def _proc(self, metric, local_rank: int):
        child = self._children.get((metric, local_rank))
        if child is None:
            child = self._children[(metric, local_rank)] = metric.labels(**self.pod_labels, local_rank=str(local_rank))
        return child

    # -- updates ---------------------------------------------------------------
    def observe_start(self, *, step: int, world_size: int, max_steps: int, restart_count: int,
                      last_checkpoint_at: float | None = None) -> None:
        """What is known before the first step: where training resumes, the rendezvous size, the agent's restarts."""
        self._pod(self.step).set(step)
        self._pod(self.world_size).set(world_size)
        self._pod(self.max_steps).set(max_steps)
        if restart_count > 0:
            self._pod(self.restarts_total).inc(restart_count)
        else:
            self._pod(self.restarts_total)  # expose 0
        if last_checkpoint_at is not None:
            self._pod(self.last_checkpoint).set(last_checkpoint_at)

    def observe_step(
        self,
        *,
        step: int,
        loss: float,
        step_seconds: float,
        pod_tokens: float,
        pod_samples: float,
        tokens_per_second: float,
        samples_per_second: float,
        mfu: float | None = None,
        goodput: float | None = None,
        noise_scale: float | None = None,
        processes: Iterable[StepStats] = (),
    ) -> None:
        """Record one step: the pod's totals and rates, the job's figures and each of the pod's processes'."""
        self._pod(self.step).set(step)
        self._pod(self.loss).set(loss)
        self._pod(self.step_duration).observe(step_seconds)
        self._pod(self.tokens_total).inc(pod_tokens)
        self._pod(self.samples_total).inc(pod_samples)
        self._pod(self.tokens_per_second).set(tokens_per_second)
        self._pod(self.samples_per_second).set(samples_per_second)
        if mfu is not None:
            self._pod(self.mfu).set(mfu)
        if goodput is not None:
            self._pod(self.goodput).set(max(0.0, min(1.0, goodput)))
        if noise_scale is not None:
            self._pod(self.noise_scale).set(noise_scale)
        else:
            # Unknown now: absent rather than a stale value (removing a series never set is a no-op). The
            # removed child is dropped from the cache too: setting it would no longer export anything.
            if self._children.pop((self.noise_scale, None), None) is not None:
                self.noise_scale.remove(*self.pod_labels.values())
        for p in processes:
            lr = int(p.local_rank)
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

    def observe_checkpoint(self, *, completed_at: float, seconds: float | None) -> None:
        self._pod(self.last_checkpoint).set(completed_at)
        if seconds is not None:
            self._pod(self.checkpoint_duration).observe(seconds)


def serve(registry: CollectorRegistry, port: int, addr: str = "0.0.0.0"):
    """Start the /metrics HTTP server for ``registry``; returns an object with ``shutdown()``."""
    from prometheus_client import start_http_server

    server, _thread = start_http_server(port, addr=addr, registry=registry)
    return server
