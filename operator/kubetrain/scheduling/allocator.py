"""Replicas for every elastic job, between its min and max, to maximise the cluster's fair goodput.

One round, pure and deterministic (same input, same output; ties break on priority, arrival,
name). Plain dataclasses in and out so the operator, the simulator and the tests share it.

Order of guarantees, then optimisation:

1. A running job never goes below its ``min`` (its min is reserved first, in priority then
   arrival order; only when the cluster has lost capacity below the running mins does the
   last job in that order stop).
2. Pending jobs get their ``min`` next, strictly in priority then arrival order: the first one
   whose min does not fit stops the queue (no backfill past it, so a large job is not starved
   by a stream of small ones). Running jobs above their min shrink for it.
3. Jobs resized less than ``min_dwell_seconds`` ago keep their replicas if the GPUs are there
   (no flapping).
4. The remaining GPUs go where they raise  sum_j U(speedup_j)  most, with
   speedup_j(r) = goodput_j(r) / goodput_j(min_j) and U(s) = s^p / p  (p = ``fairness``,
   default -1; log s at p = 0). Maximising this sum is maximising Pollux's power mean of
   speedups (p = -1 there too): p = 1 is plain throughput, p -> -inf is max-min fairness.
   A change costs the job ``restart_seconds`` of no progress, so a resized job's speedup is
   scaled by  (H - R) / H  with H the horizon its new size will hold (its age, clamped between
   the interval and ``max_horizon_seconds``: a job that has run for an hour is expected to run
   about as long again, Pollux's age argument). A move that gains less than the restart
   costs therefore never happens.
5. **Minimum gain:** a running job grows only if the larger size pays back its restart cost R
   within P = max(interval, 2 R): goodput(r) x (P - R) >= goodput(current) x P, a gain of at
   least P / (P - R) (x1.09 at R = 5 s, x2 from R = 30 s with 60 s rounds). The age horizon alone
   lets a job that has run for an hour grow for a 1% gain, and every grow into freed GPUs is a
   restart; this threshold keeps the small ones out. P is never below two restarts: within one
   interval alone, a job whose restart outlasts the interval could never grow again
   (docs/scheduling.md: restarts per job and JCT with and without it).

The search is greedy on marginal utility per GPU with a heap. Restart penalties make each job's
utility curve non-concave (its current size is a spike), so the greedy walks the upper concave
hull of each curve (a jump straight to the current size is one step), which is exact for
concave curves and near-exact otherwise; a step that no longer fits is replaced by the best
step that does.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True)
class JobInput:
    name: str
    min_replicas: int
    max_replicas: int
    current_replicas: int = 0  # 0 = pending (or stopped)
    # goodput[r] for r = 0..max_replicas (any unit, the allocator only uses ratios);
    # empty = no model yet: linear in r (assume it scales, let it try).
    goodput: tuple[float, ...] = ()
    priority: int = 0
    arrival: float = 0.0  # creation time, s
    # False: opted out. A running one keeps its replicas (its GPUs are counted, never moved); a pending
    # one holds its min in the queue order, since the existing machinery will start it when GPUs free up.
    managed: bool = True
    restart_seconds: float = 25.0  # what one resize costs this job (learned: restart_cost.py)
    started: float | None = None  # when it first ran (age = now - started)
    last_change: float | None = None  # when its replicas last changed
    weight: float = 1.0  # multiplies its utility (e.g. from priority); 1 = equal
    # GPUs one replica holds: capacity is counted in GPUs, so jobs of 1 and 8 GPUs per replica share one pool.
    gpus_per_replica: int = 1


@dataclass(frozen=True)
class AllocatorConfig:
    fairness: float = -1.0  # p of the power mean of speedups
    interval_seconds: float = 60.0
    min_dwell_seconds: float = 180.0  # no optimisation-driven resize within this of the last one
    max_horizon_seconds: float = 3600.0
    # A grow must pay back the job's restart cost within max(payback_seconds, payback_restarts x its restart
    # cost): None = one interval; 0 = no threshold.
    payback_seconds: float | None = None
    payback_restarts: float = 2.0


@dataclass(frozen=True)
class Decision:
    name: str
    previous: int
    replicas: int
    reason: str


@dataclass(frozen=True)
class Allocation:
    replicas: dict[str, int]
    decisions: tuple[Decision, ...] = ()  # the jobs whose replicas change, with why
    capacity: int = 0
    used: int = 0
    waiting: tuple[str, ...] = field(default=())  # pending jobs whose min did not fit, in queue order


def _order(j: JobInput) -> tuple:
    return (-j.priority, j.arrival, j.name)


def _utility(s: float, p: float) -> float:
    if s <= 0:
        return -math.inf
    if p == 0:
        return math.log(s)
    return s ** p / p


def restart_factor(job: JobInput, now: float, cfg: AllocatorConfig) -> float:
    """Share of the coming horizon a resize leaves productive: (H - R) / H."""
    age = (now - job.started) if job.started is not None else 0.0
    h = min(max(age, cfg.interval_seconds), cfg.max_horizon_seconds)
    return max((h - job.restart_seconds) / h, 1e-3)


def _goodput(job: JobInput, r: int) -> float:
    if not job.goodput:
        return float(r)
    return job.goodput[min(r, len(job.goodput) - 1)]


def pays_back(job: JobInput, r: int, cfg: AllocatorConfig) -> bool:
    """Whether growing a running job to ``r`` repays its restart in time (see the module docstring, 5.)."""
    p = cfg.interval_seconds if cfg.payback_seconds is None else cfg.payback_seconds
    cur = job.current_replicas
    if p <= 0 or cur <= 0 or r <= cur:
        return True
    p = max(p, cfg.payback_restarts * job.restart_seconds)
    return _goodput(job, r) * (p - job.restart_seconds) >= _goodput(job, cur) * p


class _Curve:
    """One job's utility at each r in [lo, hi]."""

    __slots__ = ("job", "lo", "hi", "u", "pos")

    def __init__(self, job: JobInput, lo: int, hi: int, now: float, cfg: AllocatorConfig):
        self.job, self.lo, self.hi, self.pos = job, lo, hi, lo
        base = _goodput(job, max(job.min_replicas, 1)) or 1e-12
        pen = restart_factor(job, now, cfg) if job.current_replicas > 0 else 1.0
        p = cfg.fairness
        cur = job.current_replicas
        # A speedup floor keeps every utility finite (a zero goodput in a table would make U = -inf
        # and cut the job out of the hull walk at its starting point).
        self.u = [job.weight * _utility(max(_goodput(job, r) / base * (1.0 if r == cur or cur == 0 else pen), 1e-9), p)
                  for r in range(lo, hi + 1)]
        if lo <= cur <= hi:
            # A grow below the minimum gain is worth less than staying: the hull walks past it to one that pays.
            stay = self.u[cur - lo]
            for r in range(cur + 1, hi + 1):
                if not pays_back(job, r, cfg):
                    self.u[r - lo] = min(self.u[r - lo], stay - 1e-9 * (r - cur))

    def at(self, r: int) -> float:
        return self.u[r - self.lo]

    def hull_steps(self, start: int) -> list[tuple[int, int]]:
        """Upper concave hull of the curve from ``start``: [(x, y), ...] with decreasing slopes, only gains."""
        pts: list[int] = []
        for r in range(start, self.hi + 1):
            ur = self.at(r)
            while len(pts) >= 2:
                a, b = pts[-2], pts[-1]
                # b lies on or under the chord a-r: drop it (cross-multiplied slopes, no division).
                if (self.at(b) - self.at(a)) * (r - a) <= (ur - self.at(a)) * (b - a):
                    pts.pop()
                else:
                    break
            pts.append(r)
        steps = []
        for a, b in zip(pts, pts[1:]):
            if self.at(b) > self.at(a):
                steps.append((a, b))
            else:
                break
        return steps

    def best_step(self, x: int, room: int) -> tuple[float, int] | None:
        """The best (slope, y) with x < y <= x + room, for when the hull's next step is too big."""
        best = None
        ux = self.at(x)
        for y in range(x + 1, min(self.hi, x + room) + 1):
            g = (self.at(y) - ux) / (y - x)
            if g > 0 and (best is None or g > best[0]):
                best = (g, y)
        return best


