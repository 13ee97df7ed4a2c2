"""Node loss: which nodes under a job's pods count as lost, and when a node event should wake their jobs.

Without this the operator learned of a lost node only when its pods went away: PodGC deletes
the pods of a deleted node after a 40 s quarantine, and the taint manager evicts the pods of a
NotReady node after their toleration (300 s by default). Until then the job showed every
replica ready while its collective was stuck. Now a pod counts as lost, and is replaced, as soon as

- its node is deleted (the node watch says so), or
- its node has been NotReady for the grace period (``KUBETRAIN_NODE_LOST_GRACE``, 10 s).

The grace period is a trade-off: a node that is NotReady for longer and then comes back (a
kubelet restart, a network blip) has already cost the job a restart, whereas a longer grace
leaves a job whose collective has stalled waiting that much longer. Kubernetes itself reports
NotReady only after its node-monitor grace period (40 s by default) without a heartbeat, so the
node has been silent for that long already.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Mapping
from datetime import datetime

from kubetrain.operator.capacity import NodeInfo

NODE_LOST_GRACE_SECONDS = 10.0
# A deleted node is remembered this long: its pods are gone long before (PodGC), and a node
# re-created under the same name is forgotten at once.
FORGET_DELETED_SECONDS = 3600.0


class DeletedNodes:
    """Nodes the watch saw deleted (and not re-created since). Node events come from the event loop,
    reconciles read it from handler threads."""

    def __init__(self) -> None:
        self._deleted: dict[str, float] = {}
        self._guard = threading.Lock()

    def event(self, event_type: str | None, name: str) -> None:
        with self._guard:
            now = time.monotonic()
            if event_type == "DELETED":
                self._deleted[name] = now
            else:  # listed, added or changed: it exists
                self._deleted.pop(name, None)
            for old in [n for n, t in self._deleted.items() if now - t > FORGET_DELETED_SECONDS]:
                del self._deleted[old]

    def __contains__(self, name: object) -> bool:
        with self._guard:
            return name in self._deleted


def lost_nodes(pod_nodes: Iterable[str], nodes: Mapping[str, NodeInfo], deleted: DeletedNodes | set[str],
               now: datetime, grace: float) -> dict[str, str]:
    """The nodes among ``pod_nodes`` that count as lost, each with why (words that follow "its node N ")."""
    lost = {}
    for name in set(pod_nodes):
        info = nodes.get(name)
        if name in deleted:
            lost[name] = "was deleted"
        elif info is not None and not info.ready and info.not_ready_since is not None:
            held = (now - info.not_ready_since).total_seconds()
            if held >= grace:
                lost[name] = f"has been NotReady for {held:.0f} s (grace {grace:g} s)"
    return lost


def wake_after(event_type: str | None, info: NodeInfo, now: datetime, grace: float) -> float | None:
    """Seconds until the pods on the node of this event count as lost; None when they do not."""
    if event_type == "DELETED":
        return 0.0
    if info.ready or info.not_ready_since is None:
        return None
    return max(grace - (now - info.not_ready_since).total_seconds(), 0.0)
