"""Kopf handlers: thin, typed, and all delegating to ``reconcile``.

Create, resume, update and a timer call the same level-triggered reconcile; the
pods and nodes it needs come from Kopf's in-memory indexes (fed by watches), so
a reconcile makes no reads in the steady state and writes only on a difference.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from typing import Any

import kopf
from kubernetes.client.exceptions import ApiException
from pydantic import ValidationError

from kubetrain.api.base import format_errors
from kubetrain.api.models import GROUP, PLURAL, VERSION, TrainingJob
from kubetrain.operator import builders, capacity, naming, planner
from kubetrain.operator.kube import Kube
from kubetrain.operator.metrics import OperatorMetrics
from kubetrain.operator.runtime import RUNTIME_KEY, JobMemo, OperatorRuntime
from kubetrain.operator.settings import OperatorConfig, reconcile_interval_from_env

ACTIVE = ("Running", "Scaling", "Restarting")
# Kopf takes a timer's interval when the decorator runs, at import, before any startup handler:
# this one setting is read from the environment here. (A fixed short timer that skips rounds until
# the configured interval has passed would wake every job's timer task each tick: CPU at 1,000 jobs.)
RECONCILE_INTERVAL = reconcile_interval_from_env()


def plain(obj: Any) -> Any:
    """A deep plain-dict copy of a Kopf body (its views are live and not JSON-friendly)."""
    if isinstance(obj, dict) or hasattr(obj, "keys"):
        return {k: plain(obj[k]) for k in obj.keys()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    return obj


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
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=GROUP, key="last-handled-configuration"
    )
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
def stop(memo: kopf.Memo, **_: Any) -> None:
    if RUNTIME_KEY in memo:  # absent when startup failed before building it
        OperatorRuntime.of(memo).stop()


@kopf.index("pods", labels={naming.LABEL_JOB: kopf.PRESENT})
def job_pods(namespace: str, labels: kopf.Labels, body: kopf.Body, **_: Any) -> dict[tuple[str, str], planner.PodView]:
    return {(namespace, labels[naming.LABEL_JOB]): planner.PodView.from_body(plain(body))}


@kopf.index("nodes")
def gpu_nodes(name: str, body: kopf.Body, memo: kopf.Memo, **_: Any) -> dict[str, capacity.NodeInfo]:
    return {name: capacity.NodeInfo.from_body(plain(body), _gpu_resource(memo))}


def _gpu_resource(memo: kopf.Memo) -> str:
    return OperatorRuntime.of(memo).config.gpu_resource


def _holds_gpus(spec: kopf.Spec, status: kopf.Status, memo: kopf.Memo, **_: Any) -> bool:
    return bool(spec.get("nodeName")) and status.get("phase") not in ("Succeeded", "Failed") and capacity.pod_gpus(plain(spec), _gpu_resource(memo)) > 0


@kopf.index("pods", when=_holds_gpus)
def gpus_in_use(spec: kopf.Spec, memo: kopf.Memo, **_: Any) -> dict[str, int]:
    return {spec["nodeName"]: capacity.pod_gpus(plain(spec), _gpu_resource(memo))}


def _awaits_gpus(spec: kopf.Spec, status: kopf.Status, meta: kopf.Meta, memo: kopf.Memo, **_: Any) -> bool:
    """Created, not bound yet, and not found unplaceable: the scheduler will give it GPUs first."""
    unschedulable = any(c.get("type") == "PodScheduled" and c.get("reason") == "Unschedulable" for c in status.get("conditions") or [])
    return (not spec.get("nodeName") and not meta.get("deletionTimestamp") and status.get("phase", "Pending") == "Pending"
            and not unschedulable and capacity.pod_gpus(plain(spec), _gpu_resource(memo)) > 0)


@kopf.index("pods", when=_awaits_gpus)
def gpus_pending(namespace: str, name: str, spec: kopf.Spec, memo: kopf.Memo, **_: Any) -> dict[tuple[str, str], int]:
    return {(namespace, name): capacity.pod_gpus(plain(spec), _gpu_resource(memo))}


@dataclass(frozen=True)
class Indexes:
    """Kopf's watch-fed indexes a reconcile reads instead of the API."""

    job_pods: kopf.Index
    gpu_nodes: kopf.Index
    gpus_in_use: kopf.Index
    gpus_pending: kopf.Index

    def shows(self, namespace: str, job: str, pod: str) -> bool:
        return any(v.name == pod for v in self.job_pods.get((namespace, job), []))


