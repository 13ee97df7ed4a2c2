"""End to end on the real node (opt-in: KUBETRAIN_REAL_NODE=1, see conftest.py).

A pod from the locally built base image runs on the kubelet, reaches a Service by its DNS name
through kube-proxy and CoreDNS, has no route off the machine, and the kubelet refuses it
without credentials.
"""

from __future__ import annotations

import re
import time

import pytest
from kubernetes import client

from kubetrain_dev.devcluster import images, real_node
from kubetrain_dev.wait import Unrecoverable, wait_for

pytestmark = pytest.mark.real_node
LOSS = re.compile(r"step \d+/\d+ loss ([0-9.]+)")


def pod(name: str, command: list[str], labels: dict | None = None, **spec) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": labels or {}},
        "spec": {
            "nodeSelector": {"kubernetes.io/hostname": real_node.NODE_NAME},
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 1,
            "containers": [{"name": "main", "image": images.BASE_IMAGE, "imagePullPolicy": "Never",
                            "command": command}],
            **spec,
        },
    }


def wait_phase(core: client.CoreV1Api, namespace: str, name: str, phases: set[str], timeout: float = 90) -> client.V1Pod:
    def done():
        p = core.read_namespaced_pod(name, namespace)
        return p if p.status.phase in phases else None

    try:
        return wait_for(done, timeout=timeout, what=f"pod {name} in {phases}")
    except TimeoutError:
        events = core.list_namespaced_event(namespace, field_selector=f"involvedObject.name={name}").items
        print("\n".join(f"{e.reason}: {e.message}" for e in events))
        raise


# The client: the Service by its short DNS name, no default route, the kubelet closed to it.
# The first connection may be refused: a Service's rules reach kube-proxy a moment after its pod is Running
# (EndpointSlice, then kube-proxy's next sync), and until then it rejects. Clients retry; so does this one.
CLIENT = r"""
import ssl, time, urllib.request, urllib.error
deadline = time.monotonic() + 30
for attempt in range(1, 1000):
    try:
        body = urllib.request.urlopen("http://echo:8080/hello.txt", timeout=10).read().decode()
        break
    except urllib.error.URLError as exc:
        if not isinstance(exc.reason, ConnectionRefusedError) or time.monotonic() > deadline:
            raise
        time.sleep(0.5)
print(f"echo answered on attempt {attempt}")
assert body == "hello from the real node\n", body
routes = [l.split()[1] for l in open("/proc/net/route").read().splitlines()[1:]]
assert "00000000" not in routes, f"default route in the pod: {routes}"
ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
try:
    urllib.request.urlopen("https://%s:%d/pods", timeout=10, context=ctx)
    raise SystemExit("the kubelet answered an anonymous caller")
except urllib.error.HTTPError as exc:
    assert exc.code == 401, exc.code
print("client ok")
""" % (real_node.NODE_IP, real_node.KUBELET_PORT)


def test_pod_reaches_a_service_by_dns_name(cluster, node, namespace):
    core = client.CoreV1Api(cluster.api)
    core.create_namespaced_pod(namespace, pod(
        "echo", ["sh", "-c", "mkdir -p /srv && echo 'hello from the real node' > /srv/hello.txt"
                 " && exec python3 -m http.server 8080 --directory /srv"],
        labels={"app": "echo"}))
    core.create_namespaced_service(namespace, {
        "metadata": {"name": "echo"},
        "spec": {"selector": {"app": "echo"}, "ports": [{"port": 8080, "targetPort": 8080}]},
    })
    started = time.monotonic()
    wait_phase(core, namespace, "echo", {"Running"})
    core.create_namespaced_pod(namespace, pod("client", ["python3", "-c", CLIENT]))
    done = wait_phase(core, namespace, "client", {"Succeeded", "Failed"})
    log = core.read_namespaced_pod_log("client", namespace)  # also proves the apiserver reaches the kubelet
    print(f"echo Running and client done in {time.monotonic() - started:.1f}s")
    assert done.status.phase == "Succeeded", log
    assert "client ok" in log
    assert done.spec.node_name == real_node.NODE_NAME


