"""Kopf handlers: thin, typed, and all delegating to ``reconcile``.

Create, resume, update and a timer call the same level-triggered reconcile; the
pods and nodes it needs come from Kopf's in-memory indexes (fed by watches), so
a reconcile makes no reads in the steady state and writes only on a difference.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from typing import Any

import kopf
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from prometheus_client import CollectorRegistry, start_http_server
from pydantic import ValidationError

from kubetrain.api.base import format_errors
from kubetrain.api.models import GROUP, PLURAL, VERSION, TrainingJob
from kubetrain.operator import builders, capacity, naming, planner
from kubetrain.operator.kube import Kube
from kubetrain.operator.metrics import OperatorMetrics
from kubetrain.operator.settings import OperatorConfig
from kubetrain.operator.throughput import PodScrapeSource, PrometheusSource, ThroughputReader

CONFIG = OperatorConfig.from_env()
REGISTRY = CollectorRegistry()
METRICS = OperatorMetrics(REGISTRY)
ACTIVE = ("Running", "Scaling", "Restarting")
_locks: dict[str, threading.Lock] = {}
_locks_guard = threading.Lock()
_state: dict[str, Any] = {}
RESERVATIONS = capacity.Reservations()


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
def configure(settings: kopf.OperatorSettings, logger: logging.Logger, **_: Any) -> None:
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
    settings.peering.name = CONFIG.peering_name
    settings.peering.standalone = CONFIG.standalone
    settings.peering.mandatory = not CONFIG.standalone
    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    _state["kube"] = Kube(client.ApiClient())
    if CONFIG.metrics_port:
        start_http_server(CONFIG.metrics_port, registry=REGISTRY)
    source = PrometheusSource(CONFIG.prometheus_url) if CONFIG.prometheus_url else PodScrapeSource()
    _state["throughput"] = reader = ThroughputReader(source, CONFIG.throughput_interval_seconds)
    reader.start()
    logger.info("kubetrain operator: trainer image %s, namespaces %s", CONFIG.build.trainer_image, CONFIG.namespaces or "all")


@kopf.index("pods", labels={naming.LABEL_JOB: kopf.PRESENT})
def job_pods(namespace: str, labels: kopf.Labels, body: kopf.Body, **_: Any) -> dict[tuple[str, str], planner.PodView]:
    return {(namespace, labels[naming.LABEL_JOB]): planner.PodView.from_body(plain(body))}


@kopf.index("nodes")
def gpu_nodes(name: str, body: kopf.Body, **_: Any) -> dict[str, capacity.NodeInfo]:
    return {name: capacity.NodeInfo.from_body(plain(body), CONFIG.gpu_resource)}


def _holds_gpus(spec: kopf.Spec, status: kopf.Status, **_: Any) -> bool:
    return bool(spec.get("nodeName")) and status.get("phase") not in ("Succeeded", "Failed") and capacity.pod_gpus(plain(spec), CONFIG.gpu_resource) > 0


@kopf.index("pods", when=_holds_gpus)
def gpus_in_use(spec: kopf.Spec, **_: Any) -> dict[str, int]:
    return {spec["nodeName"]: capacity.pod_gpus(plain(spec), CONFIG.gpu_resource)}


def _awaits_gpus(spec: kopf.Spec, status: kopf.Status, meta: kopf.Meta, **_: Any) -> bool:
    """Created, not bound yet, and not found unplaceable: the scheduler will give it GPUs first."""
    unschedulable = any(c.get("type") == "PodScheduled" and c.get("reason") == "Unschedulable" for c in status.get("conditions") or [])
    return (not spec.get("nodeName") and not meta.get("deletionTimestamp") and status.get("phase", "Pending") == "Pending"
            and not unschedulable and capacity.pod_gpus(plain(spec), CONFIG.gpu_resource) > 0)


@kopf.index("pods", when=_awaits_gpus)
def gpus_pending(namespace: str, name: str, spec: kopf.Spec, **_: Any) -> dict[tuple[str, str], int]:
    return {(namespace, name): capacity.pod_gpus(plain(spec), CONFIG.gpu_resource)}


@dataclass(frozen=True)
class Indexes:
    """Kopf's watch-fed indexes a reconcile reads instead of the API."""

    job_pods: kopf.Index
    gpu_nodes: kopf.Index
    gpus_in_use: kopf.Index
    gpus_pending: kopf.Index

    def shows(self, namespace: str, job: str, pod: str) -> bool:
        return any(v.name == pod for v in self.job_pods.get((namespace, job), []))


def _lock(uid: str) -> threading.Lock:
    with _locks_guard:
        return _locks.setdefault(uid, threading.Lock())


def _queued(body: dict[str, Any], job: TrainingJob) -> bool:
    labels = body["metadata"].get("labels") or {}
    return naming.KUEUE_QUEUE_LABEL in labels or bool(job.spec.scheduling.queue_name)


