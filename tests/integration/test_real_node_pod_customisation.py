"""Pod customisation on the real node: a job trains on data from a mounted claim, and a plain script
mounted from a ConfigMap runs as the job's command (opt-in with the real node: KUBETRAIN_REAL_NODE=1)."""

from __future__ import annotations

import json
import time

import pytest
from kubernetes import client

from crd_helpers import Jobs, kubectl
from kubetrain_dev.devcluster import real_node
from kubetrain_dev.wait import wait_for
from support.variants import REPO, load_all, load_yaml
from test_real_node import deployed  # noqa: F401  (the chart, installed with the images built here)

pytestmark = pytest.mark.real_node

# A corpus with a shape of its own: builtin:gpt fails with ConfigError if it cannot read it.
CORPUS = "".join(f"line {i}: the model reads this text from a claim mounted read-only at /data.\n" for i in range(600))


def _finish(jobs: Jobs, name: str, timeout: float = 600) -> dict:
    started = time.monotonic()
    status = jobs.wait(name, lambda s: s.get("phase") in ("Succeeded", "Failed"), f"{name} finished", timeout)
    print(f"{name}: {status['phase']} in {time.monotonic() - started:.1f}s")
    return status


def _worker_logs(jobs: Jobs, name: str) -> str:
    return "\n".join(jobs.core.read_namespaced_pod_log(p.metadata.name, jobs.ns) for p in jobs.pods(name))


def test_a_job_trains_on_data_from_a_mounted_claim(cluster, deployed, namespace, tmp_path):  # noqa: F811
    # The dataset: a directory of this machine (the node), served as a PersistentVolume bound to the
    # example's claim. On a real cluster it is whatever your storage class provisions.
    data = tmp_path / "dataset"
    (data / "corpus").mkdir(parents=True)
    (data / "corpus" / "train.txt").write_text(CORPUS)
    for path in (tmp_path, data, data / "corpus"):
        path.chmod(0o755)  # the pods run as UID 1000
    (data / "corpus" / "train.txt").chmod(0o644)
    core = client.CoreV1Api(cluster.api)
    pv = f"dataset-{namespace}"
    core.create_persistent_volume({
        "metadata": {"name": pv},
        "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadOnlyMany"], "storageClassName": "",
                 "persistentVolumeReclaimPolicy": "Retain", "hostPath": {"path": str(data), "type": "Directory"},
                 "claimRef": {"namespace": namespace, "name": "text-corpus"}},
    })
    try:
        core.create_namespaced_persistent_volume_claim(namespace, {
            "metadata": {"name": "text-corpus"},
            "spec": {"accessModes": ["ReadOnlyMany"], "storageClassName": "", "volumeName": pv,
                     "resources": {"requests": {"storage": "1Gi"}}},
        })
        jobs = Jobs(cluster.api, namespace)
        manifest = load_yaml(REPO / "examples" / "dataset-pvc.yaml")
        manifest["spec"]["replicas"] = {"min": 2, "max": 2}
        manifest["spec"]["trainer"]["maxSteps"] = 30
        manifest["spec"].pop("checkpoint")  # the data is the point here; checkpoints have their own tests
        manifest["spec"]["keepPods"] = "All"
        jobs.create(manifest)
        status = _finish(jobs, "gpt-dataset")
        assert status["phase"] == "Succeeded", json.dumps(status, indent=1)[:3000]
        [pod, *_] = jobs.pods("gpt-dataset")
        assert pod.spec.node_name == real_node.NODE_NAME
        mount = next(m for m in pod.spec.containers[0].volume_mounts if m.name == "dataset")
        assert (mount.mount_path, mount.read_only) == ("/data", True)
    finally:
        jobs_api = client.CustomObjectsApi(cluster.api)
        jobs_api.delete_collection_namespaced_custom_object("kubetrain.dev", "v1alpha1", namespace, "trainingjobs")
        core.delete_persistent_volume(pv)


def test_a_plain_script_from_a_configmap_runs_as_the_job_command(cluster, deployed, namespace):  # noqa: F811
    configmap, manifest = load_all(REPO / "examples" / "plain-torchrun-script.yaml")
    kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(configmap))
    manifest["spec"]["replicas"] = {"min": 2, "max": 2}
    manifest["spec"]["container"]["args"] = ["--steps", "60"]
    manifest["spec"]["keepPods"] = "All"  # their logs are the script's output
    jobs = Jobs(cluster.api, namespace)
    jobs.create(manifest)
    status = _finish(jobs, "my-script")
    logs = _worker_logs(jobs, "my-script")
    assert status["phase"] == "Succeeded", logs[-3000:]
    # The script's own output, from the rank-0 worker: it trained, and its loss fell.
    losses = [float(line.rsplit(" ", 1)[1]) for line in logs.splitlines() if line.startswith("step ") and " loss " in line]
    assert len(losses) >= 2 and losses[-1] < losses[0], logs[-3000:]
