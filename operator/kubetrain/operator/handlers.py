"""Kopf wiring only: settings, the runtime's start and stop, watch indexes, and handlers that delegate.

The job's own events (listed, created, changed), a timer and its pods' and nodes' events call the same level-triggered
``reconcile.reconcile_job``; the pods and nodes it needs come from Kopf's in-memory
indexes (fed by watches), so a reconcile makes no reads in the steady state and writes
only on a difference. The runtime (``runtime.OperatorRuntime``) is in Kopf's memo,
not in this module.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from datetime import datetime, timezone
from typing import Any

import kopf

from kubetrain.api.models import GROUP, KIND, PLURAL, VERSION
from kubetrain.api.sweep import SWEEP_KIND
from kubetrain.operator import capacity, kueue, naming, planner, reconcile
from kubetrain.operator import nodes as node_loss
from kubetrain.operator.kube import Kube
from kubetrain.operator.reconcile import RETRY_BACKOFF, Indexes, plain
from kubetrain.operator.runtime import RUNTIME_KEY, JobMemo, OperatorRuntime
from kubetrain.operator.settings import OperatorConfig, kueue_from_env, reconcile_interval_from_env

# Kopf takes a timer's interval when the decorator runs, at import, before any startup handler:
# this one setting is read from the environment here. (A fixed short timer that skips rounds until
# the configured interval has passed would wake every job's timer task each tick: CPU at 1,000 jobs.)
RECONCILE_INTERVAL = reconcile_interval_from_env()


class JobsWithoutDiffBase(kopf.AnnotationsDiffBaseStorage):
    """No last-handled configuration on the jobs: their handlers take the job as it is (``job_event``).

    Sweeps keep theirs: their create/update handlers need it, or every change of a sweep (its own
    status patches included) would read as a new creation and run the handler again, in a loop.

    Only a sweep's essence is built: Kopf builds one for every event of every kind it watches (a deep copy
    of the object), pods and nodes included, which have no handler that compares it.
    """

    def build(self, *, body: kopf.Body, extra_fields: Any = None) -> Any:
        return super().build(body=body, extra_fields=extra_fields) if body.get("kind") == SWEEP_KIND else None

    def fetch(self, *, body: kopf.Body) -> Any:
        return None if body.get("kind") == KIND else super().fetch(body=body)

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: Any) -> None:
        if body.get("kind") != KIND:
            super().store(body=body, patch=patch, essence=essence)


class _QuietSuccess(logging.Filter):
    """Drop Kopf's "Timer/Handler ... succeeded" lines: one per job per tick is noise, not news."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().endswith("succeeded.")


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, logger: logging.Logger, **_: Any) -> None:
    # `python -m kubetrain.operator` passes the config it gave kopf.run (same peering priority);
    # `kopf run` passes none. Popped: objects' memos need the runtime only.
    cfg: OperatorConfig = memo.pop("config", None) or OperatorConfig.from_env()
    # Our API group for every annotation and finalizer Kopf writes.
    settings.persistence.finalizer = naming.FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = JobsWithoutDiffBase(prefix=GROUP, key="last-handled-configuration")
    settings.posting.level = logging.INFO
    logging.getLogger("kopf.objects").addFilter(_QuietSuccess())
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    # Sync handlers run in threads; reconciles of different jobs proceed in parallel.
    settings.execution.max_workers = 8
    # A job deleted while its reconcile timer runs (TTL deletes from inside it) waits for the
    # timer to stop. Kopf re-checks a stopping timer only every 60 s by default; our reconciles
    # take milliseconds, so wait half a second for them and poll every 2 s after that.
    settings.background.instant_exit_timeout = 0.5
    settings.background.cancellation_polling = 2.0
    settings.peering.name = cfg.peering_name
    settings.peering.standalone = cfg.standalone
    settings.peering.mandatory = not cfg.standalone
    # Kopf copies the operator memo into each object's memo: every handler finds the runtime there.
    memo[RUNTIME_KEY] = runtime = OperatorRuntime(cfg, Kube.connect())
    runtime.start()
    logger.info("kubetrain operator: trainer image %s, namespaces %s", cfg.build.trainer_image, cfg.namespaces or "all")


@kopf.on.cleanup()
def stop(memo: kopf.Memo, logger: logging.Logger, **_: Any) -> None:
    if RUNTIME_KEY in memo:  # absent when startup failed before building it
        OperatorRuntime.of(memo).stop()
        logger.info("kubetrain operator stopped: throughput reader, /metrics server and API client closed")


