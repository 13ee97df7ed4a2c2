"""Why did a worker pod end? Classified from its status, exit code and termination message."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from kubetrain.contract.vocabulary import EXIT_CODE_REASONS, MESSAGE_HEADS, NEVER_RETRIED, FailureReason

# DisruptionTarget condition reasons (Kubernetes >= 1.26) -> our reasons.
_DISRUPTION_REASONS = {
    "PreemptionByScheduler": FailureReason.PREEMPTED,
    "DeletionByTaintManager": FailureReason.NODE_LOST,
    "DeletionByPodGC": FailureReason.NODE_LOST,
    "EvictionByEvictionAPI": FailureReason.EVICTED,
    "TerminationByKubelet": FailureReason.EVICTED,
}
# 128 + SIGKILL (grace 0, or the grace period ran out) and 128 + SIGTERM (stopped without writing a reason).
KILLED_EXIT_CODES = {137, 143}
IMAGE_PULL_WAITING = {"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull"}
PERMANENT_PULL_WAITING = {"InvalidImageName", "ErrImageNeverPull"}


@dataclass(frozen=True)
class Failure:
    reason: FailureReason
    message: str
    exit_code: int | None = None

    def retryable(self, retry_on: list[str]) -> bool:
        return self.reason not in NEVER_RETRIED and self.reason in retry_on


def _terminated(status: dict[str, Any]) -> dict[str, Any] | None:
    for cs in status.get("containerStatuses") or []:
        if cs.get("name") == "trainer":
            state = cs.get("state") or {}
            return state.get("terminated") or (cs.get("lastState") or {}).get("terminated")
    return None


def _disruption(status: dict[str, Any]) -> FailureReason | None:
    for cond in status.get("conditions") or []:
        if cond.get("type") == "DisruptionTarget" and cond.get("status") == "True":
            return _DISRUPTION_REASONS.get(cond.get("reason", ""), FailureReason.EVICTED)
    return None


def _from_message(message: str) -> tuple[FailureReason, str] | None:
    """The trainer writes ``Reason: details`` as its first line."""
    first, _, rest = message.strip().partition("\n")
    head, sep, detail = first.partition(":")
    if sep and head.strip() in MESSAGE_HEADS:
        return MESSAGE_HEADS[head.strip()], detail.strip() or rest.strip()
    return None


def classify(pod: dict[str, Any], node_gone: bool = False) -> Failure:
    """The failure of a pod that ended without succeeding (Failed, or deleted under us)."""
    status = pod.get("status") or {}
    if status.get("reason") == "Evicted":
        return Failure(FailureReason.EVICTED, status.get("message", "the pod was evicted"))
    if (disrupted := _disruption(status)) is not None:
        return Failure(disrupted, f"pod {pod['metadata']['name']} was disrupted: {disrupted}")
    term = _terminated(status)
    deleted = node_gone or bool(pod["metadata"].get("deletionTimestamp"))
    if term is None:
        if deleted:
            return _lost(pod, None)
        return Failure(FailureReason.UNKNOWN, f"pod {pod['metadata']['name']} failed: {status.get('message') or status.get('reason') or 'no details'}")
    code = term.get("exitCode")
    message = (term.get("message") or "").strip()
    if term.get("reason") == "OOMKilled":
        return Failure(FailureReason.OOM_KILLED, "the trainer container ran out of memory (OOMKilled)", code)
    if (parsed := _from_message(message)) is not None:
        return Failure(parsed[0], parsed[1][:1024], code)
    if code in EXIT_CODE_REASONS:
        return Failure(EXIT_CODE_REASONS[code], message[:1024] or f"exit code {code}", code)
    if deleted and code in KILLED_EXIT_CODES:
        # A real kubelet records the kill of a deleted pod's container (KWOK records none): the
        # same lost pod as above, whichever the operator happens to see first.
        return _lost(pod, code)
    if (program := _program_exit(message)) is not None:
        # A program that writes no reason (a user's own script): torchrun gave up after restarting it
        # --max-restarts times, and says how its worker last ended. Exiting by itself is the program's
        # error (an uncaught exception exits 1), as the built-in trainer's UserError is; the contract's
        # exit codes keep their meaning (exit 4 on a collective error asks for a retry).
        reason = EXIT_CODE_REASONS.get(program, FailureReason.USER_ERROR)
        return Failure(reason, f"the job's program exited with code {program} (torchrun's root cause after its restarts)", code)
    detail = message.splitlines()[-1][:1024] if message else f"exit code {code}"
    return Failure(FailureReason.UNKNOWN, f"trainer exited with code {code}: {detail}", code)


# torchrun's ChildFailedError summary, the end of its log (the termination message falls back to that).
_ROOT_CAUSE_EXIT = re.compile(r"Root Cause \(first observed failure\):.*?exitcode\s*:\s*(-?\d+)", re.S)


def _program_exit(message: str) -> int | None:
    """The exit code of the worker process torchrun names as the root cause, if it exited by itself (not by a signal)."""
    match = _ROOT_CAUSE_EXIT.search(message)
    return int(match.group(1)) if match and int(match.group(1)) > 0 else None


def _lost(pod: dict[str, Any], code: int | None) -> Failure:
    """A pod deleted under the trainer (its node lost, or deleted by a user or a controller): not the trainer's fault."""
    killed = f", its trainer killed (exit code {code})" if code is not None else ""
    return Failure(FailureReason.NODE_LOST, f"pod {pod['metadata']['name']} was deleted before it finished{killed}: "
                               "its node was lost, or a user or controller deleted it", code)


@dataclass(frozen=True)
class PullProblem(Failure):
    waiting: str = ""  # the kubelet's waiting reason, e.g. ImagePullBackOff

    @property
    def permanent(self) -> bool:
        """No retry of the kubelet's can succeed: the name is invalid, or the policy forbids pulling a missing image."""
        return self.waiting in PERMANENT_PULL_WAITING


def image_pull_problem(pod: dict[str, Any]) -> PullProblem | None:
    """A container of the pod (init containers too) waits for an image it cannot pull."""
    status = pod.get("status") or {}
    for cs in [*(status.get("initContainerStatuses") or []), *(status.get("containerStatuses") or [])]:
        waiting = (cs.get("state") or {}).get("waiting") or {}
        if waiting.get("reason") in IMAGE_PULL_WAITING:
            return PullProblem(FailureReason.IMAGE_PULL_ERROR,
                               f"container {cs.get('name')}: {waiting['reason']}: {waiting.get('message', '')}".strip(),
                               waiting=waiting["reason"])
    return None
