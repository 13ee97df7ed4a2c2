"""How many replicas fit: free GPUs, minus what pods created but not bound yet will take."""

from __future__ import annotations

import time

from kubetrain.api.manifests import parse_trainingjob
from kubetrain.operator.capacity import NodeInfo, Reservations, placeable_replicas

NODES = [NodeInfo(name=f"n{i}", allocatable_gpus=8) for i in range(4)]


def _spec(gpus=8, **scheduling):
    return parse_trainingjob({"apiVersion": "kubetrain.dev/v1alpha1", "kind": "TrainingJob", "metadata": {"name": "j"},
                              "spec": {"replicas": {"min": 1, "max": 4}, "container": {"gpusPerReplica": gpus},
                                       "scheduling": scheduling}}).spec


def test_free_gpus_per_node():
    assert placeable_replicas(_spec(), NODES, {}) == 4
    assert placeable_replicas(_spec(), NODES, {"n0": 8, "n1": 1}) == 2
    assert placeable_replicas(_spec(gpus=4), NODES, {"n1": 4}) == 7
    assert placeable_replicas(_spec(gpus=0), NODES, {}) is None


def test_pods_not_bound_yet_take_their_gpus_first():
    # Another job's three 8-GPU pods, created a moment ago: one node is left.
    assert placeable_replicas(_spec(), NODES, {}, pending=[8, 8, 8]) == 1
    # Smaller pending pods are packed first fit: two 4-GPU pods fill one node, not two.
    assert placeable_replicas(_spec(), NODES, {}, pending=[4, 4]) == 3
    # A pending pod that fits nowhere takes nothing.
    assert placeable_replicas(_spec(), NODES, {"n0": 8, "n1": 8, "n2": 8, "n3": 8}, pending=[8]) == 0


def _first_fit_by_rescanning(nodes, used, pending, per):
    """The plain first fit (each pending pod scans from the first node): what placeable_replicas must equal."""
    free = {n.name: max(n.allocatable_gpus - used.get(n.name, 0), 0) for n in sorted(nodes, key=lambda n: n.name)}
    for gpus in pending:
        node = next((name for name, left in free.items() if left >= gpus), None)
        if node is not None:
            free[node] -= gpus
    return sum(left // per for left in free.values())


def test_first_fit_without_rescanning_places_exactly_as_a_full_scan():
    import random

    rng = random.Random(7)
    for _ in range(300):
        nodes = [NodeInfo(name=f"n{i:02d}", allocatable_gpus=rng.choice([0, 4, 8])) for i in range(rng.randint(1, 12))]
        used = {n.name: rng.randint(0, 8) for n in nodes if rng.random() < 0.5}
        pending = [rng.choice([1, 2, 3, 4, 8]) for _ in range(rng.randint(0, 30))]
        per = rng.choice([1, 2, 4, 8])
        assert placeable_replicas(_spec(gpus=per), nodes, used, pending) == _first_fit_by_rescanning(nodes, used, pending, per)


def test_not_ready_cordoned_and_tainted_nodes_do_not_count():
    nodes = [NodeInfo("a", allocatable_gpus=8, ready=False), NodeInfo("b", allocatable_gpus=8, unschedulable=True),
             NodeInfo("c", allocatable_gpus=8, taints=({"key": "gpu", "effect": "NoSchedule"},)), NodeInfo("d", allocatable_gpus=8)]
    assert placeable_replicas(_spec(), nodes, {}) == 1
    tolerant = _spec(tolerations=[{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}])
    assert placeable_replicas(tolerant, nodes, {}) == 2


def _gpus(r: Reservations, seen=frozenset()) -> list[int]:
    return [e.gpus for e in r.unseen(lambda *key: key in seen).values()]


def test_reservations_last_until_the_index_shows_the_pod_or_they_expire():
    r = Reservations(ttl_seconds=0.2)
    r.add("ns", "a", "a-w0-0", "worker", 0, 0, 8)
    r.add("ns", "a", "a-w1-0", "worker", 1, 0, 8)
    seen = {("ns", "a", "a-w0-0")}
    assert _gpus(r, seen) == [8]  # a-w0-0 is in the index now: no longer reserved
    assert _gpus(r) == [8]
    r.discard("ns", "a", "a-w1-0")
    assert _gpus(r) == []
    r.add("ns", "b", "b-w0-0", "worker", 0, 0, 4)
    time.sleep(0.25)
    assert _gpus(r) == []  # expired: the create never showed up
