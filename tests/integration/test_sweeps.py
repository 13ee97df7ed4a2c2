"""TrainingSweeps on the real control plane: trials are TrainingJobs created within parallelism, ASHA
prunes from the objective they report, an operator SIGKILL loses and duplicates nothing, suspending
the sweep suspends its trials and deleting it cleans up. KWOK runs the trials' pods; the test feeds
each trial's objective into its status the way the operator's throughput reader does."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from kubernetes import client

from crd_helpers import Jobs, install_crd, wait_gone, wait_status
from kubetrain_dev.devcluster import gpu_pool
from kubetrain_dev.wait import wait_for
from kubetrain.operator import naming
from test_operator import Operator

GROUP, VERSION = "kubetrain.dev", "v1alpha1"


def sweep_manifest(name: str, max_trials: int, parallelism: int = 2) -> dict:
    return {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "TrainingSweep", "metadata": {"name": name},
        "spec": {
            "template": {"spec": {"replicas": {"min": 1, "max": 1}, "container": {"gpusPerReplica": 8},
                                  "scheduling": {"tolerations": [gpu_pool.KWOK_TOLERATION]}, "trainer": {"maxSteps": 300}}},
            "parameters": [{"name": "lr", "target": "trainer.learningRate", "type": "float", "min": 1e-4, "max": 1e-1, "log": True}],
            "algorithm": {"type": "random", "seed": 1},
            "earlyStopping": {"type": "asha", "minSteps": 30, "reductionFactor": 3},
            "maxTrials": max_trials, "parallelism": parallelism,
        },
    }


class Sweeps:
    def __init__(self, cluster, namespace: str):
        self.custom = client.CustomObjectsApi(cluster.api)
        self.api = cluster.api
        self.ns = namespace
        self.jobs = Jobs(cluster.api, namespace)

    def create(self, manifest: dict) -> None:
        self.custom.create_namespaced_custom_object(GROUP, VERSION, self.ns, "trainingsweeps", manifest)

    def get(self, name: str) -> dict:
        return self.custom.get_namespaced_custom_object(GROUP, VERSION, self.ns, "trainingsweeps", name)

    def trials(self, name: str) -> list[dict]:
        items = self.custom.list_namespaced_custom_object(GROUP, VERSION, self.ns, "trainingjobs",
                                                          label_selector=f"{naming.LABEL_SWEEP}={name}")["items"]
        return sorted(items, key=lambda j: int(j["metadata"]["labels"][naming.LABEL_TRIAL]))

    def active(self, name: str) -> list[dict]:
        return [t for t in self.trials(name) if (t.get("status") or {}).get("phase") not in ("Succeeded", "Failed")
                and not t["spec"].get("suspend")]

    def report(self, job: str, step: int, loss: float) -> None:
        """What the operator's throughput reader writes for a training job: its step and loss."""
        self.jobs.patch_status(job, {"throughput": {"step": step, "loss": loss}})

    def finish(self, job: str) -> None:
        self.jobs.wait(job, lambda s: s.get("readyReplicas") == 1, f"{job} running", 90)
        for pod in self.jobs.pods(job):
            gpu_pool.finish_pod(self.api, self.ns, pod.metadata.name, 0)
        self.jobs.wait_phase(job, "Succeeded", 90)

    def wait(self, name: str, pred, what: str, timeout: float = 90) -> dict:
        return wait_status(lambda: self.get(name).get("status") or {}, pred, what, timeout)


@pytest.fixture(scope="module")
def operator(cluster, tmp_path_factory) -> Iterator[Operator]:
    install_crd(cluster.api)
    op = Operator(cluster.kubeconfig, tmp_path_factory.mktemp("sweep-operator") / "operator.log")
    op.start()
    yield op
    op.stop()
    assert "Traceback" not in op.log.read_text(), op.logs()