def _gpu_resource(memo: kopf.Memo) -> str:
    return OperatorRuntime.of(memo).config.gpu_resource


# The indexes are async: Kopf runs a sync function in its thread pool, where each pod event's index
# updates queued behind reconciles waiting on the API (status then lagged the pods by seconds).
@kopf.index("pods", labels={naming.LABEL_JOB: kopf.PRESENT})
async def job_pods(namespace: str, labels: kopf.Labels, body: kopf.Body, **_: Any) -> dict[tuple[str, str], planner.PodView]:
    # Read from Kopf's body without a deep copy of the whole pod: the view keeps copies of what it needs.
    return {(namespace, labels[naming.LABEL_JOB]): planner.PodView.from_body(body)}


@kopf.index("nodes")
async def gpu_nodes(name: str, body: kopf.Body, memo: kopf.Memo, **_: Any) -> dict[str, capacity.NodeInfo]:
    return {name: capacity.NodeInfo.from_body(plain(body), _gpu_resource(memo))}


def _holds_gpus(spec: kopf.Spec, status: kopf.Status, memo: kopf.Memo, **_: Any) -> bool:
    return bool(spec.get("nodeName")) and status.get("phase") not in ("Succeeded", "Failed") and capacity.pod_gpus(spec, _gpu_resource(memo)) > 0


@kopf.index("pods", when=_holds_gpus)
async def gpus_in_use(spec: kopf.Spec, memo: kopf.Memo, **_: Any) -> dict[str, int]:
    return {spec["nodeName"]: capacity.pod_gpus(spec, _gpu_resource(memo))}


def _awaits_gpus(spec: kopf.Spec, status: kopf.Status, meta: kopf.Meta, memo: kopf.Memo, **_: Any) -> bool:
    """Created, not bound yet, and not found unplaceable: the scheduler will give it GPUs first."""
    unschedulable = any(c.get("type") == "PodScheduled" and c.get("reason") == "Unschedulable" for c in status.get("conditions") or [])
    return (not spec.get("nodeName") and not meta.get("deletionTimestamp") and status.get("phase", "Pending") == "Pending"
            and not unschedulable and capacity.pod_gpus(spec, _gpu_resource(memo)) > 0)


@kopf.index("pods", when=_awaits_gpus)
async def gpus_pending(namespace: str, name: str, spec: kopf.Spec, memo: kopf.Memo, **_: Any) -> dict[tuple[str, str], int]:
    return {(namespace, name): capacity.pod_gpus(spec, _gpu_resource(memo))}


def _job_changed(type: str | None, body: kopf.Body, memo: kopf.Memo, **_: Any) -> bool:
    """Whether a job's event calls for a reconcile; checked in Kopf's loop, before a thread is taken (most job
    events are our own status writes coming back).

    Not before Kopf's finalizer is on the job: Kopf adds it in this event's patch, tested against the job's
    resourceVersion, which our first status write would change first (the patch then failed with 422 and was
    sent again). The finalizer's own event, an instant later, reconciles the new job."""
    meta = body["metadata"]
    settled = naming.FINALIZER in (meta.get("finalizers") or []) or bool(meta.get("deletionTimestamp"))
    return type != "DELETED" and settled and JobMemo.of(memo).differs(body)


# Not on.create/update/resume: those need Kopf's diff-base, a copy of each job's spec written to the job
# (one more patch per job, and memory) only to tell what changed, which a level-triggered reconcile ignores.
@kopf.on.event(GROUP, VERSION, PLURAL, when=_job_changed)
def job_event(type: str | None, namespace: str, name: str, body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo,
              logger: logging.Logger, job_pods: kopf.Index, gpu_nodes: kopf.Index, gpus_in_use: kopf.Index,
              gpus_pending: kopf.Index, **_: Any) -> None:
    """Listed, created, or its spec, labels or annotations changed: reconcile now (our own status writes come
    back as events too, and are left to the pods' wakes and the timer)."""
    runtime, state, idx = OperatorRuntime.of(memo), JobMemo.of(memo), Indexes(job_pods, gpu_nodes, gpus_in_use, gpus_pending)
    if type == "DELETED" or not state.changed(body):
        return
    runtime.wakes.register((namespace, name), functools.partial(reconcile.woken, body, runtime, state, logger, idx))
    reconcile.on_event(body, patch, runtime, state, logger, idx)


