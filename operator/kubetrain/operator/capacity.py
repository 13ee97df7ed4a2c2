"""How many more replicas of a job fit on the GPU nodes now: the scheduler's GPU arithmetic, simplified.

The estimate decides whether to start a gang at all (never below min), so it
only needs to be right about GPUs, node readiness, node selectors and taints;
kube-scheduler still places every pod and corrects anything finer.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from kubetrain.api.models import TrainingJobSpec


@dataclass(frozen=True)
class NodeInfo:
    name: str
    labels: dict[str, str] = field(default_factory=dict)
    taints: tuple[dict[str, Any], ...] = ()
    allocatable_gpus: int = 0
    ready: bool = True
    unschedulable: bool = False
    # When its Ready condition last turned from True (None while Ready, or never reported).
    not_ready_since: datetime | None = None

    @classmethod
    def from_body(cls, body: dict[str, Any], gpu_resource: str = "nvidia.com/gpu") -> "NodeInfo":
        status = body.get("status") or {}
        spec = body.get("spec") or {}
        cond = next((c for c in status.get("conditions") or [] if c.get("type") == "Ready"), {})
        ready = cond.get("status") == "True"
        since = cond.get("lastTransitionTime")
        alloc = (status.get("allocatable") or {}).get(gpu_resource, 0)
        return cls(
            name=body["metadata"]["name"],
            labels=dict(body["metadata"].get("labels") or {}),
            taints=tuple(spec.get("taints") or ()),
            allocatable_gpus=int(alloc),
            ready=ready,
            unschedulable=bool(spec.get("unschedulable")),
            not_ready_since=datetime.fromisoformat(since.replace("Z", "+00:00")) if since and not ready else None,
        )


def _tolerates(taint: dict[str, Any], tolerations: list[dict[str, Any]]) -> bool:
    if taint.get("effect") == "PreferNoSchedule":
        return True
    for tol in tolerations:
        if tol.get("effect") and tol["effect"] != taint.get("effect"):
            continue
        if tol.get("operator") == "Exists" and (not tol.get("key") or tol["key"] == taint.get("key")):
            return True
        if tol.get("key") == taint.get("key") and tol.get("value", "") == taint.get("value", ""):
            return True
    return False


def eligibility(spec: TrainingJobSpec) -> Callable[[NodeInfo], bool]:
    """Whether a node's labels and taints admit the job's pods: the spec's part read once, for many nodes."""
    selector = spec.scheduling.node_selector or {}
    tolerations = [t.to_k8s() for t in spec.scheduling.tolerations or []]

    def admits(node: NodeInfo) -> bool:
        return all(node.labels.get(k) == v for k, v in selector.items()) and all(_tolerates(t, tolerations) for t in node.taints)

    return admits


def placeable_replicas(spec: TrainingJobSpec, nodes: list[NodeInfo], gpus_used: dict[str, int],
                       pending: Iterable[int] = ()) -> int | None:
    """Replicas that fit in the free GPUs now, or None for CPU jobs (left to the scheduler).

    ``pending`` are the GPU requests of pods created but not bound yet (any job's,
    this one's included): the scheduler will place them first, so they are put
    on the free GPUs first (first fit, by node name) and only what is left counts.
    Without this, two jobs reconciled at the same moment both see the same free
    GPUs and each starts a partial gang.
    """
    per = spec.container.gpus_per_replica
    if per == 0:
        return None
    usable = sorted((n for n in nodes if n.ready and not n.unschedulable), key=lambda n: n.name)
    free = [max(n.allocatable_gpus - gpus_used.get(n.name, 0), 0) for n in usable]
    # First fit without rescanning: free GPUs only go down, so a node too full for a request of this size
    # stays too full, and the next one of the same size starts where the last one was placed. (A scan from
    # the first node per pending pod was 15 ms a reconcile at 1,000 jobs, under the reservation lock.)
    first: dict[int, int] = {}
    for gpus in pending:
        i = first.get(gpus, 0)
        while i < len(free) and free[i] < gpus:
            i += 1
        first[gpus] = i
        if i < len(free):
            free[i] -= gpus
    admits = eligibility(spec)
    return sum(left // per for n, left in zip(usable, free) if admits(n))


def fits_anywhere(spec: TrainingJobSpec, nodes: list[NodeInfo]) -> bool:
    """Could one replica ever fit on some node, were it empty?"""
    per = spec.container.gpus_per_replica
    admits = eligibility(spec)
    return per == 0 or any(n.allocatable_gpus >= per and admits(n) for n in nodes)


def pod_gpus(pod_spec: Mapping[str, Any], gpu_resource: str = "nvidia.com/gpu") -> int:
    total = 0
    for c in pod_spec.get("containers") or []:
        res = c.get("resources") or {}
        total += int((res.get("limits") or {}).get(gpu_resource) or (res.get("requests") or {}).get(gpu_resource) or 0)
    return total


@dataclass(frozen=True)
class Reservation:
    role: str
    slot: int
    attempt: int
    gpus: int
    expiry: float  # time.monotonic()


class Reservations:
    """Pods this operator has decided to create, until its pod index shows them.

    A create and the watch event that feeds the index are milliseconds apart. In
    that gap another job's reconcile would count the same GPUs as free, and the
    job's own next reconcile (our status patch triggers one at once) would create
    the same pods again. So both read this ledger: other jobs count its GPUs as
    taken, the job counts its pods as there. The reconciles that plan GPU pods
    hold ``lock`` from reading capacity to recording what they will create, so
    each sees the others' decisions. An entry the index never shows (the create
    did not happen after all) expires after ``ttl_seconds``.
    """

    def __init__(self, ttl_seconds: float = 30.0):
        self.lock = threading.Lock()
        self._guard = threading.Lock()  # the entries themselves: every job's thread touches them
        self._ttl = ttl_seconds
        self._items: dict[tuple[str, str, str], Reservation] = {}  # (namespace, job, pod)

    def add(self, namespace: str, job: str, pod: str, role: str, slot: int, attempt: int, gpus: int) -> None:
        with self._guard:
            self._items[(namespace, job, pod)] = Reservation(role, slot, attempt, gpus, time.monotonic() + self._ttl)

    def discard(self, namespace: str, job: str, pod: str) -> None:
        with self._guard:
            self._items.pop((namespace, job, pod), None)

    def unseen(self, indexed: Callable[[str, str, str], bool]) -> dict[tuple[str, str, str], Reservation]:
        """The entries for pods the index does not show yet, and not expired (the others are dropped)."""
        now = time.monotonic()
        with self._guard:
            for key, entry in list(self._items.items()):
                if entry.expiry < now or indexed(*key):
                    del self._items[key]
            return dict(self._items)