def _queued(body: dict[str, Any], job: TrainingJob) -> bool:
    labels = body["metadata"].get("labels") or {}
    return naming.KUEUE_QUEUE_LABEL in labels or bool(job.spec.scheduling.queue_name)


def _observe(job: TrainingJob, body: dict[str, Any], runtime: OperatorRuntime, idx: Indexes, state: JobMemo) -> planner.Observed:
    ns, name = body["metadata"]["namespace"], job.metadata.name
    kube = runtime.kube
    pods = []
    for view in idx.job_pods.get((ns, name), []):
        if view.name in state.released:
            # Our own release is not in the index yet: do not count it twice.
            view = planner.PodView(**{**view.__dict__, "accounted": True, "tracked": False})
        pods.append(view)
    now = datetime.now(timezone.utc)
    pods += [planner.just_created(pod, r.role, r.slot, r.attempt, now)
             for (r_ns, r_job, pod), r in runtime.reservations.unseen(idx.shows).items() if (r_ns, r_job) == (ns, name)]
    nodes = [n for store in idx.gpu_nodes.values() for n in store]
    # A job that trains has its Service, claims and ConfigMaps: no reads while it runs.
    settled = (body.get("status") or {}).get("phase") == "Running"
    missing = tuple(
        (kind, obj, path) for kind, obj, path in builders.referenced_objects(job)
        if not _cached_exists(state, f"{kind}/{obj}", lambda: kube.object_exists(kind, ns, obj), settled)
    )
    return planner.Observed(
        pods=pods,
        now=now,
        service_exists=_cached_exists(state, "service", lambda: kube.service_exists(ns, naming.store_name(name)), settled),
        fits_anywhere=capacity.fits_anywhere(job.spec, nodes) if nodes else job.spec.container.gpus_per_replica == 0,
        missing=missing,
        admitted=not _queued(body, job) or not job.spec.suspend,
    )


def _reserve(plan: planner.Plan, job: TrainingJob, ns: str, reservations: capacity.Reservations) -> list[str]:
    """Put the pods ``plan`` creates in the ledger (see capacity.Reservations); their names."""
    name = job.metadata.name
    pods = [(naming.store_name(name), naming.ROLE_STORE, 0, 0, 0)] if plan.create_store else []
    pods += [(naming.worker_pod_name(name, s, a), naming.ROLE_WORKER, s, a, job.spec.container.gpus_per_replica)
             for s, a in plan.create_workers]
    for pod, role, slot, attempt, gpus in pods:
        reservations.add(ns, name, pod, role, slot, attempt, gpus)
    return [pod for pod, *_ in pods]


def _placeable(job: TrainingJob, idx: Indexes, reservations: capacity.Reservations) -> int | None:
    """Replicas that fit now, after every pod created but not bound yet (call under reservations.lock)."""
    nodes = [n for store in idx.gpu_nodes.values() for n in store]
    used = {node: sum(store) for node, store in idx.gpus_in_use.items()}
    pending = [g for store in idx.gpus_pending.values() for g in store] + [r.gpus for r in reservations.unseen(idx.shows).values()]
    return capacity.placeable_replicas(job.spec, nodes, used, pending)


EXISTS_TTL = 60.0


def _cached_exists(state: JobMemo, key: str, look: Callable[[], bool], settled: bool) -> bool:
    """Whether an object exists. A yes is trusted while the job is ``settled`` (it trains) and
    for EXISTS_TTL seconds otherwise; a no is looked up again each round.

    The Service and the checkpoint claim rarely go away: no reads while the job runs,
    one a minute while it starts or recovers, yet a Service deleted by hand is recreated.
    """
    seen = state.exists
    now = time.monotonic()
    if key in seen and (settled or seen[key] + EXISTS_TTL > now):
        return True
    if look():
        seen[key] = now
        return True
    seen.pop(key, None)
    return False


class CreateRefused(Exception):
    """The API refused an object we must create, for a reason a retry alone will not fix."""


def _create(kube: Kube, manifest: dict[str, Any]) -> None:
    try:
        kube.create(manifest)
    except ApiException as exc:
        # 403: quota or Pod Security admission; 422: a field the apiserver refuses.
        if exc.status in (403, 422) and "NamespaceTerminating" not in (exc.body or ""):
            raise CreateRefused(f"creating {manifest['kind']} {manifest['metadata']['name']}: {_api_message(exc)}") from None
        raise


