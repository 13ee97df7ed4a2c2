"""``python -m kubetrain_dev.devcluster {up,down,status,build}``: the dev cluster from a shell.

``up`` leaves the components running after it exits (each in its own
session); ``down`` stops them from the pids recorded in the state dir. The
only thing on stdout is ``export KUBECONFIG=...``, so ``eval "$(... up)"`` works.
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

from kubetrain_dev.devcluster import build, gpu_pool, images, real_node
from kubetrain_dev.devcluster.kueue import LocalKueue
from kubetrain_dev.devcluster.cluster import COMPONENTS, LocalCluster

log = logging.getLogger("kubetrain_dev.devcluster")

# What `up` needs; helm and kubeconform are for chart tests, not the cluster.
CLUSTER_COMPONENTS = ["kubernetes", "etcd", "kwok"]
# Started beside the control plane unless `up --no-kueue` (devcluster/kueue.py, docs/kueue.md).
KUEUE_COMPONENTS = ["kueue"]


def state_dir() -> Path:
    """``$KUBETRAIN_CLUSTER_DIR``, else ``~/.cache/kubetrain/cluster`` (the kubeconfig lives there)."""
    override = os.environ.get("KUBETRAIN_CLUSTER_DIR")
    return Path(override) if override else build.cache_root() / "cluster"


def _print_export(cluster: LocalCluster) -> None:
    print(f"export KUBECONFIG={cluster.kubeconfig}")


def cmd_up(args: argparse.Namespace) -> int:
    existing = LocalCluster.from_state(state_dir())
    if existing.is_complete():
        log.info("already running (%s)", existing.api_url)
        node = real_node.RealNode.recorded()
        if args.real_node and (node is None or node.cluster_dir.resolve() != state_dir().resolve()):
            log.warning("this cluster runs without the real node: `down`, then `up --real-node`")
        _print_export(existing)
        return 0
    failures = build.ensure(CLUSTER_COMPONENTS + ([] if args.no_kueue else KUEUE_COMPONENTS))
    if failures:
        for name, err in failures.items():
            log.error("build of %s failed: %s", name, err)
        return 1
    if args.real_node:
        failures = build.ensure(real_node.NODE_COMPONENTS)
        missing = real_node.missing_prerequisites()
        if failures or missing:
            log.error("cannot start the real node (missing: %s%s); `make tools` installs and builds it, "
                      "or leave out --real-node", ", ".join(missing), "".join(f"; {n}: {e}" for n, e in failures.items()))
            return 1
    started = time.monotonic()
    settings = real_node.cluster_settings() if args.real_node else None
    cluster = LocalCluster(state_dir(), settings, die_with_parent=False)
    node = None
    try:
        cluster.start()
        log.info("control plane up at %s in %.1fs", cluster.api_url, time.monotonic() - started)
        names = gpu_pool.create_pool(cluster.api_client(), nodes=args.nodes, gpus=args.gpus)
        log.info("%d simulated nodes x %d %s Ready in %.1fs total: %s", len(names), args.gpus,
                 gpu_pool.GPU_RESOURCE, time.monotonic() - started, ", ".join(names))
        if not args.no_kueue:
            LocalKueue(cluster, die_with_parent=False).start()
            log.info("kueue %s Ready in %.1fs total (CRDs, manager, webhooks)", build.COMPONENTS["kueue"].version,
                     time.monotonic() - started)
        if args.real_node:
            node = real_node.RealNode.for_cluster(cluster, die_with_parent=False)
            node.up(cluster.api_client())
            node.wait_dns()
            log.info("real node %s and CoreDNS Ready in %.1fs total", real_node.NODE_NAME, time.monotonic() - started)
    except Exception as exc:  # noqa: BLE001 - report, clean up, exit non-zero
        log.error("%s", exc)
        if node is not None:
            node.down()
        LocalKueue(cluster).stop()
        cluster.stop()
        return 1
    log.info("logs: %s; stop with: python -m kubetrain_dev.devcluster down", cluster.log_dir)
    _print_export(cluster)
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    # The node first, while the apiserver still runs; it restores the host even if its launcher died.
    # Only this cluster's node: another cluster's (a test session's) is not ours to stop.
    node = real_node.RealNode.recorded()
    if node is not None and node.cluster_dir.resolve() == state_dir().resolve():
        node.down()
        log.info("real node stopped and the host restored")
    cluster = LocalCluster.from_state(state_dir())
    kueue = LocalKueue.recorded(cluster)
    if kueue is not None:
        kueue.stop()
        log.info("stopped kueue")
    running = cluster.running()
    cluster.stop()
    if running:
        log.info("stopped %s", ", ".join(r.name for r in running))
    else:
        log.info("no cluster running in %s", cluster.state_dir)
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    cluster = LocalCluster.from_state(state_dir())
    running = {r.name for r in cluster.running()}
    for name in COMPONENTS:
        print(f"{name:24} {'running' if name in running else 'stopped'}")
    print(f"{'kueue':24} {'running' if LocalKueue.recorded(cluster) else 'stopped'}")
    if not cluster.is_healthy():
        print("kube-apiserver not ready")
        return 1
    from kubernetes import client

    nodes = client.CoreV1Api(cluster.api_client()).list_node().items
    ready = sum(gpu_pool.node_is_ready(n) for n in nodes)
    print(f"api: {cluster.api_url}  nodes: {ready}/{len(nodes)} Ready  kubeconfig: {cluster.kubeconfig}")
    return 0 if running == set(COMPONENTS) else 1


def cmd_build(args: argparse.Namespace) -> int:
    return build.main(args.components)


def cmd_images(args: argparse.Namespace) -> int:
    """Build the images (skipping unchanged ones) and import them into the running real node, if any."""
    try:
        archives = [images.base_image(), *(images.app_image(name) for name in args.images or images.APP_IMAGES)]
    except images.ImageError as exc:
        log.error("%s", exc)
        return 1
    node = real_node.RealNode.recorded()
    if node is not None and node.socket.exists():
        node.import_images(archives)
    else:
        log.info("no real node running: `make cluster` imports the images when it starts one")
    for archive in archives:
        print(f"{images.image_of(archive):40} {archive.stat().st_size / 1e6:8.0f} MB  {archive}")
    return 0


def cmd_deploy(args: argparse.Namespace) -> int:
    """``helm upgrade --install`` of charts/kubetrain with the local images (never pulled)."""
    failures = build.ensure(["helm"])
    if failures:
        log.error("helm could not be built: %s", failures["helm"])
        return 1
    proc = subprocess.run(images.helm_install_argv(args.release, args.namespace, args.set), check=False)
    return proc.returncode


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m kubetrain_dev.devcluster", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="build if needed, start the cluster and the GPU pool, print the export line")
    up.add_argument("--nodes", type=int, default=gpu_pool.DEFAULT_NODES)
    up.add_argument("--gpus", type=int, default=gpu_pool.DEFAULT_GPUS, help="per node")
    # Off unless asked (`make cluster` asks): the real node needs root and changes the host's network.
    up.add_argument("--real-node", action="store_true",
                    help="also start the real CPU node (kubelet, containerd, bridge cni0, iptables guards, CoreDNS)")
    up.add_argument("--no-kueue", action="store_true", help="do not start Kueue (its CRDs, manager and webhooks)")
    up.set_defaults(func=cmd_up)
    sub.add_parser("down", help="stop the cluster (idempotent)").set_defaults(func=cmd_down)
    sub.add_parser("status", help="which components run; exit 1 unless all do").set_defaults(func=cmd_status)
    b = sub.add_parser("build", help="build the binaries (default: all)")
    b.add_argument("components", nargs="*")
    b.set_defaults(func=cmd_build)
    im = sub.add_parser("images", help="build the base, trainer and operator images; import them into the real node")
    im.add_argument("images", nargs="*", choices=[*images.APP_IMAGES, []])
    im.set_defaults(func=cmd_images)
    dp = sub.add_parser("deploy", help="helm install charts/kubetrain with the images of `images` (KUBECONFIG's cluster)")
    dp.add_argument("--release", default="kubetrain")
    dp.add_argument("--namespace", default="kubetrain-system")
    dp.add_argument("--set", action="append", default=[], help="more chart values (repeatable)")
    dp.set_defaults(func=cmd_deploy)
    return p


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    args = parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
