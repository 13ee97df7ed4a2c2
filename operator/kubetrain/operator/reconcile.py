"""One level-triggered reconcile of a TrainingJob, in steps: observe, decide, execute, report.

``reconcile_job`` runs them in order under the job's lock. Only ``decide`` chooses
(``planner.plan``, pure); the others read the watch indexes and the API, write to
the API, or report: status, Events and metrics. Every step takes the runtime and
the job's memo as arguments, so each can be run alone with a fake Kube.

Create, update, resume, the timer and pod events (``wakes``) all run it. Status is
written by the reconcile itself, under the job's lock, not left in Kopf's patch:
Kopf applies a patch after the handler returns, when a woken reconcile may already
have written a newer status that the older patch would then overwrite.
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
from kubetrain.api.models import TrainingJob
from kubetrain.contract.vocabulary import ACTIVE_PHASES, TERMINAL_PHASES, Phase
from kubetrain.operator import allocation, builders, capacity, kueue, naming, planner, workloads
from kubetrain.operator import nodes as node_loss
from kubetrain.operator.kube import Kube
from kubetrain.operator.metrics import OperatorMetrics
from kubetrain.operator.runtime import JobMemo, OperatorRuntime
from kubetrain.operator.throughput import ThroughputReader, final_figures

# A transient API error is retried after RETRY_BACKOFF seconds, not Kopf's 60:
# short enough to recover quickly, long enough never to loop hot.
RETRY_BACKOFF = 5.0
EXISTS_TTL = 60.0
# Posts one Event on the job: kopf.event in the operator, a list's append in a test.
Post = Callable[..., None]


def plain(obj: Any) -> Any:
    """A deep plain-dict copy of a Kopf body (its views are live and not JSON-friendly)."""
    if isinstance(obj, dict) or hasattr(obj, "keys"):
        return {k: plain(obj[k]) for k in obj.keys()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    return obj


@dataclass(frozen=True)
class Indexes:
    """Kopf's watch-fed indexes a reconcile reads instead of the API."""

    job_pods: kopf.Index
    gpu_nodes: kopf.Index
    gpus_in_use: kopf.Index
    gpus_pending: kopf.Index

    def shows(self, namespace: str, job: str, pod: str) -> bool:
        return any(v.name == pod for v in self.job_pods.get((namespace, job), []))


class CreateRefused(Exception):
    """The API refused an object we must create, for a reason a retry alone will not fix."""


def reconcile_job(body: kopf.Body | dict[str, Any], patch: kopf.Patch, runtime: OperatorRuntime, state: JobMemo,
                  logger: logging.Logger, idx: Indexes, post: Post = kopf.event) -> None:
    raw = plain(body)
    if raw["metadata"].get("deletionTimestamp"):
        return
    with state.lock:
        job = parse(raw, body, runtime, state, post)
        # With Kueue running, its Workload admits a queued job (workloads.py), not spec.suspend.
        if job is None or (not runtime.config.kueue and hold_for_queue(raw, job, patch)):
            return
        started = time.monotonic()
        # Our last write may not be in this body yet: never step status backwards.
        raw["status"] = {**(raw.get("status") or {}), **state.status}
        try:
            adm = workloads.before(job, raw, runtime, state) if workloads.queued(job, raw, runtime) else None
            if adm is not None:
                job = workloads.placed(job, state)
            obs = observe(job, raw, runtime, idx, state)
            if adm is not None:
                obs = workloads.observed(obs, adm)
            result, planned = decide(job, raw, obs, idx, runtime.reservations)
            refused = execute_or_refused(result, planned, job, raw, runtime, state)
            planner.record_create_failure(result, raw["status"], refused, obs.now)
            reflect_throughput(job, raw, obs, result, runtime.throughput)
            if adm is not None:  # before the status write: it adds status.queue
                result.events += workloads.after(job, raw, obs, result, adm, runtime, state)
            write_status(raw, result, runtime.kube, state)
            report_to_allocator(job, raw, obs, result, runtime, idx)
        except ApiException as exc:
            runtime.metrics.reconcile_errors.inc()
            if exc.status == 403 and "NamespaceTerminating" in (exc.body or ""):
                return  # the namespace, and the job with it, is going away
            # Transient API trouble (throttling, conflicts, a restarting apiserver): retry, say why, no traceback.
            raise kopf.TemporaryError(f"Kubernetes API answered {exc.status} {exc.reason}; retrying", delay=RETRY_BACKOFF) from None
        except Exception:
            runtime.metrics.reconcile_errors.inc()
            raise
        # After the status write: a round whose status did not land is planned again, and reported then.
        record_metrics(job, raw, result, state, runtime.metrics, started)
        for etype, reason, message in result.events:
            post(body, type=etype, reason=reason, message=message)
        if result.recheck_after is not None:  # a deadline, TTL or grace is due before the timer's next round
            runtime.wakes.recheck_from_thread((raw["metadata"]["namespace"], job.metadata.name), result.recheck_after)
        if result.delete_job:
            logger.info("ttlSecondsAfterFinished elapsed: deleted the job")


