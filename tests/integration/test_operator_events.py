"""Status follows the job's pods, not the timer: an operator whose timer fires every 10 minutes.

Only the first timer round (1 s after the job appears) and pod events can move the
job along here, so every transition after that one is a pod event's wake.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from crd_helpers import Jobs, wait_gone
from kubetrain_dev.devcluster import gpu_pool
from test_operator import Operator, gpu_job, ready_workers, running_operator


@pytest.fixture(scope="module")
def slow_timer_operator(cluster, tmp_path_factory) -> Iterator[Operator]:
    with running_operator(cluster, tmp_path_factory, {"KUBETRAIN_RECONCILE_INTERVAL": "600"}) as op:
        yield op


def test_status_follows_pod_events_within_a_second(cluster, slow_timer_operator, namespace):
    jobs = Jobs(cluster.api, namespace)
    try:
        jobs.create(gpu_job("woken", 2, 2))
        jobs.wait("woken", lambda s: s.get("phase") == "Running" and s.get("readyReplicas") == 2, "2 ready", 60)
        # The first timer round is long past: from here on only pod events move the job.
        time.sleep(2)
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