# The first round one interval after the job appears, not at once: its own events and its pods' have
# reconciled it by then, and at 1,000 jobs created together early rounds were CPU in the burst.
@kopf.timer(GROUP, VERSION, PLURAL, interval=RECONCILE_INTERVAL, initial_delay=RECONCILE_INTERVAL, backoff=RETRY_BACKOFF)
def periodic(namespace: str, name: str, body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, logger: logging.Logger,
             job_pods: kopf.Index, gpu_nodes: kopf.Index, gpus_in_use: kopf.Index, gpus_pending: kopf.Index, **_: Any) -> None:
    runtime, state, idx = OperatorRuntime.of(memo), JobMemo.of(memo), Indexes(job_pods, gpu_nodes, gpus_in_use, gpus_pending)
    # A timer's body is the live one Kopf keeps fresh: what a pod event's wake reconciles from.
    runtime.wakes.register((namespace, name), functools.partial(reconcile.woken, body, runtime, state, logger, idx))
    reconcile.reconcile_job(body, patch, runtime, state, logger, idx)


@kopf.on.event("nodes")
async def node_event(type: str | None, name: str, body: kopf.Body, memo: kopf.Memo, job_pods: kopf.Index, **_: Any) -> None:
    """A node was deleted or is NotReady: wake the jobs with pods on it when those pods count as lost (nodes.py)."""
    runtime = OperatorRuntime.of(memo)
    runtime.deleted_nodes.event(type, name)
    info = capacity.NodeInfo.from_body(plain(body), runtime.config.gpu_resource)
    delay = node_loss.wake_after(type, info, datetime.now(timezone.utc), runtime.config.node_lost_grace_seconds)
    if delay is None:
        return
    loop = asyncio.get_running_loop()
    for key in {key for key, views in job_pods.items() if any(v.node == name for v in views)}:
        runtime.wakes.wake_later(key, loop, delay)


@kopf.on.event("pods", labels={naming.LABEL_JOB: kopf.PRESENT})
async def wake_job(namespace: str, labels: kopf.Labels, memo: kopf.Memo, **_: Any) -> None:
    """A pod of a job changed: reconcile the job soon (coalesced with the pod's siblings' events)."""
    OperatorRuntime.of(memo).wakes.wake((namespace, labels[naming.LABEL_JOB]), asyncio.get_running_loop())


# Registered at import, as the timer's interval is read: without Kueue the Workload CRD does not
# exist, and Kopf would wait for it.
if kueue_from_env():

    @kopf.on.event(kueue.GROUP, kueue.VERSION, kueue.PLURAL, labels={naming.LABEL_JOB: kopf.PRESENT})
    async def wake_queued_job(namespace: str, labels: kopf.Labels, memo: kopf.Memo, **_: Any) -> None:
        """Kueue admitted, evicted or requeued a job's Workload: reconcile the job now, not at its next tick."""
        OperatorRuntime.of(memo).wakes.wake((namespace, labels[naming.LABEL_JOB]), asyncio.get_running_loop())


def _orphaned(meta: kopf.Meta, **_: Any) -> bool:
    return bool(meta.get("deletionTimestamp")) and naming.TRACKING_FINALIZER in (meta.get("finalizers") or [])


# An event handler, not a timer: Kopf stops timers on objects being deleted.
# The initial listing at start-up delivers every stuck pod here too.
@kopf.on.event("pods", labels={naming.LABEL_JOB: kopf.PRESENT}, when=_orphaned)
def release_orphans(name: str, namespace: str, labels: kopf.Labels, memo: kopf.Memo, logger: logging.Logger, **_: Any) -> None:
    """A terminating pod whose job is gone can never be accounted for: let it go.

    The job's own deletion handler normally releases its pods; this covers a job
    removed while its handler could not run (e.g. its finalizer was stripped by hand).
    """
    if reconcile.release_orphan(OperatorRuntime.of(memo), namespace, name, labels[naming.LABEL_JOB]):
        logger.info("released pod %s: its job %s no longer exists", name, labels[naming.LABEL_JOB])


@kopf.on.delete(GROUP, VERSION, PLURAL, backoff=RETRY_BACKOFF)
def on_delete(name: str, namespace: str, memo: kopf.Memo, logger: logging.Logger, **_: Any) -> None:
    """Leave nothing behind: release our tracking finalizers so garbage collection can finish."""
    reconcile.finalize(OperatorRuntime.of(memo), namespace, name)
    logger.info("deleted: pods released for garbage collection")
