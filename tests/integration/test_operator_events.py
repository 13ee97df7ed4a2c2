"""Status follows the job's pods and nodes, not the timer: an operator whose timer fires every 10 minutes.

The timer's first round comes 10 minutes after the job appears: only the job's own, its
pods' and its nodes' events can move it along here.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from crd_helpers import Jobs, wait_gone
from kubetrain_dev.devcluster import gpu_pool
from kubetrain_dev.wait import wait_for
from test_operator import Operator, gpu_job, ready_workers, running_operator


@pytest.fixture(scope="module")
def slow_timer_operator(cluster, tmp_path_factory) -> Iterator[Operator]:
    # A short node grace: the taint manager evicts a NotReady node's pods after 10 s on this cluster
    # (cluster.local.settings.not_ready_toleration_s); the operator must act on the node first.
    with running_operator(cluster, tmp_path_factory, {"KUBETRAIN_RECONCILE_INTERVAL": "600",
                                                      "KUBETRAIN_NODE_LOST_GRACE": "1"}) as op:
        yield op


def test_status_follows_pod_events_within_a_second(cluster, slow_timer_operator, namespace):
    jobs = Jobs(cluster.api, namespace)
    try:
        jobs.create(gpu_job("woken", 2, 2))
        jobs.wait("woken", lambda s: s.get("phase") == "Running" and s.get("readyReplicas") == 2, "2 ready", 60)
        # No timer round comes in this test: only pod events move the job.
        pods = ready_workers(jobs, "woken")
        assert len(pods) == 2
        finished = time.monotonic()
        for p in pods:
            gpu_pool.finish_pod(cluster.api, namespace, p.metadata.name, 0)
        jobs.wait_phase("woken", "Succeeded", 30)
        took = time.monotonic() - finished
        print(f"pods finished -> job Succeeded: {took:.2f} s")
        # KWOK ends the pods, the watch delivers it, a debounced wake reconciles: seconds, not the timer's 600.
        # The margin is for this shared 2-core machine; the wake itself waits 0.2 s.
        assert took < 10, slow_timer_operator.logs()
    finally:
        jobs.delete("woken")
        wait_gone(lambda: jobs.core.list_namespaced_pod(namespace).items, f"pods in {namespace}", timeout=90)


def _lose_a_worker_node(cluster, jobs: Jobs, name: str, lose, why: str) -> None:
    """Run a 2-replica job on the 4-node pool, ``lose`` the node of a worker (not the store's), and see the
    operator count that worker lost with its node (its Event says why: neither PodGC's nor the taint
    manager's deletion would) and replace it on a free node."""
    jobs.create(gpu_job(name, 2, 2))
    jobs.wait(name, lambda s: s.get("phase") == "Running" and s.get("readyReplicas") == 2, "2 ready", 60)
    store_node = jobs.pods(name, role="rendezvous")[0].spec.node_name
    victim = next(p for p in ready_workers(jobs, name) if p.spec.node_name != store_node)
    node = victim.spec.node_name
    lose(node)
    jobs.wait(name, lambda s: s.get("restarts") == 1, "the lost worker counted", 60)
    lost = wait_for(lambda: [e for e in jobs.events(name) if e.reason == "NodeLost"], timeout=30, what="a NodeLost Event")
    assert len(lost) == 1 and f"worker {victim.metadata.name} ended: its node {node} {why}" in lost[0].message, lost
    st = jobs.wait(name, lambda s: s.get("phase") == "Running" and s.get("readyReplicas") == 2, "replaced, 2 ready", 60)
    assert st["restarts"] == 1
    now = ready_workers(jobs, name)
    assert victim.metadata.name not in {p.metadata.name for p in now} and node not in {p.spec.node_name for p in now}


def test_a_deleted_node_s_pod_is_lost_and_replaced_at_once(cluster, slow_timer_operator, namespace):
    jobs = Jobs(cluster.api, namespace)
    deleted: list[str] = []
    try:
        _lose_a_worker_node(cluster, jobs, "nodegone", lambda n: (deleted.append(n), gpu_pool.delete_node(cluster.api, n)),
                            "was deleted")
    finally:
        jobs.delete("nodegone")
        wait_gone(lambda: jobs.core.list_namespaced_pod(namespace).items, f"pods in {namespace}", timeout=90)
        if deleted:
            gpu_pool.add_nodes(cluster.api, 1)  # the pool of four for the next test


def test_a_not_ready_node_s_pod_is_lost_after_the_grace_period(cluster, slow_timer_operator, namespace):
    jobs = Jobs(cluster.api, namespace)
    down: list[str] = []
    try:
        _lose_a_worker_node(cluster, jobs, "nodedown", lambda n: (down.append(n), gpu_pool.set_node_ready(cluster.api, n, False)),
                            "has been NotReady for")
    finally:
        jobs.delete("nodedown")
        for n in down:
            gpu_pool.set_node_ready(cluster.api, n, True)
        gpu_pool.wait_nodes_ready(cluster.api, down, timeout=60)
        wait_gone(lambda: jobs.core.list_namespaced_pod(namespace).items, f"pods in {namespace}", timeout=90)