@pytest.fixture
def sweeps(cluster, operator, namespace) -> Iterator[Sweeps]:
    s = Sweeps(cluster, namespace)
    yield s
    print(f"--- operator log (tail) ---\n{operator.logs()}")
    for item in s.custom.list_namespaced_custom_object(GROUP, VERSION, namespace, "trainingsweeps")["items"]:
        s.custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, "trainingsweeps", item["metadata"]["name"])
    wait_gone(lambda: s.jobs.core.list_namespaced_pod(namespace).items, f"pods in {namespace}", timeout=90)


def _series(operator: Operator, name: str, sweep: str, namespace: str) -> dict[str, float]:
    """The operator's exported samples of ``name`` for one sweep, by their state label ("" without one)."""
    from prometheus_client.parser import text_string_to_metric_families
    import urllib.request

    text = urllib.request.urlopen(f"http://127.0.0.1:{operator.metrics_port}/metrics", timeout=10).read().decode()
    return {s.labels.get("state", ""): s.value for f in text_string_to_metric_families(text) for s in f.samples
            if s.name == name and s.labels.get("trainingsweep") == sweep and s.labels.get("namespace") == namespace}


def test_trials_run_within_parallelism_asha_prunes_and_the_sweep_succeeds(sweeps, operator):
    sweeps.create(sweep_manifest("lr", max_trials=4))
    wait_for(lambda: len(sweeps.trials("lr")) == 2, timeout=60, what="two trials created")
    t0, t1 = (t["metadata"]["name"] for t in sweeps.trials("lr"))
    assert (t0, t1) == ("lr-t0", "lr-t1") and len(sweeps.active("lr")) <= 2
    sweeps.report(t0, 300, 1.5)
    sweeps.finish(t0)
    # Far behind the finished trial at the first rung (step 30): ASHA stops it, its checkpoint kept.
    sweeps.report(t1, 31, 5.0)
    wait_for(lambda: sweeps.jobs.get(t1)["spec"].get("suspend") is True, timeout=60, what=f"{t1} pruned")
    pruned = sweeps.jobs.get(t1)
    assert pruned["metadata"]["annotations"][naming.ANNOTATION_TRIAL_OUTCOME].startswith("Pruned")
    assert json.loads(pruned["metadata"]["annotations"][naming.ANNOTATION_TRIAL_VALUES]) == {"31": 5.0}
    wait_for(lambda: len(sweeps.trials("lr")) == 4, timeout=60, what="the next two trials")
    assert len(sweeps.active("lr")) <= 2
    # Each better than every trial before it at every rung (ASHA keeps the top third).
    for job, loss in (("lr-t2", 1.2), ("lr-t3", 1.1)):
        sweeps.report(job, 300, loss)
        sweeps.finish(job)
    st = sweeps.wait("lr", lambda s: s.get("phase") == "Succeeded", "sweep Succeeded")
    assert st["trials"] == {"pending": 0, "running": 0, "succeeded": 3, "pruned": 1, "failed": 0}
    assert st["bestTrial"]["job"] == "lr-t3" and st["bestTrial"]["value"] == 1.1
    assert st["prunedSteps"] == 300 - 31 and len(json.dumps(st)) < 16 * 1024
    # The pruned trial held 8 GPUs: what it did not train is GPU time saved, estimated from its own pace.
    assert st["prunedGpuSeconds"] > 0
    # The operator's series say what the status says.
    trials = _series(operator, "kubetrain_operator_sweep_trials", "lr", sweeps.ns)
    assert trials == {"Pending": 0, "Running": 0, "Succeeded": 3, "Pruned": 1, "Failed": 0}
    assert _series(operator, "kubetrain_operator_sweep_best_value", "lr", sweeps.ns) == {"": 1.1}
    assert _series(operator, "kubetrain_operator_sweep_saved_trial_steps", "lr", sweeps.ns) == {"": 300 - 31}
    assert _series(operator, "kubetrain_operator_sweep_saved_gpu_seconds", "lr", sweeps.ns) == {"": st["prunedGpuSeconds"]}


