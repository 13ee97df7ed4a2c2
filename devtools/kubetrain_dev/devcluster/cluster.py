"""A real Kubernetes control plane on loopback: etcd, kube-apiserver, kube-scheduler,
kube-controller-manager and KWOK (simulated nodes).

This is envtest's pattern (apiserver + etcd from locally built binaries)
extended with the components that make a cluster behave like one: the
scheduler binds pods against node allocatable, the controller manager runs
garbage collection, node lifecycle and eviction, and KWOK plays the kubelets.

    with LocalCluster(tmp_dir) as cluster:
        api = cluster.api_client()

Nothing here builds binaries: call ``build.ensure()`` first.
"""

from __future__ import annotations

import shutil
import ssl
import subprocess
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from kubetrain_dev.devcluster import build, hostnet, pki, processes, stages
from kubetrain_dev.devcluster.processes import Record
from kubetrain_dev.wait import WaitTimeout, wait_for

ANNOTATION_SELECTOR = "kwok.x-k8s.io/node=fake"
# In start order.
COMPONENTS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok")

# Files and folders a cluster owns inside its state dir: the only things we delete.
_OWNED = ("etcd-data", "pki", "stages", "logs", "certs", "kubeconfig", "kubeconfig-developer", "state.json")


@dataclass(frozen=True)
class Settings:
    """Knobs of the simulated cluster; the defaults make failure handling fast to test."""

    service_cidr: str = "10.96.0.0/12"
    service_ip: str = "10.96.0.1"  # first address of service_cidr: the `kubernetes` Service
    # Fallback pod CIDR for KWOK; nodes from gpu_pool carry their own spec.podCIDR.
    kwok_pod_cidr: str = "10.240.0.0/16"
    # KWOK renews node Leases every duration/4; the controller manager marks a
    # node Unknown after node_monitor_grace_s without a renewal.
    node_lease_duration_s: int = 20
    node_monitor_grace_s: int = 20
    node_monitor_period_s: int = 2
    # DefaultTolerationSeconds admission: how long pods stay on a NotReady /
    # unreachable node before the taint-eviction controller deletes them (default 300).
    not_ready_toleration_s: int = 10
    unreachable_toleration_s: int = 10
    start_timeout_s: float = 120.0
    stop_timeout_s: float = 15.0
    # Appended to kube-apiserver's flags (the benchmarks turn on audit logging with them).
    apiserver_extra_args: tuple[str, ...] = ()
    # Set when a real node joins (real_node.py): its bridge address. The apiserver then listens on
    # every address and advertises this one, because the `kubernetes` Service cannot point at
    # loopback and pods reach the API through it; it dials kubelets by InternalIP with the admin
    # certificate (kubelets refuse anonymous callers). Its port is dropped on every other interface.
    node_ip: str | None = None
    node_bridge: str = "cni0"


@dataclass
class _Ports:
    etcd_client: int = field(default_factory=processes.free_port)
    etcd_peer: int = field(default_factory=processes.free_port)
    apiserver: int = field(default_factory=processes.free_port)
    scheduler: int = field(default_factory=processes.free_port)
    controller_manager: int = field(default_factory=processes.free_port)
    kwok: int = field(default_factory=processes.free_port)


class ClusterError(RuntimeError):
    """A component failed to start; the message carries the tail of its log."""


def _https_get(url: str, context: ssl.SSLContext, timeout: float = 5.0) -> str:
    with urllib.request.urlopen(url, context=context, timeout=timeout) as resp:
        return resp.read().decode()


def _http_get(url: str, timeout: float = 5.0) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return resp.read().decode()


def _insecure_context() -> ssl.SSLContext:
    # The scheduler and controller manager serve /healthz with a self-signed
    # certificate they generate; on loopback there is nothing to verify.
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def _busy_ports(ports: list[int], timeout: float) -> list[int]:
    """The ``ports`` still listened on after waiting up to ``timeout`` for them to close."""
    try:
        wait_for(lambda: all(processes.port_is_free(p) for p in ports), timeout=timeout, what="ports to be freed")
    except WaitTimeout:
        pass
    return [p for p in ports if not processes.port_is_free(p)]


def require_binaries() -> dict[str, Path]:
    """Paths of the binaries the cluster runs; raise if any is not built."""
    names = ("etcd", "kube-apiserver", "kube-scheduler", "kube-controller-manager", "kwok")
    paths = {n: build.binary(n) for n in names}
    missing = [str(p) for p in paths.values() if not p.is_file()]
    if missing:
        raise ClusterError(
            "control plane binaries are not built: " + ", ".join(missing)
            + " (run `python -m kubetrain_dev.devcluster build`)"
        )
    return paths


