"""The words the operator, the trainer and the API share: job phases, failure reasons, exit codes.

Defined here once, standard library only; the CRD's enums (``kubetrain.api.models``), the
operator's classification and planner, and the trainer's termination messages all use these.
The enums are ``str``/``int`` subclasses, so a member equals its wire value
(``Phase.RUNNING == "Running"``) and goes into JSON and status patches as is.
"""

from __future__ import annotations

import enum


class Phase(str, enum.Enum):
    """``status.phase`` of a TrainingJob (the order is the CRD enum's)."""

    PENDING = "Pending"  # not yet min ready replicas
    RUNNING = "Running"  # at least min ready, none pending
    RESTARTING = "Restarting"  # below min after a failure, replacing workers
    SCALING = "Scaling"  # training while replicas are added or removed
    SUSPENDED = "Suspended"  # spec.suspend, or waiting for Kueue admission
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"

    def __str__(self) -> str:
        return self.value


# Finished: nothing runs, completionTime is set, only cleanup and the TTL remain.
TERMINAL_PHASES = frozenset({Phase.SUCCEEDED, Phase.FAILED})
# Started and not finished: pods hold GPUs, throughput is reported, the spec is immutable.
ACTIVE_PHASES = (Phase.RUNNING, Phase.RESTARTING, Phase.SCALING)


class FailureReason(str, enum.Enum):
    """Why a worker pod ended badly: what ``spec.failurePolicy.retryOn`` lists and status and Events say.

    The first seven may be retried (the CRD enum of ``retryOn``, in this order); the last two never are.
    """

    NODE_LOST = "NodeLost"  # its node was deleted, NotReady too long, or the pod deleted under it
    EVICTED = "Evicted"
    PREEMPTED = "Preempted"  # by the scheduler, or the trainer checkpointed on SIGTERM
    OOM_KILLED = "OOMKilled"
    COMMUNICATION_TIMEOUT = "CommunicationTimeout"  # a collective or the rendezvous timed out
    USER_ERROR = "UserError"  # an exception from the user's model, data or loss code
    UNKNOWN = "Unknown"
    CONFIG_ERROR = "ConfigError"  # the configuration can never work
    IMAGE_PULL_ERROR = "ImagePullError"

    def __str__(self) -> str:
        return self.value


# Retrying cannot help: the same spec fails the same way.
NEVER_RETRIED = frozenset({FailureReason.CONFIG_ERROR, FailureReason.IMAGE_PULL_ERROR})
RETRYABLE_REASONS = tuple(r for r in FailureReason if r not in NEVER_RETRIED)
DEFAULT_RETRY_ON = (FailureReason.NODE_LOST, FailureReason.EVICTED, FailureReason.PREEMPTED,
                    FailureReason.COMMUNICATION_TIMEOUT, FailureReason.UNKNOWN)
# The job's own fault, never blamed on infrastructure (e.g. a lost rendezvous store).
USER_FAULTS = frozenset({FailureReason.USER_ERROR, FailureReason.CONFIG_ERROR, FailureReason.IMAGE_PULL_ERROR})

# The trainer's termination message starts ``<head>: details``. The heads are reasons, except that
# the trainer names an out-of-memory exit ``OutOfMemory`` (the container runtime's OOMKilled is the
# kernel's kill, which the trainer cannot see); the operator reads both as OOMKilled.
OUT_OF_MEMORY_HEAD = "OutOfMemory"
MESSAGE_HEADS: dict[str, FailureReason] = {
    OUT_OF_MEMORY_HEAD: FailureReason.OOM_KILLED,
    **{r.value: r for r in (FailureReason.OOM_KILLED, FailureReason.COMMUNICATION_TIMEOUT, FailureReason.USER_ERROR,
                            FailureReason.CONFIG_ERROR, FailureReason.PREEMPTED)},
}


class ExitCode(enum.IntEnum):
    """The trainer's exit codes, so a failure is classified without parsing text.

    torchrun exits 1 for any worker failure, so in a pod the termination message carries the
    reason; these matter where the trainer's own exit is the container's (a plain launch).
    """

    CONFIG_ERROR = 2  # never retried
    OUT_OF_MEMORY = 3  # CUDA or host allocation failed
    COMMUNICATION_TIMEOUT = 4  # NCCL / gloo collective or rendezvous timeout
    USER_ERROR = 5
    # After a peer was preempted and the job-wide checkpoint is written: non-zero, so the torchrun
    # agent restarts the worker into a smaller rendezvous round instead of declaring success.
    PEER_PREEMPTED = 75  # EX_TEMPFAIL


EXIT_CODE_REASONS: dict[int, FailureReason] = {
    ExitCode.CONFIG_ERROR: FailureReason.CONFIG_ERROR,
    ExitCode.OUT_OF_MEMORY: FailureReason.OOM_KILLED,
    ExitCode.COMMUNICATION_TIMEOUT: FailureReason.COMMUNICATION_TIMEOUT,
    ExitCode.USER_ERROR: FailureReason.USER_ERROR,
}