def test_operator_sigkill_loses_no_trial_and_runs_none_twice_then_suspend_and_delete(sweeps, operator):
    sweeps.create(sweep_manifest("kill", max_trials=5))
    wait_for(lambda: len(sweeps.trials("kill")) == 2, timeout=60, what="two trials created")
    operator.kill()
    sweeps.report("kill-t0", 300, 1.4)
    sweeps.jobs.patch_status("kill-t0", {"phase": "Succeeded"})  # as if it ended while no operator watched
    operator.start()
    wait_for(lambda: len(sweeps.trials("kill")) == 3, timeout=60, what="a third trial after the restart")
    trials = sweeps.trials("kill")
    assert [t["metadata"]["name"] for t in trials] == ["kill-t0", "kill-t1", "kill-t2"]
    params = [t["metadata"]["annotations"][naming.ANNOTATION_TRIAL_PARAMETERS] for t in trials]
    assert len(set(params)) == 3  # the rebuilt study drew something new
    st = sweeps.wait("kill", lambda s: (s.get("trials") or {}).get("succeeded") == 1, "the finished trial counted")
    assert st["bestTrial"]["job"] == "kill-t0"
    # Suspending the sweep suspends its running trials and starts none.
    sweeps.custom.patch_namespaced_custom_object(GROUP, VERSION, sweeps.ns, "trainingsweeps", "kill", {"spec": {"suspend": True}})
    wait_for(lambda: not sweeps.active("kill"), timeout=60, what="trials suspended")
    sweeps.wait("kill", lambda s: s.get("phase") == "Suspended", "sweep Suspended")
    assert len(sweeps.trials("kill")) == 3
    # Deleting the sweep deletes its trials (they are owned by it) and their pods.
    sweeps.custom.delete_namespaced_custom_object(GROUP, VERSION, sweeps.ns, "trainingsweeps", "kill")
    wait_gone(lambda: sweeps.trials("kill"), "trials of the deleted sweep", timeout=90)


def pbt_manifest(name: str) -> dict:
    """A population of 2, 300 steps in generations of 100: 6 trial jobs, each starting from a checkpoint in one claim."""
    manifest = sweep_manifest(name, max_trials=2, parallelism=2)
    manifest["spec"]["template"]["spec"]["checkpoint"] = {"persistentVolumeClaim": {"claimName": "ckpt"}}
    manifest["spec"]["algorithm"] = {"type": "pbt", "seed": 3, "pbt": {"intervalSteps": 100}}
    manifest["spec"]["earlyStopping"] = {"type": "none"}
    return manifest


@pytest.fixture
def checkpoint_claim(cluster, namespace) -> Iterator[str]:
    """A bound ReadWriteMany claim (a statically provisioned PersistentVolume: KWOK's pods mount nothing)."""
    core = client.CoreV1Api(cluster.api)
    pv = f"ckpt-{namespace}"
    core.create_persistent_volume({"metadata": {"name": pv}, "spec": {
        "capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteMany"], "storageClassName": "kubetrain-test",
        "persistentVolumeReclaimPolicy": "Retain", "hostPath": {"path": f"/tmp/{pv}"}}})
    core.create_namespaced_persistent_volume_claim(namespace, {"metadata": {"name": "ckpt"}, "spec": {
        "accessModes": ["ReadWriteMany"], "storageClassName": "kubetrain-test", "volumeName": pv,
        "resources": {"requests": {"storage": "1Gi"}}}})
    wait_for(lambda: core.read_namespaced_persistent_volume_claim("ckpt", namespace).status.phase == "Bound",
             timeout=60, what="the checkpoint claim bound")
    yield "ckpt"
    core.delete_persistent_volume(pv)


def _origin(job: dict) -> dict | None:
    raw = job["metadata"]["annotations"].get(naming.ANNOTATION_TRIAL_ORIGIN)
    return json.loads(raw) if raw else None


