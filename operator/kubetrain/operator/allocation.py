"""The goodput allocator in the operator: rounds of ``scheduling.allocate`` over the opted-in jobs.

The reconcile is the allocator's only source, so the round reads nothing from the API: every
reconcile of a GPU job reports what it saw (``JobFacts``: its range, pods, phase and the
throughput the reconcile has just written to its status) and the GPUs of the nodes it counts
capacity from. A round (every ``interval``, and half a second after a job arrives, finishes or is
deleted) turns that into ``JobInput``s, allocates, and keeps each managed job's ``Target``. The
job's next reconcile reads its target and the planner caps the desired replicas there: the
allocator moves GPUs only through desired replicas, the existing elastic machinery does the rest.

Throughput model per job: each status.throughput reading at a stable size (phase Running, read
after the last resize) is one step-time observation at (ready replicas, nodes spanned), kept as an
EMA per size and refitted (``throughput_model.fit``) when a new one arrives. A job with none is
predicted to scale linearly (the allocator's prior: let it try); a job seen at one size only keeps
the optimistic sync prior. Goodput is that throughput times the statistical efficiency implied by
the job's latest gradient noise scale (status.throughput.gradientNoiseScale, from the trainer's
kubetrain_trainer_gradient_noise_scale); a job that has never reported one is weighed by
throughput alone.

Restart cost per job: the first stable reading after a resize, against the last one before it,
says how much progress the resize cost (``restart_cost.lost_seconds``); the EMA of those is the
job's restart penalty in the allocator, shown in status.allocation.restartSeconds (and read back
from there after an operator restart). A job not resized yet is charged the operator's default.

State lives on this object, which the ``OperatorRuntime`` owns: no module globals.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from kubetrain.api.models import TrainingJob
from kubetrain.operator.metrics import OperatorMetrics
from kubetrain.operator.planner import Target
from kubetrain.scheduling import restart_cost
from kubetrain.scheduling.allocator import Allocation, AllocatorConfig, JobInput, allocate
from kubetrain.scheduling.efficiency import efficiency
from kubetrain.scheduling.goodput import GoodputModel
from kubetrain.scheduling.throughput_model import StepObservation, StepTimeParams, fit

log = logging.getLogger("kubetrain.operator.allocation")
JobKey = tuple[str, str]  # (namespace, job)
# After an arrival or a finish, wait this long for the burst's other events (a sweep submits many jobs).
POKE_DEBOUNCE_SECONDS = 0.5
# Weight of a new reading in a size's step-time EMA: a reading is a window mean already.
EMA_WEIGHT = 0.5
# A fit takes ~10 ms: refit only on a new size or a step time this far from the fitted one, so a
# steady job costs a round nothing (1,000 jobs refitted every round would hold the lock for seconds).
REFIT_CHANGE = 0.05


def managed(job: TrainingJob, default: bool) -> bool:
    """Whether the allocator may resize the job: opted in (or the default), elastic and on GPUs."""
    spec = job.spec
    goodput = spec.scheduling.goodput
    opted = default if goodput is None or goodput.enabled is None else goodput.enabled
    return bool(opted) and spec.container.gpus_per_replica > 0 and spec.replicas.min < spec.replicas.max


def parse_time(stamp: Any) -> float | None:
    if not isinstance(stamp, str):
        return None
    try:
        return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


@dataclass(frozen=True)
class JobFacts:
    """What one reconcile saw of a job: all a round needs, so a round never reads the API."""

    managed: bool
    min_replicas: int
    max_replicas: int
    gpus_per_replica: int
    replicas: int  # worker pods not finished (0: pending)
    arrival: float  # creationTimestamp, epoch seconds
    local_batch: float  # samples one replica processes per step
    started: float | None = None  # status.startTime
    priority: int = 0


@dataclass(frozen=True)
class Reading:
    """One status.throughput reading turned into a step time at a size."""

    replicas: int
    nodes: int
    step_time: float
    unit: str  # "samples" or "tokens": a job's model is fitted in one unit
    stamp: str  # observedTime: the same reading is counted once
    time: float = 0.0  # observedTime, epoch seconds
    step: int | None = None  # the trainer's step counter when read
    resized: float | None = None  # status.lastScaling.time: the resize this size came from


def reading(status: dict[str, Any], local_batch: float, nodes: int) -> Reading | None:
    """A step-time observation from a job's status, or None when it is not one.

    Only at a stable size (phase Running: every pod ready) and only figures read after the last
    resize, else a mean over the old world size would be credited to the new one. Samples/s is
    preferred; a trainer that reports tokens/s only is fitted in tokens (any unit works: the
    allocator compares a job only with itself at other sizes).
    """
    tp = status.get("throughput") or {}
    replicas = int(status.get("readyReplicas") or 0)
    stamp = tp.get("observedTime")
    if status.get("phase") != "Running" or replicas <= 0 or not stamp:
        return None
    resized = parse_time((status.get("lastScaling") or {}).get("time"))
    observed = parse_time(stamp)
    if resized is not None and (observed is None or observed <= resized):
        return None
    step = tp.get("step")
    for unit, key in (("samples", "samplesPerSecond"), ("tokens", "tokensPerSecond")):
        rate = tp.get(key)
        if rate:
            return Reading(replicas, max(nodes, 1), replicas * local_batch / float(rate), unit, stamp,
                           observed or 0.0, int(step) if step is not None else None, resized)
    return None


def noise_scale(status: dict[str, Any]) -> float | None:
    """The job's latest gradient noise scale from its status (samples), or None when it reports none."""
    value = (status.get("throughput") or {}).get("gradientNoiseScale")
    return float(value) if isinstance(value, (int, float)) and value >= 0 else None


