"""What one step did: each rank's figures (:class:`StepStats`, the row of the per-step all-gather) and
the job-wide outcome everything after the gather reads (:class:`StepRecord`). Torch-free."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import ClassVar, Sequence


@dataclass
class StepStats:
    """One rank's figures for one step. Every rank all-gathers one of these per step, as a row of floats in
    field order: the job-wide loss and the stop decision need it anyway, and local rank 0 exports its pod's."""

    loss_sum: float = 0.0  # this rank's mean loss × its samples: the job loss is sum(loss_sum) / sum(samples)
    samples: float = 0.0
    tokens: float = 0.0
    stop: float = 0.0  # 1: this rank was told to stop (SIGTERM)
    group_rank: float = 0.0  # which pod (torchrun agent) the rank runs in
    local_rank: float = 0.0
    # Cumulative per process (exported as counters; the exporter turns them into increments).
    communicated_bytes: float = 0.0
    data_loading_seconds: float = 0.0
    cpu_seconds: float = 0.0
    rss_bytes: float = 0.0
    # NVML readings of the process's GPU; < 0: none (no GPU, no NVML).
    gpu_utilization: float = -1.0
    gpu_memory_bytes: float = -1.0
    gpu_power_watts: float = -1.0
    gpu_energy_joules: float = -1.0
    compute_seconds: float = 0.0  # this step's forward, backward and optimizer step
    compression_error: float = -1.0  # PowerSGD's relative compression error this step; < 0: not compressing
    # This rank's squared gradient norm before the DDP all-reduce and the all-reduced one after it (summed
    # over buckets, unscaled); < 0: not measured (world size 1, FSDP, an fp16 overflow step).
    grad_local_sq: float = -1.0
    grad_global_sq: float = -1.0

    COLUMNS: ClassVar[tuple[str, ...]]

    def row(self) -> list[float]:
        return [float(getattr(self, name)) for name in self.COLUMNS]

    @classmethod
    def from_row(cls, row: Sequence[float]) -> "StepStats":
        return cls(*(float(v) for v in row))

    @classmethod
    def column(cls, name: str) -> int:
        """The index of a field in :meth:`row`."""
        return _INDEX[name]


StepStats.COLUMNS = tuple(f.name for f in fields(StepStats))
_INDEX = {name: i for i, name in enumerate(StepStats.COLUMNS)}


@dataclass(frozen=True)
class StepRecord:
    """One step, job-wide, as every rank sees it after the all-gather: what the metrics processor, the step
    hooks and the recorder receive."""

    step: int  # job-wide, after this step
    loss: float  # mean over every rank's samples
    step_seconds: float  # this rank's wall time: data loading, compute and the all-gather
    job_tokens: int
    job_samples: int
    comm_bytes: int  # this process's collective payload bytes in this step
    compression_error: float | None  # PowerSGD: mean over the ranks that compressed; None: none did
    noise_scale: float | None  # smoothed gradient noise scale in samples; None while unknown
    goodput: float  # kept productive step time ÷ wall time since the job first started
    stopping: int  # ranks told to stop (SIGTERM) at this step
    pod: tuple[StepStats, ...] = ()  # this pod's ranks; filled only where the pod's metrics are exported
