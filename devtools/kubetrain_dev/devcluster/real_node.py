"""One real worker node next to the simulated GPU pool: kubelet, containerd + runc, the CNI
bridge, kube-proxy (iptables) and CoreDNS, on this machine.

What this kind of machine forced (docs/control-plane.md has the details):

* cgroup v1: the kubelet runs with ``failCgroupV1: false`` and the cgroupfs driver.
* root without CAP_SYS_RESOURCE: containerd's ``restrict_oom_score_adj``.
* no registry: the sandbox (pause) and CoreDNS images are built here and imported with ``ctr``.
* traffic stays on the machine: the pods live on bridge ``cni0`` (10.244.0.1/24, also the node's
  address), get a route to the Service range and no default route, CoreDNS has no ``forward``,
  and our iptables chains drop pod traffic leaving through any other interface and outside
  traffic to the kubelet and the apiserver (which must listen beyond loopback, see
  ``Settings.node_ip``).

The node changes the host outside its state dir, and ``down()`` undoes all of it: the bridge,
iptables chains (ours, and the KUBE-* ones of the kubelet and kube-proxy), sysctls (including
the kernel knobs the kubelet rewrites at start), mounts, network namespaces, libcni's result
cache, /run/containerd and the kubelet's /var/log/containers links and kubepods cgroups. What
existed before is recorded in a host-wide file (``HOST_RECORD``, on tmpfs) so that ``down`` works
from any process, after a crash too. Only one real node can run per machine.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import shutil
import signal
import string
import subprocess
import time
from pathlib import Path

import yaml

from kubetrain_dev.devcluster import build, hostnet, images, pki, processes
from kubetrain_dev.devcluster.cluster import LocalCluster, Settings
from kubetrain_dev.devcluster.processes import Record
from kubetrain_dev.wait import WaitTimeout, wait_for

log = logging.getLogger("kubetrain_dev.devcluster.real_node")

NODE_NAME = "kubetrain-node"
BRIDGE = "cni0"
NODE_IP = "10.244.0.1"
POD_CIDR = "10.244.0.0/24"
# The guard covers every pod range of the cluster (the KWOK nodes' fake ones included).
POD_SUPERNET = "10.244.0.0/16"
CLUSTER_DNS = "10.96.0.10"
KUBELET_PORT = 10250
LABELS = {"kubetrain.dev/node-pool": "real-cpu", "kubetrain.dev/real-node": "true"}
COMPONENTS = ("containerd", "kubelet", "kube-proxy")
# build.py's components the node runs (besides the control plane's).
NODE_COMPONENTS = ["kubernetes-node", "coredns", "pause"]
# The node's own settings, and what the kubelet (vm.*, kernel.*) and kube-proxy (route_localnet)
# rewrite at start: all read before and written back after.
SYSCTLS = (
    "net.ipv4.ip_forward", "net.bridge.bridge-nf-call-iptables", "net.ipv4.conf.all.route_localnet",
    "vm.overcommit_memory", "vm.panic_on_oom", "kernel.panic", "kernel.panic_on_oops",
    "kernel.keys.root_maxkeys", "kernel.keys.root_maxbytes",
)
NODE_SYSCTLS = {"net.ipv4.ip_forward": "1", "net.bridge.bridge-nf-call-iptables": "1"}
# Host paths the kubelet, containerd and libcni hard-code; removed on teardown if they were not there before.
# The hostPath behind examples/cpu-real-node.yaml's checkpoint volume: a fixed path a manifest can
# name, writable by the trainer's uid 1000 (sticky, as /tmp), removed with the node.
CHECKPOINTS = Path("/var/lib/kubetrain-node/checkpoints")
HOST_PATHS = (Path("/run/containerd"), Path("/var/log/containers"), Path("/var/lib/cni"), CHECKPOINTS.parent)
CNI_RESULTS = Path("/var/lib/cni/results")
CGROUP_ROOT = Path("/sys/fs/cgroup")
HOST_RECORD = Path("/run/kubetrain/real-node.json")
REQUIRED = ("containerd", "ctr", "runc", "iptables", "conntrack", "ip", "/usr/lib/cni/bridge",
            "/usr/lib/cni/host-local", "/usr/lib/cni/portmap")
NODE_FILES = Path(__file__).parent / "node"
NETWORK_NAME = "kubetrain"  # the CNI network in node/cni.conflist


class NodeError(RuntimeError):
    pass


def cluster_settings(settings: Settings | None = None) -> Settings:
    """``settings`` for a control plane this node can join (the apiserver reachable from pods)."""
    return dataclasses.replace(settings or Settings(), node_ip=NODE_IP, node_bridge=BRIDGE)


def missing_prerequisites() -> list[str]:
    """What this machine lacks for a real node (empty when it can run one)."""
    missing = [c for c in REQUIRED if not (Path(c).is_file() if c.startswith("/") else shutil.which(c))]
    missing += [str(build.binary(b)) for b in ("kubelet", "kube-proxy", "coredns", "pause")
                if not build.binary(b).is_file()]
    if os.geteuid() != 0:
        missing.append("root")
    return missing


def _render(name: str, **values: object) -> str:
    return string.Template((NODE_FILES / name).read_text()).substitute({k: str(v) for k, v in values.items()})


def containerd_root() -> Path:
    """Images and snapshots, kept across nodes: the trainer image is imported once, not per node."""
    return build.cache_root() / "node-containerd"


class RealNode:
    """The node's processes and state dir; ``up()`` joins it to ``cluster``, ``down()`` undoes everything."""

    def __init__(self, state_dir: Path, cluster_dir: Path, api_url: str, *, die_with_parent: bool = True):
        self.state_dir = Path(state_dir)
        self.cluster_dir = Path(cluster_dir)
        self.api_url = api_url
        self.die_with_parent = die_with_parent
        self._procs: dict[str, subprocess.Popen] = {}
        self._records: list[Record] = []

    @classmethod
    def for_cluster(cls, cluster: LocalCluster, *, die_with_parent: bool = True) -> "RealNode":
        if cluster.settings.node_ip != NODE_IP:
            raise NodeError("the control plane was started without real_node.cluster_settings(): "
                            "pods could not reach its apiserver")
        return cls(cluster.state_dir / "node", cluster.state_dir, cluster.api_url, die_with_parent=die_with_parent)

    @classmethod
    def recorded(cls) -> "RealNode | None":
        """The node this machine's host record names (started by any process), or None."""
        try:
            host = json.loads(HOST_RECORD.read_text())
        except (OSError, ValueError):
            return None
        return cls(Path(host["state_dir"]), Path(host["cluster_dir"]), "", die_with_parent=False)

    # -- where things are -------------------------------------------------

    @property
    def socket(self) -> Path:
        return self.state_dir / "containerd.sock"

    @property
    def log_dir(self) -> Path:
        return self.state_dir / "logs"

    @property
    def state_file(self) -> Path:
        return self.state_dir / "state.json"

    def ctr(self, *args: str, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess:
        return hostnet.run(["ctr", "--address", str(self.socket), "--namespace", "k8s.io", *args],
                           timeout=timeout, check=check)

    # -- bring-up -----------------------------------------------------------

    def up(self, api=None, *, timeout: float = 120.0) -> "RealNode":
        """Start the node and CoreDNS; wait until the node is Ready. On failure, tear down what started."""
        missing = missing_prerequisites()
        if missing:
            raise NodeError("cannot start a real node, missing: " + ", ".join(missing)
                            + " (`make tools` installs and builds them)")
        if HOST_RECORD.is_file():
            other = json.loads(HOST_RECORD.read_text()).get("state_dir")
            raise NodeError(f"a real node is already up on this machine (state {other}): "
                            "`python -m kubetrain_dev.devcluster down` first; one node per machine")
        started = time.monotonic()
        archives = images.node_images() + [images.base_image()] + images.built_app_images()
        try:
            self._record_host()
            self._prepare_state_dir()
            self._host_network()
            self._write_configs()
            self._start("containerd", ["containerd", "--config", str(self.state_dir / "containerd.toml")])
            self._wait("containerd", lambda: self.ctr("version", timeout=10).returncode == 0, timeout)
            self.purge_containers()
            self.import_images(archives)
            self._start_kubelet()
            self._start("kube-proxy", [str(build.binary("kube-proxy")),
                                       f"--config={self.state_dir / 'kube-proxy.yaml'}"])
            api = api or _api_client(self.cluster_dir / "kubeconfig")
            self._wait("kubelet", lambda: _node_ready(api), timeout)
            # The kubelet has set vm.overcommit_memory=1, kernel.panic=10, kernel.panic_on_oops=1 by now.
            self.restore_kernel_knobs()
            apply_manifest(api, _render("coredns.yaml", node_name=NODE_NAME, image=images.COREDNS_IMAGE,
                                        cluster_dns=CLUSTER_DNS))
        except BaseException:
            self.down()
            raise
        log.info("real node %s Ready in %.1fs", NODE_NAME, time.monotonic() - started)
        return self

    def wait_dns(self, api=None, timeout: float = 120.0) -> None:
        """Wait for CoreDNS to be Ready (its first start needs the `kubernetes` Service through kube-proxy)."""
        from kubernetes import client

        api = api or _api_client(self.cluster_dir / "kubeconfig")
        apps = client.AppsV1Api(api)
        wait_for(lambda: (apps.read_namespaced_deployment("coredns", "kube-system").status.ready_replicas or 0) >= 1,
                 timeout=timeout, what="CoreDNS Ready")

    def _record_host(self) -> None:
        HOST_RECORD.parent.mkdir(parents=True, exist_ok=True)
        record = {
            "state_dir": str(self.state_dir),
            "cluster_dir": str(self.cluster_dir),
            "sysctls": hostnet.read_sysctls(SYSCTLS),
            "existing_paths": [str(p) for p in HOST_PATHS if p.exists()],
            "existing_cgroups": [str(p) for p in _kubepods_cgroups()],
        }
        HOST_RECORD.write_text(json.dumps(record, indent=2))

    def _prepare_state_dir(self) -> None:
        if self.state_dir.exists():
            _unmount_under(self.state_dir)
            shutil.rmtree(self.state_dir)
        for sub in ("logs", "cni/net.d", "cni/ipam", "pod-logs", "kubelet"):
            (self.state_dir / sub).mkdir(parents=True, exist_ok=True)
        containerd_root().mkdir(parents=True, exist_ok=True)
        CHECKPOINTS.mkdir(parents=True, exist_ok=True)
        CHECKPOINTS.chmod(0o1777)

    def _host_network(self) -> None:
        hostnet.add_bridge(BRIDGE, f"{NODE_IP}/24")
        hostnet.write_sysctls(NODE_SYSCTLS)
        hostnet.guard_ports([KUBELET_PORT], BRIDGE)
        hostnet.guard_pod_egress(POD_SUPERNET, BRIDGE)

    def _write_configs(self) -> None:
        d = self.state_dir
        cluster_pki = pki.Pki(self.cluster_dir / "pki")
        settings = Settings()
        (d / "containerd.toml").write_text(_render(
            "containerd.toml", containerd_root=containerd_root(), state_dir=d, socket=self.socket,
            sandbox_image=images.PAUSE_IMAGE))
        (d / "cni/net.d/10-kubetrain.conflist").write_text(_render(
            "cni.conflist", bridge=BRIDGE, state_dir=d, pod_cidr=POD_CIDR, node_ip=NODE_IP,
            service_cidr=settings.service_cidr))
        (d / "resolv.conf").write_text("# real node: no upstream resolver, names outside the cluster do not resolve\n")
        pki.write_serving_cert(cluster_pki, d / "kubelet.crt", d / "kubelet.key", NODE_NAME, (NODE_IP,))
        (d / "kubelet.yaml").write_text(_render(
            "kubelet.yaml", socket=self.socket, node_ip=NODE_IP, kubelet_port=KUBELET_PORT,
            healthz_port=processes.free_port(), ca_file=cluster_pki.ca_cert, cluster_dns=CLUSTER_DNS, state_dir=d))
        pki.write_client_kubeconfig(cluster_pki, self.api_url, d / "kubelet.kubeconfig", f"system:node:{NODE_NAME}",
                                    ("system:nodes",))
        # system:kube-proxy is bound to system:node-proxier by the default RBAC.
        pki.write_client_kubeconfig(cluster_pki, self.api_url, d / "kube-proxy.kubeconfig", "system:kube-proxy", ())
        (d / "kube-proxy.yaml").write_text(_render(
            "kube-proxy.yaml", kubeconfig=d / "kube-proxy.kubeconfig", node_name=NODE_NAME, pod_cidr=POD_CIDR,
            node_ip=NODE_IP, healthz_port=processes.free_port(), metrics_port=processes.free_port()))

    def _start_kubelet(self) -> None:
        d = self.state_dir
        self._start("kubelet", [
            str(build.binary("kubelet")),
            f"--config={d / 'kubelet.yaml'}",
            f"--kubeconfig={d / 'kubelet.kubeconfig'}",
            f"--root-dir={d / 'kubelet'}",
            f"--cert-dir={d / 'kubelet-certs'}",
            f"--node-ip={NODE_IP}",
            f"--hostname-override={NODE_NAME}",
            "--node-labels=" + ",".join(f"{k}={v}" for k, v in LABELS.items()),
        ])

    def _start(self, name: str, argv: list[str]) -> None:
        proc, record = processes.spawn(name, argv, self.log_dir / f"{name}.log", die_with_parent=self.die_with_parent)
        self._procs[name] = proc
        self._records.append(record)
        processes.write_records(self.state_file, self._records)

    def _wait(self, name: str, probe, timeout: float) -> None:
        """Wait for ``probe``; fail at once, with its log, if ``name`` exits meanwhile."""
        proc = self._procs[name]
        try:
            # An exit ends the wait (reported below): an exception in the probe only means "not yet".
            wait_for(lambda: proc.poll() is not None or probe(), timeout=timeout, what=f"{name} ready")
        except WaitTimeout as exc:
            raise NodeError(f"{exc}; last {name} log lines:\n{processes.log_tail(self.log_dir / f'{name}.log')}") from exc
        if proc.poll() is not None:
            raise NodeError(f"{name} exited with code {proc.returncode}; last log lines:\n"
                            + processes.log_tail(self.log_dir / f"{name}.log"))

    def restore_kernel_knobs(self) -> None:
        saved = json.loads(HOST_RECORD.read_text())["sysctls"]
        hostnet.write_sysctls({k: v for k, v in saved.items() if k.startswith(("vm.", "kernel."))})

    # -- images -------------------------------------------------------------

    def _imported_file(self) -> Path:
        return containerd_root() / "kubetrain-imported.json"

    def import_images(self, archives: list[Path]) -> list[Path]:
        """``ctr images import`` each archive whose key differs from the one imported last; return those imported."""
        try:
            imported = json.loads(self._imported_file().read_text())
        except (OSError, ValueError):
            imported = {}
        present = set(self.ctr("images", "list", "--quiet").stdout.split())
        done = []
        for archive in archives:
            key = images.read_key(archive)
            image = images.image_of(archive)
            if imported.get(archive.name) == key and image in present:
                continue
            started = time.monotonic()
            self.ctr("images", "import", str(archive), timeout=1800)
            log.info("imported %s in %.1fs", archive.name, time.monotonic() - started)
            imported[archive.name] = key
            self._imported_file().write_text(json.dumps(imported, indent=2))
            done.append(archive)
        return done

    # -- teardown -------------------------------------------------------------

    def purge_containers(self) -> None:
        """Kill and remove every container of our containerd (a crashed node's leftovers, or all at teardown)."""
        tasks = self.ctr("tasks", "list", "--quiet", check=False, timeout=30).stdout.split()
        for task in tasks:
            self.ctr("tasks", "kill", "--signal", "SIGKILL", task, check=False, timeout=30)
        for task in tasks:
            for _ in range(50):
                if self.ctr("tasks", "delete", "--force", task, check=False, timeout=30).returncode == 0:
                    break
                time.sleep(0.1)
        for container in self.ctr("containers", "list", "--quiet", check=False, timeout=30).stdout.split():
            self.ctr("containers", "delete", container, check=False, timeout=30)

    def down(self) -> None:
        """Stop everything and restore the host. Idempotent; works without the process that called up()."""
        try:
            host = json.loads(HOST_RECORD.read_text())
        except (OSError, ValueError):
            host = {}
        if not self._records:
            self._records, _ = processes.read_state(self.state_file)
        alive = {r.name: r for r in self._records if r.name in self._procs or processes.is_running(r)}
        for name in ("kube-proxy", "kubelet"):
            if name in alive:
                processes.terminate(alive[name], self._procs.get(name), 15.0)
        if "containerd" in alive and self.socket.exists():
            self.purge_containers()
        if "containerd" in alive:
            processes.terminate(alive["containerd"], self._procs.get("containerd"), 15.0)
        self._kill_shims()
        self._procs.clear()
        self._records = []
        _unmount_under(self.state_dir)
        _unmount_under(containerd_root())
        kube_proxy = build.binary("kube-proxy")
        if kube_proxy.is_file():
            hostnet.run([str(kube_proxy), "--cleanup"], check=False)
        hostnet.remove_kube_chains()
        hostnet.unguard_ports([KUBELET_PORT])
        hostnet.remove_chain(hostnet.GUARD_FWD)
        hostnet.delete_link(BRIDGE)
        if host.get("sysctls"):
            hostnet.write_sysctls(host["sysctls"])
        self._remove_host_paths(host)
        if self.state_dir.exists():
            shutil.rmtree(self.state_dir, ignore_errors=True)
        HOST_RECORD.unlink(missing_ok=True)
        with contextlib.suppress(OSError):  # not empty: not only ours
            HOST_RECORD.parent.rmdir()

    def _kill_shims(self) -> None:
        """containerd's shims outlive it in their own sessions: kill those started for our socket."""
        ours = str(self.socket).encode()
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                argv = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if argv and argv[0].endswith(b"containerd-shim-runc-v2") and ours in argv:
                try:
                    os.killpg(int(entry.name), signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass

    def _remove_host_paths(self, host: dict) -> None:
        existing = set(host.get("existing_paths", []))
        # The kubelet's links to our pod logs.
        containers = Path("/var/log/containers")
        if containers.is_dir():
            for link in containers.iterdir():
                if link.is_symlink() and os.readlink(link).startswith(str(self.state_dir)):
                    link.unlink()
        if CNI_RESULTS.is_dir():
            for result in CNI_RESULTS.glob(f"{NETWORK_NAME}-*"):
                result.unlink()
        for cgroup in reversed(sorted(_kubepods_cgroups(), key=lambda p: len(p.parts))):
            if str(cgroup) not in host.get("existing_cgroups", []):
                _rmdir_tree(cgroup)
        for path in HOST_PATHS:
            if str(path) not in existing and path.exists():
                shutil.rmtree(path, ignore_errors=True)


def _kubepods_cgroups() -> list[Path]:
    return sorted(CGROUP_ROOT.glob("*/kubepods")) + sorted(CGROUP_ROOT.glob("*/kubepods.slice"))


def _rmdir_tree(path: Path) -> None:
    """Remove a cgroup and its children (cgroup dirs go with rmdir, deepest first)."""
    for sub in sorted((p for p in path.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
        try:
            sub.rmdir()
        except OSError:
            pass
    try:
        path.rmdir()
    except OSError as exc:
        log.warning("could not remove cgroup %s: %s", path, exc)


def _mounts_under(root: Path) -> list[str]:
    prefix = str(root.resolve()) + "/"
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].replace("\\040", " ")
        if point.startswith(prefix):
            points.append(point)
    return points


def _unmount_under(root: Path) -> None:
    """Unmount everything below ``root`` (pod volumes, netns, rootfs overlays), deepest first."""
    if not root.exists():
        return
    for point in sorted(_mounts_under(root), key=len, reverse=True):
        hostnet.run(["umount", "--lazy", point], check=False)


def _api_client(kubeconfig: Path):
    from kubernetes import config

    return config.new_client_from_config(config_file=str(kubeconfig))


def _node_ready(api) -> bool:
    from kubernetes import client

    from kubetrain_dev.devcluster import gpu_pool

    try:
        node = client.CoreV1Api(api).read_node(NODE_NAME)
    except Exception:  # noqa: BLE001 - not registered yet
        return False
    return gpu_pool.node_is_ready(node)


def apply_manifest(api, text: str) -> None:
    """Create every object in the YAML ``text``; one that exists already is left as it is."""
    from kubernetes import utils
    from kubernetes.utils import FailToCreateError

    for doc in yaml.safe_load_all(text):
        if not doc:
            continue
        try:
            utils.create_from_dict(api, doc)
        except FailToCreateError as exc:
            if any(e.status != 409 for e in exc.api_exceptions):
                raise
