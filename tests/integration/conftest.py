"""The integration suite's cluster: a real control plane started once per session.

Everything under tests/integration is marked ``integration``. If the
binaries cannot be built, every test here *fails* with the build error: a CI
run must not go green with the cluster-dependent code untested.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from kubernetes import client

from kubetrain_dev.devcluster import build, gpu_pool, hostnet, real_node
from kubetrain_dev.devcluster.cluster import LocalCluster
from kubetrain_dev.wait import wait_for
from support.real_node_setting import real_node_setting

HERE = Path(__file__).parent
CLUSTER_COMPONENTS = ["kubernetes", "etcd", "kwok"]


REAL_NODE, REAL_NODE_WHY = real_node_setting()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.integration)


@dataclass(frozen=True)
class Cluster:
    """What tests get: the running cluster, an admin ApiClient, the GPU pool's node names."""

    local: LocalCluster
    api: client.ApiClient
    nodes: list[str]

    @property
    def kubeconfig(self) -> Path:
        return self.local.kubeconfig

    @property
    def user_kubeconfig(self) -> Path:
        return self.local.user_kubeconfig


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    failures = build.ensure(CLUSTER_COMPONENTS)
    if failures:
        pytest.fail("control plane binaries could not be built:\n"
                    + "\n".join(f"{name}: {err}" for name, err in failures.items()), pytrace=False)
    # With the real node, the apiserver must be reachable from pods (real_node.cluster_settings).
    local = LocalCluster(tmp_path_factory.mktemp("cluster"), real_node.cluster_settings() if REAL_NODE else None)
    local.start()
    previous = os.environ.get("KUBECONFIG")
    try:
        api = local.api_client()
        nodes = gpu_pool.create_pool(api)
        # kubectl, helm and operator subprocesses find the cluster the usual way.
        os.environ["KUBECONFIG"] = str(local.kubeconfig)
        yield Cluster(local=local, api=api, nodes=nodes)
    finally:
        if previous is None:
            os.environ.pop("KUBECONFIG", None)
        else:
            os.environ["KUBECONFIG"] = previous
        local.stop()  # raises if a port is still bound: that fails the session


@pytest.fixture
def namespace(cluster: Cluster) -> Iterator[str]:
    """A fresh namespace, deleted (without waiting) after the test."""
    core = client.CoreV1Api(cluster.api)
    name = f"t-{uuid.uuid4().hex[:8]}"
    core.create_namespace({"metadata": {"name": name}})
    # The ServiceAccount admission plugin rejects pods until the controller
    # manager has created the namespace's default ServiceAccount.
    wait_for(lambda: core.list_namespaced_service_account(name, field_selector="metadata.name=default").items,
             timeout=30, what=f"default ServiceAccount in {name}")
    yield name
    core.delete_namespace(name, propagation_policy="Background")


@pytest.fixture(scope="session")
def node(cluster: Cluster) -> Iterator[real_node.RealNode]:
    """The real node (kubelet, containerd, CoreDNS) joined to the session's control plane; the host restored after."""
    if not REAL_NODE:
        pytest.skip(f"real-node tests not run: {REAL_NODE_WHY}")
    failures = build.ensure(real_node.NODE_COMPONENTS)
    missing = real_node.missing_prerequisites()
    if failures or missing:
        pytest.fail(f"real node cannot start: missing {missing}, build failures {failures}", pytrace=False)
    started = time.monotonic()
    local = real_node.RealNode.for_cluster(cluster.local)
    local.up(cluster.api)
    local.wait_dns(cluster.api)
    print(f"real node and CoreDNS Ready in {time.monotonic() - started:.1f}s")
    try:
        yield local
    finally:
        local.down()
        # The apiserver's guard (KUBETRAIN-GUARD-IN) goes with the control plane, after this.
        leftovers = [c for c in hostnet.leftover_chains() if not c.endswith(hostnet.GUARD_IN)]
        leftovers += [link for link in (real_node.BRIDGE,) if hostnet.link_exists(link)]
        assert not leftovers, f"the real node left host state behind: {leftovers}"