def allocate(jobs: Sequence[JobInput], capacity: int, now: float,
             config: AllocatorConfig | None = None) -> Allocation:
    cfg = config or AllocatorConfig()
    names = [j.name for j in jobs]
    if len(set(names)) != len(names):
        raise ValueError("job names must be unique")
    ordered = sorted(jobs, key=_order)
    by_name = {j.name: j for j in jobs}
    out: dict[str, int] = {}
    free = capacity
    reasons: dict[str, str] = {}

    # Opted-out jobs that run keep what they have (their GPUs are simply not ours to move).
    for j in ordered:
        if not j.managed and j.current_replicas > 0:
            out[j.name] = j.current_replicas
            free -= j.current_replicas * j.gpus_per_replica
    # 1. Running managed jobs keep their min.
    admitted: list[JobInput] = []
    for j in ordered:
        if j.managed and j.current_replicas > 0:
            need = max(j.min_replicas, 1)
            if need * j.gpus_per_replica <= free:
                out[j.name] = need
                free -= need * j.gpus_per_replica
                admitted.append(j)
            else:
                out[j.name] = 0
                reasons[j.name] = "stopped: the cluster has fewer GPUs than the running jobs' minimums"
    # 2. Pending jobs' mins, strictly in priority then arrival order.
    waiting: list[str] = []
    blocked = False
    for j in ordered:
        if j.current_replicas > 0:
            continue
        need = max(j.min_replicas, 1)
        if not blocked and need * j.gpus_per_replica <= free:
            out[j.name] = need
            free -= need * j.gpus_per_replica
            reasons[j.name] = "started at its min replicas"
            if j.managed:
                admitted.append(j)
        else:
            blocked = True
            out[j.name] = 0
            waiting.append(j.name)
    # 3. Recently resized jobs keep their size while the GPUs are there.
    flexible: list[JobInput] = []
    for j in admitted:
        extra = j.current_replicas - out[j.name]
        dwelling = j.last_change is not None and now - j.last_change < cfg.min_dwell_seconds
        if j.current_replicas > 0 and dwelling and 0 < extra * j.gpus_per_replica <= free:
            out[j.name] += extra
            free -= extra * j.gpus_per_replica
        else:
            flexible.append(j)
    # 4. Greedy on marginal utility per GPU, along each job's concave hull.
    if free > 0 and flexible:
        curves = {}
        heap: list[tuple[float, int, int, int]] = []
        for i, j in enumerate(flexible):
            lo = out[j.name]
            hi = min(j.max_replicas, lo + free // j.gpus_per_replica)
            if hi <= lo:
                continue
            c = _Curve(j, lo, hi, now, cfg)
            curves[i] = c
            steps = c.hull_steps(lo)
            if steps:
                x, y = steps[0]
                heapq.heappush(heap, (-(c.at(y) - c.at(x)) / (y - x) / j.gpus_per_replica, i, x, y))
        while heap and free > 0:
            neg, i, x, y = heapq.heappop(heap)
            c = curves[i]
            if c.pos != x:
                continue
            g = c.job.gpus_per_replica
            if (y - x) * g > free:
                alt = c.best_step(x, free // g)
                if alt is not None:
                    heapq.heappush(heap, (-alt[0] / g, i, x, alt[1]))
                continue
            c.pos = y
            free -= (y - x) * g
            nxt = c.hull_steps(y)
            if nxt:
                a, b = nxt[0]
                heapq.heappush(heap, (-(c.at(b) - c.at(a)) / (b - a) / g, i, a, b))
        for c in curves.values():
            out[c.job.name] = c.pos

    decisions = []
    for j in ordered:
        r = out.get(j.name, 0)
        if r == j.current_replicas:
            continue
        why = reasons.get(j.name)
        if why is None:
            g0, g1 = _goodput(j, j.current_replicas), _goodput(j, r)
            if r > j.current_replicas:
                why = f"grown: goodput x{g1 / g0:.2f} pays for the restart" if g0 > 0 else "grown"
            else:
                why = "shrunk: its GPUs raise other jobs' speedup more, or a pending job needs its min"
        decisions.append(Decision(j.name, j.current_replicas, r, why))
    used = sum(r * by_name[n].gpus_per_replica for n, r in out.items())
    return Allocation(replicas=out, decisions=tuple(decisions), capacity=capacity, used=used, waiting=tuple(waiting))