@dataclass
class History:
    """A job's step times by (replicas, nodes), and the model fitted from them (cached until a new reading)."""

    points: dict[tuple[int, int], float] = field(default_factory=dict)
    unit: str | None = None
    last_stamp: str | None = None
    params: StepTimeParams | None = None
    fitted: dict[tuple[int, int], float] = field(default_factory=dict)  # the points ``params`` was fitted on
    # The latest gradient noise scale the job reported (kept when it stops reporting, e.g. at world size 1:
    # it is a property of the gradients, not of the size); None: never reported, throughput only.
    noise_scale: float | None = None
    last: Reading | None = None  # the latest reading: the "before" of the next resize's cost
    restart_seconds: float | None = None  # learned cost of one resize; None: not measured yet
    restarts_measured: int = 0

    def add(self, r: Reading) -> bool:
        """Fold a reading in; False when it was seen already."""
        if r.stamp == self.last_stamp:
            return False
        if r.unit != self.unit:  # the trainer changed what it reports: start over in the new unit
            self.points, self.unit, self.last = {}, r.unit, None
        self.last_stamp = r.stamp
        self._measure_restart(r)
        self.last = r
        key = (r.replicas, r.nodes)
        old = self.points.get(key)
        new = self.points[key] = r.step_time if old is None else (1 - EMA_WEIGHT) * old + EMA_WEIGHT * r.step_time
        was = self.fitted.get(key)
        if was is None or abs(new - was) > REFIT_CHANGE * was:
            self.params = None
        return True

    def _measure_restart(self, r: Reading) -> None:
        """The first reading after a resize, against the last one before it: what the resize cost."""
        before = self.last
        if (before is None or r.resized is None or before.step is None or r.step is None
                or not before.time <= r.resized < r.time):
            return
        lost = restart_cost.lost_seconds(r.resized, (before.time, before.step, before.step_time),
                                         (r.time, r.step, r.step_time))
        if lost is not None:
            self.restart_seconds = restart_cost.update(self.restart_seconds, lost)
            self.restarts_measured += 1

    def table(self, max_replicas: int, local_batch: float, gpus_per_node: int) -> tuple[float, ...]:
        """Goodput at 0..max_replicas; () without data: the allocator's linear prior.

        Throughput from the fitted step-time model (linear before the first reading) times the statistical
        efficiency of the global batch r x local_batch at the job's noise scale (1 when it reports none).
        """
        if not self.points:
            if self.noise_scale is None:
                return ()
            return tuple(r * efficiency(r * local_batch, local_batch, self.noise_scale) for r in range(max_replicas + 1))
        if self.params is None:
            obs = [StepObservation(r, n, local_batch, t) for (r, n), t in sorted(self.points.items())]
            self.params = fit(obs)
            self.fitted = dict(self.points)
        model = GoodputModel(self.params, local_batch, local_batch, noise_scale=self.noise_scale,
                             gpus_per_node=max(gpus_per_node, 1))
        return model.table(max_replicas)

    def adopt(self, status: dict[str, Any]) -> None:
        """After an operator restart: the restart cost the last operator learned, from the job's status."""
        a = status.get("allocation") or {}
        if self.restarts_measured == 0 and (a.get("restartsMeasured") or 0) > 0 and a.get("restartSeconds") is not None:
            self.restart_seconds, self.restarts_measured = float(a["restartSeconds"]), int(a["restartsMeasured"])


def decision_reason(why: str) -> str:
    """The allocator's free-text reason as a CamelCase condition reason (metrics.ALLOCATION_REASONS)."""
    for prefix, reason in (("started", "Started"), ("grown", "Grown"), ("shrunk", "Shrunk"), ("stopped", "Stopped")):
        if why.startswith(prefix):
            return reason
    return "Grown"


