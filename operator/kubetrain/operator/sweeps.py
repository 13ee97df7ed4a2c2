"""Kopf wiring of TrainingSweeps: a watch index of their trial jobs, and handlers that delegate to
``tuning.plan.plan_sweep`` and carry out what it decided.

The trial jobs are TrainingJobs like any other (the job handlers run them); a sweep only
creates them, records their objective on them, suspends the ones it prunes and writes
its own small status. Everything it needs after a restart is on those objects.
"""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass, field
from typing import Any

import kopf
from kubernetes.client.exceptions import ApiException
from pydantic import ValidationError

from kubetrain.api.base import format_errors
from kubetrain.api.models import GROUP, PLURAL, VERSION
from kubetrain.api.sweep import SWEEP_PLURAL, TrainingSweep
from kubetrain.operator import naming
from kubetrain.operator.reconcile import RETRY_BACKOFF, plain
from kubetrain.operator.runtime import OperatorRuntime
from kubetrain.operator.settings import sweep_interval_from_env
from kubetrain.tuning.plan import SweepMemory, SweepPlan, plan_sweep

SWEEP_KEY = "sweep"
# Kopf needs a timer's interval at import (see handlers.RECONCILE_INTERVAL).
SWEEP_INTERVAL = sweep_interval_from_env()


@dataclass
class SweepMemo:
    """One sweep's state between reconciles, in its Kopf memo."""

    memory: SweepMemory = field(default_factory=SweepMemory)
    status: dict[str, Any] = field(default_factory=dict)  # our last status write (the body may lag behind it)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    @classmethod
    def of(cls, memo: kopf.Memo) -> SweepMemo:
        state: SweepMemo | None = memo.get(SWEEP_KEY)
        return state if state is not None else memo.setdefault(SWEEP_KEY, cls())


@kopf.index(GROUP, VERSION, PLURAL, labels={naming.LABEL_SWEEP: kopf.PRESENT})
def sweep_trials(namespace: str, labels: kopf.Labels, body: kopf.Body, **_: Any) -> dict[tuple[str, str], dict[str, Any]]:
    return {(namespace, labels[naming.LABEL_SWEEP]): plain(body)}


def _owned(job: dict[str, Any], uid: str) -> bool:
    return any(ref.get("uid") == uid for ref in job["metadata"].get("ownerReferences") or [])


def _patch_job(runtime: OperatorRuntime, namespace: str, name: str, body: dict[str, Any]) -> None:
    try:
        runtime.kube.custom.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name, body)
    except ApiException as exc:
        if exc.status != 404:  # a trial deleted by hand: nothing to record on it
            raise


def execute(plan: SweepPlan, runtime: OperatorRuntime, namespace: str, name: str, state: SweepMemo) -> None:
    """Carry out ``plan``. Each write is idempotent: a round that fails half-way is redone by the next."""
    for job in plan.create:
        try:
            runtime.kube.custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, job)
        except ApiException as exc:
            if exc.status != 409:
                raise
            # The name is taken: a trial this study does not know (a previous incarnation made it).
            # Forget the study; the next round rebuilds it from the objects, that trial included.
            state.memory = SweepMemory()
            return
    for job, values in plan.record_values.items():
        _patch_job(runtime, namespace, job, {"metadata": {"annotations": {
            naming.ANNOTATION_TRIAL_VALUES: json.dumps({str(k): v for k, v in sorted(values.items())})}}})
    for job, reason in plan.prune.items():
        # Suspended, not deleted: its pods go, its checkpoint stays (a later resume could continue it).
        annotations = {naming.ANNOTATION_TRIAL_OUTCOME: reason,
                       naming.ANNOTATION_TRIAL_SAVED_GPU_SECONDS: str(plan.saved_gpu_seconds.get(job, 0.0))}
        _patch_job(runtime, namespace, job, {"metadata": {"annotations": annotations}, "spec": {"suspend": True}})
    for job in plan.suspend:
        _patch_job(runtime, namespace, job, {"spec": {"suspend": True}})
    for job in plan.resume:
        _patch_job(runtime, namespace, job, {"spec": {"suspend": False}})
    if plan.delete_sweep:
        try:
            runtime.kube.custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, SWEEP_PLURAL, name)
        except ApiException as exc:
            if exc.status != 404:
                raise


def reconcile_sweep(body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, logger: logging.Logger,
                    sweep_trials: kopf.Index) -> None:
    raw = plain(body)
    if raw["metadata"].get("deletionTimestamp"):
        return
    try:
        sweep = TrainingSweep.model_validate({k: v for k, v in raw.items() if k != "status"}
                                             | {"metadata": {"name": raw["metadata"]["name"]}})
    except ValidationError as exc:
        # Passed the CRD but not the models (an older CRD): say so once, never crash or loop.
        if (raw.get("status") or {}).get("phase") != "Failed":
            message = "; ".join(format_errors(exc))[:32768]
            patch.status.update(phase="Failed", conditions=[{"type": "Failed", "status": "True", "reason": "InvalidSpec",
                                                              "message": message}])
            kopf.warn(body, reason="InvalidSpec", message=message[:1024])
        return
    runtime = OperatorRuntime.of(memo)
    state = SweepMemo.of(memo)
    ns, uid = raw["metadata"]["namespace"], raw["metadata"]["uid"]
    with state.lock:
        raw["status"] = {**(raw.get("status") or {}), **state.status}
        jobs = [j for j in sweep_trials.get((ns, sweep.metadata.name), []) if _owned(j, uid)]
        plan = plan_sweep(sweep, raw, jobs, state.memory)
        try:
            execute(plan, runtime, ns, sweep.metadata.name, state)
        except ApiException as exc:
            state.memory = SweepMemory()  # what was asked may not have been created: rebuild from the objects
            raise kopf.TemporaryError(f"Kubernetes API answered {exc.status} {exc.reason}; retrying", delay=RETRY_BACKOFF) from None
        runtime.sweep_metrics.observe(ns, sweep.metadata.name, plan.status)
        changes = {k: v for k, v in plan.status.items() if raw["status"].get(k) != v}
        if changes:
            patch.status.update(changes)
            state.status.update(changes)
        for etype, reason, message in plan.events:
            kopf.event(body, type=etype, reason=reason, message=message)


@kopf.on.resume(GROUP, VERSION, SWEEP_PLURAL, backoff=RETRY_BACKOFF)
@kopf.on.create(GROUP, VERSION, SWEEP_PLURAL, backoff=RETRY_BACKOFF)
@kopf.on.update(GROUP, VERSION, SWEEP_PLURAL, backoff=RETRY_BACKOFF)
def on_sweep_change(body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, logger: logging.Logger,
                    sweep_trials: kopf.Index, **_: Any) -> None:
    reconcile_sweep(body, patch, memo, logger, sweep_trials)


@kopf.on.delete(GROUP, VERSION, SWEEP_PLURAL, optional=True)
def on_sweep_delete(namespace: str, name: str, memo: kopf.Memo, **_: Any) -> None:
    # Its trials go with it (owner references); its series go here, so the exposition tracks live sweeps.
    OperatorRuntime.of(memo).sweep_metrics.forget(namespace, name)


@kopf.timer(GROUP, VERSION, SWEEP_PLURAL, interval=SWEEP_INTERVAL, initial_delay=1.0, backoff=RETRY_BACKOFF)
def sweep_timer(body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, logger: logging.Logger,
                sweep_trials: kopf.Index, **_: Any) -> None:
    reconcile_sweep(body, patch, memo, logger, sweep_trials)