def test_pbt_generations_are_trial_jobs_from_a_checkpoint_and_survive_an_operator_sigkill(sweeps, operator, checkpoint_claim):
    sweeps.create(pbt_manifest("pbt"))
    wait_for(lambda: len(sweeps.trials("pbt")) == 2, timeout=60, what="the first generation")
    first = sweeps.trials("pbt")
    assert [t["spec"]["trainer"]["maxSteps"] for t in first] == [100, 100] and all(_origin(t) is None for t in first)
    sweeps.report("pbt-t0", 100, 2.0)
    sweeps.finish("pbt-t0")
    # A round has seen it end (the status counts it) and started nothing: generation 1 waits for all of generation 0.
    sweeps.wait("pbt", lambda s: (s.get("trials") or {}).get("succeeded") == 1, "the first trial counted")
    assert len(sweeps.trials("pbt")) == 2
    sweeps.report("pbt-t1", 100, 3.0)
    sweeps.finish("pbt-t1")
    wait_for(lambda: len(sweeps.trials("pbt")) == 4, timeout=60, what="the second generation")
    _, _, t2, t3 = sweeps.trials("pbt")
    # Member 0 goes on from its own checkpoint; member 1 (the bottom half of two) copies member 0's, perturbed.
    assert _origin(t2) == {"trial": 0, "job": "pbt-t0", "checkpoint": f"{sweeps.ns}/pbt-t0", "exploited": False}
    assert _origin(t3) == {"trial": 0, "job": "pbt-t0", "checkpoint": f"{sweeps.ns}/pbt-t0", "exploited": True}
    assert t3["spec"]["checkpoint"]["initFrom"] == f"{sweeps.ns}/pbt-t0" and t3["spec"]["trainer"]["maxSteps"] == 200
    lr0 = json.loads(first[0]["metadata"]["annotations"][naming.ANNOTATION_TRIAL_PARAMETERS])["lr"]
    assert json.loads(t3["metadata"]["annotations"][naming.ANNOTATION_TRIAL_PARAMETERS])["lr"] != lr0
    # The trial's pods get the claim and the trainer is told where to start from.
    sweeps.jobs.wait("pbt-t3", lambda s: s.get("readyReplicas") == 1, "pbt-t3 running", 90)
    env = {e["name"]: e.get("value") for e in sweeps.jobs.pods("pbt-t3")[0].to_dict()["spec"]["containers"][0]["env"] or []}
    assert env["KUBETRAIN_INIT_CHECKPOINT_DIR"].endswith(f"/{sweeps.ns}/pbt-t0")
    # The operator dies; the generation ends while nobody watches; a new operator decides the next from the objects.
    operator.kill()
    for job, loss in (("pbt-t2", 1.6), ("pbt-t3", 1.4)):
        sweeps.report(job, 200, loss)
        sweeps.jobs.patch_status(job, {"phase": "Succeeded"})
    operator.start()
    wait_for(lambda: len(sweeps.trials("pbt")) == 6, timeout=60, what="the last generation after the restart")
    trials = sweeps.trials("pbt")
    assert [t["metadata"]["name"] for t in trials] == [f"pbt-t{n}" for n in range(6)]
    # Member 1's line (t3, 1.4) is now the better: member 0 copies it.
    assert _origin(trials[4])["job"] == "pbt-t3" and _origin(trials[4])["exploited"] is True
    assert _origin(trials[5]) == {"trial": 3, "job": "pbt-t3", "checkpoint": f"{sweeps.ns}/pbt-t3", "exploited": False}
    for job, loss in (("pbt-t4", 1.3), ("pbt-t5", 1.2)):
        sweeps.report(job, 300, loss)
        sweeps.finish(job)
    st = sweeps.wait("pbt", lambda s: s.get("phase") == "Succeeded", "sweep Succeeded")
    assert st["trials"]["succeeded"] == 6 and st["bestTrial"]["job"] == "pbt-t5" and st["bestTrial"]["step"] == 300
