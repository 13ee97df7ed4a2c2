"""Kueue beside the local control plane: its CRDs, its manager as a host process, its webhooks.

The control plane has no pod network for a Kueue pod (KWOK plays the kubelets), so Kueue runs
on this machine, as envtest runs webhooks: its webhook configurations point at a loopback
``clientConfig.url`` with a serving certificate from the cluster's CA, and Kueue's own
certificate rotation is off. Only Kueue's own webhooks (group ``kueue.x-k8s.io``) are
registered: the built-in job frameworks' webhooks would mutate Jobs and pods we never queue.

Kueue reads its metrics certificate from a fixed path (``/etc/kueue/metrics/certs``) when its
certificate rotation is off. Rather than write into this machine's /etc, the manager runs in a
chroot of its own state dir (a static Go binary needs nothing else), which holds that path.

    with LocalKueue(cluster) as kueue:  # CRDs installed, manager Ready, webhooks registered
        ...
"""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
import urllib.request
from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml

from kubetrain.api.models import GROUP, KIND, VERSION
from kubetrain_dev.devcluster import build, pki, processes
from kubetrain_dev.devcluster.cluster import ClusterError, LocalCluster
from kubetrain_dev.wait import WaitTimeout, wait_for

NAMESPACE = "kueue-system"
KUEUE_GROUP = "kueue.x-k8s.io"
# The webhook configurations' names once registered (kustomize prefixes Kueue's with "kueue-").
WEBHOOK_PREFIX = "kueue-"
STATE_FILE = "kueue-state.json"
# Inside the chroot.
_METRICS_CERTS = "etc/kueue/metrics/certs"
_WEBHOOK_CERTS = "certs"


def manager_config(health_port: int, webhook_port: int) -> dict[str, Any]:
    """Kueue's Configuration: loopback ports, no leader election, no certificate rotation, and
    only jobs with a queue name managed. TrainingJobs come in as Workloads the operator creates
    (the Workload-native route); naming the kind as an external framework keeps Kueue from
    queueing the pods the operator creates for an admitted job a second time."""
    return {
        "apiVersion": "config.kueue.x-k8s.io/v1beta2",
        "kind": "Configuration",
        "namespace": NAMESPACE,
        "health": {"healthProbeBindAddress": f"127.0.0.1:{health_port}"},
        "metrics": {"bindAddress": "0"},  # off: nothing here scrapes it
        "webhook": {"host": "127.0.0.1", "port": webhook_port, "certDir": f"/{_WEBHOOK_CERTS}"},
        "leaderElection": {"leaderElect": False},
        "internalCertManagement": {"enable": False},
        "manageJobsWithoutQueueName": False,
        # Kueue needs one built-in framework (batch/job is its default); its webhook is not registered.
        "integrations": {"frameworks": ["batch/job"], "externalFrameworks": [f"{KIND}.{VERSION}.{GROUP}"]},
        "clientConnection": {"qps": 50, "burst": 100},
    }


def webhook_configurations(manifests: str, url: str, ca_bundle: str) -> list[dict[str, Any]]:
    """Kueue's webhook configurations with only its own API group's webhooks, each pointing at
    ``url`` + its path instead of the in-cluster Service."""
    out = []
    for doc in yaml.safe_load_all(manifests):
        if not doc:
            continue
        hooks = [h for h in doc.get("webhooks") or []
                 if any(KUEUE_GROUP in r.get("apiGroups", ()) for r in h.get("rules") or ())]
        for hook in hooks:
            path = hook["clientConfig"]["service"]["path"]
            hook["clientConfig"] = {"url": url + path, "caBundle": ca_bundle}
        if hooks:
            doc["metadata"] = {"name": WEBHOOK_PREFIX + doc["metadata"]["name"]}
            doc["webhooks"] = hooks
            out.append(doc)
    return out


