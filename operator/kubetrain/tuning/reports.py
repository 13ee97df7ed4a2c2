"""A trial's objective as the pruners see it: reports by step, from the trainer's noisy per-step value."""

from __future__ import annotations

from dataclasses import dataclass, field

from kubetrain.api.sweep import TrainingSweep


@dataclass
class ObjectiveReports:
    """Turns the trainer's per-step objective (noisy: one batch) into reports every ``every`` steps:
    the mean of what was seen since the last report, at the step it was reached."""

    every: int
    seen: list[float] = field(default_factory=list)
    last_step: int = -1
    next_report: int = 0

    def observe(self, step: int, value: float) -> dict[int, float]:
        if step <= self.last_step:
            return {}
        self.last_step = step
        self.seen.append(value)
        if step < self.next_report:
            return {}
        report = {step: sum(self.seen) / len(self.seen)}
        self.seen.clear()
        self.next_report = (step // self.every + 1) * self.every
        return report


def report_interval(sweep: TrainingSweep) -> int:
    """Report often enough for the first rung and the objective's step to be judged on fresh values."""
    es, max_steps = sweep.spec.early_stopping, sweep.spec.template.spec.trainer.max_steps
    base = es.min_steps if es.type != "none" else max_steps
    return max(1, min(base, max_steps) // 3)
