"""Node loss, pure: which nodes count as lost, and when a node event wakes the jobs on it."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from kubetrain.operator.capacity import NodeInfo
from kubetrain.operator.nodes import DeletedNodes, lost_nodes, wake_after

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=timezone.utc)


def _node(name: str, ready: bool, since: datetime | None = None) -> dict:
    cond = {"type": "Ready", "status": "True" if ready else "False"}
    if since is not None:
        cond["lastTransitionTime"] = since.strftime("%Y-%m-%dT%H:%M:%SZ")
    return {"metadata": {"name": name}, "status": {"conditions": [cond], "allocatable": {"nvidia.com/gpu": "8"}}}


def test_not_ready_since_is_read_from_the_ready_condition_only_while_not_ready():
    assert NodeInfo.from_body(_node("a", False, NOW)).not_ready_since == NOW
    assert NodeInfo.from_body(_node("a", True, NOW)).not_ready_since is None


def test_a_deleted_node_is_lost_at_once_a_not_ready_one_after_the_grace_period():
    nodes = {n: NodeInfo.from_body(b) for n, b in {
        "ok": _node("ok", True, NOW - timedelta(hours=1)),
        "blip": _node("blip", False, NOW - timedelta(seconds=4)),
        "down": _node("down", False, NOW - timedelta(seconds=30)),
    }.items()}
    deleted = DeletedNodes()
    deleted.event("DELETED", "gone")
    lost = lost_nodes(["ok", "blip", "down", "gone", "gone"], nodes, deleted, NOW, grace=10)
    assert lost == {"gone": "was deleted", "down": "has been NotReady for 30 s (grace 10 s)"}
    # A node not in the index but never seen deleted (a watch that has not delivered it yet) is not lost.
    assert lost_nodes(["new"], nodes, deleted, NOW, grace=10) == {}


def test_a_node_recreated_under_a_deleted_name_is_no_longer_deleted():
    deleted = DeletedNodes()
    deleted.event("DELETED", "n1")
    assert "n1" in deleted
    deleted.event("ADDED", "n1")
    assert "n1" not in deleted


def test_a_node_event_wakes_its_jobs_when_their_pods_count_as_lost():
    down = NodeInfo.from_body(_node("n", False, NOW - timedelta(seconds=3)))
    assert wake_after("MODIFIED", down, NOW, grace=10) == 7
    assert wake_after("MODIFIED", NodeInfo.from_body(_node("n", False, NOW - timedelta(seconds=60))), NOW, grace=10) == 0
    assert wake_after("DELETED", NodeInfo.from_body(_node("n", True, NOW)), NOW, grace=10) == 0
    assert wake_after("MODIFIED", NodeInfo.from_body(_node("n", True, NOW)), NOW, grace=10) is None
