"""Why did a worker pod end? Classified from its status, exit code and termination message."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kubetrain import contract

NEVER_RETRIED = {"ConfigError", "ImagePullError"}
_MESSAGE_REASONS = {
    "OutOfMemory": "OOMKilled",
    "OOMKilled": "OOMKilled",
    "CommunicationTimeout": "CommunicationTimeout",
    "UserError": "UserError",
    "ConfigError": "ConfigError",
    # The trainer checkpointed on SIGTERM and stopped: a clean preemption.
    "Preempted": "Preempted",
}
_EXIT_CODE_REASONS = {
    contract.EXIT_CONFIG_ERROR: "ConfigError",
    contract.EXIT_OOM: "OOMKilled",
    contract.EXIT_COMM_TIMEOUT: "CommunicationTimeout",
    contract.EXIT_USER_ERROR: "UserError",
}
# DisruptionTarget condition reasons (Kubernetes >= 1.26) -> our reasons.
_DISRUPTION_REASONS = {
    "PreemptionByScheduler": "Preempted",
    "DeletionByTaintManager": "NodeLost",
    "DeletionByPodGC": "NodeLost",
    "EvictionByEvictionAPI": "Evicted",
    "TerminationByKubelet": "Evicted",
}
IMAGE_PULL_WAITING = {"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull"}


@dataclass(frozen=True)
class Failure:
    reason: str
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


def _disruption(status: dict[str, Any]) -> str | None:
    for cond in status.get("conditions") or []:
        if cond.get("type") == "DisruptionTarget" and cond.get("status") == "True":
            return _DISRUPTION_REASONS.get(cond.get("reason", ""), "Evicted")
    return None


def _from_message(message: str) -> tuple[str, str] | None:
    """The trainer writes ``Reason: details`` as its first line."""
    first, _, rest = message.strip().partition("\n")
    head, sep, detail = first.partition(":")
    if sep and head.strip() in _MESSAGE_REASONS:
        return _MESSAGE_REASONS[head.strip()], detail.strip() or rest.strip()
    return None


def classify(pod: dict[str, Any], node_gone: bool = False) -> Failure:
    """The failure of a pod that ended without succeeding (Failed, or deleted under us)."""
    status = pod.get("status") or {}
    if status.get("reason") == "Evicted":
        return Failure("Evicted", status.get("message", "the pod was evicted"))
    if (disrupted := _disruption(status)) is not None:
        return Failure(disrupted, f"pod {pod['metadata']['name']} was disrupted: {disrupted}")
    term = _terminated(status)
    if term is None:
        if node_gone or pod["metadata"].get("deletionTimestamp"):
            return Failure("NodeLost", f"pod {pod['metadata']['name']} was deleted before it finished (its node was lost)")
        return Failure("Unknown", f"pod {pod['metadata']['name']} failed: {status.get('message') or status.get('reason') or 'no details'}")
    code = term.get("exitCode")
    message = (term.get("message") or "").strip()
    if term.get("reason") == "OOMKilled":
        return Failure("OOMKilled", "the trainer container ran out of memory (OOMKilled)", code)
    if (parsed := _from_message(message)) is not None:
        return Failure(parsed[0], parsed[1][:1024], code)
    if code in _EXIT_CODE_REASONS:
        return Failure(_EXIT_CODE_REASONS[code], message[:1024] or f"exit code {code}", code)
    detail = message.splitlines()[-1][:1024] if message else f"exit code {code}"
    return Failure("Unknown", f"trainer exited with code {code}: {detail}", code)


def image_pull_problem(pod: dict[str, Any]) -> Failure | None:
    for cs in (pod.get("status") or {}).get("containerStatuses") or []:
        waiting = (cs.get("state") or {}).get("waiting") or {}
        if waiting.get("reason") in IMAGE_PULL_WAITING:
            return Failure("ImagePullError", f"{waiting['reason']}: {waiting.get('message', '')}".strip())
    return None
