"""What a resize costs a job, learned from what its resizes actually cost.

The allocator charges every change ``restart_seconds`` of no progress. The default is today's
measured cost with the operator's defaults (about 25 s from the trainer_elastic benchmark: node
loss or scale-up to the first step at the new world size). A job whose checkpoint is large or
whose rendezvous is slow loses more. The operator measures each resize from what it observes of
the job anyway, its throughput readings (step counter, step time, when read) and the time of the
resize:

    lost = (t1 - t0) - (s1 - s0) * T1        s0 = s_prev + (t0 - t_prev) / T_prev

t0 is when the resize began, (t_prev, s_prev, T_prev) the last reading before it, (t1, s1, T1) the
first at the new size: the wall time since the resize less the time the steps made since then
took at the new size. Steps replayed from the last checkpoint are lost too (s1 falls back), and
the reader's delay cancels (the steps made while nobody looked are subtracted). Each measurement
is folded into the job's estimate with an exponential moving average, so one slow outlier moves
it only part of the way.
"""

from __future__ import annotations

DEFAULT_RESTART_SECONDS = 25.0


def lost_seconds(resized: float, before: tuple[float, int, float], after: tuple[float, int, float]) -> float | None:
    """Progress one resize cost, in seconds at the new size; None when the readings cannot tell.

    ``before`` and ``after`` are (time read, step, seconds per step) of the last reading before the
    resize at ``resized`` and the first one after it at the new size.
    """
    t_prev, s_prev, step_prev = before
    t1, s1, step1 = after
    if not t_prev <= resized < t1 or step_prev <= 0 or step1 <= 0:
        return None
    s0 = s_prev + (resized - t_prev) / step_prev  # where the job would have been when the resize began
    return max((t1 - resized) - (s1 - s0) * step1, 0.0)


def update(estimate: float | None, observed: float, weight: float = 0.5) -> float:
    """EMA of the restart cost; the first observation replaces the default outright."""
    if estimate is None:
        return observed
    return (1.0 - weight) * estimate + weight * observed
