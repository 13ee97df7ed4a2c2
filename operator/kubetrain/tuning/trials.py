"""Trials as Kubernetes objects: the TrainingJob a trial runs as, and the record read back from it.

The truth of a sweep lives in its trial jobs (owned by the sweep, labelled with the trial
number, annotated with their parameters, the objective's values by step and, when early
stopping ended them, the outcome). The study is rebuilt from these records after an
operator restart, so nothing a trial did is lost and no trial number is used twice.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from kubetrain.api.models import API_VERSION, KIND
from kubetrain.api.sweep import SWEEP_KIND, TrainingSweep
from kubetrain.operator import naming
from kubetrain.tuning.space import trial_spec

# The objective's values kept per trial, by step: enough for the pruners' rungs and a curve.
# Older points are thinned (every other one dropped) so an annotation stays a few KiB.
MAX_VALUES = 64
# A trial job in one of these phases is still training (or waiting to).
ACTIVE_PHASES = ("Pending", "Running", "Restarting", "Scaling", "Suspended")


@dataclass
class TrialRecord:
    """One trial as the sweep sees it."""

    number: int
    job: str
    state: str  # Pending, Running, Succeeded, Pruned, Failed (api.sweep.TrialState)
    params: dict[str, Any]
    values: dict[int, float] = field(default_factory=dict)
    reason: str | None = None
    changed: datetime | None = None
    saved_gpu_seconds: float = 0.0  # pruned trials: the GPU time early stopping saved (see saved_gpu_seconds)

    @property
    def last(self) -> tuple[int, float] | None:
        """The latest (step, value) seen, or None."""
        if not self.values:
            return None
        step = max(self.values)
        return step, self.values[step]

    def value_at(self, step: int | None) -> tuple[int, float] | None:
        """The objective at ``step`` (the latest one reported at or before it), or the latest if ``step`` is None."""
        if step is None:
            return self.last
        seen = [s for s in self.values if s <= step]
        return (max(seen), self.values[max(seen)]) if seen else None


def thin(values: dict[int, float], limit: int = MAX_VALUES) -> dict[int, float]:
    """At most ``limit`` points: the newest half kept whole, older ones thinned (a rung's value survives
    as the nearest point at or before it)."""
    steps = sorted(values)
    while len(steps) > limit:
        old, new = steps[: len(steps) - limit // 2], steps[len(steps) - limit // 2:]
        steps = old[::2] + new
    return {s: values[s] for s in steps}


def saved_gpu_seconds(job: dict[str, Any], step: int, max_steps: int, now: datetime) -> float:
    """The GPU time a trial stopped at ``step`` will not use: its remaining steps at the GPU-seconds per step it
    has spent so far (GPUs of its ready workers x time since it started, over the steps it made). 0 when unknown."""
    status, spec = job.get("status") or {}, job.get("spec") or {}
    started = status.get("startTime")
    gpus = (status.get("readyReplicas") or 0) * ((spec.get("container") or {}).get("gpusPerReplica") or 0)
    if not started or step <= 0 or gpus <= 0:
        return 0.0
    elapsed = (now - datetime.fromisoformat(started.replace("Z", "+00:00"))).total_seconds()
    return round(max(0.0, elapsed) * gpus / step * max(0, max_steps - step), 1)


def trial_checkpoint_path(sweep: TrainingSweep, namespace: str, job: str) -> str:
    """A trial's checkpoint directory in the template's volume: its own, never another trial's (a template
    ``path`` becomes the trials' parent directory); the default is a job's, <namespace>/<job>."""
    ckpt = sweep.spec.template.spec.checkpoint
    return f"{ckpt.path}/{job}" if ckpt is not None and ckpt.path else f"{namespace}/{job}"


def trial_job(sweep: TrainingSweep, body: dict[str, Any], number: int, values: dict[str, Any], *,
              max_steps: int | None = None, parent: TrialRecord | None = None, exploited: bool = False) -> dict[str, Any]:
    """The TrainingJob of trial ``number`` with ``values``; raises space.InvalidTrial if they cannot run.

    Population-based training sets ``max_steps`` (the end of the trial's generation) and ``parent``, the trial
    whose checkpoint it starts from."""
    namespace, name = body["metadata"]["namespace"], naming.trial_name(sweep.metadata.name, number)
    spec = trial_spec(sweep.spec.template.spec, sweep.spec.parameters, values).to_k8s()
    if spec.get("checkpoint") is not None and spec["checkpoint"].get("path"):
        spec["checkpoint"]["path"] = trial_checkpoint_path(sweep, namespace, name)
    if max_steps is not None:
        spec["trainer"]["maxSteps"] = max_steps
    template_meta = sweep.spec.template.metadata
    labels = {**((template_meta and template_meta.labels) or {}),
              naming.LABEL_SWEEP: sweep.metadata.name, naming.LABEL_TRIAL: str(number)}
    annotations = {**((template_meta and template_meta.annotations) or {}),
                   naming.ANNOTATION_TRIAL_PARAMETERS: json.dumps(values, sort_keys=True)}
    if parent is not None:
        spec["checkpoint"]["initFrom"] = trial_checkpoint_path(sweep, namespace, parent.job)
        annotations[naming.ANNOTATION_TRIAL_ORIGIN] = json.dumps(
            {"trial": parent.number, "job": parent.job, "checkpoint": spec["checkpoint"]["initFrom"], "exploited": exploited},
            sort_keys=True)
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": labels,
            "annotations": annotations,
            "ownerReferences": [{"apiVersion": API_VERSION, "kind": SWEEP_KIND, "name": sweep.metadata.name,
                                 "uid": body["metadata"]["uid"], "controller": True, "blockOwnerDeletion": True}],
        },
        "spec": spec,
    }


def _state(phase: str | None, outcome: str | None) -> str:
    if outcome and outcome.startswith("Pruned"):
        return "Pruned"
    if phase in ("Succeeded", "Failed"):
        return phase
    return "Running" if phase and phase != "Pending" else "Pending"


def record_from_job(job: dict[str, Any]) -> TrialRecord | None:
    """The record of a trial job, or None for a job that is not a well-formed trial (ignored, never fatal)."""
    meta = job.get("metadata") or {}
    labels, annotations = meta.get("labels") or {}, meta.get("annotations") or {}
    try:
        number = int(labels[naming.LABEL_TRIAL])
        params = json.loads(annotations[naming.ANNOTATION_TRIAL_PARAMETERS])
        values = {int(k): float(v) for k, v in json.loads(annotations.get(naming.ANNOTATION_TRIAL_VALUES, "{}")).items()}
    except (KeyError, ValueError, TypeError, AttributeError):
        return None
    status = job.get("status") or {}
    outcome = annotations.get(naming.ANNOTATION_TRIAL_OUTCOME)
    state = _state(status.get("phase"), outcome)
    reason = outcome if state == "Pruned" else None
    if state == "Failed":
        failed = next((c for c in status.get("conditions") or [] if c.get("type") == "Failed"), {})
        reason = f"{failed.get('reason', 'Failed')}: {failed.get('message', '')}".strip(": ")
    changed = status.get("completionTime") or status.get("startTime") or meta.get("creationTimestamp")
    when = datetime.fromisoformat(changed.replace("Z", "+00:00")) if isinstance(changed, str) else None
    try:
        saved = float(annotations.get(naming.ANNOTATION_TRIAL_SAVED_GPU_SECONDS, 0.0))
    except ValueError:
        saved = 0.0
    return TrialRecord(number=number, job=meta.get("name", ""), state=state, params=params, values=values,
                       reason=reason, changed=when, saved_gpu_seconds=saved)