def _api_message(exc: ApiException) -> str:
    try:
        return json.loads(exc.body)["message"]
    except (TypeError, ValueError, KeyError):
        return f"{exc.status} {exc.reason}"


def _execute(plan: planner.Plan, job: TrainingJob, body: dict[str, Any], runtime: OperatorRuntime, state: JobMemo) -> None:
    ns, kube, build = body["metadata"]["namespace"], runtime.kube, runtime.config.build
    if plan.create_service:
        _create(kube, builders.store_service(job, body))
        state.exists["service"] = time.monotonic()
    if plan.create_store:
        _create(kube, builders.store_pod(job, body, build))
    for slot, attempt in plan.create_workers:
        _create(kube, builders.worker_pod(job, body, slot, attempt, build))
    raced: set[str] = set()
    for name in dict.fromkeys(plan.release):
        # Only a done release hides the pod from the next round. One that raced a change
        # is neither deleted nor hidden now: deleted unaccounted, it would count as a failure.
        if kube.release(ns, name):
            state.released.add(name)
        else:
            raced.add(name)
    for name in dict.fromkeys(plan.delete):
        if name not in raced:
            kube.delete_pod(ns, name)
    if plan.delete_job:
        kube.delete_job(ns, job.metadata.name)


def _status_changed(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in new.items() if old.get(k) != v}


def _reflect_throughput(job: TrainingJob, raw: dict[str, Any], obs: planner.Observed, result: planner.Plan, runtime: OperatorRuntime) -> None:
    """Copy the job's latest throughput into its status, so `kubectl get tj` shows it."""
    reader = runtime.throughput
    key = (raw["metadata"]["namespace"], job.metadata.name)
    port = job.spec.metrics.port
    urls = [
        f"http://{p.body['status']['podIP']}:{port}/metrics"
        for p in obs.pods
        if p.role == naming.ROLE_WORKER and p.ready and (p.body.get("status") or {}).get("podIP")
    ] if job.spec.metrics.enabled else []
    reader.register_pods(key, urls)
    figures = reader.get(key)
    if figures is not None and result.status.get("phase") in ACTIVE:
        result.status["throughput"] = figures.status()


def _record_metrics(job: TrainingJob, raw: dict[str, Any], result: planner.Plan, state: JobMemo, metrics: OperatorMetrics,
                    started: float) -> None:
    now = time.monotonic()
    elapsed = now - (state.last_reconcile if state.last_reconcile is not None else now)
    state.last_reconcile = now
    first_running_after = None
    if result.first_running and not state.ran:
        state.ran = True
        created = datetime.fromisoformat(raw["metadata"]["creationTimestamp"].replace("Z", "+00:00"))
        first_running_after = (datetime.now(timezone.utc) - created).total_seconds()
    metrics.observe(raw["metadata"]["namespace"], job.metadata.name, result, result.status,
                    job.spec.container.gpus_per_replica, elapsed, first_running_after, trainer_metrics=job.spec.metrics.enabled)
    metrics.reconcile.observe(now - started)