def woken(body: kopf.Body, runtime: OperatorRuntime, state: JobMemo, logger: logging.Logger, idx: Indexes) -> None:
    """A reconcile that a pod event woke (see ``wakes``). It writes status itself; a spec or label
    patch (the Kueue hold) is left to Kopf's handlers, and an error to the timer's next round."""
    try:
        reconcile_job(body, kopf.Patch(), runtime, state, logger, idx)
    except kopf.TemporaryError as exc:
        logger.info("woken reconcile: %s; the timer tries again", exc)
    except Exception:  # noqa: BLE001 - nothing awaits this thread: say it here, never lose it
        logger.exception("woken reconcile failed; the timer tries again")


def on_event(body: kopf.Body, patch: kopf.Patch, runtime: OperatorRuntime, state: JobMemo, logger: logging.Logger,
             idx: Indexes) -> None:
    """A reconcile for a job's own event. Kopf retries no event handler: an error leaves the job's change
    unseen (``JobMemo.seen``), so its next event or the timer's round tries again."""
    try:
        reconcile_job(body, patch, runtime, state, logger, idx)
    except kopf.TemporaryError as exc:
        state.seen = None
        logger.info("reconcile: %s; the timer tries again", exc)
    except Exception:
        state.seen = None
        raise


def parse(raw: dict[str, Any], body: Any, runtime: OperatorRuntime, state: JobMemo, post: Post) -> TrainingJob | None:
    """The job's spec as models, or None after saying (once) in its status why it is not valid.

    Parsed once per generation (the spec changes only with it; the models are never changed in place):
    validating the models is most of a quiet reconcile's CPU."""
    generation = raw["metadata"].get("generation")
    if state.parsed is not None and generation is not None and state.parsed[0] == generation:
        return state.parsed[1]
    try:
        job = TrainingJob.model_validate({k: v for k, v in raw.items() if k != "status"}
                                         | {"metadata": {"name": raw["metadata"]["name"], "namespace": raw["metadata"]["namespace"]}})
        state.parsed = (generation, job)
        return job
    except ValidationError as exc:
        # Passed the CRD but not the models (e.g. an older CRD): say so once, never crash or loop.
        message = "; ".join(format_errors(exc))
        if Phase.FAILED not in ((raw.get("status") or {}).get("phase"), state.status.get("phase")):
            failed = {"phase": Phase.FAILED.value, "conditions": [{"type": "Failed", "status": "True", "reason": "InvalidSpec", "message": message[:32768],
                                                          "lastTransitionTime": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}]}
            runtime.kube.patch_job_status(raw["metadata"]["namespace"], raw["metadata"]["name"], failed)
            state.status.update(failed)
            post(body, type="Warning", reason="InvalidSpec", message=message[:1024])
        return None


def _queued(body: dict[str, Any], job: TrainingJob) -> bool:
    labels = body["metadata"].get("labels") or {}
    return naming.KUEUE_QUEUE_LABEL in labels or bool(job.spec.scheduling.queue_name)


