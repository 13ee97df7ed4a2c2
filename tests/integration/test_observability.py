"""Metrics end to end: a real Prometheus scrapes real trainer processes and the operator.

A TrainingJob runs on the test control plane (its pods simulated by KWOK); the
same job's trainer runs for real on this machine, labelled with the job's name
and namespace, as it would be inside the pods. Prometheus (Debian's, on
loopback) scrapes both and evaluates our rules. Then every dashboard panel whose
data source is present must return data, and `kubectl get tj` shows the job's
tokens/s, which the operator read back from Prometheus.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from crd_helpers import Jobs, install_crd, kubectl
from kubetrain.contract import TrainerContract
from kubetrain_dev.devcluster import gpu_pool
from kubetrain_dev.wait import wait_for
from kubetrain.observability import dashboard
from kubetrain.observability.rules import rule_groups
from test_operator import Operator, free_port

PROMETHEUS = shutil.which("prometheus")
pytestmark = pytest.mark.skipif(PROMETHEUS is None, reason="Prometheus is installed by `make tools` (Debian's prometheus)")

JOB = "observed"
SCRAPE_JOB = "kubetrain"


class Prometheus:
    def __init__(self, workdir: Path, targets: list[str]):
        self.port = free_port()
        rules = workdir / "rules.yaml"
        rules.write_text(yaml.safe_dump(rule_groups(), sort_keys=False))
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(rules)],
            # honor_labels, as the chart's PodMonitors: the operator's namespace label (the job's namespace) wins over
            # the target's. No kubetrain series carries `job` or `instance`, so those stay the scrape target's.
            "scrape_configs": [{"job_name": SCRAPE_JOB, "honor_labels": True, "static_configs": [{"targets": targets}]}],
        }
        (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.proc = subprocess.Popen(
            [PROMETHEUS, f"--config.file={workdir / 'prometheus.yml'}", f"--storage.tsdb.path={workdir / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}"],
            stdout=(workdir / "prometheus.log").open("w"), stderr=subprocess.STDOUT,
        )
        self.url = f"http://127.0.0.1:{self.port}"
        wait_for(lambda: urllib.request.urlopen(f"{self.url}/-/ready", timeout=2).status == 200, timeout=60, what="Prometheus ready")

    def query(self, expr: str) -> list[dict]:
        qs = urllib.parse.urlencode({"query": expr})
        with urllib.request.urlopen(f"{self.url}/api/v1/query?{qs}", timeout=10) as resp:
            body = json.load(resp)
        assert body["status"] == "success", body
        return body["data"]["result"]

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


@pytest.fixture(scope="module")
def observed(cluster, tmp_path_factory) -> Iterator[dict]:
    """A running TrainingJob, its real trainer, the operator and Prometheus, all wired together."""
    from kubernetes import client

    from kubetrain_trainer.local import LocalJob

    install_crd(cluster.api)
    work = tmp_path_factory.mktemp("observability")
    ns = "obs"
    core = client.CoreV1Api(cluster.api)
    core.create_namespace({"metadata": {"name": ns}})
    wait_for(lambda: core.list_namespaced_service_account(ns, field_selector="metadata.name=default").items,
             timeout=30, what="default ServiceAccount")

    base = free_port()
    contract = TrainerContract(job_name=JOB, namespace=ns, max_steps=100000, batch_size=4, sequence_length=64,
                               metrics_port=base, checkpoint_dir=str(work / "ckpt"), checkpoint_interval_steps=20)
    trainer = LocalJob(contract, replicas=2, nproc_per_node=1, min_replicas=1, max_replicas=2, max_restarts=3, workdir=work / "run")
    operator_metrics = free_port()
    trainer_targets = [f"127.0.0.1:{base}", f"127.0.0.1:{base + 1}"]
    prom = Prometheus(work, trainer_targets + [f"127.0.0.1:{operator_metrics}"])
    op = Operator(cluster.kubeconfig, work / "operator.log", env={
        "KUBETRAIN_PROMETHEUS_URL": prom.url, "KUBETRAIN_THROUGHPUT_INTERVAL": "2",
        "KUBETRAIN_METRICS_PORT": str(operator_metrics)})
    trainer.start()
    op.start()
    jobs = Jobs(cluster.api, ns)
    try:
        jobs.create({"apiVersion": "kubetrain.dev/v1alpha1", "kind": "TrainingJob", "metadata": {"name": JOB},
                     "spec": {"replicas": {"min": 1, "max": 2}, "container": {"gpusPerReplica": 8},
                              "scheduling": {"tolerations": [gpu_pool.KWOK_TOLERATION]}}})
        jobs.wait(JOB, lambda s: s.get("readyReplicas") == 2, "job running", 90)
        # A sweep for the Sweeps row: its first trial (a KWOK job) reports a loss and ends, so it has a best value.
        _sweep_with_a_finished_trial(cluster, jobs, ns)
        # Enough scrapes for rate() over the dashboard's 5m windows, and a checkpoint.
        wait_for(lambda: prom.query(f'kubetrain_trainer_step{{trainingjob="{JOB}"}} > 40'), timeout=240, what="trainer past step 40")
        yield {"prom": prom, "jobs": jobs, "ns": ns}
    finally:
        trainer.stop()
        # Deleted while the operator runs: it releases the pods' tracking finalizers, so no trial pod is left
        # holding a GPU node for the modules after this one (the sweep had started its second trial).
        with contextlib.suppress(client.ApiException):
            client.CustomObjectsApi(cluster.api).delete_namespaced_custom_object("kubetrain.dev", "v1alpha1", ns, "trainingsweeps", SWEEP)
        jobs.delete(JOB)
        try:
            wait_for(lambda: not core.list_namespaced_pod(ns).items, timeout=120, what=f"no pod left in {ns}")
        finally:
            op.stop()
            prom.stop()


SWEEP = "observed-sweep"


def _sweep_with_a_finished_trial(cluster, jobs: Jobs, ns: str) -> None:
    from kubernetes import client

    client.CustomObjectsApi(cluster.api).create_namespaced_custom_object("kubetrain.dev", "v1alpha1", ns, "trainingsweeps", {
        "apiVersion": "kubetrain.dev/v1alpha1", "kind": "TrainingSweep", "metadata": {"name": SWEEP},
        "spec": {"template": {"spec": {"replicas": {"min": 1, "max": 1}, "container": {"gpusPerReplica": 8},
                                       "scheduling": {"tolerations": [gpu_pool.KWOK_TOLERATION]}, "trainer": {"maxSteps": 300}}},
                 "parameters": [{"name": "lr", "target": "trainer.learningRate", "type": "float", "min": 1e-4, "max": 1e-1, "log": True}],
                 "algorithm": {"type": "random", "seed": 1}, "maxTrials": 2, "parallelism": 1}})
    trial = f"{SWEEP}-t0"
    wait_for(lambda: jobs.exists(trial), timeout=60, what="the sweep's first trial")
    jobs.wait(trial, lambda s: s.get("readyReplicas") == 1, f"{trial} running", 90)
    jobs.patch_status(trial, {"throughput": {"step": 300, "loss": 1.5}})  # what the throughput reader would write
    for pod in jobs.pods(trial):
        gpu_pool.finish_pod(cluster.api, ns, pod.metadata.name, 0)
    jobs.wait_phase(trial, "Succeeded", 90)


def _concrete(expr: str, ns: str) -> str:
    return expr.replace("$namespace", ns).replace("$trainingjob", JOB).replace("$__range", "5m")


LIVE_SOURCES = {"trainer", "operator", "sweep"}  # gpu needs GPU nodes, dcgm the DCGM exporter: see test_metric_names


@pytest.mark.parametrize("panel", [p for p in dashboard.panels() if p.source in LIVE_SOURCES], ids=lambda p: p.title)
def test_every_panel_returns_data(observed, panel):
    for expr, _legend in panel.queries:
        result = observed["prom"].query(_concrete(expr, observed["ns"]))
        assert result, f"panel {panel.title!r}: no data for {expr}"


def test_the_scrape_job_survives_next_to_the_trainingjob_label(observed):
    """Scraped with honor_labels, the series keep Prometheus' own job and instance: up{job=...} still works."""
    prom = observed["prom"]
    for metric in ("kubetrain_trainer_step", "kubetrain_operator_job_phase"):
        series = prom.query(f'{metric}{{trainingjob="{JOB}"}}')
        assert series and {s["metric"]["job"] for s in series} == {SCRAPE_JOB}, series
        assert all(s["metric"].get("instance") for s in series), series
    assert prom.query(f'up{{job="{SCRAPE_JOB}"}} == 1')


