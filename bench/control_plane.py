"""What does the operator cost at scale, and how fast does a job start? kubetrain against Kubeflow's PyTorchJob.

Every run starts a fresh local control plane (kube-apiserver, etcd,
kube-scheduler, kube-controller-manager built from source; KWOK playing 8-GPU
nodes; ``kubetrain_dev.devcluster``), starts ONE operator as a subprocess, submits
N jobs at once from a thread pool, and watches the pods:

* **start latency** per job: from its create call to all of its pods
  created (first seen by a watch), bound (``spec.nodeName`` set) and Running;
  p50 and p99 over the N jobs, and the makespan (first submission → last job Running);
* **operator cost**: CPU seconds (psutil, user + system) of the operator
  process from submission until every job runs (the burst), then during a
  steady window with every job Running; peak RSS (sampled every 0.2 s);
* **API requests per job**: each operator authenticates as its own user
  (a client certificate in ``system:masters``); the apiserver's audit log
  (level Metadata for those two users only, one entry per request) counts
  that operator's requests in the burst and in the steady window, by verb and
  resource. ``apiserver_request_total`` (which has no user label) gives the
  whole cluster's requests for context.

The two operators never run together: one operator per cluster per run, with
runs alternating (kubetrain, PyTorchJob, then PyTorchJob, kubetrain, ...),
the same pool, the same job count, the same pod count per job:

* kubetrain: ``replicas {min: 1, max: 1}``, ``gpusPerReplica: 1`` → one
  worker pod (1 GPU) + its rendezvous-store pod (no GPU) + a Service;
* PyTorchJob (training-operator v1.9): ``Master: 1`` + ``Worker: 1``, 1 GPU
  each → two pods + a Service.

The pool has ceil(2·N/8) + 2 nodes of 8 GPUs, enough for either.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import contextlib
import json
import math
import os
import re
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from bench.common import REPO, Run, fmt, fmt_spread, load_average, md_table, summary
from kubetrain.contract.ports import free_port
from kubetrain.operator.settings import RECONCILE_INTERVAL_DEFAULT
from kubetrain_dev.operator_process import OperatorProcess, kubetrain_operator
from kubetrain_dev.wait import wait_for

NAME = "control_plane"
QUESTION = ("How fast do 10, 100, 500 and 1,000 TrainingJobs submitted at once start, and what does the operator cost "
            "(CPU, memory, API requests per job), side by side with Kubeflow's PyTorchJob on the same control plane?")

KUBETRAIN = "kubetrain"
PYTORCHJOB = "pytorchjob"
USERS = {KUBETRAIN: "kubetrain-operator", PYTORCHJOB: "training-operator"}
NAMESPACE = "bench"
PODS_PER_JOB = 2
GPUS_PER_NODE = 8
TRAINER_IMAGE = "ghcr.io/kubetrain/trainer:bench"  # never pulled: KWOK runs no containers

# repetitions per size; every repetition runs both operators
FULL = {"sizes": [10, 100, 500, 1000], "reps": {10: 2, 100: 2, 500: 1, 1000: 1}, "steady_seconds": 15, "timeout_seconds": 900,
        "status_settle_seconds": 3}
QUICK = {"sizes": [3], "reps": {3: 1}, "steady_seconds": 2, "timeout_seconds": 240,
         "status_settle_seconds": 1}

AUDIT_POLICY = {
    "apiVersion": "audit.k8s.io/v1",
    "kind": "Policy",
    "omitStages": ["RequestReceived"],
    "rules": [{"level": "Metadata", "users": sorted(USERS.values())}, {"level": "None"}],
}


# -- job manifests ------------------------------------------------------------------------


def kubetrain_job(name: str) -> dict:
    from kubetrain_dev.devcluster import gpu_pool

    return {
        "apiVersion": "kubetrain.dev/v1alpha1",
        "kind": "TrainingJob",
        "metadata": {"name": name},
        "spec": {
            "replicas": {"min": 1, "max": 1},
            "container": {"image": TRAINER_IMAGE, "gpusPerReplica": 1},
            "scheduling": {"tolerations": [gpu_pool.KWOK_TOLERATION]},
            "trainer": {"maxSteps": 1000},
        },
    }


def pytorch_job(name: str) -> dict:
    from kubetrain_dev.devcluster import gpu_pool

    def replica() -> dict:
        return {
            "replicas": 1,
            "restartPolicy": "OnFailure",
            "template": {"spec": {
                "tolerations": [gpu_pool.KWOK_TOLERATION],
                "containers": [{
                    "name": "pytorch",
                    "image": TRAINER_IMAGE,
                    "command": ["python", "-m", "kubetrain_trainer"],
                    "resources": {"limits": {"nvidia.com/gpu": "1"}, "requests": {"nvidia.com/gpu": "1"}},
                }],
            }},
        }

    return {
        "apiVersion": "kubeflow.org/v1",
        "kind": "PyTorchJob",
        "metadata": {"name": name},
        "spec": {"pytorchReplicaSpecs": {"Master": replica(), "Worker": replica()}},
    }


JOBS = {
    KUBETRAIN: (kubetrain_job, ("kubetrain.dev", "v1alpha1", "trainingjobs")),
    PYTORCHJOB: (pytorch_job, ("kubeflow.org", "v1", "pytorchjobs")),
}


# -- helpers ----------------------------------------------------------------------------------


def install_crds(api, paths: list[Path]) -> None:
    from kubernetes import client

    ext = client.ApiextensionsV1Api(api)
    names = []
    for path in paths:
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("kind") == "CustomResourceDefinition":
                ext.create_custom_resource_definition(doc)
                names.append(doc["metadata"]["name"])

    def established() -> bool:
        for n in names:
            crd = ext.read_custom_resource_definition(n)
            if not any(c.type == "Established" and c.status == "True" for c in crd.status.conditions or []):
                return False
        return True

    wait_for(established, timeout=60, what="CRDs Established")
    # Established comes before the apiserver serves the resource from a ready watch cache.
    custom = client.CustomObjectsApi(api)
    for path in paths:
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("kind") == "CustomResourceDefinition":
                s = doc["spec"]
                version = next(v["name"] for v in s["versions"] if v.get("served", True))
                wait_for(lambda: custom.list_cluster_custom_object(s["group"], version, s["names"]["plural"]) is not None,
                         timeout=60, what=f"{s['names']['plural']} served")


def create_namespace(api, name: str) -> None:
    from kubernetes import client

    core = client.CoreV1Api(api)
    core.create_namespace({"metadata": {"name": name}})
    wait_for(lambda: core.list_namespaced_service_account(name, field_selector="metadata.name=default").items,
             timeout=60, what=f"default ServiceAccount in {name}")


def apiserver_requests_total(api) -> float:
    """Sum of apiserver_request_total over every label set (all clients)."""
    # The ApiClient's connection pool carries the admin client certificate.
    resp = api.rest_client.pool_manager.request("GET", api.configuration.host + "/metrics", timeout=30)
    if resp.status != 200:
        raise RuntimeError(f"GET /metrics: HTTP {resp.status}")
    data = resp.data.decode()
    total = 0.0
    for line in data.splitlines():
        if line.startswith("apiserver_request_total{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


# -- the operators ----------------------------------------------------------------------------

TO_NAMESPACE = "kubeflow"
TO_SECRET = "training-operator-webhook-cert"
TO_WEBHOOK_CONFIG = "validator.training-operator.kubeflow.org"
TO_CERT_DIR = Path("/tmp/k8s-webhook-server/serving-certs")  # hard-coded in training-operator v1.9


def training_operator_certs() -> dict[str, bytes]:
    """What the release's cert rotator would put in its Secret (and a pod would mount into TO_CERT_DIR).

    Generated up front, valid for ten years, so the rotator finds them valid and keeps them: outside a
    pod nobody mounts the Secret's new contents into TO_CERT_DIR, and the operator waits for those files.
    """
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=5)
    later = now + dt.timedelta(days=3650)

    def key():
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)

    def pem_key(k) -> bytes:
        return k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                               serialization.NoEncryption())

    ca_key, leaf_key = key(), key()
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "training-operator-ca"),
                         x509.NameAttribute(NameOID.ORGANIZATION_NAME, "training-operator")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now).not_valid_after(later)
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_encipherment=True, content_commitment=False,
                                       data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=False,
                                       encipher_only=False, decipher_only=False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    dns = f"training-operator.{TO_NAMESPACE}.svc"
    leaf = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, dns)]))
            .issuer_name(ca_name).public_key(leaf_key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now).not_valid_after(later)
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(dns)]), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    return {"ca.crt": ca.public_bytes(pem), "ca.key": pem_key(ca_key), "tls.crt": leaf.public_bytes(pem), "tls.key": pem_key(leaf_key)}


def setup_training_operator(api) -> None:
    """The objects training-operator's release manifests create and it needs at start."""
    import base64

    from kubernetes import client

    core = client.CoreV1Api(api)
    core.create_namespace({"metadata": {"name": TO_NAMESPACE}})
    certs = training_operator_certs()
    core.create_namespaced_secret(TO_NAMESPACE, {"metadata": {"name": TO_SECRET},
                                                 "data": {k: base64.b64encode(v).decode() for k, v in certs.items()}})
    TO_CERT_DIR.mkdir(parents=True, exist_ok=True)
    for name, data in certs.items():
        (TO_CERT_DIR / name).write_bytes(data)
    # The rotator injects its CA into this configuration. It has no webhooks: the apiserver cannot reach
    # one on this loopback control plane (no Service routing), so PyTorchJob admission is not exercised.
    client.AdmissionregistrationV1Api(api).create_validating_webhook_configuration(
        {"metadata": {"name": TO_WEBHOOK_CONFIG}, "webhooks": []})



