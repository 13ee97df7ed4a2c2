"""Callbacks around each training step, and the opt-in per-step recorder built on them. Torch-free.

``Trainer.fit`` calls every hook's ``on_step_start`` just before ``train_step`` (the batch is loaded and on
the device) and ``on_step_end`` once the step's all-gather and metrics are done, before the checkpoint the
step may trigger. Benchmarks time steps and tests record them through these, without patching the trainer.
"""

from __future__ import annotations

import collections

from kubetrain_trainer.stats import StepRecord


class StepHook:
    """Override what you need; the defaults do nothing. A hook runs on every rank, inside the step's time."""

    def on_step_start(self, step: int) -> None:
        """``step``: the job-wide step about to run (the first after a resume at step N is N + 1)."""

    def on_step_end(self, record: StepRecord) -> None:
        """The step's job-wide outcome (the same on every rank, but ``step_seconds`` and ``comm_bytes``)."""


class StepRecorder(StepHook):
    """Keeps the records of the last ``limit`` steps (all of them with ``limit=None``), across ``fit`` calls.

    Nothing keeps per-step history unless a recorder is passed: a long job's memory stays flat.
    """

    DEFAULT_LIMIT = 10_000

    def __init__(self, limit: int | None = DEFAULT_LIMIT):
        self.records: collections.deque[StepRecord] = collections.deque(maxlen=limit)

    def on_step_end(self, record: StepRecord) -> None:
        self.records.append(record)

    def clear(self) -> None:
        self.records.clear()

    @property
    def losses(self) -> list[float]:
        return [r.loss for r in self.records]

    @property
    def comm_bytes(self) -> list[int]:
        """This process's collective payload bytes per step."""
        return [r.comm_bytes for r in self.records]

    @property
    def step_seconds(self) -> list[float]:
        return [r.step_seconds for r in self.records]

    @property
    def compression_errors(self) -> list[float | None]:
        return [r.compression_error for r in self.records]

    @property
    def noise_scales(self) -> list[float | None]:
        return [r.noise_scale for r in self.records]