class GoodputAllocator:
    """The allocator's state in one operator, and the thread that runs its rounds."""

    def __init__(self, config: AllocatorConfig, metrics: OperatorMetrics, default: bool = False,
                 restart_seconds: float = 25.0, clock: Callable[[], float] = time.time):
        self.config = config
        self.default = default
        self.restart_seconds = restart_seconds
        self.metrics = metrics
        self.clock = clock
        self._lock = threading.Lock()  # reconciles report from Kopf's threads, the round reads from its own
        self._facts: dict[JobKey, JobFacts] = {}
        self._history: dict[JobKey, History] = {}
        self._targets: dict[JobKey, Target] = {}
        self._last_change: dict[JobKey, float] = {}
        self._gpus: dict[str, int] = {}  # node -> allocatable GPUs, of the ready schedulable nodes
        self._poke = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="kubetrain-allocator", daemon=True)

    # --- fed by the reconcile ---

    def set_nodes(self, gpus: dict[str, int]) -> None:
        with self._lock:
            self._gpus = dict(gpus)

    def report(self, key: JobKey, facts: JobFacts | None, status: dict[str, Any], nodes_spanned: int) -> None:
        """One reconcile's view of a job; ``facts`` None: the job left the pool (finished, suspended, CPU)."""
        with self._lock:
            known = key in self._facts
            if facts is None:
                if known:
                    self._drop(key)
                    self._poke.set()  # a finish frees GPUs for the others now, not at the next interval
                return
            if not known or self._facts[key].managed != facts.managed:
                self._poke.set()  # an arrival gets its min within a round, not an interval
            self._facts[key] = facts
            if not facts.managed:
                return
            history = self._history.get(key)
            if history is None:
                history = self._history[key] = History()
                history.adopt(status)
            if (b := noise_scale(status)) is not None:
                history.noise_scale = b
            if (r := reading(status, facts.local_batch, nodes_spanned)) is not None:
                history.add(r)

    def forget(self, key: JobKey) -> None:
        with self._lock:
            if key in self._facts:
                self._poke.set()
            self._drop(key)

    def _drop(self, key: JobKey) -> None:
        for d in (self._facts, self._history, self._targets, self._last_change):
            d.pop(key, None)

    def target(self, key: JobKey) -> Target | None:
        with self._lock:
            return self._targets.get(key)

    def restart_seconds_of(self, key: JobKey) -> float:
        """The job's restart penalty: learned from its own resizes, else the operator's default (call under the lock)."""
        h = self._history.get(key)
        return h.restart_seconds if h is not None and h.restart_seconds is not None else self.restart_seconds

    # --- the round ---

    def run_round(self) -> Allocation | None:
        """Allocate over every reported GPU job; None before any node or job is known."""
        started = time.perf_counter()
        now = self.clock()
        with self._lock:
            if not self._gpus or not any(f.managed for f in self._facts.values()):
                return None  # nothing to move: no round, no metric, no log
            capacity = sum(self._gpus.values())
            top = max(self._gpus.values())
            names = {f"{ns}/{job}": (ns, job) for ns, job in self._facts}
            inputs = []
            for name, key in names.items():
                f = self._facts[key]
                target = self._targets.get(key)
                # The allocation in force, not the pods of the moment: a job still growing to its
                # target is not "changed" again by every round until it gets there.
                current = target.replicas if (f.managed and target is not None) else f.replicas
                h = self._history.get(key) if f.managed else None
                table = h.table(f.max_replicas, f.local_batch, top // f.gpus_per_replica) if h is not None else ()
                inputs.append(JobInput(
                    name=name, min_replicas=f.min_replicas, max_replicas=f.max_replicas, current_replicas=current,
                    goodput=table, priority=f.priority, arrival=f.arrival, managed=f.managed,
                    restart_seconds=self.restart_seconds_of(key), started=f.started,
                    last_change=self._last_change.get(key), gpus_per_replica=f.gpus_per_replica))
            result = allocate(inputs, capacity, now, self.config)
            why = {d.name: d for d in result.decisions}
            for name, key in names.items():
                if not self._facts[key].managed:
                    self._targets.pop(key, None)
                    continue
                replicas = result.replicas.get(name, 0)
                d = why.get(name)
                h = self._history.get(key)
                cost = {"restart_seconds": self.restart_seconds_of(key), "restarts_measured": h.restarts_measured if h else 0}
                if d is not None:
                    reason = decision_reason(d.reason)
                    text = d.reason
                    if reason == "Started" and replicas > self._facts[key].min_replicas:
                        text = "started: its min first (priority, then arrival order), the rest for the goodput it adds"
                    self._targets[key] = Target(replicas, reason, f"{replicas} replicas (was {d.previous}): {text}", **cost)
                    if d.previous > 0:
                        self._last_change[key] = now
                    self.metrics.allocator_decisions.labels(reason).inc()
                elif key not in self._targets:
                    self._targets[key] = Target(replicas, "Kept", f"{replicas} replicas: the allocator keeps its size", **cost)
                else:
                    self._targets[key] = replace(self._targets[key], **cost)  # a cost learned since the decision
                self.metrics.allocated.labels(*key).set(replicas)
        self.metrics.allocator_round.observe(time.perf_counter() - started)
        for d in result.decisions:
            if names[d.name] in self._targets:  # managed jobs only: the others are not ours to move
                log.info("goodput allocator: %s %d -> %d: %s", d.name, d.previous, d.replicas, d.reason)
        return result

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._poke.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _loop(self) -> None:
        while not self._stop.is_set():
            poked = self._poke.wait(self.config.interval_seconds)
            if self._stop.is_set():
                return
            if poked:
                self._stop.wait(POKE_DEBOUNCE_SECONDS)
            self._poke.clear()
            try:
                self.run_round()
            except Exception:  # noqa: BLE001 - a bad round must not end the rounds; the next one retries
                log.exception("goodput allocator round failed")