class Operator:
    """One operator as a subprocess (kubetrain_dev.operator_process, as the integration tests start it), sampled with psutil."""

    def __init__(self, kind: str, kubeconfig: Path, log: Path):
        self.kind = kind
        self.kubeconfig = kubeconfig
        self.log = log
        self.process: OperatorProcess | None = None
        self.peak_rss = 0
        self._stop = threading.Event()
        self._sampler: threading.Thread | None = None
        self.ps = None

    def start(self) -> None:
        import psutil

        if self.kind == KUBETRAIN:
            self.process = kubetrain_operator(self.kubeconfig, self.log)
            self.process.launch_env.pop("KUBETRAIN_RECONCILE_INTERVAL", None)  # the shipped default
        else:
            from kubetrain_dev.devcluster import build

            probe, metrics, webhook = free_port(), free_port(), free_port()
            env = dict(os.environ, KUBECONFIG=str(self.kubeconfig), PYTHONUNBUFFERED="1", MY_POD_NAMESPACE=TO_NAMESPACE)
            argv = [str(build.binary("training-operator.v1")), f"--kubeconfig={self.kubeconfig}",
                    "--enable-scheme=pytorchjob", f"--metrics-bind-address=127.0.0.1:{metrics}",
                    f"--health-probe-bind-address=127.0.0.1:{probe}", f"--webhook-server-port={webhook}"]
            self.process = OperatorProcess(argv, env, self.log, f"http://127.0.0.1:{probe}/readyz", cwd=self.log.parent)
        self.process.start(timeout=120)
        self.ps = psutil.Process(self.process.pid)
        self._sampler = threading.Thread(target=self._sample, daemon=True)
        self._sampler.start()

    @property
    def proc(self):
        return self.process.proc if self.process else None

    def _sample(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(Exception):
                self.peak_rss = max(self.peak_rss, self.ps.memory_info().rss)
            self._stop.wait(0.2)

    def cpu_seconds(self) -> float:
        t = self.ps.cpu_times()
        return t.user + t.system

    def rss(self) -> int:
        return self.ps.memory_info().rss

    def reset_peak(self) -> None:
        self.peak_rss = self.rss()

    def tail(self, n: int = 4000) -> str:
        return self.process.logs(n) if self.process else ""

    def stop(self) -> None:
        self._stop.set()
        if self.process:
            self.process.stop(grace=5)  # the figures are taken: a slow graceful shutdown is not worth waiting for


# -- watching pods ------------------------------------------------------------------------------


@dataclass
class PodTimes:
    job: str
    created: float
    bound: float | None = None
    running: float | None = None


def job_status_running(kind: str, obj: dict) -> bool:
    """The job's own status says it runs (what `kubectl get` shows)."""
    st = obj.get("status") or {}
    if kind == KUBETRAIN:
        return st.get("phase") == "Running"
    return any(c.get("type") == "Running" and c.get("status") == "True" for c in st.get("conditions") or [])


class RawWatch:
    """A watch on one namespaced collection, read as raw JSON lines (cheap), restarted every 5 s from the last
    resourceVersion; ``handle(obj, now)`` sees every ADDED/MODIFIED object with its arrival time."""

    def __init__(self, list_fn, handle):
        self.list_fn = list_fn
        self.handle = handle
        self.error: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        listing = self.list_fn(limit=1)  # a typed V1PodList, or a dict for custom objects
        self._rv = listing["metadata"]["resourceVersion"] if isinstance(listing, dict) else listing.metadata.resource_version
        self._thread.start()

    def _run(self) -> None:
        rv = self._rv
        while not self._stop.is_set():
            try:
                resp = self.list_fn(watch=True, resource_version=rv, timeout_seconds=5, allow_watch_bookmarks=True,
                                    _preload_content=False)
                buf = b""
                for chunk in resp.stream(65536, decode_content=True):
                    now = time.time()
                    buf += chunk
                    while b"\n" in buf:
                        line, buf = buf.split(b"\n", 1)
                        if not line.strip():
                            continue
                        ev = json.loads(line)
                        obj = ev.get("object") or {}
                        if ev.get("type") == "ERROR":
                            raise RuntimeError(f"watch error: {obj}")
                        rv = (obj.get("metadata") or {}).get("resourceVersion", rv)
                        if ev.get("type") in ("ADDED", "MODIFIED"):
                            self.handle(obj, now)
                    if self._stop.is_set():
                        return
            except Exception as exc:  # noqa: BLE001 - re-watch from the last resourceVersion
                if self._stop.is_set():
                    return
                self.error = f"{type(exc).__name__}: {exc}"
                time.sleep(0.2)

    def stop(self) -> None:
        self._stop.set()  # the watch ends within its 5 s server timeout


class Watches:
    """When each pod was first seen, bound and Running; when each job's status first said Running."""

    def __init__(self, api, kind: str, namespace: str):
        from kubernetes import client

        self.kind = kind
        self.pods: dict[str, PodTimes] = {}
        self.job_running: dict[str, float] = {}
        self._lock = threading.Lock()
        core, custom = client.CoreV1Api(api), client.CustomObjectsApi(api)
        group, version, plural = JOBS[kind][1]
        self.watches = [
            RawWatch(lambda **kw: core.list_namespaced_pod(namespace, **kw), self._pod),
            RawWatch(lambda **kw: custom.list_namespaced_custom_object(group, version, namespace, plural, **kw), self._job),
        ]

    def start(self) -> None:
        for w in self.watches:
            w.start()

    def stop(self) -> None:
        for w in self.watches:
            w.stop()

    @property
    def error(self) -> str | None:
        return next((w.error for w in self.watches if w.error), None)

    def _pod(self, obj: dict, now: float) -> None:
        meta = obj.get("metadata", {})
        owners = meta.get("ownerReferences") or []
        job = next((o["name"] for o in owners if o.get("controller")), owners[0]["name"] if owners else "?")
        name = meta.get("name")
        with self._lock:
            pt = self.pods.get(name)
            if pt is None:
                pt = self.pods[name] = PodTimes(job=job, created=now)
            if pt.bound is None and (obj.get("spec") or {}).get("nodeName"):
                pt.bound = now
            if pt.running is None and (obj.get("status") or {}).get("phase") == "Running":
                pt.running = now

    def _job(self, obj: dict, now: float) -> None:
        name = (obj.get("metadata") or {}).get("name")
        if job_status_running(self.kind, obj):
            with self._lock:
                self.job_running.setdefault(name, now)

    def snapshot(self) -> tuple[dict[str, PodTimes], dict[str, float]]:
        with self._lock:
            return {k: PodTimes(**v.__dict__) for k, v in self.pods.items()}, dict(self.job_running)


# -- the audit log -----------------------------------------------------------------------------


def _ts(value: str) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def audit_requests(path: Path, user: str, start: float, end: float) -> tuple[int, Counter]:
    """Requests by ``user`` received in [start, end): one per auditID; with a verb/resource breakdown."""
    seen: set[str] = set()
    kinds: Counter = Counter()
    with contextlib.suppress(FileNotFoundError), path.open() as fh:
        for line in fh:
            if user not in line:
                continue
            ev = json.loads(line)
            if ev.get("user", {}).get("username") != user or ev["auditID"] in seen:
                continue
            t = _ts(ev["requestReceivedTimestamp"])
            if not start <= t < end:
                continue
            seen.add(ev["auditID"])
            ref = ev.get("objectRef") or {}
            res = ref.get("resource", ev.get("requestURI", "?").split("?")[0])
            if ref.get("subresource"):
                res += "/" + ref["subresource"]
            code = (ev.get("responseStatus") or {}).get("code", 0)
            kinds[f"{ev['verb']} {res}" + (f" → {code}" if code >= 400 else "")] += 1
    return len(seen), kinds


# -- one run ------------------------------------------------------------------------------------


def nodes_for(jobs: int) -> int:
    return math.ceil(PODS_PER_JOB * jobs / GPUS_PER_NODE) + 2


def one_run(kind: str, jobs: int, rep: int, p: dict, work: Path) -> dict:
    from kubernetes import client

    from kubetrain_dev.devcluster import build, gpu_pool
    from kubetrain_dev.devcluster.cluster import LocalCluster, Settings

    state = work / f"{kind}-{jobs}-{rep}"
    state.mkdir(parents=True, exist_ok=True)
    audit_log = state / "audit.log"
    policy = state / "audit-policy.yaml"
    policy.write_text(yaml.safe_dump(AUDIT_POLICY))
    settings = Settings(apiserver_extra_args=(f"--audit-policy-file={policy}", f"--audit-log-path={audit_log}",
                                              "--audit-log-format=json", "--audit-log-maxsize=0"))
    cluster = LocalCluster(state / "cluster", settings)
    out: dict[str, Any] = {"operator": kind, "jobs": jobs, "rep": rep, "nodes": nodes_for(jobs), "gpus_per_node": GPUS_PER_NODE}
    op = None
    watch = None
    t_cluster = time.monotonic()
    cluster.start()
    try:
        api = cluster.api_client()
        api.user_agent = "kubetrain-bench"
        gpu_pool.create_pool(api, nodes=nodes_for(jobs), gpus=GPUS_PER_NODE, timeout=180)
        if kind == KUBETRAIN:
            install_crds(api, sorted((REPO / "crds").glob("*.yaml")))
        else:
            comp = build.COMPONENTS["training-operator"]
            crd_dir = build.copy_training_operator_crds(comp)
            install_crds(api, [crd_dir / n for n in build.TRAINING_OPERATOR_CRDS])
            setup_training_operator(api)
        create_namespace(api, NAMESPACE)
        out["cluster_setup_seconds"] = round(time.monotonic() - t_cluster, 1)

        kubeconfig = cluster.client_kubeconfig(USERS[kind])
        op = Operator(kind, kubeconfig, state / "operator.log")
        t_op = time.time()
        op.start()
        out["operator_ready_seconds"] = round(time.time() - t_op, 2)
        time.sleep(p["settle_seconds"])  # initial lists and watches done
        out["operator_startup_cpu_seconds"] = op.cpu_seconds()
        out["operator_idle_rss_bytes"] = op.rss()
        op.reset_peak()

        watch = Watches(api, kind, NAMESPACE)
        watch.start()
        factory, (group, version, plural) = JOBS[kind]
        custom = client.CustomObjectsApi(api)
        names = [f"job-{i:04d}" for i in range(jobs)]
        submitted: dict[str, float] = {}

        def submit(name: str) -> None:
            t = time.time()
            custom.create_namespaced_custom_object(group, version, NAMESPACE, plural, factory(name))
            submitted[name] = t

        out["load_average_start"] = load_average()
        req0 = apiserver_requests_total(api)
        cpu0 = op.cpu_seconds()
        t0 = time.time()
        with cf.ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(submit, names))
        t_submitted = time.time()

        def all_running() -> bool:
            pods, statuses = watch.snapshot()
            running = Counter(pt.job for pt in pods.values() if pt.running is not None)
            return all(running.get(n, 0) >= PODS_PER_JOB and n in statuses for n in names)

        timed_out = False
        try:
            # Polled every 0.25 s, no back-off: the burst ends when this returns.
            wait_for(all_running, timeout=p["timeout_seconds"], what=f"{jobs} jobs Running", interval=0.25, max_interval=0.25)
        except TimeoutError:
            timed_out = True
        t_running = time.time()
        snap, statuses = watch.snapshot()
        # The burst ends when every pod runs and every job's status says so (+ a short settle).
        time.sleep(p["status_settle_seconds"])
        t1 = time.time()
        cpu1 = op.cpu_seconds()
        peak_burst = op.peak_rss
        req1 = apiserver_requests_total(api)
        # the steady window: every job Running, nothing to do but keep watching
        time.sleep(p["steady_seconds"])
        t2 = time.time()
        cpu2 = op.cpu_seconds()
        req2 = apiserver_requests_total(api)
        out["operator_alive"] = op.proc.poll() is None
        out["load_average_end"] = load_average()

        per_job: dict[str, dict[str, list[float]]] = {n: {"created": [], "bound": [], "running": []} for n in names}
        for pt in snap.values():
            if pt.job in per_job:
                for key in ("created", "bound", "running"):
                    v = getattr(pt, key)
                    if v is not None:
                        per_job[pt.job][key].append(v)
        lat: dict[str, list[float]] = {"created": [], "bound": [], "running": []}
        for n in names:
            for key in lat:
                vals = per_job[n][key]
                if len(vals) >= PODS_PER_JOB and n in submitted:
                    lat[key].append(max(vals) - submitted[n])
        lat["status_running"] = [statuses[n] - submitted[n] for n in names if n in statuses and n in submitted]
        # How long after its last pod runs a job's own status says Running (negative: it said so first, PyTorchJob can).
        lat["status_lag"] = [statuses[n] - max(per_job[n]["running"]) for n in names
                             if n in statuses and len(per_job[n]["running"]) >= PODS_PER_JOB]
        burst_requests, burst_kinds = audit_requests(audit_log, USERS[kind], t0, t1)
        steady_requests, steady_kinds = audit_requests(audit_log, USERS[kind], t1, t2)
        out.update({
            "timed_out": timed_out,
            "jobs_running": len(lat["running"]),
            "jobs_status_running": len(lat["status_running"]),
            "pods_seen": len([pt for pt in snap.values() if pt.job in per_job]),
            "submit_seconds": round(t_submitted - t0, 3),
            "latency_seconds": {k: summary(v) for k, v in lat.items()},
            "makespan_seconds": (max(pt.running for pt in snap.values() if pt.running) - t0) if lat["running"] else None,
            "all_running_seconds": t_running - t0,
            "burst_seconds": t1 - t0,
            "operator_cpu_seconds_burst": cpu1 - cpu0,
            "operator_cpu_ms_per_job": (cpu1 - cpu0) / jobs * 1000,
            "operator_cpu_seconds_steady": cpu2 - cpu1,
            "steady_seconds": t2 - t1,
            "operator_cpu_fraction_steady": (cpu2 - cpu1) / (t2 - t1),
            "operator_peak_rss_bytes": max(peak_burst, op.peak_rss),
            "operator_requests_burst": burst_requests,
            "operator_requests_per_job": burst_requests / jobs,
            "operator_requests_steady": steady_requests,
            "operator_requests_steady_per_job_per_minute": steady_requests / jobs / ((t2 - t1) / 60),
            "operator_request_kinds_burst": dict(burst_kinds.most_common()),
            "operator_request_kinds_steady": dict(steady_kinds.most_common()),
            "cluster_requests_burst": req1 - req0,
            "cluster_requests_per_job": (req1 - req0) / jobs,
            "watch_error": watch.error,
        })
        if timed_out:
            out["operator_log_tail"] = op.tail(3000)
        return out
    finally:
        t_down = time.monotonic()
        if watch:
            watch.stop()
        if op:
            op.stop()
        t_op = time.monotonic()
        cluster.stop()
        out["teardown_seconds"] = {"operator": round(t_op - t_down, 1), "cluster": round(time.monotonic() - t_op, 1)}


