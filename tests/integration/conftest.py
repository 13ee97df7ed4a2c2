"""The integration suite's cluster: a real control plane started once per session.

Everything under tests/integration is marked ``integration``. If the
binaries cannot be built, every test here *fails* with the build error: a CI
run must not go green with the cluster-dependent code untested.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from kubernetes import client

from kubetrain.devcluster import build, gpu_pool
from kubetrain.devcluster.cluster import LocalCluster
from kubetrain.devcluster.wait import wait_for

HERE = Path(__file__).parent
CLUSTER_COMPONENTS = ["kubernetes", "etcd", "kwok"]


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
    local = LocalCluster(tmp_path_factory.mktemp("cluster"))
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
