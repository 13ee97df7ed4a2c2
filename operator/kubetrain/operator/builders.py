"""Pure builders: a TrainingJob in, Kubernetes manifests out. No API calls, unit-tested without a cluster."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubetrain.contract import store as rdzv_store
from kubetrain.api.models import API_VERSION, KIND, TrainingJob
from kubetrain.api.pod import OPERATOR_VOLUMES
from kubetrain.contract import TERMINATION_MESSAGE_PATH
from kubetrain.operator import naming
from kubetrain.contract.torchrun import BUILTIN_TRAINER, ELASTIC_ENV, STORE_PORT, RendezvousTimeouts, torchrun_args
from kubetrain.trainer_env import CHECKPOINT_MOUNT, contract_for


@dataclass(frozen=True)
class BuildConfig:
    """Operator-wide settings the builders need (from the Helm values, through the environment)."""

    trainer_image: str = "ghcr.io/kubetrain/trainer:0.1.0"
    termination_grace_seconds: int = 120  # time to write the SIGTERM checkpoint
    rendezvous: RendezvousTimeouts = RendezvousTimeouts()
    store_cpu: str = "100m"
    store_memory: str = "512Mi"


# The rendezvous store's program: only the standard library and torch (see kubetrain.contract.store).
STORE_PROGRAM = Path(rdzv_store.__file__).read_text()

RESTRICTED_CONTAINER_SECURITY = {
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "runAsNonRoot": True,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}
POD_SECURITY = {"runAsNonRoot": True, "runAsUser": 1000, "runAsGroup": 1000, "fsGroup": 1000, "seccompProfile": {"type": "RuntimeDefault"}}


def _merged(defaults: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """``override`` over ``defaults``, field by field, one level into nested objects
    (capabilities: adding IPC_LOCK keeps drop ALL)."""
    out = dict(defaults)
    for key, value in override.items():
        out[key] = {**out[key], **value} if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def pod_security(job: TrainingJob) -> dict[str, Any]:
    """The pod securityContext: the restricted defaults with the job's own settings over them."""
    user = job.spec.pod.security_context
    return _merged(POD_SECURITY, user.to_k8s() if user else {})


def container_security(job: TrainingJob, own: Any) -> dict[str, Any]:
    """A container's securityContext: restricted defaults, the pod's runAsNonRoot choice, then the container's own.

    A container-level default would otherwise veto a pod that explicitly allows root.
    """
    pod_sc = job.spec.pod.security_context
    defaults = dict(RESTRICTED_CONTAINER_SECURITY)
    if pod_sc is not None and pod_sc.run_as_non_root is not None:
        defaults["runAsNonRoot"] = pod_sc.run_as_non_root
    return _merged(defaults, own.to_k8s() if own is not None else {})


def _pod_metadata(job: TrainingJob, labels: dict[str, str], annotations: dict[str, str]) -> dict[str, Any]:
    """The job's labels and annotations under the operator's own, which win (theirs are reserved anyway)."""
    meta = job.spec.pod.metadata
    out: dict[str, Any] = {"labels": {**((meta and meta.labels) or {}), **labels}}
    merged = {**((meta and meta.annotations) or {}), **annotations}
    if merged:
        out["annotations"] = merged
    return out


def _identity(job: TrainingJob) -> dict[str, Any]:
    """Pull secrets and ServiceAccount: both the worker pods and the store pod need them to start."""
    pod = job.spec.pod
    out: dict[str, Any] = {}
    if pod.image_pull_secrets:
        out["imagePullSecrets"] = [s.to_k8s() for s in pod.image_pull_secrets]
    if pod.service_account_name:
        out["serviceAccountName"] = pod.service_account_name
    return out


def _quantities(resources: dict[str, Any]) -> dict[str, Any]:
    # Quantities are strings on the wire (the API client refuses ints).
    return {kind: {k: str(v) for k, v in values.items()} for kind, values in resources.items()}


def _extra_container(job: TrainingJob, extra: Any) -> dict[str, Any]:
    out = extra.to_k8s()
    out["securityContext"] = container_security(job, extra.security_context)
    if "resources" in out:
        out["resources"] = _quantities(out["resources"])
    return out


def referenced_objects(job: TrainingJob) -> list[tuple[str, str, str]]:
    """The objects the job's worker pods need before they can start, as (kind, name, field):
    its ServiceAccount, the claims and ConfigMaps of its volumes (unless optional).

    Secrets are left out on purpose: the operator never reads them (a missing pull secret
    shows as ImagePullError, a missing Secret volume as a pod that waits in ContainerCreating).
    """
    pod = job.spec.pod
    refs = []
    if pod.service_account_name:
        refs.append(("ServiceAccount", pod.service_account_name, "spec.pod.serviceAccountName"))
    for v in pod.volumes or ():
        if v.persistent_volume_claim:
            refs.append(("PersistentVolumeClaim", v.persistent_volume_claim.claim_name,
                         f"spec.pod.volumes[{v.name}].persistentVolumeClaim.claimName"))
        if v.config_map and not v.config_map.optional:
            refs.append(("ConfigMap", v.config_map.name, f"spec.pod.volumes[{v.name}].configMap.name"))
    ckpt = job.spec.checkpoint
    if ckpt and ckpt.persistent_volume_claim:
        refs.append(("PersistentVolumeClaim", ckpt.persistent_volume_claim.claim_name,
                     "spec.checkpoint.persistentVolumeClaim.claimName"))
    return refs