def hold_for_queue(raw: dict[str, Any], job: TrainingJob, patch: kopf.Patch) -> bool:
    """A new job for a Kueue queue starts suspended, as Kueue's webhook does for its own kinds; Kueue
    admits it by unsuspending. True when this round only did that."""
    if not (_queued(raw, job) and not (raw.get("status") or {}).get("phase") and not job.spec.suspend):
        return False
    patch.spec["suspend"] = True
    if job.spec.scheduling.queue_name:
        patch.metadata.setdefault("labels", {})[naming.KUEUE_QUEUE_LABEL] = job.spec.scheduling.queue_name
    return True


def observe(job: TrainingJob, body: dict[str, Any], runtime: OperatorRuntime, idx: Indexes, state: JobMemo) -> planner.Observed:
    """The job's pods (indexed, plus those created but not indexed yet), the objects they need, the nodes."""
    ns, name = body["metadata"]["namespace"], job.metadata.name
    kube = runtime.kube
    pods = []
    for view in idx.job_pods.get((ns, name), []):
        if view.name in state.released:
            # Our own release is not in the index yet: do not count it twice.
            view = planner.PodView(**{**view.__dict__, "accounted": True, "tracked": False})
        pods.append(view)
    now = datetime.now(timezone.utc)
    nodes = [n for store in idx.gpu_nodes.values() for n in store]
    # A pod on a deleted node, or one NotReady for the grace period, is lost now, not when PodGC or the taint manager removes it.
    lost = node_loss.lost_nodes((v.node for v in pods if v.node), {n.name: n for n in nodes}, runtime.deleted_nodes, now,
                                runtime.config.node_lost_grace_seconds)
    pods = [replace(v, node_lost=lost[v.node]) if v.node in lost else v for v in pods]
    pods += [planner.just_created(pod, r.role, r.slot, r.attempt, now)
             for (r_ns, r_job, pod), r in runtime.reservations.unseen(idx.shows).items() if (r_ns, r_job) == (ns, name)]
    # A job that trains has its Service, claims and ConfigMaps: no reads while it runs.
    phase = (body.get("status") or {}).get("phase")
    settled = phase == Phase.RUNNING
    missing = tuple(
        (kind, obj, path) for kind, obj, path in builders.referenced_objects(job)
        if not cached_exists(state, f"{kind}/{obj}", lambda: kube.object_exists(kind, ns, obj), settled)
    )
    return planner.Observed(
        pods=pods,
        now=now,
        service_exists=service_exists(state, runtime.kube, ns, name, phase, pods),
        fits_anywhere=capacity.fits_anywhere(job.spec, nodes) if nodes else job.spec.container.gpus_per_replica == 0,
        missing=missing,
        admitted=not _queued(body, job) or not job.spec.suspend,
        target=allocation_target(job, (ns, name), pods, runtime),
    )


def allocation_target(job: TrainingJob, key: tuple[str, str], pods: list[planner.PodView],
                      runtime: OperatorRuntime) -> planner.Target | None:
    """The goodput allocator's replicas for an opted-in job; None for a job it does not manage.

    Before the allocator's first decision (a new job, or an operator just restarted) the job keeps
    what it runs, at least its min: growing into free GPUs first would take them from the job the
    round is about to give them to, and shrinking would undo a decision the last operator made.
    """
    if not allocation.managed(job, runtime.allocator.default):
        return None
    target = runtime.allocator.target(key)
    if target is None:
        running = sum(1 for p in pods if p.role == naming.ROLE_WORKER and p.active)
        keep = max(job.spec.replicas.min, running)
        target = planner.Target(keep, "Kept", f"{keep} replicas until the allocator's first round")
    return target


def service_exists(state: JobMemo, kube: Kube, ns: str, job: str, phase: str | None, pods: list[planner.PodView]) -> bool:
    """Whether the job's store Service exists, looked up as rarely as that can be known.

    A job never reconciled (no phase yet) has none that we know of: it is created without a look first
    (a 409 says it was there). Once seen, it is trusted while the job trains or its store pod lives
    (the Service is created before the store, and re-checked when the store must be created again)."""
    if phase is None and "service" not in state.exists:
        return False
    store_lives = any(p.role == naming.ROLE_STORE and p.active for p in pods)
    return cached_exists(state, "service", lambda: kube.service_exists(ns, naming.store_name(job)),
                         phase == Phase.RUNNING or store_lives)


