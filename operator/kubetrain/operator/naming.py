"""Names, labels and annotations of everything the operator creates. All prefixes use our API group."""

from __future__ import annotations

import re

from kubetrain.api.models import GROUP

FINALIZER = f"{GROUP}/finalizer"
# On every worker pod until the operator has accounted for how it ended, so a
# pod deleted with its node still counts as a restart (as the Job controller does).
TRACKING_FINALIZER = f"{GROUP}/tracking"

LABEL_JOB = f"{GROUP}/job-name"
LABEL_ROLE = f"{GROUP}/role"
LABEL_SLOT = f"{GROUP}/replica-index"
LABEL_ATTEMPT = f"{GROUP}/attempt"
ANNOTATION_ACCOUNTED = f"{GROUP}/accounted"
ANNOTATION_RDZV_ID = f"{GROUP}/rendezvous-id"
KUEUE_QUEUE_LABEL = "kueue.x-k8s.io/queue-name"

# A sweep's trials: TrainingJobs named <sweep>-t<number>, whose labels and annotations carry
# everything the study is rebuilt from after an operator restart.
LABEL_SWEEP = f"{GROUP}/sweep-name"
LABEL_TRIAL = f"{GROUP}/trial-number"
ANNOTATION_TRIAL_PARAMETERS = f"{GROUP}/trial-parameters"  # JSON {name: value}
ANNOTATION_TRIAL_VALUES = f"{GROUP}/trial-values"  # JSON {step: objective value}, bounded
ANNOTATION_TRIAL_OUTCOME = f"{GROUP}/trial-outcome"  # "Pruned: <why>" once early stopping ended it
# Population-based training: JSON {"trial", "job", "checkpoint", "exploited"}, the trial whose checkpoint
# this one started from (its own member's previous generation, or a top member's when exploited).
ANNOTATION_TRIAL_ORIGIN = f"{GROUP}/trial-origin"
# GPU-seconds a pruned trial did not use (its remaining steps at the pace and size it trained at), fixed when pruned.
ANNOTATION_TRIAL_SAVED_GPU_SECONDS = f"{GROUP}/trial-saved-gpu-seconds"

ROLE_WORKER = "worker"
ROLE_STORE = "rendezvous"

_WORKER_NAME = re.compile(r"^(?P<job>.+)-w(?P<slot>\d+)-(?P<attempt>\d+)$")


def worker_pod_name(job: str, slot: int, attempt: int) -> str:
    return f"{job}-w{slot}-{attempt}"


def parse_worker_pod_name(name: str) -> tuple[str, int, int] | None:
    m = _WORKER_NAME.match(name)
    return (m["job"], int(m["slot"]), int(m["attempt"])) if m else None


def store_name(job: str) -> str:
    return f"{job}-rdzv"


def common_labels(job: str, role: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "kubetrain",
        "app.kubernetes.io/instance": job,
        "app.kubernetes.io/component": role,
        "app.kubernetes.io/managed-by": "kubetrain-operator",
        LABEL_JOB: job,
        LABEL_ROLE: role,
    }


def worker_selector(job: str) -> str:
    return f"{LABEL_JOB}={job},{LABEL_ROLE}={ROLE_WORKER}"


def trial_name(sweep: str, number: int) -> str:
    return f"{sweep}-t{number}"
