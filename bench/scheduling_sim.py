"""Trace-driven simulator of goodput-aware elastic scheduling (issue 14), running the operator's allocator code.

A cluster of N nodes x G GPUs replays a Pollux workload CSV (bench/data/pollux-osdi21/). Every
``interval`` seconds a policy decides each active job's replicas; between rounds each job
progresses at its true rate, and every start, resize or resume costs it ``restart`` seconds of
no progress. Policies, in the same run:

- ``elastic``: kubetrain.scheduling.allocator (ours), jobs between 1 and their max replicas,
  predicting with the true step-time model, or (``learn=True``) with one fitted to the step
  times the job itself has reported so far (kubetrain.scheduling.throughput_model.fit);
- ``fifo``: rigid, the requested replicas, strict arrival order (no backfill);
- ``fifo_backfill``: the same, but a later job that fits starts while the head waits (a
  stronger rigid baseline than the issue's, shown so the gain is not read off a weak one);
- ``tiresias``: rigid, least attained service (GPU-seconds) in discretised queues, preemptive,
  skipping a job that does not fit (Tiresias's 2D-LAS, simplified).

Truth in the simulator (same for every policy):
- step time: Pollux's model form fitted to each model's measured step times
  (traces/<model>/placements.csv and scalability.csv; the fit's RMS log error is reported);
- progress: measured in steps at the model's base batch M0 (its smallest profiled batch); a step
  at global batch M makes E(M) * M / M0 of them, E from the gradient noise scale measured at M0
  at the job's current epoch (traces/<model>/validation-<M0>.csv); a job finishes when its
  progress reaches that curve's last epoch.
"""

from __future__ import annotations

import csv
import math
import time
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from kubetrain.scheduling.allocator import AllocatorConfig, JobInput, allocate
from kubetrain.scheduling.efficiency import efficiency, noise_scale_from_moments
from kubetrain.scheduling.goodput import GoodputModel
from kubetrain.scheduling.placement import place
from kubetrain.scheduling.throughput_model import StepObservation, StepTimeParams, fit, rms_log_error

DATA = Path(__file__).resolve().parent / "data" / "pollux-osdi21"
POLICIES = ("elastic", "fifo", "fifo_backfill", "tiresias")
# Tiresias-like queue thresholds in attained GPU-seconds: below 1 GPU-hour, below 10, the rest.
TIRESIAS_QUEUES = (3600.0, 36000.0)


@dataclass(frozen=True)
class App:
    name: str
    params: StepTimeParams
    fit_rms_log_error: float
    base_batch: int  # M0
    max_batch: int
    max_local_batch: int
    epochs: tuple[tuple[float, float], ...]  # (progress at end of epoch, noise scale in samples)

    @property
    def total_progress(self) -> float:
        return self.epochs[-1][0]

    def noise_scale(self, progress: float) -> float:
        """B_noise at the epoch the job is in (the measurement at that epoch's end)."""
        for end, b in self.epochs:
            if progress < end:
                return b
        return self.epochs[-1][1]


@lru_cache(maxsize=None)
def load_app(name: str, data: Path = DATA) -> App:
    d = data / "traces" / name
    obs = []
    local_batches = []
    with open(d / "placements.csv") as f:
        for r in csv.DictReader(f):
            p = r["placement"]
            obs.append(StepObservation(sum(map(int, p)), len(p), float(r["local_bsz"]), float(r["step_time"])))
            local_batches.append(int(r["local_bsz"]))
    with open(d / "scalability.csv") as f:
        for r in csv.DictReader(f):
            obs.append(StepObservation(int(r["num_replicas"]), int(r["num_nodes"]), float(r["local_bsz"]),
                                       float(r["step_time"])))
    params = fit(obs)
    sizes = sorted(int(p.stem.split("-")[1]) for p in d.glob("validation-*.csv"))
    m0 = sizes[0]
    epochs = []
    with open(d / f"validation-{m0}.csv") as f:
        for r in csv.DictReader(f):
            prog = float(r["progress"])
            if epochs and prog <= epochs[-1][0]:
                continue  # the files repeat their last row
            epochs.append((prog, noise_scale_from_moments(float(r["grad_sqr"]), float(r["grad_var"]), m0)))
    return App(name, params, rms_log_error(params, obs), m0, sizes[-1], max(local_batches), tuple(epochs))


@dataclass
class SimJob:
    name: str
    app: App
    arrival: float
    requested_replicas: int
    requested_batch: int
    max_replicas: int
    progress: float = 0.0
    replicas: int = 0
    placement: dict = field(default_factory=dict)
    restart_left: float = 0.0
    started: float | None = None
    last_change: float | None = None
    restarts: int = 0  # changes after the first start (resizes, preemptions' resumes)
    lost_seconds: float = 0.0
    attained: float = 0.0  # GPU-seconds held
    finish: float | None = None
    # What the job's trainer has reported, when the allocator learns throughput online:
    observed: dict = field(default_factory=dict)  # (replicas, nodes, micro, accum) -> step time
    fitted: StepTimeParams | None = None

    @property
    def local_batch(self) -> float:
        return self.requested_batch / self.requested_replicas


