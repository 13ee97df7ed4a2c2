"""Operating kubetrain on the real node (opt-in with the real node: KUBETRAIN_REAL_NODE=1).

The chart with two operator replicas (one acts), a bf16 + PowerSGD job whose exported byte counter
shows the compression, Prometheus discovering the pods with the scrape job docs/observability.md
gives users, and jobs that can never run ending Failed with a reason that says why.
"""

from __future__ import annotations

import json
import re
import subprocess
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml
from kubernetes import client

from kubetrain.contract.ports import free_port
from kubetrain.observability import promql
from kubetrain_dev.wait import wait_for
from support.chart import tool
from test_real_node import deployed, install, run_job  # noqa: F401  (the chart, installed with the images built here)

pytestmark = pytest.mark.real_node
REPO = Path(__file__).resolve().parents[2]
GROUP, VERSION, PLURAL = "kubetrain.dev", "v1alpha1", "trainingjobs"
SAMPLE = re.compile(r"^(\w+)(?:\{[^}]*\})? ([0-9.eE+-]+)$", re.M)


def _operator_pods(core: client.CoreV1Api, namespace: str) -> list[client.V1Pod]:
    return [p for p in core.list_namespaced_pod(namespace, label_selector="app.kubernetes.io/name=kubetrain").items
            if not p.metadata.deletion_timestamp]


def _create(cluster, namespace: str, name: str, spec: dict) -> None:
    client.CustomObjectsApi(cluster.api).create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "TrainingJob", "metadata": {"name": name}, "spec": spec})


def _status(cluster, namespace: str, name: str) -> dict:
    return client.CustomObjectsApi(cluster.api).get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name).get("status", {})


def test_with_two_operator_replicas_exactly_one_acts(cluster, deployed, namespace):  # noqa: F811
    core = client.CoreV1Api(cluster.api)
    subprocess.run(install(deployed, "replicaCount=2"), check=True, timeout=600)
    try:
        def two_ready():
            pods = _operator_pods(core, deployed)
            ready = [p for p in pods if p.status.container_statuses and all(c.ready for c in p.status.container_statuses)]
            return pods if len(pods) == len(ready) == 2 else None

        pods = wait_for(two_ready, timeout=300, what="two operator pods Ready")
        # Acting is reconciling: each pod's own count of reconciles, before and after a new job.
        before = {p.metadata.name: _reconciles(p) for p in pods}
        # A suspended job: the acting operator handles it (status Suspended) and no pod starts.
        _create(cluster, namespace, "peers", {"suspend": True, "replicas": {"min": 1, "max": 1}})
        wait_for(lambda: _status(cluster, namespace, "peers").get("phase") == "Suspended", timeout=120,
                 what="the job Suspended by the acting operator")
        acted = sorted(p.metadata.name for p in pods if _reconciles(p) > before[p.metadata.name])
        # Both are peers (Kopf's ClusterKopfPeering lists each with its priority): the other one stands by.
        peers = client.CustomObjectsApi(cluster.api).get_cluster_custom_object(
            "kopf.dev", "v1", "clusterkopfpeerings", "kubetrain").get("status") or {}
        print(f"operator pods {sorted(before)}: acted {acted}; peers {sorted(peers)}")
        assert len(acted) == 1, acted
        assert set(before) <= set(peers), peers
    finally:
        subprocess.run(install(deployed), check=True, timeout=600)


def _reconciles(pod: client.V1Pod) -> float:
    """How many reconciles this operator pod has run (its own metrics endpoint, by pod IP from the host)."""
    port = next(p.container_port for c in pod.spec.containers for p in c.ports or () if p.name == "metrics")
    return _scrape(f"http://{pod.status.pod_ip}:{port}/metrics").get("kubetrain_operator_reconcile_duration_seconds_count", 0.0)


def _scrape(url: str) -> dict[str, float]:
    """One pod's trainer metrics, summed over their label sets (the local ranks)."""
    with urllib.request.urlopen(url, timeout=5) as resp:
        text = resp.read().decode()
    out: dict[str, float] = {}
    for name, value in SAMPLE.findall(text):
        out[name] = out.get(name, 0.0) + float(value)
    return out


def _bytes_per_step(cluster, namespace: str, name: str, spec: dict) -> tuple[dict, float]:
    """Run a job; rank 0's communicated bytes per step, read from its pod while it trains."""
    latest: dict[str, float] = {}

    def during(status, pods):
        for p in pods:
            if p.metadata.name.startswith(f"{name}-w0") and p.status.phase == "Running" and p.status.pod_ip:
                try:
                    figures = _scrape(f"http://{p.status.pod_ip}:9404/metrics")
                except OSError:
                    continue
                if figures.get("kubetrain_trainer_step", 0) > latest.get("kubetrain_trainer_step", 0):
                    latest.update(figures)

    status, _ = run_job(cluster, namespace, name, spec, during)
    steps = latest.get("kubetrain_trainer_step", 0)
    assert steps > 0, f"{name}: no step read from its rank 0 pod"
    return status, latest.get("kubetrain_trainer_communicated_bytes_total", 0.0) / steps