# -- the benchmark --------------------------------------------------------------------------------


def pod_index_bytes(pods: int = 2000) -> dict[str, float]:
    """What the operator's pod index holds per pod (tracemalloc, in this process): the view it keeps now (what
    the planner reads) against the view with the whole pod body that it kept before (a deep copy of the pod as
    created, with a Running status; the apiserver's managedFields, which it also copied, left out)."""
    import copy
    import dataclasses
    import tracemalloc

    from kubetrain.api.manifests import parse_trainingjob
    from kubetrain.operator import builders, planner

    job = parse_trainingjob(kubetrain_job("j") | {"metadata": {"name": "j", "namespace": NAMESPACE}})
    meta = {"name": "j", "namespace": NAMESPACE, "uid": "0000-1111", "generation": 1}
    status = {"phase": "Running", "podIP": "10.0.0.1", "hostIP": "10.0.0.2", "startTime": "2026-11-30T00:00:00Z",
              "qosClass": "BestEffort", "conditions": [{"type": t, "status": "True", "lastTransitionTime": "2026-11-30T00:00:00Z"}
                                                       for t in ("Initialized", "Ready", "ContainersReady", "PodScheduled")],
              "containerStatuses": [{"name": "trainer", "ready": True, "restartCount": 0, "image": TRAINER_IMAGE,
                                     "imageID": "sha256:" + "0" * 64, "containerID": "containerd://" + "1" * 64,
                                     "state": {"running": {"startedAt": "2026-11-30T00:00:00Z"}}}]}
    bodies = []
    for i in range(pods):
        pod = builders.worker_pod(job, {"metadata": meta}, i % 1000, i // 1000, builders.BuildConfig(trainer_image=TRAINER_IMAGE))
        pod["metadata"] |= {"uid": f"pod-{i}", "resourceVersion": str(1000 + i), "creationTimestamp": "2026-11-30T00:00:00Z"}
        bodies.append(pod | {"status": copy.deepcopy(status)})

    def held(make) -> float:
        tracemalloc.start()
        base = tracemalloc.get_traced_memory()[0]
        views = [make(b) for b in bodies]
        size = tracemalloc.get_traced_memory()[0] - base
        tracemalloc.stop()
        del views
        return size / pods

    now = held(planner.PodView.from_body)
    before = held(lambda b: dataclasses.replace(planner.PodView.from_body(b), body=copy.deepcopy(b)))
    return {"view_bytes": round(now), "view_with_whole_body_bytes": round(before)}


def training_operator_available(run: Run) -> bool:
    from kubetrain_dev.devcluster import build

    comp = build.COMPONENTS["training-operator"]
    failures = build.ensure(["training-operator"])
    if failures:
        run.error("training-operator build", failures["training-operator"])
        return False
    try:
        build.copy_training_operator_crds(comp)
    except Exception as exc:  # noqa: BLE001
        run.error("training-operator CRDs", str(exc))
        return False
    run.doc["versions"]["training_operator"] = comp.version
    return True


def main(argv: list[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(description=QUESTION)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--sizes", type=lambda s: [int(x) for x in s.split(",")], help="e.g. 10,100,500")
    ap.add_argument("--reps", type=int, help="repetitions for every size")
    ap.add_argument("--steady-seconds", type=float)
    ap.add_argument("--only", choices=[KUBETRAIN, PYTORCHJOB])
    ap.add_argument("--out", type=Path)
    ap.add_argument("--keep", type=Path, help="keep every run's cluster state, audit log and operator log here")
    args = ap.parse_args(argv)
    base = QUICK if args.quick else FULL
    p: dict[str, Any] = {"sizes": args.sizes or base["sizes"], "steady_seconds": args.steady_seconds or base["steady_seconds"],
                         "timeout_seconds": base["timeout_seconds"], "settle_seconds": 3.0,
                         "status_settle_seconds": base["status_settle_seconds"],
                         "pods_per_job": PODS_PER_JOB, "gpus_per_node": GPUS_PER_NODE}
    p["reps"] = {str(n): args.reps or base["reps"].get(n, 1) for n in p["sizes"]}
    p["job_shapes"] = {KUBETRAIN: kubetrain_job("example")["spec"], PYTORCHJOB: pytorch_job("example")["spec"]}
    p["kubetrain_reconcile_interval_seconds"] = RECONCILE_INTERVAL_DEFAULT
    # What the chart's Deployment sets besides the interval, given to the benchmark's operator process too.
    p["operator_env"] = {"MALLOC_ARENA_MAX": kubetrain_operator(Path("kubeconfig"), Path("log")).launch_env.get("MALLOC_ARENA_MAX")}
    p["cpus"] = len(os.sched_getaffinity(0))
    p["training_operator_flags"] = "defaults (--kube-api-qps 20, --kube-api-burst 30, --controller-threads 1)"
    run = Run(NAME, quick=args.quick, params=p, question=QUESTION)

    from kubetrain_dev.devcluster import build, versions

    run.doc["versions"]["kubernetes_control_plane"] = versions.KUBERNETES
    run.doc["versions"]["kwok"] = versions.KWOK
    failures = build.ensure(["kubernetes", "etcd", "kwok"])
    if failures:
        for name, err in failures.items():
            run.error(f"{name} build", err)
        run.results["runs"] = []
        return run.finish("The control plane could not be built; no figures.", args.out) if args.out else \
            run.finish("The control plane could not be built; no figures.")
    kinds = [KUBETRAIN, PYTORCHJOB] if args.only is None else [args.only]
    if PYTORCHJOB in kinds and not training_operator_available(run):
        kinds.remove(PYTORCHJOB)

    runs: list[dict] = []
    keep = contextlib.nullcontext(str(args.keep)) if args.keep else None
    with keep or tempfile.TemporaryDirectory(prefix="kubetrain-bench-cp-") as tmp:
        for jobs in p["sizes"]:
            for rep in range(int(p["reps"][str(jobs)])):
                order = kinds if rep % 2 == 0 else list(reversed(kinds))
                for kind in order:
                    t = time.monotonic()
                    print(f"[{NAME}] {kind}: {jobs} jobs, repetition {rep + 1} ...", file=sys.stderr, flush=True)
                    try:
                        r = one_run(kind, jobs, rep, p, Path(tmp))
                        runs.append(r)
                        lat = r["latency_seconds"]["running"]
                        print(f"[{NAME}] {kind}: {jobs} jobs: p50 {lat and lat['median']:.2f}s, "
                              f"CPU {r['operator_cpu_seconds_burst']:.1f}s, {r['operator_requests_per_job']:.1f} req/job "
                              f"({time.monotonic() - t:.0f}s)", file=sys.stderr, flush=True)
                    except Exception as exc:  # noqa: BLE001 - recorded; the other runs go on
                        run.error(f"{kind} {jobs} jobs rep {rep}", f"{type(exc).__name__}: {exc}")
                        print(f"[{NAME}] {kind} {jobs} failed: {exc}", file=sys.stderr, flush=True)
    run.results["runs"] = runs
    run.results["by_size"] = aggregate(runs)
    run.results["pod_index_bytes_per_pod"] = pod_index_bytes()
    body = markdown(run.results["by_size"], runs, p, kinds, run.results["pod_index_bytes_per_pod"])
    return run.finish(body, args.out) if args.out else run.finish(body)


def _pick(runs: list[dict], path: tuple[str, ...]) -> list[float]:
    out = []
    for r in runs:
        v: Any = r
        for k in path:
            v = v.get(k) if isinstance(v, dict) else None
        if v is not None:
            out.append(float(v))
    return out


METRICS = {
    "p50_running": ("latency_seconds", "running", "median"),
    "p99_running": ("latency_seconds", "running", "p99"),
    "p50_created": ("latency_seconds", "created", "median"),
    "p99_created": ("latency_seconds", "created", "p99"),
    "p50_bound": ("latency_seconds", "bound", "median"),
    "p99_bound": ("latency_seconds", "bound", "p99"),
    "max_running": ("latency_seconds", "running", "max"),
    "p50_status_running": ("latency_seconds", "status_running", "median"),
    "p99_status_running": ("latency_seconds", "status_running", "p99"),
    "p50_status_lag": ("latency_seconds", "status_lag", "median"),
    "p99_status_lag": ("latency_seconds", "status_lag", "p99"),
    "makespan": ("makespan_seconds",),
    "cpu_burst": ("operator_cpu_seconds_burst",),
    "cpu_ms_per_job": ("operator_cpu_ms_per_job",),
    "cpu_steady_fraction": ("operator_cpu_fraction_steady",),
    "peak_rss_mib": ("operator_peak_rss_bytes",),
    "requests_per_job": ("operator_requests_per_job",),
    "steady_requests_per_job_per_minute": ("operator_requests_steady_per_job_per_minute",),
    "cluster_requests_per_job": ("cluster_requests_per_job",),
}


def aggregate(runs: list[dict]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for jobs in sorted({r["jobs"] for r in runs}):
        for kind in (KUBETRAIN, PYTORCHJOB):
            rs = [r for r in runs if r["jobs"] == jobs and r["operator"] == kind]
            if not rs:
                continue
            agg = {name: summary(_pick(rs, path)) for name, path in METRICS.items()}
            if agg["peak_rss_mib"]:
                agg["peak_rss_mib"] = {k: (v / 2**20 if k != "n" else v) for k, v in agg["peak_rss_mib"].items()}
            agg["repetitions"] = len(rs)
            agg["all_running"] = all(not r["timed_out"] for r in rs)
            out[f"{kind}/{jobs}"] = agg
    return out


def request_breakdown(runs: list[dict]) -> str:
    """Per-job requests by verb and resource at the largest size, first repetition of each operator."""
    if not runs:
        return ""
    jobs = max(r["jobs"] for r in runs)
    chosen = {r["operator"]: r for r in sorted(runs, key=lambda r: r["rep"], reverse=True) if r["jobs"] == jobs}
    rows = []
    for kind in (KUBETRAIN, PYTORCHJOB):
        r = chosen.get(kind)
        if not r:
            continue
        burst = ", ".join(f"{k} {v / jobs:.2f}" for k, v in r["operator_request_kinds_burst"].items())
        steady = ", ".join(f"{k} {v / jobs / (r['steady_seconds'] / 60):.2f}"
                           for k, v in r["operator_request_kinds_steady"].items()) or "none"
        rows.append([kind, burst, steady])
    return "\n".join([
        f"Where the operators' requests go ({jobs} jobs; per job in the burst, per job per minute in the steady window; "
        "`→ 409` etc. marks requests that failed with that status):",
        "",
        md_table(["operator", "burst: requests per job", "steady: requests per job per minute"], rows),
    ])


# The operator's goals (issue 13), each checked at one size: (title, metric, jobs, limit, unit).
GOALS = [
    ("p99 submission → status Running", "p99_status_running", 100, 2.0, " s"),
    ("status Running after the job's last pod Running (p99)", "p99_status_lag", 100, 1.0, " s"),
    ("status Running after the job's last pod Running (p99)", "p99_status_lag", 1000, 1.0, " s"),
    ("peak operator RSS", "peak_rss_mib", 1000, 150.0, " MiB"),
    ("operator CPU per job in the burst", "cpu_ms_per_job", 100, 30.0, " ms"),
    ("operator CPU per job in the burst", "cpu_ms_per_job", 1000, 30.0, " ms"),
]
def _runs_of(runs: list[dict], kind: str, jobs: int) -> list[dict]:
    return [r for r in runs if r["operator"] == kind and r["jobs"] == jobs]


def _median(runs: list[dict], key: str) -> float | None:
    s = summary(_pick(runs, (key,)))
    return s["median"] if s else None


def _load(runs: list[dict]) -> str:
    """The 1-minute load average at the burst's start and end, over the runs (recorded per run)."""
    loads = [x for r in runs for x in (r.get("load_average_start") or [None])[:1] + (r.get("load_average_end") or [None])[:1] if x is not None]
    return f"{min(loads):.1f}–{max(loads):.1f}" if loads else "?"


def what_holds(metric: str, jobs: int, by: dict[str, dict], runs: list[dict], p: dict, index: dict | None = None) -> str:
    """Why a goal is missed, in the figures of this run (nothing here is a constant claim)."""
    a = by.get(f"{KUBETRAIN}/{jobs}")
    rs = _runs_of(runs, KUBETRAIN, jobs)
    if not a or not rs:
        return ""
    med = lambda name: (a.get(name) or {}).get("median")  # noqa: E731
    cpu, burst = _median(rs, "operator_cpu_seconds_burst"), _median(rs, "burst_seconds")
    load = f"load {_load(rs)} on {p.get('cpus', '?')} cores"
    share = ""
    if cpu and burst:
        # One Python process computes on one core at a time: well under one, it waited (on the API, the control plane).
        bound = "CPU-bound" if cpu / burst >= 0.8 else "so it mostly waited on the API and the control plane"
        share = f"the operator used {fmt(cpu / burst, '', 2)} of a core over the {fmt(burst, ' s')} burst ({bound}; {load})"
    never = "" if a.get("all_running") else "; some jobs never ran within the time limit"
    if metric == "p99_status_running":
        return (f"the pods: a job's last pod Running at p99 {fmt(med('p99_running'), ' s')} (all created at p50 "
                f"{fmt(med('p50_created'), ' s')}: the operator's creates, then the scheduler and KWOK), the status "
                f"within p99 {fmt(med('p99_status_lag'), ' s')} of it; {share}{never}")
    if metric == "p99_status_lag":
        return f"{share}{never}"
    if metric == "peak_rss_mib":
        idle, peak = _median(rs, "operator_idle_rss_bytes"), _median(rs, "operator_peak_rss_bytes")
        if not idle or not peak:
            return ""
        of_index = (f", of which the pod index {fmt(p['pods_per_job'] * index['view_bytes'] / 1024, ' kB')} (below); the rest is "
                    "Kopf's and the operator's per-object state, broken down in operator_memory.md") if index else ""
        return (f"{fmt(idle / 2**20, ' MiB')} before the first job (interpreter, Kopf, Kubernetes client; "
                f"MALLOC_ARENA_MAX={p.get('operator_env', {}).get('MALLOC_ARENA_MAX', '?')} as the chart sets), then "
                f"{fmt((peak - idle) / jobs / 1024, ' kB')} per job at the peak{of_index}{never}")
    if metric == "cpu_ms_per_job":
        req = _median(rs, "operator_requests_per_job")
        timer = p.get("kubetrain_reconcile_interval_seconds")
        rounds = (f", the {fmt(timer, ' s')} timer up to {int(burst // timer)} rounds per job" if burst >= timer
                  else f", no round of the {fmt(timer, ' s')} timer") if timer and burst else ""
        return f"{fmt(req, '', 3)} API requests per job{rounds}; {share}{never}"
    return ""


def goals(by: dict[str, dict], runs: list[dict], p: dict, index: dict | None = None) -> list[str]:
    """The goals table: kubetrain's figure (median over repetitions) against each goal, met or missed by how much,
    and for a missed one what holds it, from the same runs."""
    rows = []
    for title, metric, jobs, limit, unit in GOALS:
        a = by.get(f"{KUBETRAIN}/{jobs}")
        value = a[metric]["median"] if a and a.get(metric) else None
        other = (by.get(f"{PYTORCHJOB}/{jobs}") or {}).get(metric)
        if value is None:
            verdict = "not measured"
        elif value <= limit:
            verdict = "met"
        else:
            verdict = f"missed by {fmt(value - limit, unit)} ({fmt(value / limit, 'x')})"
        rows.append([title, jobs, f"≤ {fmt(limit, unit)}", fmt(value, unit), fmt(other["median"] if other else None, unit),
                     verdict, what_holds(metric, jobs, by, runs, p, index) if value is not None and value > limit else ""])
    return ["### Goals", "", md_table(["goal", "jobs", "limit", "kubetrain", "PyTorchJob", "", "what holds it"], rows)]


def markdown(by: dict[str, dict], runs: list[dict], p: dict, kinds: list[str], index: dict | None = None) -> str:
    label = {KUBETRAIN: "kubetrain", PYTORCHJOB: "PyTorchJob (training-operator v1.9.3)"}
    lat_rows, cost_rows = [], []
    for key, a in by.items():
        kind, jobs = key.split("/")
        reps = a["repetitions"] if a["all_running"] else f"{a['repetitions']} (**some jobs never ran**)"
        lat_rows.append([
            jobs, label[kind], reps,
            fmt_spread(a["p50_created"], " s"), fmt_spread(a["p50_bound"], " s"),
            fmt_spread(a["p50_running"], " s"), fmt_spread(a["p99_running"], " s"), fmt_spread(a["makespan"], " s"),
            fmt_spread(a["p50_status_running"], " s"), fmt_spread(a["p99_status_running"], " s"),
            fmt_spread(a.get("p99_status_lag"), " s"),
        ])
        cost_rows.append([
            jobs, label[kind], reps,
            fmt_spread(a["cpu_burst"], " s"), fmt_spread(a["cpu_ms_per_job"], " ms"), fmt_spread(a["peak_rss_mib"], " MiB"),
            fmt_spread(a["requests_per_job"], "", 3), fmt_spread(a["cpu_steady_fraction"], "", 2),
            fmt_spread(a["steady_requests_per_job_per_minute"], "", 2), fmt_spread(a["cluster_requests_per_job"], "", 3),
        ])
    reps = ", ".join(f"{n} jobs: {r}" for n, r in p["reps"].items())
    text = [*goals(by, runs, p, index), "",
        "Each row: N jobs created at once (8 client threads) on a fresh control plane with one operator; "
        f"repetitions per size ({reps}) alternate which operator runs first. Cells: median (min – max) over "
        "repetitions; p50/p99 are over the N jobs of a run.",
        "",
        "### Start latency",
        "",
        "From a job's create call to the moment the benchmark's watch saw *all* its pods created / bound / Running, "
        "and to the moment its own status said Running (what `kubectl get` shows: kubetrain `status.phase`, PyTorchJob "
        "the `Running` condition).",
        "",
        md_table(["jobs", "operator", "reps", "p50 all pods created", "p50 all bound", "p50 all Running",
                  "p99 all Running", "last job Running", "p50 status Running", "p99 status Running",
                  "p99 status after last pod"], lat_rows),
        "",
        "### Operator cost",
        "",
        md_table(["jobs", "operator", "reps", "CPU s (burst)", "CPU per job", "peak RSS",
                  "API requests / job (burst)", "CPU cores (steady)", "requests / job / min (steady)",
                  "all clients' requests / job (burst)"], cost_rows),
        "",
        f"Job shape, the same pod count on both sides ({p['pods_per_job']} pods per job): kubetrain `replicas {{min: 1, max: 1}}`, "
        "`gpusPerReplica: 1` = 1 worker pod (1 GPU) + 1 rendezvous-store pod + 1 Service; PyTorchJob `Master: 1` + "
        "`Worker: 1`, 1 GPU each = 2 pods + 2 Services (one per replica). So a kubetrain job here trains on 1 GPU and a PyTorchJob on 2: "
        "a kubetrain job with R replicas always has R + 1 pods. Pool: ceil(2·N/8) + 2 simulated 8-GPU nodes.",
        "",
        f"Operators as shipped: kubetrain with its default {fmt(p.get('kubetrain_reconcile_interval_seconds', 5), ' s')} "
        "reconcile timer and the chart's MALLOC_ARENA_MAX=2 (Kopf, standalone); training-operator "
        f"v1.9.3 with {p['training_operator_flags']}, only the PyTorchJob scheme. The burst (CPU, requests) ends "
        f"{p['status_settle_seconds']} s after every pod runs and every job's status says Running; the steady window "
        f"is the following {p['steady_seconds']} s with nothing to do. CPU seconds: psutil user + system "
        "of the operator process. API requests: the apiserver's audit log (each operator has its own user); "
        "'all clients' adds the scheduler, KWOK, the controller manager and the benchmark itself "
        "(`apiserver_request_total`).",
    ]
    text += ["", request_breakdown(runs)]
    if index:
        text += ["", f"What the operator's pod index holds per pod (tracemalloc, in the benchmark's process): "
                     f"{index['view_bytes']:,} bytes now, the fields the planner reads; {index['view_with_whole_body_bytes']:,} "
                     "bytes with the whole pod body, as it kept before (and then without the apiserver's managedFields)."]
    if PYTORCHJOB not in kinds:
        text += ["", "**PyTorchJob was not measured** (see Errors)."]
    return "\n".join(text)


def render(doc: dict) -> str:
    """The markdown body of a result document (``python -m bench --render``)."""
    runs = doc["results"]["runs"]
    kinds = sorted({r["operator"] for r in runs}) or [KUBETRAIN]
    if not runs:
        return "No figures."
    return markdown(doc["results"]["by_size"], runs, doc["params"], kinds, doc["results"].get("pod_index_bytes_per_pod"))


if __name__ == "__main__":
    main()
