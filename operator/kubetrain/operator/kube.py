"""The few Kubernetes API calls the operator makes, each idempotent."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from kubetrain.api.models import GROUP, PLURAL, VERSION
from kubetrain.operator import kueue, naming

log = logging.getLogger("kubetrain.operator")


def _found(read: Callable[[], Any]) -> bool:
    """Whether ``read`` finds its object: a 404 is a no, any other error is raised."""
    try:
        read()
        return True
    except ApiException as exc:
        if exc.status == 404:
            return False
        raise


class Kube:
    def __init__(self, api: client.ApiClient):
        self.api = api
        self.core = client.CoreV1Api(api)
        self.custom = client.CustomObjectsApi(api)

    @classmethod
    def connect(cls) -> "Kube":
        """The cluster we run in, else the one in KUBECONFIG (a developer's machine, the tests)."""
        try:
            config.load_incluster_config()
        except config.ConfigException:
            config.load_kube_config()
        cfg = client.Configuration.get_default_copy()
        # Kopf's 8 handler threads and the wakes' executor threads share this client: urllib3's
        # default pool of 10 discards connections in a burst ("Connection pool is full").
        cfg.connection_pool_maxsize = 32
        return cls(client.ApiClient(cfg))

    def close(self) -> None:
        self.api.close()

    def send(self, method: str, path: str, body: Any, content_type: str = "application/json") -> None:
        """One request whose answer we need only the status of, raising ApiException on a non-2xx one.

        Not through the generated methods: they validate the arguments against their models and
        deserialise the answer into models (a created pod, a patched job), most of a create's CPU."""
        request = self.api.param_serialize(method=method, resource_path=path, body=body, auth_settings=["BearerToken"],
                                           header_params={"Content-Type": content_type, "Accept": "application/json"})
        response = self.api.call_api(*request)
        response.read()
        if not 200 <= response.status <= 299:
            raise ApiException.from_response(http_resp=response, body=None, data=None)

    def create(self, manifest: dict[str, Any]) -> bool:
        """Create a Pod or Service; False if it already exists (an earlier attempt did it)."""
        ns = manifest["metadata"]["namespace"]
        plural = {"Pod": "pods", "Service": "services"}[manifest["kind"]]
        try:
            self.send("POST", f"/api/v1/namespaces/{ns}/{plural}", manifest)
            return True
        except ApiException as exc:
            if exc.status == 409:
                return False
            raise

    def release(self, namespace: str, name: str) -> bool:
        """Mark a pod accounted for and drop our tracking finalizer (one atomic patch).

        True when that is done (or the pod is gone); False when the pod changed
        under us, so the caller's next round must try again.
        """
        try:
            pod = self.core.read_namespaced_pod(name, namespace)
        except ApiException as exc:
            if exc.status == 404:
                return True
            raise
        finalizers = [f for f in pod.metadata.finalizers or [] if f != naming.TRACKING_FINALIZER]
        annotation = "/metadata/annotations/" + naming.ANNOTATION_ACCOUNTED.replace("/", "~1")
        # A JSON patch: a strategic merge patch cannot remove an item from
        # metadata.finalizers (its strategy is merge). The test op makes it
        # fail, and retry next round, if the pod changed since we read it.
        ops = [
            {"op": "test", "path": "/metadata/resourceVersion", "value": pod.metadata.resource_version},
            {"op": "replace", "path": "/metadata/finalizers", "value": finalizers},
            {"op": "add", "path": annotation, "value": "true"}
            if pod.metadata.annotations
            else {"op": "add", "path": "/metadata/annotations", "value": {naming.ANNOTATION_ACCOUNTED: "true"}},
        ]
        if pod.metadata.finalizers is None:
            ops[1] = {"op": "add", "path": "/metadata/finalizers", "value": []}
        try:
            self.core.patch_namespaced_pod(name, namespace, ops)
        except ApiException as exc:
            if exc.status == 404:
                return True
            if exc.status in (409, 422):  # changed under us: the test op failed
                return False
            raise
        return True

    def delete_pod(self, namespace: str, name: str, grace_seconds: int | None = None) -> None:
        try:
            self.core.delete_namespaced_pod(name, namespace, grace_period_seconds=grace_seconds)
        except ApiException as exc:
            if exc.status != 404:
                raise

    def service_exists(self, namespace: str, name: str) -> bool:
        return _found(lambda: self.core.read_namespaced_service(name, namespace))

    def object_exists(self, kind: str, namespace: str, name: str) -> bool:
        """Whether a namespaced core object a job's pods refer to exists (PersistentVolumeClaim, ConfigMap,
        ServiceAccount). Never a Secret: the operator does not read Secrets."""
        read = {
            "PersistentVolumeClaim": self.core.read_namespaced_persistent_volume_claim,
            "ConfigMap": self.core.read_namespaced_config_map,
            "ServiceAccount": self.core.read_namespaced_service_account,
        }[kind]
        return _found(lambda: read(name, namespace))

    def patch_job_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        """Merge ``status`` into the job's status; a job already gone is not an error."""
        try:
            self.send("PATCH", f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}/{name}/status", {"status": status},
                      "application/merge-patch+json")
        except ApiException as exc:
            if exc.status != 404:
                raise

    def job_exists(self, namespace: str, name: str) -> bool:
        return _found(lambda: self.custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name))

    def delete_job(self, namespace: str, name: str) -> None:
        try:
            # Background: the job goes at once and the garbage collector removes its pods after;
            # never foreground, which would keep the job until every pod is gone.
            self.custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name,
                                                        propagation_policy="Background")
        except ApiException as exc:
            if exc.status != 404:
                raise

    def job_pods(self, namespace: str, job: str) -> list[dict[str, Any]]:
        pods = self.core.list_namespaced_pod(namespace, label_selector=f"{naming.LABEL_JOB}={job}")
        return [self.core.api_client.sanitize_for_serialization(p) for p in pods.items]

    # -- Kueue (only with kueue.enabled: the Workload CRD exists) ------------------------------

    def get_workload(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return self.custom.get_namespaced_custom_object(kueue.GROUP, kueue.VERSION, namespace, kueue.PLURAL, name)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def create_workload(self, manifest: dict[str, Any]) -> dict[str, Any]:
        """Create a Workload, or return the one an earlier attempt (or operator) created."""
        ns, name = manifest["metadata"]["namespace"], manifest["metadata"]["name"]
        try:
            return self.custom.create_namespaced_custom_object(kueue.GROUP, kueue.VERSION, ns, kueue.PLURAL, manifest)
        except ApiException as exc:
            if exc.status != 409:
                raise
        found = self.get_workload(ns, name)
        if found is None:
            raise ApiException(status=409, reason=f"Workload {name} was deleted while being created")
        return found

    def set_workload_active(self, namespace: str, name: str, active: bool) -> None:
        self.custom.patch_namespaced_custom_object(kueue.GROUP, kueue.VERSION, namespace, kueue.PLURAL, name,
                                                   {"spec": {"active": active}})

    def replace_workload_status(self, workload: dict[str, Any], status: dict[str, Any]) -> None:
        """Write a Workload's whole status, if it did not change since ``workload`` was read (a 409
        otherwise: the reconcile retries with a fresh read, never overwriting what Kueue wrote)."""
        meta = workload["metadata"]
        body = {"apiVersion": kueue.API_VERSION, "kind": "Workload", "metadata": {
            "name": meta["name"], "namespace": meta["namespace"], "resourceVersion": meta["resourceVersion"]},
            "spec": workload["spec"], "status": status}
        self.custom.replace_namespaced_custom_object_status(kueue.GROUP, kueue.VERSION, meta["namespace"], kueue.PLURAL,
                                                            meta["name"], body)

    def job_workloads(self, namespace: str, job: str) -> list[dict[str, Any]]:
        return self.custom.list_namespaced_custom_object(kueue.GROUP, kueue.VERSION, namespace, kueue.PLURAL,
                                                         label_selector=f"{naming.LABEL_JOB}={job}")["items"]

    def delete_workload(self, namespace: str, name: str) -> None:
        try:
            self.custom.delete_namespaced_custom_object(kueue.GROUP, kueue.VERSION, namespace, kueue.PLURAL, name)
        except ApiException as exc:
            if exc.status != 404:
                raise

    def resource_flavor(self, name: str) -> dict[str, Any]:
        """A ResourceFlavor's spec; empty if it is gone (then it adds nothing to the pods)."""
        try:
            return self.custom.get_cluster_custom_object(kueue.GROUP, kueue.VERSION, kueue.FLAVORS, name).get("spec") or {}
        except ApiException as exc:
            if exc.status == 404:
                return {}
            raise

    def priority_class_value(self, name: str) -> int | None:
        try:
            return int(client.SchedulingV1Api(self.api).read_priority_class(name).value)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