def cached_exists(state: JobMemo, key: str, look: Callable[[], bool], settled: bool) -> bool:
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


def decide(job: TrainingJob, body: dict[str, Any], obs: planner.Observed, idx: Indexes,
           reservations: capacity.Reservations) -> tuple[planner.Plan, list[str]]:
    """The plan, and the names of the pods it creates, now in the reservation ledger.

    A GPU job decides under the ledger's lock, from reading capacity to reserving what it
    creates: two jobs deciding at once never count the same free GPUs.
    """
    with reservations.lock if job.spec.container.gpus_per_replica else nullcontext():
        obs = replace(obs, placeable=placeable(job, idx, reservations))
        result = planner.plan(job, body, obs)
        return result, reserve(result, job, body["metadata"]["namespace"], reservations)


def placeable(job: TrainingJob, idx: Indexes, reservations: capacity.Reservations) -> int | None:
    """Replicas that fit now, after every pod created but not bound yet (call under reservations.lock)."""
    nodes = [n for store in idx.gpu_nodes.values() for n in store]
    used = {node: sum(store) for node, store in idx.gpus_in_use.items()}
    pending = [g for store in idx.gpus_pending.values() for g in store] + [r.gpus for r in reservations.unseen(idx.shows).values()]
    return capacity.placeable_replicas(job.spec, nodes, used, pending)


def reserve(plan: planner.Plan, job: TrainingJob, ns: str, reservations: capacity.Reservations) -> list[str]:
    """Put the pods ``plan`` creates in the ledger (see capacity.Reservations); their names."""
    name = job.metadata.name
    pods = [(naming.store_name(name), naming.ROLE_STORE, 0, 0, 0)] if plan.create_store else []
    pods += [(naming.worker_pod_name(name, s, a), naming.ROLE_WORKER, s, a, job.spec.container.gpus_per_replica)
             for s, a in plan.create_workers]
    for pod, role, slot, attempt, gpus in pods:
        reservations.add(ns, name, pod, role, slot, attempt, gpus)
    return [pod for pod, *_ in pods]


def execute_or_refused(plan: planner.Plan, planned: list[str], job: TrainingJob, body: dict[str, Any],
                       runtime: OperatorRuntime, state: JobMemo) -> str | None:
    """Carry out ``plan``; why the API refused a create, if it did (said in status, tried again next round).

    When a call fails, the pods ``planned`` leave the ledger: what is not created must not hold GPUs.
    """
    try:
        execute(plan, job, body, runtime, state)
    except (ApiException, CreateRefused) as exc:
        for pod in planned:
            runtime.reservations.discard(body["metadata"]["namespace"], job.metadata.name, pod)
        if isinstance(exc, CreateRefused):
            runtime.metrics.reconcile_errors.inc()
            return str(exc)
        raise
    return None


def execute(plan: planner.Plan, job: TrainingJob, body: dict[str, Any], runtime: OperatorRuntime, state: JobMemo) -> None:
    ns, kube, build = body["metadata"]["namespace"], runtime.kube, runtime.config.build
    if plan.create_service:
        _create(kube, builders.store_service(job, body))
        state.exists["service"] = time.monotonic()
    # Under Kueue, each role's pods carry the node labels and tolerations of the flavors it was admitted with.
    if plan.create_store:
        _create(kube, kueue.place(builders.store_pod(job, body, build), state.placement.get(naming.ROLE_STORE)))
    for slot, attempt in plan.create_workers:
        _create(kube, kueue.place(builders.worker_pod(job, body, slot, attempt, build), state.placement.get(naming.ROLE_WORKER)))
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
            # A lost node's kubelet never confirms a graceful delete: remove the object, as PodGC would.
            kube.delete_pod(ns, name, 0 if name in plan.lost else None)
    if plan.delete_job:
        kube.delete_job(ns, job.metadata.name)


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


