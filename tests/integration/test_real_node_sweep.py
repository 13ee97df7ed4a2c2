"""Sweeps whose trials train in real pods on the real node (gated as test_real_node.py: KUBETRAIN_REAL_NODE=1,
or ``auto`` as make test sets it; unset, they skip).

The operator from the chart (images built from this repository) runs a 4-trial sweep of the built-in GPT on
CPU: it reads each trial's loss from its pods, stops the losers with ASHA, and ends with a best trial. A
population-based sweep of 2 members x 2 generations (4 trial jobs) has its second generation start, in
its pods, from the first generation's checkpoints on a shared claim.

Run: ``KUBETRAIN_REAL_NODE=1 .venv/bin/python -m pytest tests/integration/test_real_node_sweep.py -v -s``
(root, ``make tools``; a cold image build takes ~10 min, see test_real_node.py).
"""

from __future__ import annotations

import contextlib
import json
import time

import pytest
from kubernetes import client

from kubetrain.operator import naming
from kubetrain_dev.devcluster import real_node
from kubetrain_dev.wait import wait_for
from test_real_node import deployed, shared_checkpoints  # noqa: F401  (the chart with the images built here; an RWX claim)

pytestmark = pytest.mark.real_node
GROUP, VERSION = "kubetrain.dev", "v1alpha1"
# Small enough for a few seconds per trial on the node's CPU, big enough for the learning rate to matter.
TRAINER = {"maxSteps": 60, "batchSize": 8, "sequenceLength": 32,
           "args": {"layers": "1", "d_model": "64", "heads": "2", "corpus_chars": "60000"}}


def _sweep(name: str, spec: dict) -> dict:
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "TrainingSweep", "metadata": {"name": name}, "spec": {
        "template": {"spec": {"replicas": {"min": 1, "max": 1}, "trainer": TRAINER}},
        "parameters": [{"name": "lr", "target": "trainer.learningRate", "type": "float", "min": 1e-5, "max": 3e-2, "log": True}],
        "maxTrials": 4, "parallelism": 2, **spec}}


def _run(cluster, namespace: str, manifest: dict, during=None, timeout: float = 1200) -> tuple[dict, list[dict], set[str]]:
    """Create the sweep and wait until it ends; return its status, its trial jobs and the nodes their pods ran on."""
    custom, core = client.CustomObjectsApi(cluster.api), client.CoreV1Api(cluster.api)
    name = manifest["metadata"]["name"]
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "trainingsweeps", manifest)
    nodes: set[str] = set()

    def finished():
        for p in core.list_namespaced_pod(namespace, label_selector=naming.LABEL_JOB).items:
            if p.spec.node_name:
                nodes.add(p.spec.node_name)
            if during is not None:
                during(core, p)
        st = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, "trainingsweeps", name).get("status") or {}
        return st if st.get("phase") in ("Succeeded", "Failed") else None

    started = time.monotonic()
    status = wait_for(finished, timeout=timeout, what=f"sweep {name} to end", max_interval=1.0)
    trials = custom.list_namespaced_custom_object(GROUP, VERSION, namespace, "trainingjobs",
                                                  label_selector=f"{naming.LABEL_SWEEP}={name}")["items"]
    print(f"sweep {name} {status['phase']} in {time.monotonic() - started:.1f}s: {status.get('trials')}, "
          f"best {status.get('bestTrial')}")
    return status, sorted(trials, key=lambda t: int(t["metadata"]["labels"][naming.LABEL_TRIAL])), nodes


def test_a_four_trial_sweep_runs_real_trials_in_pods(cluster, deployed, namespace):  # noqa: F811
    status, trials, nodes = _run(cluster, namespace, _sweep("lr-real", {
        "algorithm": {"type": "random", "seed": 3},
        "earlyStopping": {"type": "asha", "minSteps": 10, "reductionFactor": 3}}))
    assert status["phase"] == "Succeeded", status
    assert [t["metadata"]["name"] for t in trials] == [f"lr-real-t{n}" for n in range(4)]
    assert nodes == {real_node.NODE_NAME}
    counts = status["trials"]
    assert counts["succeeded"] + counts["pruned"] == 4 and counts["failed"] == 0
    # Every trial reported its loss from its pods (the values the pruner saw are on the trial).
    for t in trials:
        values = json.loads(t["metadata"]["annotations"].get(naming.ANNOTATION_TRIAL_VALUES, "{}"))
        assert values, f"{t['metadata']['name']} reported no loss"
    best = status["bestTrial"]
    # A finished trial's value is its last step's loss, from its pods' termination messages even when the job
    # ended between two reads of its metrics.
    assert best["state"] == "Succeeded" and best["step"] == 60 and best["value"] < 5.0  # a fresh model starts near ln(vocab)


def test_pbt_trials_start_from_each_others_checkpoints_in_pods(cluster, deployed, namespace, shared_checkpoints):  # noqa: F811
    borrowed: set[str] = set()

    def during(core, pod):
        # The trial's pods go when it succeeds: read rank 0's log while it runs.
        if pod.status.phase == "Running" and "-w0-" in pod.metadata.name:
            with contextlib.suppress(client.ApiException):
                if "(another job's)" in core.read_namespaced_pod_log(pod.metadata.name, pod.metadata.namespace):
                    borrowed.add(pod.metadata.labels[naming.LABEL_JOB])

    manifest = _sweep("pbt-real", {"algorithm": {"type": "pbt", "seed": 3, "pbt": {"intervalSteps": 30}},
                                   "earlyStopping": {"type": "none"}, "maxTrials": 2})
    manifest["spec"]["template"]["spec"]["checkpoint"] = {"persistentVolumeClaim": {"claimName": shared_checkpoints},
                                                          "intervalSteps": 10}
    status, trials, nodes = _run(cluster, namespace, manifest, during)
    assert status["phase"] == "Succeeded", status
    assert [t["metadata"]["name"] for t in trials] == [f"pbt-real-t{n}" for n in range(4)]
    assert nodes == {real_node.NODE_NAME}
    second = trials[2:]
    origins = [json.loads(t["metadata"]["annotations"][naming.ANNOTATION_TRIAL_ORIGIN]) for t in second]
    assert sorted(o["exploited"] for o in origins) == [False, True]  # one continues its own line, one copies
    # Both second-generation trials started from a first-generation checkpoint, not from scratch.
    assert borrowed == {t["metadata"]["name"] for t in second}, borrowed
    # Read in the second generation (steps 31-60), from a trial that started from another's checkpoint.
    assert status["bestTrial"]["job"] in borrowed and 30 < status["bestTrial"]["step"] <= 60