class LocalKueue:
    """Kueue's manager for one ``LocalCluster``; its state (chroot, log, pid) in the cluster's state dir."""

    def __init__(self, cluster: LocalCluster, *, die_with_parent: bool = True, start_timeout_s: float = 120.0):
        self.cluster = cluster
        self.die_with_parent = die_with_parent
        self.start_timeout_s = start_timeout_s
        self.root = cluster.state_dir / "kueue"
        self.health_port = processes.free_port()
        self.webhook_port = processes.free_port()
        self._proc = None
        self._record: processes.Record | None = None

    @property
    def state_file(self) -> Path:
        return self.cluster.state_dir / STATE_FILE

    @property
    def log(self) -> Path:
        return self.cluster.log_dir / "kueue.log"

    def __enter__(self) -> "LocalKueue":
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self) -> "LocalKueue":
        comp = build.COMPONENTS["kueue"]
        if not comp.is_built():
            raise ClusterError(f"kueue is not built: {comp.bin_dir} (run `python -m kubetrain_dev.devcluster build kueue`)")
        crds, webhooks = build.kueue_manifests(comp)
        self._install_crds(crds)
        self._prepare_root(comp)
        try:
            self._spawn()
            self._wait_ready()
            self._register_webhooks(webhooks.read_text())
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Unregister the webhooks (so the cluster works without Kueue) and stop the manager. Idempotent.
        The CRDs stay: objects of them are harmless without the manager."""
        if self.cluster.is_healthy():
            for kind in ("mutatingwebhookconfigurations", "validatingwebhookconfigurations"):
                self._kubectl("delete", kind, "-l", "app.kubernetes.io/managed-by=kubetrain-devcluster",
                              "--ignore-not-found", check=False)
        record = self._record or next(iter(processes.read_state(self.state_file)[0]), None)
        if record is not None:
            processes.terminate(record, self._proc, 15.0)
        self._record, self._proc = None, None
        self.state_file.unlink(missing_ok=True)

    @classmethod
    def recorded(cls, cluster: LocalCluster) -> "LocalKueue | None":
        """The Kueue a launcher (``devcluster up``) started for ``cluster``, if it still runs."""
        records, _ = processes.read_state(cluster.state_dir / STATE_FILE)
        if not records or not processes.is_running(records[0]):
            return None
        kueue = cls(cluster, die_with_parent=False)
        kueue._record = records[0]
        return kueue

    # -- internals ----------------------------------------------------------

    def _kubectl(self, *args: str, check: bool = True, stdin: str | None = None) -> str:
        proc = subprocess.run(["kubectl", "--kubeconfig", str(self.cluster.kubeconfig), *args], text=True,
                              capture_output=True, input=stdin, timeout=120)
        if check and proc.returncode != 0:
            raise ClusterError(f"kubectl {' '.join(args)}: {proc.stderr.strip()}")
        return proc.stdout

    def _install_crds(self, crds: Path) -> None:
        # Server-side: the Workload CRD is too large for client-side apply's annotation.
        self._kubectl("apply", "--server-side", "--force-conflicts", "-f", str(crds))
        self._kubectl("wait", "--for=condition=Established", "--timeout=60s", "-f", str(crds))
        self._kubectl("create", "namespace", NAMESPACE, check=False)

    def _prepare_root(self, comp: build.Component) -> None:
        if self.root.exists():
            shutil.rmtree(self.root)
        for sub in (_METRICS_CERTS, _WEBHOOK_CERTS, "tmp"):
            (self.root / sub).mkdir(parents=True)
        shutil.copy2(comp.bin_dir / "kueue", self.root / "kueue")
        shutil.copyfile(self.cluster.kubeconfig, self.root / "kubeconfig")
        ca = pki.Pki(self.cluster.state_dir / "pki")
        for sub in (_WEBHOOK_CERTS, _METRICS_CERTS):
            pki.write_serving_cert(ca, self.root / sub / "tls.crt", self.root / sub / "tls.key", "kueue", ("127.0.0.1",))
        (self.root / "config.yaml").write_text(yaml.safe_dump(manager_config(self.health_port, self.webhook_port)))

    def _argv(self) -> list[str]:
        inner = ["/kueue", "--config=/config.yaml", "--kubeconfig=/kubeconfig",
                 # The visibility API server wants an APIService and in-cluster delegation: not here.
                 "--feature-gates=VisibilityOnDemand=false", "--zap-log-level=info"]
        if os.geteuid() == 0:
            return ["chroot", str(self.root), *inner]
        return ["unshare", "--map-root-user", f"--root={self.root}", *inner]

    def _spawn(self) -> None:
        self._proc, record = processes.spawn("kueue", self._argv(), self.log, die_with_parent=self.die_with_parent,
                                             ports=(self.health_port, self.webhook_port))
        # After the exec in the chroot the process's argv[0] is the manager's: what `is_running` checks.
        self._record = replace(record, binary="/kueue")
        processes.write_records(self.state_file, [self._record])

    def _wait_ready(self) -> None:
        def ready() -> bool:
            if self._proc is not None and self._proc.poll() is not None:
                raise ClusterError(f"kueue exited with code {self._proc.returncode}; last log lines:\n"
                                   + processes.log_tail(self.log))
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.health_port}/readyz", timeout=2) as resp:
                    return resp.status == 200
            except OSError:
                return False

        try:
            wait_for(ready, timeout=self.start_timeout_s, what="kueue /readyz")
        except WaitTimeout as exc:
            raise ClusterError(f"{exc}; last kueue log lines:\n{processes.log_tail(self.log)}") from exc

    def _register_webhooks(self, manifests: str) -> None:
        ca = pki.Pki(self.cluster.state_dir / "pki").ca_cert
        docs = webhook_configurations(manifests, f"https://127.0.0.1:{self.webhook_port}",
                                      base64.b64encode(ca.read_bytes()).decode())
        for doc in docs:
            doc["metadata"]["labels"] = {"app.kubernetes.io/managed-by": "kubetrain-devcluster"}
        self._kubectl("apply", "--server-side", "--force-conflicts", "-f", "-", stdin=yaml.safe_dump_all(docs))