def reflect_throughput(job: TrainingJob, raw: dict[str, Any], obs: planner.Observed, result: planner.Plan,
                       reader: ThroughputReader) -> None:
    """Copy the job's latest throughput into its status, so `kubectl get tj` shows it."""
    key = (raw["metadata"]["namespace"], job.metadata.name)
    port = job.spec.metrics.port
    urls = [
        f"http://{p.body['status']['podIP']}:{port}/metrics"
        for p in obs.pods
        if p.role == naming.ROLE_WORKER and p.ready and (p.body.get("status") or {}).get("podIP")
    ] if job.spec.metrics.enabled else []
    reader.register_pods(key, urls)
    figures = reader.get(key)
    # A completed worker's own last figures beat any read of its /metrics (which may predate the last step).
    final = final_figures([p.body.get("status") or {} for p in obs.pods if p.role == naming.ROLE_WORKER and p.phase == "Succeeded"])
    if final is not None and (figures is None or (figures.step or 0) <= final.step):
        figures = final
    phase = result.status.get("phase")
    if figures is not None and (phase in ACTIVE_PHASES or (figures is final and phase == Phase.SUCCEEDED)):
        result.status["throughput"] = figures.status()


def report_to_allocator(job: TrainingJob, raw: dict[str, Any], obs: planner.Observed, result: planner.Plan,
                        runtime: OperatorRuntime, idx: Indexes) -> None:
    """Tell the goodput allocator what this round saw: the job's size, range and throughput, and the GPU nodes."""
    spec = job.spec
    key = (raw["metadata"]["namespace"], job.metadata.name)
    status = raw["status"] | result.status
    if spec.container.gpus_per_replica == 0 or status.get("phase") in (*TERMINAL_PHASES, Phase.SUSPENDED):
        runtime.allocator.report(key, None, status, 0)
        return
    runtime.allocator.set_nodes({n.name: n.allocatable_gpus for store in idx.gpu_nodes.values() for n in store
                                 if n.ready and not n.unschedulable})
    created = raw["metadata"].get("creationTimestamp")
    facts = allocation.JobFacts(
        managed=allocation.managed(job, runtime.allocator.default),
        min_replicas=spec.replicas.min, max_replicas=spec.replicas.max, gpus_per_replica=spec.container.gpus_per_replica,
        replicas=int(status.get("currentReplicas") or 0),
        arrival=allocation.parse_time(created) or 0.0,
        local_batch=float(spec.trainer.batch_size * spec.container.nproc()),
        started=allocation.parse_time(status.get("startTime")),
    )
    nodes = len({p.node for p in obs.pods if p.role == naming.ROLE_WORKER and p.active and p.ready and p.node})
    runtime.allocator.report(key, facts, status, nodes)


def record_metrics(job: TrainingJob, raw: dict[str, Any], result: planner.Plan, state: JobMemo, metrics: OperatorMetrics,
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


def write_status(raw: dict[str, Any], result: planner.Plan, kube: Kube, state: JobMemo) -> None:
    """Patch only the status fields that changed, and remember them (see ``JobMemo.status``)."""
    changes = {k: v for k, v in result.status.items() if raw["status"].get(k) != v}
    if changes:
        kube.patch_job_status(raw["metadata"]["namespace"], raw["metadata"]["name"], changes)
        state.status.update(changes)


def finalize(runtime: OperatorRuntime, namespace: str, name: str) -> None:
    """A job is being deleted: release its pods' tracking finalizers so garbage collection can finish."""
    kube = runtime.kube
    for pod in kube.job_pods(namespace, name):
        kube.release(namespace, pod["metadata"]["name"])
        kube.delete_pod(namespace, pod["metadata"]["name"])
    workloads.finish_deleted(runtime, namespace, name)
    runtime.forget(namespace, name)


def release_orphan(runtime: OperatorRuntime, namespace: str, pod: str, job: str) -> bool:
    """Release a terminating pod whose job is gone (it can never be accounted for); whether it was."""
    if runtime.kube.job_exists(namespace, job):
        return False
    runtime.kube.release(namespace, pod)
    return True
