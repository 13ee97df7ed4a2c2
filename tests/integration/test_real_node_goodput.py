"""One resize of a real training job through the goodput allocator, on the real node (opt-in:
KUBETRAIN_REAL_NODE=1, see conftest.py; the fixtures are test_real_node's).

The allocator manages elastic GPU jobs and counts capacity in GPUs of the ready, schedulable
nodes. The real node has none, so the test advertises one "GPU" on it as a plain extended
resource (a node status patch, as the Kubernetes docs advertise a dongle: nothing backs it, the
trainer finds no CUDA and trains on CPU) and cordons the simulated pool, so that the allocator's
capacity is the real node's. A 1-2 replica job opted in to the allocator starts on the one GPU;
advertising a second one gives the next round a GPU to hand out, and the allocator grows the job
1 -> 2 (Allocated: Grown). The existing elastic machinery does the rest: a second pod, a new
rendezvous round, the checkpoint on the shared claim, and the loss curve goes on from where it was.
"""

from __future__ import annotations

import contextlib
import re
import subprocess

import pytest
from kubernetes import client

from kubetrain.operator import naming
from kubetrain_dev.devcluster import gpu_pool, real_node
from test_real_node import deployed, install, past_first_checkpoint, run_job, shared_checkpoints  # noqa: F401 (fixtures)

pytestmark = pytest.mark.real_node
STEP_LOSS = re.compile(r"step (\d+)/\d+ loss ([0-9.]+)")
GPU = "nvidia.com/gpu"  # the operator's default gpuResourceName, what it counts capacity in
INTERVAL = 5  # seconds between allocator rounds here (60 by default)


@pytest.fixture
def goodput_chart(cluster, deployed):  # noqa: F811
    """The chart upgraded to short allocator rounds (and back to its defaults afterwards).

    A 1 s default restart cost: a grow must repay it within max(interval, 2 restarts) = 5 s, a gain of x1.25,
    which 1 -> 2 replicas is predicted to give (at 25 s it would have to repay within 50 s: x2, not quite).
    """
    values = [f"scheduling.goodput.intervalSeconds={INTERVAL}", "scheduling.goodput.restartSeconds=1"]
    subprocess.run(install(deployed, *values), check=True, timeout=600)
    yield deployed
    subprocess.run(install(deployed), check=True, timeout=600)


def _advertise(core: client.CoreV1Api, gpus: int | None) -> None:
    """Set (None: remove) the real node's GPU count, capacity and allocatable alike."""
    value = None if gpus is None else str(gpus)
    core.patch_node_status(real_node.NODE_NAME, {"status": {"capacity": {GPU: value}, "allocatable": {GPU: value}}})


@pytest.fixture
def one_gpu_on_the_real_node(cluster):
    """The allocator's capacity is the real node's: one advertised GPU there, the simulated pool cordoned."""
    core = client.CoreV1Api(cluster.api)
    pool = [n.metadata.name for n in core.list_node().items if n.metadata.name.startswith(gpu_pool.NODE_PREFIX)]
    for name in pool:
        core.patch_node(name, {"spec": {"unschedulable": True}})
    _advertise(core, 1)
    try:
        yield core
    finally:
        _advertise(core, None)
        for name in pool:
            with contextlib.suppress(client.ApiException):
                core.patch_node(name, {"spec": {"unschedulable": False}})


def _worker_logs(core: client.CoreV1Api, namespace: str, job: str, logs: dict[str, str]) -> None:
    """The latest log of every running worker (rank 0, which logs the loss, may move between pods on a resize)."""
    for p in core.list_namespaced_pod(namespace, label_selector=f"{naming.LABEL_JOB}={job}").items:
        if p.status.phase == "Running" and p.metadata.labels.get(naming.LABEL_ROLE) == naming.ROLE_WORKER:
            with contextlib.suppress(client.ApiException):
                logs[p.metadata.name] = core.read_namespaced_pod_log(p.metadata.name, namespace)


def _step_losses(logs: dict[str, str]) -> list[tuple[int, float]]:
    """Every (step, loss) line of every log, in each log's order."""
    return [(int(step), float(loss)) for text in logs.values() for step, loss in STEP_LOSS.findall(text)]


def test_the_allocator_grows_a_real_job_and_its_loss_curve_continues(cluster, goodput_chart, namespace, shared_checkpoints,  # noqa: F811
                                                                     one_gpu_on_the_real_node):
    core = one_gpu_on_the_real_node
    spec = {
        "replicas": {"min": 1, "max": 2},
        "trainer": {"maxSteps": 300},
        "container": {"gpusPerReplica": 1, "processesPerReplica": 1},
        "scheduling": {"nodeSelector": {"kubernetes.io/hostname": real_node.NODE_NAME}, "goodput": {"enabled": True}},
        "checkpoint": {"persistentVolumeClaim": {"claimName": "ckpt"}, "intervalSteps": 20},
    }
    logs: dict[str, str] = {}
    grown: dict = {}
    world_at_grow: list[int] = []

    def during(status: dict, pods) -> None:
        _worker_logs(core, namespace, "gpt-goodput", logs)
        if not world_at_grow and status.get("worldSize") == 1 and past_first_checkpoint(status):
            # Trained past a checkpoint at the allocator's 1 replica: a second GPU appears.
            world_at_grow.append(status["throughput"]["step"])
            _advertise(core, 2)
        allocated = next((c for c in status.get("conditions") or [] if c["type"] == "Allocated"), {})
        if world_at_grow and not grown and allocated.get("reason") == "Grown":
            grown.update(allocated, allocation=status.get("allocation"))

    status, seen = run_job(cluster, namespace, "gpt-goodput", spec, during, timeout=1200)
    assert status["phase"] == "Succeeded", status
    assert world_at_grow, f"the job never trained at 1 replica past a checkpoint: world sizes {seen['worlds']}"
    # The resize came from the allocator: its condition and event say so, and the world grew 1 -> 2.
    assert grown and "2 replicas (was 1)" in grown["message"], status.get("conditions")
    events = [e for e in core.list_namespaced_event(namespace, field_selector="involvedObject.name=gpt-goodput").items
              if e.reason == "GoodputAllocation"]
    assert any("grown" in e.message for e in events), [e.message for e in events]
    worlds = [w for w in seen["worlds"] if w]
    assert worlds[:1] == [1] and 2 in worlds, seen["worlds"]
    # The loss curve continues: training after the resize resumed from the checkpoint, not from step 1
    # (rank 0 logs steps 1-3 once), and its losses stay below the untrained model's instead of starting over.
    before = world_at_grow[0]
    lines = _step_losses(logs)
    assert sum(1 for step, _ in lines if step == 1) == 1, lines
    first = next(loss for step, loss in lines if step == 1)
    after = [(step, loss) for step, loss in lines if step > before]
    assert after, f"no step logged after the resize at step {before}: {lines}"
    assert all(loss < first for _, loss in after), (first, after)
    last = max(after)
    assert last[1] < first
    # What that resize cost the job, measured by the operator from the readings around it.
    print(f"resize at step {before}; allocation after it: {grown.get('allocation')}; loss {first:.3f} at step 1 -> "
          f"{after[0][1]:.3f} at step {after[0][0]} -> {last[1]:.3f} at step {last[0]}")