def test_scaling_annotation_and_recording_rules_evaluate(observed):
    prom = observed["prom"]
    # Recording rules run every 30 s: wait for an evaluation rather than race it.
    wait_for(lambda: prom.query(f'kubetrain:job_tokens_per_second:sum{{trainingjob="{JOB}"}} > 0'), timeout=90,
             what="recorded job tokens/s")
    assert prom.query(f'kubetrain:pod_job:info{{trainingjob="{JOB}"}}')
    # Resize the job (max 2 -> 1): a scaling decision, counted and shown as a dashboard annotation.
    observed["jobs"].patch(JOB, {"spec": {"replicas": {"max": 1}}})
    wait_for(lambda: prom.query(f'kubetrain_operator_scaling_events_total{{trainingjob="{JOB}"}} >= 1'), timeout=60,
             what="scaling event counted")
    annotation = dashboard.build_dashboard().build().annotations.list_val[0].expr
    wait_for(lambda: prom.query(_concrete(annotation, observed["ns"])), timeout=60, what="scaling annotation query")


def test_kubectl_get_tj_shows_live_throughput(observed):
    jobs = observed["jobs"]
    st = jobs.wait(JOB, lambda s: (s.get("throughput") or {}).get("tokensPerSecond", 0) > 0, "throughput in status", 60)
    assert st["throughput"]["step"] > 0 and st["throughput"]["samplesPerSecond"] > 0
    row = kubectl("get", "tj", JOB, "-n", observed["ns"], "--no-headers").stdout.split()
    assert float(row[7]) > 0, row  # the Tokens/s column