def _observe(job: TrainingJob, body: dict[str, Any], kube: Kube, idx: Indexes, memo: kopf.Memo) -> planner.Observed:
    ns, name = body["metadata"]["namespace"], job.metadata.name
    released: set[str] = memo.setdefault("released", set())
    pods = []
    for view in idx.job_pods.get((ns, name), []):
        if view.name in released:
            # Our own release is not in the index yet: do not count it twice.
            view = planner.PodView(**{**view.__dict__, "accounted": True, "tracked": False})
        pods.append(view)
    now = datetime.now(timezone.utc)
    pods += [planner.just_created(pod, r.role, r.slot, r.attempt, now)
             for (r_ns, r_job, pod), r in RESERVATIONS.unseen(idx.shows).items() if (r_ns, r_job) == (ns, name)]
    nodes = [n for store in idx.gpu_nodes.values() for n in store]
    # A job that trains has its Service, claims and ConfigMaps: no reads while it runs.
    settled = (body.get("status") or {}).get("phase") == "Running"
    missing = tuple(
        (kind, obj, path) for kind, obj, path in builders.referenced_objects(job)
        if not _cached_exists(memo, f"{kind}/{obj}", lambda: kube.object_exists(kind, ns, obj), settled)
    )
    return planner.Observed(
        pods=pods,
        now=now,
        service_exists=_cached_exists(memo, "service", lambda: kube.service_exists(ns, naming.store_name(name)), settled),
        fits_anywhere=capacity.fits_anywhere(job.spec, nodes) if nodes else job.spec.container.gpus_per_replica == 0,
        missing=missing,
        admitted=not _queued(body, job) or not job.spec.suspend,
    )


def _reserve(plan: planner.Plan, job: TrainingJob, ns: str) -> list[str]:
    """Put the pods ``plan`` creates in the ledger (see capacity.Reservations); their names."""
    name = job.metadata.name
    pods = [(naming.store_name(name), naming.ROLE_STORE, 0, 0, 0)] if plan.create_store else []
    pods += [(naming.worker_pod_name(name, s, a), naming.ROLE_WORKER, s, a, job.spec.container.gpus_per_replica)
             for s, a in plan.create_workers]
    for pod, role, slot, attempt, gpus in pods:
        RESERVATIONS.add(ns, name, pod, role, slot, attempt, gpus)
    return [pod for pod, *_ in pods]


def _placeable(job: TrainingJob, idx: Indexes) -> int | None:
    """Replicas that fit now, after every pod created but not bound yet (call under RESERVATIONS.lock)."""
    nodes = [n for store in idx.gpu_nodes.values() for n in store]
    used = {node: sum(store) for node, store in idx.gpus_in_use.items()}
    pending = [g for store in idx.gpus_pending.values() for g in store] + [r.gpus for r in RESERVATIONS.unseen(idx.shows).values()]
    return capacity.placeable_replicas(job.spec, nodes, used, pending)


EXISTS_TTL = 60.0


def _cached_exists(memo: kopf.Memo, key: str, look: Callable[[], bool], settled: bool) -> bool:
    """Whether an object exists. A yes is trusted while the job is ``settled`` (it trains) and
    for EXISTS_TTL seconds otherwise; a no is looked up again each round.

    The Service and the checkpoint claim rarely go away: no reads while the job runs,
    one a minute while it starts or recovers, yet a Service deleted by hand is recreated.
    """
    seen: dict[str, float] = memo.setdefault("exists", {})
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


def _execute(plan: planner.Plan, job: TrainingJob, body: dict[str, Any], kube: Kube, memo: kopf.Memo) -> None:
    ns = body["metadata"]["namespace"]
    if plan.create_service:
        _create(kube, builders.store_service(job, body))
        memo.setdefault("exists", {})["service"] = time.monotonic()
    if plan.create_store:
        _create(kube, builders.store_pod(job, body, CONFIG.build))
    for slot, attempt in plan.create_workers:
        _create(kube, builders.worker_pod(job, body, slot, attempt, CONFIG.build))
    released: set[str] = memo.setdefault("released", set())
    raced: set[str] = set()
    for name in dict.fromkeys(plan.release):
        # Only a done release hides the pod from the next round. One that raced a change
        # is neither deleted nor hidden now: deleted unaccounted, it would count as a failure.
        if kube.release(ns, name):
            released.add(name)
        else:
            raced.add(name)
    for name in dict.fromkeys(plan.delete):
        if name not in raced:
            kube.delete_pod(ns, name)
    if plan.delete_job:
        kube.delete_job(ns, job.metadata.name)


def _status_changed(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in new.items() if old.get(k) != v}


def _reflect_throughput(job: TrainingJob, raw: dict[str, Any], obs: planner.Observed, result: planner.Plan) -> None:
    """Copy the job's latest throughput into its status, so `kubectl get tj` shows it."""
    reader: ThroughputReader | None = _state.get("throughput")
    if reader is None:
        return
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


