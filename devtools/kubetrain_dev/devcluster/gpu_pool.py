"""The simulated GPU pool: KWOK nodes shaped like 8x H100 machines, and the
annotations that drive what KWOK's stages do with nodes and pods.

KWOK manages a node only if it carries the ``kwok.x-k8s.io/node: fake``
annotation; the matching NoSchedule taint keeps pods that did not ask for a
simulated node off it, so every test pod needs ``KWOK_TOLERATION``.
"""

from __future__ import annotations

import copy
import re

from kubernetes import client
from kubernetes.client.rest import ApiException

from kubetrain_dev.wait import wait_for

GPU_RESOURCE = "nvidia.com/gpu"
GPU_PRODUCT = "NVIDIA-H100-80GB-HBM3"
NODE_POOL = "gpu-h100"
NODE_PREFIX = "kwok-h100-"
DEFAULT_NODES = 4
DEFAULT_GPUS = 8

KWOK_NODE_KEY = "kwok.x-k8s.io/node"
KWOK_NODE_VALUE = "fake"

# Set by tests; read by our KWOK stages (kubetrain_dev/devcluster/stages).
NOT_READY_ANNOTATION = "kwok.kubetrain.dev/not-ready"
EXIT_CODE_ANNOTATION = "kwok.kubetrain.dev/exit-code"
TERMINATION_MESSAGE_ANNOTATION = "kwok.kubetrain.dev/termination-message"

KWOK_TOLERATION: dict[str, str] = {
    "key": KWOK_NODE_KEY,
    "operator": "Equal",
    "value": KWOK_NODE_VALUE,
    "effect": "NoSchedule",
}

# One H100 machine (the shape of an 8-GPU p5.48xlarge / DGX H100), per GPU.
_CPU_PER_GPU = 24
_MEMORY_GI_PER_GPU = 256
_PODS = 110


def _core(api: client.ApiClient) -> client.CoreV1Api:
    return client.CoreV1Api(api)


def node_manifest(name: str, index: int, gpus: int = DEFAULT_GPUS) -> dict:
    """A Node object for a simulated ``gpus``-GPU machine; ``index`` picks its IPs."""
    resources = {
        "cpu": str(max(1, gpus) * _CPU_PER_GPU),
        "memory": f"{max(1, gpus) * _MEMORY_GI_PER_GPU}Gi",
        "ephemeral-storage": "3500Gi",
        "pods": str(_PODS),
        GPU_RESOURCE: str(gpus),
    }
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": {KWOK_NODE_KEY: KWOK_NODE_VALUE},
            "labels": {
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "node.kubernetes.io/instance-type": f"kwok-h100-{gpus}x",
                "nvidia.com/gpu.present": "true",
                "nvidia.com/gpu.product": GPU_PRODUCT,
                "nvidia.com/gpu.count": str(gpus),
                "nvidia.com/gpu.memory": "81559",  # MiB, as NVIDIA's GPU feature discovery reports it
                "kubetrain.dev/node-pool": NODE_POOL,
                "type": "kwok",
            },
        },
        "spec": {
            "taints": [{"key": KWOK_NODE_KEY, "value": KWOK_NODE_VALUE, "effect": "NoSchedule"}],
            # KWOK hands out pod IPs from the node's podCIDR, so every node gets its own.
            # 10.244.0.0/24 is the real node's (real_node.POD_CIDR): no fake pod shares a real pod's IP.
            "podCIDR": f"10.244.{index + 1}.0/24",
            "podCIDRs": [f"10.244.{index + 1}.0/24"],
        },
        # A kubelet registers its node with status filled in; so do we.
        "status": {
            "capacity": dict(resources),
            "allocatable": copy.deepcopy(resources),
            "addresses": [
                {"type": "InternalIP", "address": f"10.200.{index // 250}.{index % 250 + 1}"},
                {"type": "Hostname", "address": name},
            ],
        },
    }


def _existing_indexes(api: client.ApiClient) -> set[int]:
    pattern = re.compile(rf"^{re.escape(NODE_PREFIX)}(\d+)$")
    names = (n.metadata.name for n in _core(api).list_node().items)
    return {int(m.group(1)) for m in map(pattern.match, names) if m}


def add_nodes(api: client.ApiClient, n: int, gpus: int = DEFAULT_GPUS, *, wait: bool = True,
              timeout: float = 60.0) -> list[str]:
    """Create ``n`` simulated GPU nodes (next free names); wait until Ready unless told not to."""
    taken = _existing_indexes(api)
    indexes = [i for i in range(len(taken) + n) if i not in taken][:n]
    names = []
    for index in indexes:
        name = f"{NODE_PREFIX}{index}"
        _core(api).create_node(node_manifest(name, index, gpus))
        names.append(name)
    if wait:
        wait_nodes_ready(api, names, timeout=timeout)
    return names


def create_pool(api: client.ApiClient, nodes: int = DEFAULT_NODES, gpus: int = DEFAULT_GPUS,
                timeout: float = 60.0) -> list[str]:
    """The default pool: ``nodes`` x ``gpus`` GPUs, all Ready."""
    return add_nodes(api, nodes, gpus, timeout=timeout)


def delete_node(api: client.ApiClient, name: str) -> None:
    """Delete a node (as a cloud provider would remove a machine); absent is fine."""
    try:
        _core(api).delete_node(name)
    except ApiException as exc:
        if exc.status != 404:
            raise


def node_is_ready(node: client.V1Node) -> bool:
    conditions = node.status.conditions or []
    return any(c.type == "Ready" and c.status == "True" for c in conditions)


def _untainted_not_ready(node: client.V1Node) -> bool:
    # TaintNodesByCondition puts node.kubernetes.io/not-ready on new nodes; the
    # scheduler will not use the node until the controller manager removes it.
    return not any(t.key == "node.kubernetes.io/not-ready" for t in node.spec.taints or [])


def wait_nodes_ready(api: client.ApiClient, names: list[str], timeout: float = 60.0) -> None:
    """Wait until every named node is Ready and schedulable."""
    def all_ready() -> bool:
        for name in names:
            node = _core(api).read_node(name)
            if not (node_is_ready(node) and _untainted_not_ready(node)):
                return False
        return True

    wait_for(all_ready, timeout=timeout, what=f"nodes {names} to be Ready")


def set_node_ready(api: client.ApiClient, name: str, ready: bool) -> None:
    """Make KWOK report the node NotReady (``ready=False``) or Ready again.

    Only the reported condition changes (the kubelet says "not ready"); the
    node's Lease keeps being renewed.
    """
    value = None if ready else "true"  # None deletes the annotation in a merge patch
    _core(api).patch_node(name, {"metadata": {"annotations": {NOT_READY_ANNOTATION: value}}})


def finish_pod(api: client.ApiClient, namespace: str, name: str, exit_code: int,
               message: str | None = None) -> None:
    """Make a running simulated pod exit with ``exit_code`` (0: Succeeded, else Failed).

    ``message`` becomes the container's terminated-state message. KWOK acts
    once the pod is Running; if it is still Pending, it exits right after.
    """
    annotations = {EXIT_CODE_ANNOTATION: str(int(exit_code))}
    if message is not None:
        annotations[TERMINATION_MESSAGE_ANNOTATION] = message
    _core(api).patch_namespaced_pod(name, namespace, {"metadata": {"annotations": annotations}})