# Every install of the chart in these tests: the operator reads the trainers' metrics every 2 s, so a test can
# act mid-training on what status shows (its default, 15 s, can fall between a short job's start and end).
TEST_VALUES = ("operator.throughputIntervalSeconds=2",)


def install(namespace: str, *values: str) -> list[str]:
    """``helm upgrade --install`` of the chart as these tests run it, plus ``values``."""
    return images.helm_install_argv("kubetrain", namespace, [*TEST_VALUES, *values])


@pytest.fixture(scope="module")
def deployed(cluster, node):
    """The chart installed with the trainer and operator images built from this repository.

    A cold image build takes ~10 min (the trainer's torch wheels); a warm one is skipped.
    """
    import subprocess

    started = time.monotonic()
    archives = [images.app_image("trainer"), images.app_image("operator")]
    node.import_images(archives)
    print(f"images ready and imported in {time.monotonic() - started:.1f}s")
    release, namespace = "kubetrain", "kubetrain-system"
    subprocess.run(install(namespace), check=True, timeout=600)
    yield namespace
    subprocess.run([install(namespace)[0], "uninstall", release, "--namespace", namespace,
                    "--wait"], check=False, timeout=300)


def test_operator_runs_from_the_chart_as_its_service_account(cluster, deployed):
    core = client.CoreV1Api(cluster.api)
    [operator] = core.list_namespaced_pod(deployed, label_selector="app.kubernetes.io/name=kubetrain").items
    assert operator.spec.node_name == real_node.NODE_NAME
    assert operator.spec.service_account_name == "kubetrain"
    assert all(c.ready for c in operator.status.container_statuses)  # its liveness/readiness probes pass


def test_two_cpu_replicas_train_to_succeeded(cluster, deployed, namespace):
    # keepPods: All keeps the finished pods, so their logs are read after the job, not raced while it trains.
    status, seen = run_job(cluster, namespace, "gpt-real", {"replicas": {"min": 2, "max": 2}, "trainer": {"maxSteps": 120},
                                                            "keepPods": "All"})
    assert status["phase"] == "Succeeded", status
    assert seen["nodes"] == {real_node.NODE_NAME}
    assert seen["world"] == 2 and seen["tokens"] > 0
    core = client.CoreV1Api(cluster.api)
    # Global rank 0 logs the loss; the rendezvous, not the pod's name, decides which worker it is.
    logs = {p.metadata.name: core.read_namespaced_pod_log(p.metadata.name, namespace)
            for p in core.list_namespaced_pod(namespace).items if p.metadata.name.startswith("gpt-real-w")}
    with_losses = {name: [float(x) for x in LOSS.findall(log)] for name, log in logs.items() if LOSS.search(log)}
    assert len(logs) == 2 and len(with_losses) == 1, {name: log[-1500:] for name, log in logs.items()}
    [losses] = with_losses.values()
    assert len(losses) >= 2 and losses[-1] < losses[0], losses
    # The status carries the last step's loss, from the worker's termination message or the last metrics read.
    assert status["throughput"]["step"] == 120, status["throughput"]
    assert status["throughput"]["loss"] == pytest.approx(losses[-1], abs=1e-3), status["throughput"]


@pytest.fixture
def shared_checkpoints(cluster, node, namespace):
    """A ReadWriteMany claim every pod of the node can mount: a hostPath PersistentVolume in the node's state dir.

    One node only: on a real cluster use an RWX storage class (NFS, CephFS, a cloud file store).
    """
    path = node.state_dir / "volumes" / namespace
    path.mkdir(parents=True)
    path.chmod(0o777)  # the trainer runs as uid 1000
    core = client.CoreV1Api(cluster.api)
    name = f"ckpt-{namespace}"
    core.create_persistent_volume({
        "metadata": {"name": name},
        "spec": {"capacity": {"storage": "5Gi"}, "accessModes": ["ReadWriteMany"],
                 "persistentVolumeReclaimPolicy": "Retain", "storageClassName": "real-node-hostpath",
                 "hostPath": {"path": str(path), "type": "Directory"}},
    })
    core.create_namespaced_persistent_volume_claim(namespace, {
        "metadata": {"name": "ckpt"},
        "spec": {"accessModes": ["ReadWriteMany"], "storageClassName": "real-node-hostpath", "volumeName": name,
                 "resources": {"requests": {"storage": "5Gi"}}},
    })
    yield "ckpt"
    core.delete_persistent_volume(name)