def owner_reference(job: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "name": job["metadata"]["name"],
        "uid": job["metadata"]["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def rendezvous_id(job: dict[str, Any]) -> str:
    # The uid is unique per job incarnation: a job deleted and re-created with
    # the same name never joins the old rendezvous.
    return job["metadata"]["uid"]


def store_endpoint(job: TrainingJob, namespace: str) -> str:
    return f"{naming.store_name(job.metadata.name)}.{namespace}.svc:{STORE_PORT}"


def _placement(job: TrainingJob, *, with_selectors: bool) -> dict[str, Any]:
    sched = job.spec.scheduling
    out: dict[str, Any] = {}
    if sched.tolerations:
        out["tolerations"] = [t.to_k8s() for t in sched.tolerations]
    if sched.priority_class_name:
        out["priorityClassName"] = sched.priority_class_name
    if sched.scheduler_name:
        out["schedulerName"] = sched.scheduler_name
    if with_selectors:
        if sched.node_selector:
            out["nodeSelector"] = dict(sched.node_selector)
        if sched.affinity:
            out["affinity"] = sched.affinity
    return out


def _store_metadata(job: TrainingJob, body: dict[str, Any]) -> dict[str, Any]:
    """The store pod and its Service share a name, labels and owner."""
    return {
        "name": naming.store_name(job.metadata.name),
        "namespace": body["metadata"]["namespace"],
        "labels": naming.common_labels(job.metadata.name, naming.ROLE_STORE),
        "ownerReferences": [owner_reference(body)],
    }


def store_service(job: TrainingJob, body: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _store_metadata(job, body),
        "spec": {
            "selector": {naming.LABEL_JOB: job.metadata.name, naming.LABEL_ROLE: naming.ROLE_STORE},
            "ports": [{"name": "c10d", "port": STORE_PORT, "targetPort": STORE_PORT, "protocol": "TCP"}],
            # Agents must reach the store before it reports ready during a restart of the pod.
            "publishNotReadyAddresses": True,
        },
    }


def store_pod(job: TrainingJob, body: dict[str, Any], cfg: BuildConfig) -> dict[str, Any]:
    """The rendezvous store: a TCPStore in its own small pod, so no worker loss can take it down."""
    meta = _store_metadata(job, body)
    meta.update(_pod_metadata(job, meta["labels"], {}))
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": meta,
        "spec": {
            "restartPolicy": "Always",
            "enableServiceLinks": False,
            # The job's ServiceAccount (a pull secret may be attached to it), but never its token.
            **_identity(job),
            "automountServiceAccountToken": False,
            "securityContext": pod_security(job),
            "terminationGracePeriodSeconds": 5,
            # Not the GPU nodeSelector/affinity: the store needs no GPU.
            **_placement(job, with_selectors=False),
            # Away from the job's workers where possible, so that losing a
            # worker's node does not also lose the rendezvous store.
            "affinity": {
                "podAntiAffinity": {
                    "preferredDuringSchedulingIgnoredDuringExecution": [
                        {
                            "weight": 100,
                            "podAffinityTerm": {
                                "topologyKey": "kubernetes.io/hostname",
                                "labelSelector": {"matchLabels": {naming.LABEL_JOB: job.metadata.name, naming.LABEL_ROLE: naming.ROLE_WORKER}},
                            },
                        }
                    ]
                }
            },
            "containers": [
                {
                    "name": "store",
                    # The workers' image, so the store runs the agents' own torch (TCPStore's
                    # wire protocol is torch's); its program comes as source, so the image needs no kubetrain.
                    "image": job.spec.container.image or cfg.trainer_image,
                    "command": ["python", "-c", STORE_PROGRAM, "--port", str(STORE_PORT)],
                    "ports": [{"name": "c10d", "containerPort": STORE_PORT, "protocol": "TCP"}],
                    "readinessProbe": {"tcpSocket": {"port": STORE_PORT}, "periodSeconds": 5},
                    "resources": {
                        "requests": {"cpu": cfg.store_cpu, "memory": cfg.store_memory},
                        "limits": {"memory": cfg.store_memory},
                    },
                    "securityContext": container_security(job, None),
                    "terminationMessagePath": TERMINATION_MESSAGE_PATH,
                    "terminationMessagePolicy": "FallbackToLogsOnError",
                }
            ],
        },
    }


def _checkpoint_volume(job: TrainingJob) -> dict[str, Any] | None:
    ckpt = job.spec.checkpoint
    if ckpt is None:
        return None
    if ckpt.persistent_volume_claim:
        return {"name": "checkpoints", "persistentVolumeClaim": {"claimName": ckpt.persistent_volume_claim.claim_name}}
    return {"name": "checkpoints", "emptyDir": ckpt.empty_dir.to_k8s()}


def _worker_env(job: TrainingJob, user_env: list[dict[str, Any]]) -> list[dict[str, Any]]:
    contract = contract_for(job, CHECKPOINT_MOUNT).to_env()
    env = [{"name": k, "value": v} for k, v in {**contract, **ELASTIC_ENV}.items()]
    env += [
        {"name": "KUBETRAIN_POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
        # A read-only root filesystem: caches go to the writable /tmp volume.
        {"name": "HOME", "value": "/tmp"},
        {"name": "TRITON_CACHE_DIR", "value": "/tmp/triton"},
    ]
    # The user's variables come last so they can override ours deliberately.
    names = {e["name"] for e in user_env}
    return [e for e in env if e["name"] not in names] + user_env


def worker_pod(job: TrainingJob, body: dict[str, Any], slot: int, attempt: int, cfg: BuildConfig) -> dict[str, Any]:
    spec = job.spec
    c = spec.container
    namespace = body["metadata"]["namespace"]
    name = naming.worker_pod_name(job.metadata.name, slot, attempt)
    labels = {
        **naming.common_labels(job.metadata.name, naming.ROLE_WORKER),
        naming.LABEL_SLOT: str(slot),
        naming.LABEL_ATTEMPT: str(attempt),
    }
    annotations = {naming.ANNOTATION_RDZV_ID: rendezvous_id(body)}
    ports = []
    if spec.metrics.enabled:
        annotations.update({"prometheus.io/scrape": "true", "prometheus.io/port": str(spec.metrics.port), "prometheus.io/path": "/metrics"})
        ports.append({"name": "metrics", "containerPort": spec.metrics.port, "protocol": "TCP"})

    resources = _quantities(c.resources.to_k8s())
    if c.gpus_per_replica:
        resources.setdefault("limits", {})[c.gpu_resource_name] = str(c.gpus_per_replica)
        resources.setdefault("requests", {})[c.gpu_resource_name] = str(c.gpus_per_replica)

    program = tuple(c.command) + tuple(c.args or ()) if c.command else BUILTIN_TRAINER + tuple(c.args or ())
    command = torchrun_args(
        min_nodes=spec.replicas.min,
        max_nodes=spec.replicas.max,
        nproc_per_node=c.nproc(),
        endpoint=store_endpoint(job, namespace),
        rdzv_id=rendezvous_id(body),
        max_restarts=spec.failure_policy.max_restarts,
        program=program,
        local_addr="$(POD_IP)",
        timeouts=cfg.rendezvous,
        # Inside the pod's grace period, so torchrun stops the workers before the kubelet kills the pod.
        shutdown_timeout=max(cfg.termination_grace_seconds - 20, 10),
    )

    pod = spec.pod
    own = OPERATOR_VOLUMES
    mounts = [{"name": "tmp", "mountPath": own["tmp"]}, {"name": "dshm", "mountPath": own["dshm"]}]
    # NCCL and DataLoader workers need more shared memory than the 64Mi default.
    dshm: dict[str, Any] = {"medium": "Memory"}
    if pod.shm_size is not None:
        dshm["sizeLimit"] = str(pod.shm_size)
    volumes: list[dict[str, Any]] = [{"name": "tmp", "emptyDir": {}}, {"name": "dshm", "emptyDir": dshm}]
    if (vol := _checkpoint_volume(job)) is not None:
        volumes.append(vol)
        mounts.append({"name": "checkpoints", "mountPath": CHECKPOINT_MOUNT})
    # The job's own after the operator's: the models refuse any name or path that collides.
    volumes += [v.to_k8s() for v in pod.volumes or ()]
    mounts += [m.to_k8s() for m in c.volume_mounts or ()]

    container = {
        "name": "trainer",
        "image": c.image or cfg.trainer_image,
        "command": command,
        "env": _worker_env(job, [e.to_k8s() for e in c.env or []]),
        "resources": resources,
        "ports": ports,
        "volumeMounts": mounts,
        "securityContext": container_security(job, c.security_context),
        "terminationMessagePath": TERMINATION_MESSAGE_PATH,
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    if c.image_pull_policy:
        container["imagePullPolicy"] = c.image_pull_policy
    pod_spec: dict[str, Any] = {
        # torchrun restarts workers inside the pod; a pod that fails is
        # accounted for and replaced by the operator under a new name.
        "restartPolicy": "Never",
        "enableServiceLinks": False,
        **_identity(job),
        # The trainer never calls the Kubernetes API: no token unless the job asks for one.
        "automountServiceAccountToken": bool(pod.automount_service_account_token),
        "terminationGracePeriodSeconds": cfg.termination_grace_seconds,
        "securityContext": pod_security(job),
        **_placement(job, with_selectors=True),
        "containers": [container],
        "volumes": volumes,
    }
    if pod.init_containers:
        pod_spec["initContainers"] = [_extra_container(job, x) for x in pod.init_containers]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": namespace,
            **_pod_metadata(job, labels, annotations),
            "ownerReferences": [owner_reference(body)],
            "finalizers": [naming.TRACKING_FINALIZER],
        },
        "spec": pod_spec,
    }