def _record_metrics(job: TrainingJob, raw: dict[str, Any], result: planner.Plan, memo: kopf.Memo, started: float) -> None:
    now = time.monotonic()
    elapsed = now - memo.get("last_reconcile", now)
    memo["last_reconcile"] = now
    first_running_after = None
    if result.first_running and not memo.get("ran"):
        memo["ran"] = True
        created = datetime.fromisoformat(raw["metadata"]["creationTimestamp"].replace("Z", "+00:00"))
        first_running_after = (datetime.now(timezone.utc) - created).total_seconds()
    METRICS.observe(raw["metadata"]["namespace"], job.metadata.name, result, result.status,
                    job.spec.container.gpus_per_replica, elapsed, first_running_after, trainer_metrics=job.spec.metrics.enabled)
    METRICS.reconcile.observe(now - started)


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
    kube: Kube = _state["kube"]
    if _queued(raw, job) and not (raw.get("status") or {}).get("phase") and not job.spec.suspend:
        # What Kueue's webhook does for its own kinds: start suspended, Kueue admits by unsuspending.
        patch.spec["suspend"] = True
        if job.spec.scheduling.queue_name:
            patch.metadata.setdefault("labels", {})[naming.KUEUE_QUEUE_LABEL] = job.spec.scheduling.queue_name
        return
    ns = raw["metadata"]["namespace"]
    with _lock(raw["metadata"]["uid"]):
        started = time.monotonic()
        written: dict[str, Any] = memo.setdefault("status", {})
        # Our last write may not be in this body yet: never step status backwards.
        raw["status"] = {**(raw.get("status") or {}), **written}
        refused = None
        try:
            obs = _observe(job, raw, kube, idx, memo)
            # GPU jobs decide under one lock, from capacity to reserving what they create.
            with RESERVATIONS.lock if job.spec.container.gpus_per_replica else nullcontext():
                obs = replace(obs, placeable=_placeable(job, idx))
                result = planner.plan(job, raw, obs)
                planned = _reserve(result, job, ns)
            try:
                _execute(result, job, raw, kube, memo)
            except (ApiException, CreateRefused):
                for pod in planned:
                    RESERVATIONS.discard(ns, job.metadata.name, pod)
                raise
        except CreateRefused as exc:
            METRICS.reconcile_errors.inc()
            refused = str(exc)  # said in status below; the timer tries again next round
        except ApiException as exc:
            METRICS.reconcile_errors.inc()
            if exc.status == 403 and "NamespaceTerminating" in (exc.body or ""):
                return  # the namespace, and the job with it, is going away
            # Transient API trouble (throttling, conflicts, a restarting apiserver): retry, say why, no traceback.
            raise kopf.TemporaryError(f"Kubernetes API answered {exc.status} {exc.reason}; retrying", delay=RETRY_BACKOFF) from None
        except Exception:
            METRICS.reconcile_errors.inc()
            raise
        planner.record_create_failure(result, raw["status"], refused, obs.now)
        _reflect_throughput(job, raw, obs, result)
        _record_metrics(job, raw, result, memo, started)
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


@kopf.timer(GROUP, VERSION, PLURAL, interval=CONFIG.reconcile_interval_seconds, initial_delay=1.0, backoff=RETRY_BACKOFF)
def periodic(body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, logger: logging.Logger, job_pods: kopf.Index,
             gpu_nodes: kopf.Index, gpus_in_use: kopf.Index, gpus_pending: kopf.Index, **_: Any) -> None:
    reconcile(body, patch, memo, logger, Indexes(job_pods, gpu_nodes, gpus_in_use, gpus_pending))


def _orphaned(meta: kopf.Meta, **_: Any) -> bool:
    return bool(meta.get("deletionTimestamp")) and naming.TRACKING_FINALIZER in (meta.get("finalizers") or [])


# An event handler, not a timer: Kopf stops timers on objects being deleted.
# The initial listing at start-up delivers every stuck pod here too.
@kopf.on.event("pods", labels={naming.LABEL_JOB: kopf.PRESENT}, when=_orphaned)
def release_orphans(name: str, namespace: str, labels: kopf.Labels, logger: logging.Logger, **_: Any) -> None:
    """A terminating pod whose job is gone can never be accounted for: let it go.

    The job's own deletion handler normally releases its pods; this covers a job
    removed while its handler could not run (e.g. its finalizer was stripped by hand).
    """
    kube: Kube = _state["kube"]
    if not kube.job_exists(namespace, labels[naming.LABEL_JOB]):
        kube.release(namespace, name)
        logger.info("released pod %s: its job %s no longer exists", name, labels[naming.LABEL_JOB])


@kopf.on.delete(GROUP, VERSION, PLURAL, backoff=RETRY_BACKOFF)
def on_delete(name: str, namespace: str, uid: str, logger: logging.Logger, **_: Any) -> None:
    """Leave nothing behind: release our tracking finalizers so garbage collection can finish."""
    kube: Kube = _state["kube"]
    for pod in kube.job_pods(namespace, name):
        kube.release(namespace, pod["metadata"]["name"])
        kube.delete_pod(namespace, pod["metadata"]["name"])
    with _locks_guard:
        _locks.pop(uid, None)
    METRICS.forget(namespace, name)
    if (reader := _state.get("throughput")) is not None:
        reader.register_pods((namespace, name), [])
    logger.info("deleted: pods released for garbage collection")