def test_bf16_with_powersgd_trains_in_pods_and_sends_fewer_bytes(cluster, deployed, namespace):  # noqa: F811
    base = {"replicas": {"min": 2, "max": 2}, "trainer": {"maxSteps": 40}}
    plain_status, plain = _bytes_per_step(cluster, namespace, "plain", base)
    compressed_status, compressed = _bytes_per_step(
        cluster, namespace, "powersgd", base | {"precision": "bf16", "compression": {"type": "powersgd"}})
    print(f"bytes per step on rank 0: fp32 uncompressed {plain:.0f}, bf16 + PowerSGD {compressed:.0f} "
          f"({plain / max(compressed, 1):.1f}x fewer)")
    assert plain_status["phase"] == compressed_status["phase"] == "Succeeded", (plain_status, compressed_status)
    assert 0 < compressed < plain / 2, (plain, compressed)


def _documented_scrape_job() -> dict:
    """The scrape job docs/observability.md gives users, as written there."""
    text = (REPO / "docs" / "observability.md").read_text()
    block = text.split("<!-- scrape-config -->", 1)[1].split("```yaml", 1)[1].split("```", 1)[0]
    [job] = yaml.safe_load(block)
    return job


def test_prometheus_discovers_the_pods_and_answers_tokens_per_second(cluster, deployed, namespace, tmp_path):  # noqa: F811
    # Prometheus 3 built by `make tools` with Kubernetes discovery (Debian's 2.42+ds has none).
    prometheus = tool("prometheus")
    job = _documented_scrape_job()
    # Outside the cluster Prometheus reaches the API with a kubeconfig: the one addition the docs tell users to make.
    job["kubernetes_sd_configs"][0]["kubeconfig_file"] = str(cluster.kubeconfig)
    port = free_port()
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(
        {"global": {"scrape_interval": "2s"}, "scrape_configs": [job]}))
    log = (tmp_path / "prometheus.log").open("w")
    proc = subprocess.Popen([str(prometheus), f"--config.file={tmp_path / 'prometheus.yml'}",
                             f"--storage.tsdb.path={tmp_path / 'data'}", f"--web.listen-address=127.0.0.1:{port}"],
                            stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"

    def get(path: str, **params) -> dict:
        with urllib.request.urlopen(f"{url}{path}?{urllib.parse.urlencode(params)}", timeout=10) as resp:
            body = json.load(resp)
        assert body["status"] == "success", body
        return body["data"]

    def ready() -> bool:
        # A config Prometheus rejects ends the process: fail with its log rather than time out.
        assert proc.poll() is None, (tmp_path / "prometheus.log").read_text()
        try:
            return urllib.request.urlopen(f"{url}/-/ready", timeout=2).status == 200
        except OSError:
            return False

    # (trainingjob label, tokens/s) of each answer to the job's query while it runs.
    answers: list[tuple[str, float]] = []
    targets: set[str] = set()

    def during(status, pods):
        if status.get("phase") == "Running":
            result = get("/api/v1/query", query=promql.tokens_per_second(f'namespace="{namespace}", trainingjob="scraped"'))["result"]
            answers.extend((r["metric"].get("trainingjob", ""), float(r["value"][1])) for r in result)
            found = get("/api/v1/targets", state="any")
            active = found["activeTargets"]
            seen_targets[:] = [{k: t.get(k) for k in ("labels", "health", "lastError", "scrapeUrl")} for t in active] + [
                {"dropped": found.get("droppedTargetCounts")}, *found.get("droppedTargets", [])[:3]]
            # Which pod a target is: by its address (the documented job keeps no pod label on targets).
            by_ip = {p.status.pod_ip: p.metadata.name for p in pods if p.status.pod_ip}
            targets.update(by_ip[host] for t in active
                           if t["health"] == "up" and (host := urllib.parse.urlparse(t["scrapeUrl"]).hostname) in by_ip)

    seen_targets: list[dict] = []  # every active target's labels and health, for the failure message

    try:
        wait_for(ready, timeout=60, what="Prometheus ready")
        # Long enough for discovery and a few 2 s scrapes (a quiet node trains ~7 steps a second).
        status, _ = run_job(cluster, namespace, "scraped", {"replicas": {"min": 2, "max": 2}, "trainer": {"maxSteps": 240}}, during)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()
    print(f"Prometheus scraped {sorted(targets)}; tokens/s answers {answers[-3:]}")
    assert status["phase"] == "Succeeded", status
    assert {"scraped-w0-0", "scraped-w1-0"} <= targets, (targets, seen_targets, (tmp_path / "prometheus.log").read_text()[-1000:])
    assert any(label == "scraped" and value > 0 for label, value in answers), answers


def test_a_missing_image_fails_the_job_with_image_pull_error(cluster, deployed, namespace):  # noqa: F811
    status, _ = run_job(cluster, namespace, "no-image", {"replicas": {"min": 1, "max": 2},
                                                         "container": {"image": "localhost/kubetrain-no-such-image:1"}},
                        timeout=300)
    failed = next(c for c in status["conditions"] if c["type"] == "Failed")
    assert status["phase"] == "Failed" and failed["reason"] == "ImagePullError", status
    assert status.get("restarts", 0) <= 3  # spec.failurePolicy.maxRestarts' default: none used


def test_a_command_that_exits_1_at_once_fails_the_job_with_user_error(cluster, deployed, namespace):  # noqa: F811
    status, _ = run_job(cluster, namespace, "exits-1", {"replicas": {"min": 1, "max": 1},
                                                        "container": {"command": ["python", "-c", "raise SystemExit(1)"]}},
                        timeout=300)
    failed = next(c for c in status["conditions"] if c["type"] == "Failed")
    assert status["phase"] == "Failed" and failed["reason"] == "UserError", status
    assert status.get("restarts", 0) <= 3, status