class LocalCluster:
    """The control plane's processes, their state dir and how to reach them.

    ``die_with_parent`` (the default, for tests) makes the kernel kill every
    component if the Python process that started them dies; ``up`` turns it
    off so the cluster outlives the launcher. (The kernel ties this to the
    *thread* that started them: call ``start()`` from a thread that lives as
    long as the cluster should, normally the main thread.)
    """

    def __init__(self, state_dir: Path, settings: Settings | None = None, *, die_with_parent: bool = True):
        self.state_dir = Path(state_dir)
        self.settings = settings or Settings()
        self.die_with_parent = die_with_parent
        self.ports = _Ports()
        self._procs: dict[str, subprocess.Popen] = {}
        self._records: list[Record] = []
        self._pki: pki.Pki | None = None
        # The apiserver's port has a guard rule (node_ip set): stop() removes it.
        self._guarded = bool(self.settings.node_ip)

    # -- where things are -------------------------------------------------

    @property
    def kubeconfig(self) -> Path:
        """Admin (system:masters) kubeconfig."""
        return self.state_dir / "kubeconfig"

    @property
    def user_kubeconfig(self) -> Path:
        """Kubeconfig of a non-admin user (pki.TEST_USER, group pki.TEST_USER_GROUP) with no RBAC grants."""
        return self.state_dir / "kubeconfig-developer"

    @property
    def api_url(self) -> str:
        return f"https://127.0.0.1:{self.ports.apiserver}"

    @property
    def state_file(self) -> Path:
        return self.state_dir / "state.json"

    @property
    def log_dir(self) -> Path:
        return self.state_dir / "logs"

    def client_kubeconfig(self, user: str, groups: tuple[str, ...] = ("system:masters",)) -> Path:
        """A kubeconfig for a new certificate identity ``user`` (default: an admin), so the audit log can tell clients apart."""
        if self._pki is None:
            raise ClusterError("the cluster's PKI exists only after start()")
        return pki.write_client_kubeconfig(self._pki, self.api_url, self.state_dir / f"kubeconfig-{user}", user, groups)

    def api_client(self):
        """A ``kubernetes.client.ApiClient`` authenticated as the admin."""
        from kubernetes import config

        return config.new_client_from_config(config_file=str(self.kubeconfig))

    # -- lifecycle --------------------------------------------------------

    def __enter__(self) -> "LocalCluster":
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self) -> "LocalCluster":
        """Start every component and wait until each is healthy; on failure stop what started."""
        binaries = require_binaries()
        self._prepare_state_dir()
        try:
            self._start_etcd(binaries["etcd"])
            self._start_apiserver(binaries["kube-apiserver"])
            self._start_controller_manager(binaries["kube-controller-manager"])
            self._start_scheduler(binaries["kube-scheduler"])
            self._start_kwok(binaries["kwok"])
            self._wait_healthy()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop every component (newest first) and check their ports are free again. Idempotent."""
        if not self._records:
            self._records, _ = processes.read_state(self.state_file)
        # Only what still runs: a stale record's port may belong to someone else by now.
        alive = [r for r in self._records if r.name in self._procs or processes.is_running(r)]
        for record in reversed(alive):
            processes.terminate(record, self._procs.get(record.name), self.settings.stop_timeout_s)
        busy = _busy_ports([p for r in alive for p in r.ports], timeout=10.0)
        if self._guarded:
            hostnet.unguard_ports([self.ports.apiserver])
        self._procs.clear()
        self._records = []
        self.state_file.unlink(missing_ok=True)
        if busy:
            raise ClusterError(f"ports still in use after stopping the cluster: {busy}")

    @classmethod
    def from_state(cls, state_dir: Path) -> "LocalCluster":
        """The cluster recorded in ``state_dir`` (by a launcher that may have exited), for stop/status."""
        cluster = cls(state_dir, die_with_parent=False)
        cluster._records, extra = processes.read_state(cluster.state_file)
        if "apiserver_port" in extra:
            cluster.ports.apiserver = extra["apiserver_port"]
        cluster._guarded = bool(extra.get("guarded"))
        return cluster

    def running(self) -> list[Record]:
        """The recorded components whose processes are still alive."""
        records = self._records or processes.read_state(self.state_file)[0]
        return [r for r in records if processes.is_running(r)]

    def is_complete(self) -> bool:
        """Every component runs and the apiserver is ready."""
        return {r.name for r in self.running()} == set(COMPONENTS) and self.is_healthy()

    def is_healthy(self) -> bool:
        """The apiserver answers /readyz."""
        try:
            return _https_get(f"{self.api_url}/readyz", self._api_ssl_context()) == "ok"
        except OSError:
            return False

    # -- internals ----------------------------------------------------------

    def _prepare_state_dir(self) -> None:
        """Clear what an earlier cluster left here (after stopping it, if it still runs)."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        leftover = LocalCluster.from_state(self.state_dir)
        if leftover.running():
            leftover.stop()
        for name in _OWNED:
            path = self.state_dir / name
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)
        self._pki = pki.generate(self.state_dir / "pki", self.settings.service_ip)
        pki.write_admin_kubeconfig(self._pki, self.api_url, self.kubeconfig)
        pki.write_test_user_kubeconfig(self._pki, self.api_url, self.user_kubeconfig)

    def _api_ssl_context(self) -> ssl.SSLContext:
        ca = self.state_dir / "pki" / "ca.crt"
        ctx = ssl.create_default_context(cafile=str(ca))
        ctx.load_cert_chain(str(self.state_dir / "pki" / "admin.crt"), str(self.state_dir / "pki" / "admin.key"))
        return ctx

    def _spawn(self, name: str, argv: list[str], ports: tuple[int, ...]) -> None:
        proc, record = processes.spawn(
            name, argv, self.log_dir / f"{name}.log", die_with_parent=self.die_with_parent, ports=ports
        )
        self._procs[name] = proc
        self._records.append(record)
        # Record before waiting on anything: if we die now, `down` still finds it.
        processes.write_records(self.state_file, self._records, apiserver_port=self.ports.apiserver,
                                guarded=self._guarded)

    def _wait(self, name: str, probe, what: str) -> None:
        """Wait for ``probe``, failing at once (with its log) if the component exits meanwhile."""
        # The exit is recorded and reported after wait_for: an exception raised
        # inside the probe would be taken for "not ready yet".
        failure: list[ClusterError] = []
        proc = self._procs[name]

        def guarded():
            if proc.poll() is not None:
                failure.append(ClusterError(
                    f"{name} exited with code {proc.returncode} while starting; last log lines:\n"
                    + processes.log_tail(self.log_dir / f"{name}.log")
                ))
                return True
            return probe()

        try:
            wait_for(guarded, timeout=self.settings.start_timeout_s, what=what)
        except WaitTimeout as exc:
            raise ClusterError(f"{exc}; last {name} log lines:\n{processes.log_tail(self.log_dir / f'{name}.log')}") from exc
        if failure:
            raise failure[0]

    def _start_etcd(self, binary: Path) -> None:
        client = f"http://127.0.0.1:{self.ports.etcd_client}"
        peer = f"http://127.0.0.1:{self.ports.etcd_peer}"
        self._spawn("etcd", [
            str(binary),
            "--name=default",
            f"--data-dir={self.state_dir / 'etcd-data'}",
            f"--listen-client-urls={client}",
            f"--advertise-client-urls={client}",
            f"--listen-peer-urls={peer}",
            f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster=default={peer}",
            "--unsafe-no-fsync=true",  # throw-away data: durability only costs time
            "--log-level=warn",
        ], (self.ports.etcd_client, self.ports.etcd_peer))
        self._wait("etcd", lambda: '"health":"true"' in _http_get(f"{client}/health"), "etcd /health")

    def _start_apiserver(self, binary: Path) -> None:
        assert self._pki is not None
        s = self.settings
        if s.node_ip:
            hostnet.guard_ports([self.ports.apiserver], s.node_bridge)
            reach = ["--bind-address=0.0.0.0", f"--advertise-address={s.node_ip}",
                     "--kubelet-preferred-address-types=InternalIP",
                     f"--kubelet-client-certificate={self._pki.admin_cert}",
                     f"--kubelet-client-key={self._pki.admin_key}"]
        else:
            reach = ["--bind-address=127.0.0.1", "--advertise-address=127.0.0.1"]
        self._spawn("kube-apiserver", [
            str(binary),
            f"--etcd-servers=http://127.0.0.1:{self.ports.etcd_client}",
            *reach,
            f"--secure-port={self.ports.apiserver}",
            f"--cert-dir={self.state_dir / 'certs'}",
            f"--tls-cert-file={self._pki.serving_cert}",
            f"--tls-private-key-file={self._pki.serving_key}",
            f"--client-ca-file={self._pki.ca_cert}",
            f"--token-auth-file={self._pki.token_file}",
            f"--service-cluster-ip-range={s.service_cidr}",
            "--authorization-mode=Node,RBAC",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={self._pki.sa_pub}",
            f"--service-account-signing-key-file={self._pki.sa_key}",
            "--allow-privileged=true",
            f"--default-not-ready-toleration-seconds={s.not_ready_toleration_s}",
            f"--default-unreachable-toleration-seconds={s.unreachable_toleration_s}",
            *s.apiserver_extra_args,
        ], (self.ports.apiserver,))
        ctx = self._api_ssl_context()
        self._wait("kube-apiserver", lambda: _https_get(f"{self.api_url}/readyz", ctx) == "ok",
                          "kube-apiserver /readyz")

    def _start_controller_manager(self, binary: Path) -> None:
        assert self._pki is not None
        s = self.settings
        self._spawn("kube-controller-manager", [
            str(binary),
            f"--kubeconfig={self.kubeconfig}",
            f"--authentication-kubeconfig={self.kubeconfig}",
            f"--authorization-kubeconfig={self.kubeconfig}",
            "--bind-address=127.0.0.1",
            f"--secure-port={self.ports.controller_manager}",
            f"--cert-dir={self.state_dir / 'certs' / 'kcm'}",
            "--leader-elect=false",  # one instance: skip the lease round-trip at start
            "--controllers=*",
            f"--service-account-private-key-file={self._pki.sa_key}",
            f"--root-ca-file={self._pki.ca_cert}",
            f"--cluster-signing-cert-file={self._pki.ca_cert}",
            f"--cluster-signing-key-file={self._pki.ca_key}",
            "--use-service-account-credentials=false",
            f"--node-monitor-grace-period={s.node_monitor_grace_s}s",
            f"--node-monitor-period={s.node_monitor_period_s}s",
        ], (self.ports.controller_manager,))

    def _start_scheduler(self, binary: Path) -> None:
        self._spawn("kube-scheduler", [
            str(binary),
            f"--kubeconfig={self.kubeconfig}",
            f"--authentication-kubeconfig={self.kubeconfig}",
            f"--authorization-kubeconfig={self.kubeconfig}",
            "--bind-address=127.0.0.1",
            f"--secure-port={self.ports.scheduler}",
            f"--cert-dir={self.state_dir / 'certs' / 'scheduler'}",
            "--leader-elect=false",
        ], (self.ports.scheduler,))

    def _start_kwok(self, binary: Path) -> None:
        stage_files = stages.write_stages(self.state_dir / "stages")
        self._spawn("kwok", [
            str(binary),
            f"--kubeconfig={self.kubeconfig}",
            "--manage-all-nodes=false",
            f"--manage-nodes-with-annotation-selector={ANNOTATION_SELECTOR}",
            f"--node-lease-duration-seconds={self.settings.node_lease_duration_s}",
            f"--cidr={self.settings.kwok_pod_cidr}",
            f"--server-address=127.0.0.1:{self.ports.kwok}",
            *[f"--config={p}" for p in stage_files],
        ], (self.ports.kwok,))

    def _wait_healthy(self) -> None:
        insecure = _insecure_context()
        self._wait(
            "kube-controller-manager",
            lambda: _https_get(f"https://127.0.0.1:{self.ports.controller_manager}/healthz", insecure) == "ok",
            "kube-controller-manager /healthz",
        )
        self._wait(
            "kube-scheduler",
            lambda: _https_get(f"https://127.0.0.1:{self.ports.scheduler}/healthz", insecure) == "ok",
            "kube-scheduler /healthz",
        )
        self._wait("kwok", lambda: _http_get(f"http://127.0.0.1:{self.ports.kwok}/healthz") == "ok",
                          "kwok /healthz")
        # /healthz says the controller manager runs, not that its controllers
        # have synced: the default ServiceAccount appearing shows they have
        # (and pods cannot be created in a namespace before it exists).
        self._wait("kube-controller-manager", self._default_service_account_exists,
                          "the default ServiceAccount (controller manager's controllers running)")

    def _default_service_account_exists(self) -> bool:
        body = _https_get(f"{self.api_url}/api/v1/namespaces/default/serviceaccounts/default", self._api_ssl_context())
        return '"name":"default"' in body.replace(" ", "")