def reconcile(body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, logger: logging.Logger, idx: Indexes) -> None:
    raw = plain(body)
    if raw["metadata"].get("deletionTimestamp"):
        return
    try:
        job = TrainingJob.model_validate({k: v for k, v in raw.items() if k != "status"} | {"metadata": {"name": raw["metadata"]["name"], "namespace": raw["metadata"]["namespace"]}})
    except ValidationError as exc:
        # Passed the CRD but not the models (e.g. an older CRD): say so once, never crash or loop.
        message = "; ".join(format_errors(exc))
        if (raw.get("status") or {}).get("phase") != "Failed":
            patch.status.update(phase="Failed", conditions=[{"type": "Failed", "status": "True", "reason": "InvalidSpec",
                                                              "message": message[:32768], "lastTransitionTime": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}])
            kopf.warn(body, reason="InvalidSpec", message=message[:1024])
        return
    runtime, state = OperatorRuntime.of(memo), JobMemo.of(memo)
    if _queued(raw, job) and not (raw.get("status") or {}).get("phase") and not job.spec.suspend:
        # What Kueue's webhook does for its own kinds: start suspended, Kueue admits by unsuspending.
        patch.spec["suspend"] = True
        if job.spec.scheduling.queue_name:
            patch.metadata.setdefault("labels", {})[naming.KUEUE_QUEUE_LABEL] = job.spec.scheduling.queue_name
        return
    ns = raw["metadata"]["namespace"]
    with state.lock:
        started = time.monotonic()
        written = state.status
        # Our last write may not be in this body yet: never step status backwards.
        raw["status"] = {**(raw.get("status") or {}), **written}
        refused = None
        try:
            obs = _observe(job, raw, runtime, idx, state)
            # GPU jobs decide under one lock, from capacity to reserving what they create.
            with runtime.reservations.lock if job.spec.container.gpus_per_replica else nullcontext():
                obs = replace(obs, placeable=_placeable(job, idx, runtime.reservations))
                result = planner.plan(job, raw, obs)
                planned = _reserve(result, job, ns, runtime.reservations)
            try:
                _execute(result, job, raw, runtime, state)
            except (ApiException, CreateRefused):
                for pod in planned:
                    runtime.reservations.discard(ns, job.metadata.name, pod)
                raise
        except CreateRefused as exc:
            runtime.metrics.reconcile_errors.inc()
            refused = str(exc)  # said in status below; the timer tries again next round
        except ApiException as exc:
            runtime.metrics.reconcile_errors.inc()
            if exc.status == 403 and "NamespaceTerminating" in (exc.body or ""):
                return  # the namespace, and the job with it, is going away
            # Transient API trouble (throttling, conflicts, a restarting apiserver): retry, say why, no traceback.
            raise kopf.TemporaryError(f"Kubernetes API answered {exc.status} {exc.reason}; retrying", delay=RETRY_BACKOFF) from None
        except Exception:
            runtime.metrics.reconcile_errors.inc()
            raise
        planner.record_create_failure(result, raw["status"], refused, obs.now)
        _reflect_throughput(job, raw, obs, result, runtime)
        _record_metrics(job, raw, result, state, runtime.metrics, started)
        changes = _status_changed(raw["status"], result.status)
        if changes:
            patch.status.update(changes)
            written.update(changes)
        for etype, reason, message in result.events:
            kopf.event(body, type=etype, reason=reason, message=message)
        if result.delete_job:
            logger.info("ttlSecondsAfterFinished elapsed: deleted the job")


# A transient API error is retried after RETRY_BACKOFF seconds, not Kopf's 60:
# short enough to recover quickly, long enough never to loop hot.
RETRY_BACKOFF = 5.0


@kopf.on.resume(GROUP, VERSION, PLURAL, backoff=RETRY_BACKOFF)
@kopf.on.create(GROUP, VERSION, PLURAL, backoff=RETRY_BACKOFF)
@kopf.on.update(GROUP, VERSION, PLURAL, backoff=RETRY_BACKOFF)
def on_change(body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, logger: logging.Logger, job_pods: kopf.Index,
              gpu_nodes: kopf.Index, gpus_in_use: kopf.Index, gpus_pending: kopf.Index, **_: Any) -> None:
    reconcile(body, patch, memo, logger, Indexes(job_pods, gpu_nodes, gpus_in_use, gpus_pending))


@kopf.timer(GROUP, VERSION, PLURAL, interval=RECONCILE_INTERVAL, initial_delay=1.0, backoff=RETRY_BACKOFF)
def periodic(body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, logger: logging.Logger, job_pods: kopf.Index,
             gpu_nodes: kopf.Index, gpus_in_use: kopf.Index, gpus_pending: kopf.Index, **_: Any) -> None:
    reconcile(body, patch, memo, logger, Indexes(job_pods, gpu_nodes, gpus_in_use, gpus_pending))


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
    kube = OperatorRuntime.of(memo).kube
    if not kube.job_exists(namespace, labels[naming.LABEL_JOB]):
        kube.release(namespace, name)
        logger.info("released pod %s: its job %s no longer exists", name, labels[naming.LABEL_JOB])


@kopf.on.delete(GROUP, VERSION, PLURAL, backoff=RETRY_BACKOFF)
def on_delete(name: str, namespace: str, memo: kopf.Memo, logger: logging.Logger, **_: Any) -> None:
    """Leave nothing behind: release our tracking finalizers so garbage collection can finish."""
    runtime = OperatorRuntime.of(memo)
    kube = runtime.kube
    for pod in kube.job_pods(namespace, name):
        kube.release(namespace, pod["metadata"]["name"])
        kube.delete_pod(namespace, pod["metadata"]["name"])
    runtime.forget(namespace, name)
    logger.info("deleted: pods released for garbage collection")
