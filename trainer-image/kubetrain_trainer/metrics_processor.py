"""Everything the trainer reports about its progress, from one place: the throughput window, the
Prometheus exporter (local rank 0), the log line and the status file (global rank 0). Torch-free.

Throughput is computed once per step, here, and the log, the status file, the exporter and
``FitResult`` all read that one figure.
"""

from __future__ import annotations

import collections
import logging
import time
from dataclasses import dataclass

from kubetrain.contract import TrainerContract

from kubetrain_trainer.metrics import TrainerMetrics
from kubetrain_trainer.mfu import mfu as mfu_of
from kubetrain_trainer.stats import StepRecord
from kubetrain_trainer.status import write_status

log = logging.getLogger(__name__)

WINDOW_STEPS = 20  # throughput over the last steps: smooth enough, and still follows a resize within seconds
STATUS_INTERVAL_SECONDS = 0.25  # the local launcher polls the file; more often would only cost writes


@dataclass(frozen=True)
class Rates:
    """Throughput over the window, job-wide and (where exported) this pod's."""

    tokens_per_second: float  # the job's
    seconds_per_step: float  # mean over the window
    pod_tokens_per_second: float | None = None
    pod_samples_per_second: float | None = None
    mfu: float | None = None  # this pod's; None on CPUs, unknown GPUs and fp8


class MetricsProcessor:
    """Reports one ``fit``'s steps. Built per ``fit``: the window starts empty after a resume or a resize."""

    def __init__(self, contract: TrainerContract, *, rank: int, world_size: int, restart_count: int,
                 local_world_size: int = 1, exporter: TrainerMetrics | None = None,
                 flops_per_token: float | None = None, peak_flops: float | None = None,
                 window_steps: int = WINDOW_STEPS, clock=time.monotonic):
        self.contract = contract
        self.rank = rank
        self.world_size = world_size
        self.restart_count = restart_count
        self.local_world_size = local_world_size
        self.exporter = exporter
        self.flops_per_token = flops_per_token
        self.peak_flops = peak_flops
        self._clock = clock
        # (step seconds, job tokens, pod tokens, pod samples) of the last steps
        self._window: collections.deque[tuple[float, float, float, float]] = collections.deque(maxlen=window_steps)
        self._log_every = max(1, contract.max_steps // 20)
        self._last_status = float("-inf")
        self._start_step = 0
        self._first_loss: float | None = None
        self._comm_bytes = 0
        self.rates = Rates(0.0, 0.0)

    @property
    def exports_pod(self) -> bool:
        """Whether this process exports its pod's figures (and so needs its pod's rows in each StepRecord)."""
        return self.exporter is not None

    def start(self, *, step: int, checkpoint_saved_at: float | None) -> None:
        self._start_step = step
        if self.exporter:
            self.exporter.observe_start(step=step, world_size=self.world_size, max_steps=self.contract.max_steps,
                                        restart_count=self.restart_count, last_checkpoint_at=checkpoint_saved_at)

    def observe(self, rec: StepRecord) -> Rates:
        """One step: the rates (computed here only), the exporter, the log line."""
        if self._first_loss is None:
            self._first_loss = rec.loss
        self._comm_bytes += rec.comm_bytes
        pod_tokens = sum(p.tokens for p in rec.pod)
        pod_samples = sum(p.samples for p in rec.pod)
        w = self._window
        w.append((rec.step_seconds, rec.job_tokens, pod_tokens, pod_samples))
        seconds = sum(x[0] for x in w)
        per_second = 1.0 / seconds if seconds > 0 else 0.0
        rates = Rates(sum(x[1] for x in w) * per_second, seconds / len(w))
        if self.exporter:
            pod_tps, pod_sps = sum(x[2] for x in w) * per_second, sum(x[3] for x in w) * per_second
            rates = Rates(rates.tokens_per_second, rates.seconds_per_step, pod_tps, pod_sps,
                          mfu_of(self.flops_per_token, pod_tps, self.peak_flops, self.local_world_size))
            self.exporter.observe_step(
                step=rec.step, loss=rec.loss, step_seconds=rec.step_seconds, pod_tokens=pod_tokens, pod_samples=pod_samples,
                tokens_per_second=pod_tps, samples_per_second=pod_sps, mfu=rates.mfu,
                goodput=rec.goodput, noise_scale=rec.noise_scale, processes=rec.pod,
            )
        self.rates = rates
        max_steps = self.contract.max_steps
        if self.rank == 0 and (rec.step <= 3 or rec.step % self._log_every == 0 or rec.step == max_steps):
            log.info(
                "step %d/%d loss %.4f tokens/s %.0f (job) step %.3fs comm %.1f KiB/step%s",
                rec.step, max_steps, rec.loss, rates.tokens_per_second, rec.step_seconds,
                self._comm_bytes / max(rec.step - self._start_step, 1) / 1024,
                f" mfu {rates.mfu:.3f}" if rates.mfu is not None else "",
            )
        return rates

    def observe_checkpoint(self, *, completed_at: float, seconds: float) -> None:
        if self.exporter:
            self.exporter.observe_checkpoint(completed_at=completed_at, seconds=seconds)

    def write_status(self, rec: StepRecord, *, outcome: str, checkpoint_step: int | None) -> None:
        """Global rank 0's progress file for the local launcher, at most every STATUS_INTERVAL_SECONDS, and always
        for the last step of a fit (``outcome`` other than ``running``)."""
        path = self.contract.status_path
        if self.rank != 0 or not path:
            return
        now = self._clock()
        if outcome == "running" and now - self._last_status <= STATUS_INTERVAL_SECONDS:
            return
        self._last_status = now
        c = self.contract
        write_status(path, {
            "step": rec.step, "max_steps": c.max_steps, "start_step": self._start_step, "loss": rec.loss,
            "first_loss": self._first_loss, "tokens_per_second": self.rates.tokens_per_second,
            "world_size": self.world_size, "eta_seconds": (c.max_steps - rec.step) * self.rates.seconds_per_step,
            "goodput": rec.goodput, "restart": self.restart_count, "checkpoint_step": checkpoint_step,
            "mfu": self.rates.mfu, "outcome": outcome, "time": time.time(),
        })
