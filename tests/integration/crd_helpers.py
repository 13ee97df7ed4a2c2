"""Installing the CRD and driving TrainingJobs on the test cluster."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from kubetrain.api.models import GROUP, PLURAL, VERSION
from kubetrain_dev.wait import wait_for

REPO = Path(__file__).resolve().parents[2]
CRD_NAME = f"{PLURAL}.{GROUP}"


def kubectl(*args: str, check: bool = True, input: str | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run(["kubectl", *args], text=True, capture_output=True, input=input, timeout=120)
    if check and proc.returncode != 0:
        raise AssertionError(f"kubectl {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}")
    return proc


def install_crd(api: client.ApiClient) -> None:
    kubectl("apply", "--server-side", "-f", str(REPO / "crds"))
    ext = client.ApiextensionsV1Api(api)

    def established() -> bool:
        crd = ext.read_custom_resource_definition(CRD_NAME)
        return any(c.type == "Established" and c.status == "True" for c in crd.status.conditions or [])

    wait_for(established, timeout=60, what="TrainingJob CRD Established")
    # Discovery and the apiserver's CRD handler lag a little behind Established.
    wait_for(lambda: kubectl("get", "tj", "-A", check=False).returncode == 0, timeout=30, what="tj served")


class Jobs:
    def __init__(self, api: client.ApiClient, namespace: str):
        self.custom = client.CustomObjectsApi(api)
        self.core = client.CoreV1Api(api)
        self.ns = namespace

    def create(self, manifest: dict[str, Any], dry_run: bool = False) -> dict[str, Any]:
        kwargs = {"dry_run": "All"} if dry_run else {}
        return self.custom.create_namespaced_custom_object(GROUP, VERSION, self.ns, PLURAL, manifest,
                                                           field_validation="Strict", **kwargs)

    def get(self, name: str) -> dict[str, Any]:
        return self.custom.get_namespaced_custom_object(GROUP, VERSION, self.ns, PLURAL, name)

    def patch(self, name: str, body: dict[str, Any]) -> dict[str, Any]:
        return self.custom.patch_namespaced_custom_object(GROUP, VERSION, self.ns, PLURAL, name, body)

    def patch_status(self, name: str, status: dict[str, Any]) -> dict[str, Any]:
        return self.custom.patch_namespaced_custom_object_status(GROUP, VERSION, self.ns, PLURAL, name, {"status": status})

    def delete(self, name: str) -> None:
        try:
            self.custom.delete_namespaced_custom_object(GROUP, VERSION, self.ns, PLURAL, name)
        except ApiException as exc:
            if exc.status != 404:
                raise

    def exists(self, name: str) -> bool:
        try:
            self.get(name)
            return True
        except ApiException as exc:
            if exc.status == 404:
                return False
            raise

    def status(self, name: str) -> dict[str, Any]:
        return self.get(name).get("status") or {}

    def wait(self, name: str, pred: Callable[[dict[str, Any]], bool], what: str, timeout: float = 60) -> dict[str, Any]:
        return wait_status(lambda: self.status(name), pred, what, timeout)

    def wait_phase(self, name: str, phase: str, timeout: float = 60) -> dict[str, Any]:
        return self.wait(name, lambda s: s.get("phase") == phase, f"{name} phase {phase}", timeout)

    def pods(self, name: str, role: str = "worker") -> list[client.V1Pod]:
        selector = f"kubetrain.dev/job-name={name},kubetrain.dev/role={role}"
        return self.core.list_namespaced_pod(self.ns, label_selector=selector).items

    def events(self, name: str) -> list[client.CoreV1Event]:
        return self.core.list_namespaced_event(self.ns, field_selector=f"involvedObject.name={name}").items


def wait_status(read: Callable[[], dict[str, Any]], pred: Callable[[dict[str, Any]], bool], what: str,
                timeout: float = 60) -> dict[str, Any]:
    """Wait until ``pred`` holds for the status ``read`` returns; a timeout shows the last status seen."""
    last: dict[str, Any] = {}

    def check() -> bool:
        nonlocal last
        last = read()
        return pred(last)

    try:
        wait_for(check, timeout=timeout, what=what)
    except Exception as exc:
        raise AssertionError(f"{what}: last status {json.dumps(last, indent=1)[:3000]}") from exc
    return last


def wait_gone(fn: Callable[[], list], what: str, timeout: float = 60) -> None:
    wait_for(lambda: not fn(), timeout=timeout, what=what)