def run_job(cluster, namespace, name: str, spec: dict, during=None, timeout: float = 900) -> tuple[dict, dict]:
    """Create a TrainingJob, call ``during(status, pods)`` on every poll, wait until it ends; return its status and what was seen."""
    api = client.CustomObjectsApi(cluster.api)
    core = client.CoreV1Api(cluster.api)
    api.create_namespaced_custom_object("kubetrain.dev", "v1alpha1", namespace, "trainingjobs", {
        "apiVersion": "kubetrain.dev/v1alpha1", "kind": "TrainingJob", "metadata": {"name": name}, "spec": spec})
    seen = {"nodes": set(), "tokens": 0.0, "world": 0, "worlds": []}

    def finished():
        pods = core.list_namespaced_pod(namespace).items
        for p in pods:
            if p.spec.node_name:
                seen["nodes"].add(p.spec.node_name)
        status = api.get_namespaced_custom_object("kubetrain.dev", "v1alpha1", namespace, "trainingjobs",
                                                  name).get("status", {})
        seen["tokens"] = max(seen["tokens"], status.get("throughput", {}).get("tokensPerSecond", 0.0))
        seen["world"] = max(seen["world"], status.get("worldSize", 0))
        if not seen["worlds"] or seen["worlds"][-1] != status.get("worldSize"):
            seen["worlds"].append(status.get("worldSize"))
        if during is not None:
            try:
                during(status, pods)
            except Exception as exc:  # the wait treats an exception as "not yet": a broken check must fail the test
                raise Unrecoverable(f"during({name}): {exc!r}") from exc
        return status if status.get("phase") in ("Succeeded", "Failed") else None

    started = time.monotonic()
    status = wait_for(finished, timeout=timeout, what=f"TrainingJob {name} to finish", max_interval=1.0)
    print(f"job {name} {status['phase']} in {time.monotonic() - started:.1f}s; restarts {status.get('restarts')}, "
          f"world sizes {seen['worlds']}")
    return status, seen


def run_job_deleting(cluster, namespace: str, job: str, pod: str) -> tuple[dict, dict]:
    """Run FAULT_JOB as ``job`` and force-delete (grace 0) its pod ``pod`` once, after the first checkpoint;
    the job must still succeed."""
    core = client.CoreV1Api(cluster.api)
    deleted = []

    def during(status, pods):
        if not deleted and past_first_checkpoint(status) and any(p.metadata.name == pod for p in pods):
            core.delete_namespaced_pod(pod, namespace, grace_period_seconds=0)
            deleted.append(status["throughput"]["step"])

    status, seen = run_job(cluster, namespace, job, FAULT_JOB, during)
    assert deleted, f"{pod} was never deleted"
    assert status["phase"] == "Succeeded", status
    return status, seen


def past_first_checkpoint(status) -> bool:
    return status.get("throughput", {}).get("step", 0) >= 24


# Long enough that a read of step >= 24 comes well before the end (a quiet node trains ~7 steps a second).
FAULT_JOB = {"replicas": {"min": 1, "max": 2}, "trainer": {"maxSteps": 120},
             "checkpoint": {"persistentVolumeClaim": {"claimName": "ckpt"}, "intervalSteps": 20}}


def test_deleted_worker_is_replaced_and_the_job_succeeds(cluster, deployed, namespace, shared_checkpoints):
    _, seen = run_job_deleting(cluster, namespace, "gpt-fault", "gpt-fault-w1-0")
    # worldSize drops to 0 when the job ends; before that it was back at 2. (Whether the 1 in between is
    # seen depends on how fast the replacement joins: measured [.., 2, 1, 2, 0] under load.)
    worlds = [w for w in seen["worlds"] if w]
    assert seen["nodes"] == {real_node.NODE_NAME} and worlds[-1] == 2, seen["worlds"]


def test_lost_store_costs_one_restart(cluster, deployed, namespace, shared_checkpoints):
    status, _ = run_job_deleting(cluster, namespace, "gpt-store", "gpt-store-rdzv")
    assert status.get("restarts") == 1, status