def read_workload(path: Path, limit: int | None = None) -> list[tuple[str, float, str, int, int]]:
    with open(path) as f:
        rows = [(r["name"], float(r["time"]), r["application"], int(r["num_replicas"]), int(r["batch_size"]))
                for r in csv.DictReader(f)]
    return rows[:limit] if limit else rows


def goodput_model(job: SimJob, elastic: bool, gpus_per_node: int,
                  params: StepTimeParams | None = None) -> GoodputModel:
    """What the job runs: elastic keeps its per-replica batch (kubetrain's trainer), capped at the
    model's largest profiled batch; rigid runs the requested global batch. ``params``: the step-time
    model to predict with (default: the truth)."""
    a = job.app
    return GoodputModel(step_time=params or a.params, local_batch=job.local_batch, base_batch=a.base_batch,
                        noise_scale=a.noise_scale(job.progress), max_batch=a.max_batch if elastic else None,
                        max_local_batch=a.max_local_batch, gpus_per_node=gpus_per_node)


def max_replicas_for(app: App, requested: int, local: float, capacity: int) -> int:
    # Up to where the model's largest profiled batch is reached at the job's per-replica batch,
    # never below what the job asked for.
    return max(requested, min(capacity, max(1, int(app.max_batch // max(local, 1.0)))))


class Simulator:
    def __init__(self, workload: list, policy: str, *, nodes: int = 16, gpus_per_node: int = 4,
                 interval: float = 60.0, restart: float = 30.0, config: AllocatorConfig | None = None,
                 learn: bool = False, data: Path = DATA, restart_by_app: dict[str, float] | None = None,
                 learn_restart: bool = False):
        if policy not in POLICIES:
            raise ValueError(policy)
        self.policy, self.nodes, self.gpn = policy, nodes, gpus_per_node
        self.capacity = nodes * gpus_per_node
        self.interval, self.restart = interval, restart
        # restart_by_app: what a resize really costs each model (e.g. Sia's measurements); ``restart`` is then only
        # what the allocator is told before it has seen a job resize. learn_restart: after a job's first resize the
        # allocator charges it what that resize cost (the operator's restart_cost.py), else ``restart`` throughout.
        self.restart_by_app, self.learn_restart = restart_by_app or {}, learn_restart
        # learn=False: the allocator predicts with the true (fitted-to-all-measurements) model;
        # learn=True: with a model fitted only to the step times this job has reported so far,
        # linear scaling before its first report (what the operator will have).
        self.learn = learn
        self.fits = 0
        self.config = config or AllocatorConfig(interval_seconds=interval)
        self.jobs = []
        for name, t, app, r, bsz in workload:
            a = load_app(app, data)
            r = min(r, self.capacity)
            self.jobs.append(SimJob(name, a, t, r, bsz, max_replicas_for(a, r, bsz / r, self.capacity)))
        self.round_seconds: list[float] = []
        self.gpu_seconds = 0.0
        self.useful_gpu_seconds = 0.0

    # -- policies ----------------------------------------------------------------------
    def _fifo(self, active: list[SimJob], now: float, backfill: bool = False) -> dict[str, int]:
        out, free = {}, self.capacity
        for j in active:
            if j.replicas:
                out[j.name] = j.replicas
                free -= j.replicas
        for j in sorted(active, key=lambda j: (j.arrival, j.name)):
            if j.replicas:
                continue
            if j.requested_replicas > free:
                if backfill:
                    continue
                break  # strict FIFO: nobody passes the head of the queue
            out[j.name] = j.requested_replicas
            free -= j.requested_replicas
        return out

    def _tiresias(self, active: list[SimJob], now: float) -> dict[str, int]:
        def queue(j: SimJob) -> int:
            return sum(j.attained >= t for t in TIRESIAS_QUEUES)

        out, free = {}, self.capacity
        for j in sorted(active, key=lambda j: (queue(j), j.arrival, j.name)):
            if j.requested_replicas <= free:
                out[j.name] = j.requested_replicas
                free -= j.requested_replicas
        return out

    def _elastic(self, active: list[SimJob], now: float) -> dict[str, int]:
        inputs = []
        for j in active:
            if self.learn and j.fitted is None:
                table = ()
            else:
                table = goodput_model(j, True, self.gpn, j.fitted if self.learn else None).table(j.max_replicas)
            inputs.append(JobInput(name=j.name, min_replicas=1, max_replicas=j.max_replicas,
                                   current_replicas=j.replicas, goodput=table, arrival=j.arrival,
                                   restart_seconds=self._charged(j), started=j.started, last_change=j.last_change))
        t = time.perf_counter()
        alloc = allocate(inputs, self.capacity, now, self.config)
        self.round_seconds.append(time.perf_counter() - t)
        return alloc.replicas

    def _true_restart(self, j: SimJob) -> float:
        return self.restart_by_app.get(j.app.name, self.restart)

    def _charged(self, j: SimJob) -> float:
        """The restart cost the allocator charges the job: learned once the job has been resized, else the default."""
        return self._true_restart(j) if self.learn_restart and j.restarts > 0 else self.restart

    # -- time ----------------------------------------------------------------------------
    def _rate(self, j: SimJob) -> tuple[float, float]:
        """(progress per second, useful share of the job's GPUs) at its current placement."""
        elastic = self.policy == "elastic"
        gm = goodput_model(j, elastic, self.gpn)
        m, micro, accum = gm.batch(j.replicas)
        nodes = len(j.placement)
        step = j.app.params.step_time(j.replicas, nodes, micro, accum)
        if self.learn:
            key = (j.replicas, nodes, micro, accum)
            if key not in j.observed:
                # A new configuration reported: refit this job's model on all it has reported.
                j.observed[key] = step
                j.fitted = fit([StepObservation(r, n, b, t, k) for (r, n, b, k), t in sorted(j.observed.items())])
                self.fits += 1
        e = efficiency(m, j.app.base_batch, gm.noise_scale)
        rate = e * m / j.app.base_batch / step
        # Useful share: statistical efficiency x parallel efficiency (vs one replica at the same micro-batch).
        one = j.app.params.samples_per_second(1, 1, micro, accum)
        par = (m / step) / (j.replicas * one)
        return rate, e * par

    def run(self, horizon: float = 10 * 86400.0) -> dict:
        pending = sorted(self.jobs, key=lambda j: (j.arrival, j.name))
        now = 0.0
        active: list[SimJob] = []
        done: list[SimJob] = []
        i = 0
        while (i < len(pending) or active) and now < horizon:
            while i < len(pending) and pending[i].arrival <= now:
                active.append(pending[i])
                i += 1
            if active:
                decide = {"elastic": self._elastic, "fifo": self._fifo, "tiresias": self._tiresias,
                          "fifo_backfill": lambda a, t: self._fifo(a, t, backfill=True)}[self.policy]
                want = decide(active, now)
                prev = {j.name: j.placement for j in active}
                placed = place({j.name: want.get(j.name, 0) for j in active}, prev, self.nodes, self.gpn)
                for j in active:
                    r = want.get(j.name, 0)
                    if r != j.replicas:
                        if r > 0:
                            if j.started is None:
                                j.started = now
                            else:
                                j.restarts += 1
                                j.lost_seconds += self._true_restart(j)
                            j.restart_left = self._true_restart(j)
                        j.replicas, j.last_change = r, now
                    j.placement = placed.get(j.name, {})
            # Advance to the next round in steps of at most 60 s (the noise scale changes by epoch).
            end = now + self.interval
            t = now
            while t < end and active:
                dt = min(60.0, end - t)
                still = []
                for j in active:
                    if j.replicas == 0:
                        still.append(j)
                        continue
                    j.attained += j.replicas * dt
                    dead = min(j.restart_left, dt)
                    j.restart_left -= dead
                    live = dt - dead
                    self.gpu_seconds += j.replicas * dt
                    if live <= 0:
                        still.append(j)
                        continue
                    rate, useful = self._rate(j)
                    need = j.app.total_progress - j.progress
                    if rate * live >= need:
                        took = need / rate
                        j.finish = t + dead + took
                        self.useful_gpu_seconds += j.replicas * took * useful
                        # Give back the GPU-seconds it did not hold.
                        self.gpu_seconds -= j.replicas * (live - took)
                        j.attained -= j.replicas * (live - took)
                        j.progress = j.app.total_progress
                        j.replicas, j.placement = 0, {}
                        done.append(j)
                    else:
                        j.progress += rate * live
                        self.useful_gpu_seconds += j.replicas * live * useful
                        still.append(j)
                active = still
                t += dt
            now = end
        return self.report(done)

    def report(self, done: list[SimJob]) -> dict:
        jcts = sorted(j.finish - j.arrival for j in done)
        n = len(jcts)
        first = min(j.arrival for j in self.jobs)
        makespan = max(j.finish for j in done) - first if done else None
        p99 = jcts[min(n - 1, math.ceil(0.99 * n) - 1)] if n else None
        rs = sorted(self.round_seconds)
        return {
            "policy": self.policy,
            "jobs": len(self.jobs),
            "finished": n,
            "avg_jct": sum(jcts) / n if n else None,
            "p99_jct": p99,
            "makespan": makespan,
            "gpu_utilisation": self.gpu_seconds / (self.capacity * makespan) if makespan else None,
            "goodput_utilisation": self.useful_gpu_seconds / (self.capacity * makespan) if makespan else None,
            "restarts_per_job": sum(j.restarts for j in self.jobs) / len(self.jobs),
            # The reference's yardstick (fewer than 1 per job-hour): restarts over the hours the jobs were in the system.
            "restarts_per_job_hour": sum(j.restarts for j in done) / (sum(jcts) / 3600.0) if n else None,
            "lost_seconds_per_job": sum(j.lost_seconds for j in self.jobs) / len(self.jobs),
            "rounds": len(rs),
            "fits": self.fits,
            "round_seconds_median": rs[len(rs) // 2] if rs else None,
            "round_seconds_max": rs[-1] if rs else None,
        }


def simulate(workload_path: Path, policy: str, limit: int | None = None, **kw) -> dict:
    return Simulator(read_workload(workload_path, limit), policy, **kw).run()
