"""What a resize costs a job, learned from what its resizes actually cost.

The allocator charges every change ``restart_seconds`` of no progress. The default is today's
measured cost with the operator's defaults (about 25 s from the trainer_elastic benchmark: node
loss or scale-up to the first step at the new world size). A job whose checkpoint is large or
whose rendezvous is slow loses more: after each resize the operator measures the wall time from
the change to the first step at the new size, plus the steps replayed from the last checkpoint
times the step time, and folds it in with an exponential moving average, so one slow outlier
moves the estimate only part of the way.
"""

from __future__ import annotations

DEFAULT_RESTART_SECONDS = 25.0


def observed_restart_seconds(seconds_to_first_step: float, steps_replayed: int = 0,
                             step_seconds: float = 0.0) -> float:
    """Progress lost to one resize: dead time plus the work redone since the last checkpoint."""
    return max(seconds_to_first_step, 0.0) + max(steps_replayed, 0) * max(step_seconds, 0.0)


def update(estimate: float | None, observed: float, weight: float = 0.5) -> float:
    """EMA of the restart cost; the first observation replaces the default outright."""
    if estimate is None:
        return observed
    return (1.0 - weight) * estimate + weight * observed
