"""The local control plane behaves like a cluster: real scheduling against GPU
allocatable, simulated pod exits, garbage collection, node-failure eviction,
authentication, and a clean start/stop from the command line.

Waits are generous deadlines on real state, never fixed sleeps.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from kubernetes import client
from kubernetes.client.rest import ApiException

from kubetrain_dev.devcluster import gpu_pool, processes, versions
from kubetrain_dev.devcluster.cluster import LocalCluster
from kubetrain_dev.wait import wait_for

REPO = Path(__file__).resolve().parents[2]
KUBECTL = "/usr/bin/kubectl"


def pod_manifest(name: str, *, gpus: int = 0, node_name: str | None = None,
                 owner: client.V1ObjectMeta | None = None, owner_kind: str = "ConfigMap") -> dict:
    container: dict = {"name": "worker", "image": "registry.invalid/kubetrain/worker:test"}
    if gpus:
        # Extended resources: limits only; requests default to them (and must equal them).
        container["resources"] = {"limits": {gpu_pool.GPU_RESOURCE: str(gpus)}}
    metadata: dict = {"name": name}
    if owner is not None:
        metadata["ownerReferences"] = [{"apiVersion": "v1", "kind": owner_kind, "name": owner.name, "uid": owner.uid}]
    spec: dict = {"containers": [container], "restartPolicy": "Never", "tolerations": [gpu_pool.KWOK_TOLERATION]}
    if node_name:
        spec["nodeName"] = node_name
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec}


def read_pod(core: client.CoreV1Api, namespace: str, name: str) -> client.V1Pod | None:
    try:
        return core.read_namespaced_pod(name, namespace)
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise


def wait_phase(core: client.CoreV1Api, namespace: str, name: str, phase: str, timeout: float = 60) -> client.V1Pod:
    def probe():
        pod = core.read_namespaced_pod(name, namespace)
        return pod if pod.status.phase == phase else None

    return wait_for(probe, timeout=timeout, what=f"pod {namespace}/{name} to be {phase}")


def wait_gone(core: client.CoreV1Api, namespace: str, name: str, timeout: float) -> None:
    wait_for(lambda: read_pod(core, namespace, name) is None, timeout=timeout, what=f"pod {namespace}/{name} to be deleted")


@pytest.fixture
def core(cluster) -> client.CoreV1Api:
    return client.CoreV1Api(cluster.api)


@pytest.fixture
def spare_node(cluster) -> str:
    """A node of our own, for tests that break or delete it; the shared pool stays intact."""
    [name] = gpu_pool.add_nodes(cluster.api, 1, gpus=8)
    yield name
    gpu_pool.delete_node(cluster.api, name)


def test_apiserver_reports_the_pinned_version(cluster) -> None:
    info = client.VersionApi(cluster.api).get_code()
    assert info.git_version == versions.KUBERNETES


def test_gpu_pool_nodes_advertise_gpus(cluster, core) -> None:
    nodes = [core.read_node(n) for n in cluster.nodes]
    assert len(nodes) == gpu_pool.DEFAULT_NODES
    for node in nodes:
        assert node.status.allocatable[gpu_pool.GPU_RESOURCE] == str(gpu_pool.DEFAULT_GPUS)
        assert node.metadata.labels["nvidia.com/gpu.product"] == gpu_pool.GPU_PRODUCT
        assert gpu_pool.node_is_ready(node)


def test_full_node_gpu_pod_is_bound_by_the_scheduler_and_runs(cluster, core, namespace) -> None:
    core.create_namespaced_pod(namespace, pod_manifest("eight-gpus", gpus=8))
    pod = wait_phase(core, namespace, "eight-gpus", "Running")

    node = core.read_node(pod.spec.node_name)
    assert node.metadata.labels["kubetrain.dev/node-pool"] == gpu_pool.NODE_POOL
    assert [s.ready for s in pod.status.container_statuses] == [True]
    assert pod.status.pod_ip and pod.status.pod_ip.startswith(node.spec.pod_cidr.rsplit(".", 2)[0] + ".")
    scheduled = core.list_namespaced_event(namespace, field_selector="involvedObject.name=eight-gpus,reason=Scheduled")
    assert scheduled.items, "expected a Scheduled event from kube-scheduler"


def test_pod_asking_for_more_gpus_than_any_node_has_stays_pending(cluster, core, namespace) -> None:
    core.create_namespaced_pod(namespace, pod_manifest("nine-gpus", gpus=9))

    def failed_scheduling():
        events = core.list_namespaced_event(namespace, field_selector="involvedObject.name=nine-gpus,reason=FailedScheduling")
        return [e for e in events.items if f"Insufficient {gpu_pool.GPU_RESOURCE}" in (e.message or "")]

    wait_for(failed_scheduling, timeout=60, what="a FailedScheduling event for insufficient GPUs")
    pod = core.read_namespaced_pod("nine-gpus", namespace)
    assert pod.status.phase == "Pending"
    assert pod.spec.node_name is None


def test_finish_pod_with_exit_zero_succeeds(cluster, core, namespace) -> None:
    core.create_namespaced_pod(namespace, pod_manifest("ok", gpus=1))
    wait_phase(core, namespace, "ok", "Running")

    gpu_pool.finish_pod(cluster.api, namespace, "ok", 0)

    pod = wait_phase(core, namespace, "ok", "Succeeded")
    terminated = pod.status.container_statuses[0].state.terminated
    assert (terminated.exit_code, terminated.reason) == (0, "Completed")


def test_finish_pod_with_nonzero_exit_fails_with_code_and_message(cluster, core, namespace) -> None:
    core.create_namespaced_pod(namespace, pod_manifest("oom", gpus=1))
    wait_phase(core, namespace, "oom", "Running")
    message = "CUDA out of memory: tried to allocate 2.00 GiB"

    gpu_pool.finish_pod(cluster.api, namespace, "oom", 137, message)

    pod = wait_phase(core, namespace, "oom", "Failed")
    terminated = pod.status.container_statuses[0].state.terminated
    assert (terminated.exit_code, terminated.reason, terminated.message) == (137, "Error", message)


def test_owner_deletion_cascades_to_dependents(cluster, core, namespace) -> None:
    owner = core.create_namespaced_config_map(namespace, {"metadata": {"name": "owner"}}).metadata
    core.create_namespaced_pod(namespace, pod_manifest("dependent", owner=owner))
    wait_phase(core, namespace, "dependent", "Running")

    core.delete_namespaced_config_map("owner", namespace)

    wait_gone(core, namespace, "dependent", timeout=60)


def test_pods_of_a_deleted_node_are_garbage_collected(cluster, core, namespace, spare_node) -> None:
    core.create_namespaced_pod(namespace, pod_manifest("orphan", node_name=spare_node))
    wait_phase(core, namespace, "orphan", "Running")

    gpu_pool.delete_node(cluster.api, spare_node)

    # The pod GC controller notices the node missing on a 20s tick, quarantines
    # it for a fixed 40s, and deletes its pods on a later tick: up to ~80s.
    wait_gone(core, namespace, "orphan", timeout=180)


def test_pods_are_evicted_from_a_node_that_stays_not_ready(cluster, core, namespace, spare_node) -> None:
    core.create_namespaced_pod(namespace, pod_manifest("victim", node_name=spare_node))
    pod = wait_phase(core, namespace, "victim", "Running")
    # DefaultTolerationSeconds admission gave it the short not-ready toleration we configured.
    not_ready = [t for t in pod.spec.tolerations if t.key == "node.kubernetes.io/not-ready"]
    assert [t.toleration_seconds for t in not_ready] == [cluster.local.settings.not_ready_toleration_s]

    gpu_pool.set_node_ready(cluster.api, spare_node, False)

    def tainted_no_execute():
        node = core.read_node(spare_node)
        return not gpu_pool.node_is_ready(node) and any(
            t.key == "node.kubernetes.io/not-ready" and t.effect == "NoExecute" for t in node.spec.taints or [])

    wait_for(tainted_no_execute, timeout=60, what=f"{spare_node} NotReady with a NoExecute taint")
    wait_gone(core, namespace, "victim", timeout=90)
    # Gone because the taint-eviction controller deleted it, not for any other reason.
    # (Events are sent asynchronously, so this one may trail the deletion a little.)
    def eviction_event():
        events = core.list_namespaced_event(namespace, field_selector="involvedObject.name=victim,reason=TaintManagerEviction")
        return [e for e in events.items if "Marking for deletion" in (e.message or "")]

    wait_for(eviction_event, timeout=30, what="a TaintManagerEviction event for the pod")


def test_not_ready_node_recovers_when_the_annotation_is_cleared(cluster, core, spare_node) -> None:
    gpu_pool.set_node_ready(cluster.api, spare_node, False)
    wait_for(lambda: not gpu_pool.node_is_ready(core.read_node(spare_node)), timeout=60, what="node NotReady")

    gpu_pool.set_node_ready(cluster.api, spare_node, True)

    gpu_pool.wait_nodes_ready(cluster.api, [spare_node], timeout=60)


def test_token_user_is_authenticated_but_not_authorized(cluster) -> None:
    from kubernetes import config

    developer = client.CoreV1Api(config.new_client_from_config(config_file=str(cluster.user_kubeconfig)))
    with pytest.raises(ApiException) as denied:
        developer.list_namespaced_pod("default")
    assert denied.value.status == 403  # 401 would mean the token was not accepted
    assert "kubetrain-developer" in denied.value.body


def test_kubectl_reaches_the_cluster_through_kubeconfig(cluster) -> None:
    out = subprocess.run([KUBECTL, "get", "nodes", "-o", "name"], check=True, capture_output=True, text=True,
                         timeout=60, env={**os.environ, "KUBECONFIG": str(cluster.kubeconfig)}).stdout
    assert {f"node/{n}" for n in cluster.nodes} <= set(out.split())


def _devcluster(args: list[str], state_dir: Path, timeout: float) -> subprocess.CompletedProcess:
    env = {**os.environ, "KUBETRAIN_CLUSTER_DIR": str(state_dir),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO / "operator"), os.environ.get("PYTHONPATH")]))}
    return subprocess.run([sys.executable, "-m", "kubetrain_dev.devcluster", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


def test_cli_up_status_down_leaves_no_process_and_no_port(tmp_path) -> None:
    """`up` in a detached launcher, `down` from another process: the `make cluster` path."""
    state_dir = tmp_path / "cluster"
    try:
        up = _devcluster(["up", "--nodes", "2"], state_dir, timeout=240)
        assert up.returncode == 0, up.stderr
        assert up.stdout.strip() == f"export KUBECONFIG={state_dir / 'kubeconfig'}"

        # The launcher has exited; the components run on without it.
        records, _ = processes.read_state(state_dir / "state.json")
        assert {r.name for r in records if processes.is_running(r)} == {
            "etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok"}
        nodes = subprocess.run([KUBECTL, "--kubeconfig", str(state_dir / "kubeconfig"), "get", "nodes", "-o", "yaml"],
                               check=True, capture_output=True, text=True, timeout=60).stdout
        assert len(yaml.safe_load(nodes)["items"]) == 2
        assert _devcluster(["status"], state_dir, timeout=60).returncode == 0

        down = _devcluster(["down"], state_dir, timeout=120)
        assert down.returncode == 0, down.stderr

        assert [r.name for r in records if processes.is_running(r)] == []
        assert [p for r in records for p in r.ports if not processes.port_is_free(p)] == []
        assert _devcluster(["down"], state_dir, timeout=60).returncode == 0  # idempotent
        assert _devcluster(["status"], state_dir, timeout=60).returncode == 1
    finally:
        _devcluster(["down"], state_dir, timeout=120)


_STARTER = """
import sys, time
from pathlib import Path
from kubetrain_dev.devcluster.cluster import LocalCluster
LocalCluster(Path(sys.argv[1])).start()
print("started", flush=True)
time.sleep(600)
"""


def test_components_die_with_a_killed_test_process(tmp_path) -> None:
    """A pytest run killed with SIGKILL takes its cluster with it (no orphans to clean up by hand)."""
    state_dir = tmp_path / "cluster"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO / "operator"), os.environ.get("PYTHONPATH")]))}
    starter = subprocess.Popen([sys.executable, "-c", _STARTER, str(state_dir)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert starter.stdout.readline().strip() == "started"
        records, _ = processes.read_state(state_dir / "state.json")
        assert len([r for r in records if processes.is_running(r)]) == 5

        starter.kill()
        starter.wait(timeout=30)

        wait_for(lambda: not any(processes.is_running(r) for r in records), timeout=30,
                 what="the components to die with their parent")
        wait_for(lambda: all(processes.port_is_free(p) for r in records for p in r.ports), timeout=30,
                 what="the components' ports to be free")
    finally:
        starter.kill()
        LocalCluster.from_state(state_dir).stop()
