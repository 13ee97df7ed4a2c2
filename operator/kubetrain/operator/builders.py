"""Pure builders: a TrainingJob in, Kubernetes manifests out. No API calls, unit-tested without a cluster."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubetrain import rdzv_store
from kubetrain.api.models import API_VERSION, KIND, TrainingJob
from kubetrain.contract import TERMINATION_MESSAGE_PATH
from kubetrain.operator import naming
from kubetrain.torchrun import BUILTIN_TRAINER, ELASTIC_ENV, STORE_PORT, RendezvousTimeouts, torchrun_args
from kubetrain.trainer_env import CHECKPOINT_MOUNT, contract_for


@dataclass(frozen=True)
class BuildConfig:
    """Operator-wide settings the builders need (from the Helm values, through the environment)."""

    trainer_image: str = "ghcr.io/kubetrain/trainer:0.1.0"
    termination_grace_seconds: int = 120  # time to write the SIGTERM checkpoint
    rendezvous: RendezvousTimeouts = RendezvousTimeouts()
    store_cpu: str = "100m"
    store_memory: str = "512Mi"


# The rendezvous store's program: only the standard library and torch (see kubetrain.rdzv_store).
STORE_PROGRAM = Path(rdzv_store.__file__).read_text()

RESTRICTED_CONTAINER_SECURITY = {
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "runAsNonRoot": True,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}
POD_SECURITY = {"runAsNonRoot": True, "runAsUser": 1000, "runAsGroup": 1000, "fsGroup": 1000, "seccompProfile": {"type": "RuntimeDefault"}}


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
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": _store_metadata(job, body),
        "spec": {
            "restartPolicy": "Always",
            "enableServiceLinks": False,
            "automountServiceAccountToken": False,
            "securityContext": POD_SECURITY,
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
                    "securityContext": RESTRICTED_CONTAINER_SECURITY,
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

    # Quantities are strings on the wire (the API client refuses ints).
    resources = {kind: {k: str(v) for k, v in values.items()} for kind, values in c.resources.to_k8s().items()}
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

    mounts = [{"name": "tmp", "mountPath": "/tmp"}, {"name": "dshm", "mountPath": "/dev/shm"}]
    volumes: list[dict[str, Any]] = [
        {"name": "tmp", "emptyDir": {}},
        # NCCL and DataLoader workers need more shared memory than the 64Mi default.
        {"name": "dshm", "emptyDir": {"medium": "Memory"}},
    ]
    if (vol := _checkpoint_volume(job)) is not None:
        volumes.append(vol)
        mounts.append({"name": "checkpoints", "mountPath": CHECKPOINT_MOUNT})

    container = {
        "name": "trainer",
        "image": c.image or cfg.trainer_image,
        "command": command,
        "env": _worker_env(job, [e.to_k8s() for e in c.env or []]),
        "resources": resources,
        "ports": ports,
        "volumeMounts": mounts,
        "securityContext": RESTRICTED_CONTAINER_SECURITY,
        "terminationMessagePath": TERMINATION_MESSAGE_PATH,
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    if c.image_pull_policy:
        container["imagePullPolicy"] = c.image_pull_policy
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": labels,
            "annotations": annotations,
            "ownerReferences": [owner_reference(body)],
            "finalizers": [naming.TRACKING_FINALIZER],
        },
        "spec": {
            # torchrun restarts workers inside the pod; a pod that fails is
            # accounted for and replaced by the operator under a new name.
            "restartPolicy": "Never",
            "enableServiceLinks": False,
            "automountServiceAccountToken": False,
            "terminationGracePeriodSeconds": cfg.termination_grace_seconds,
            "securityContext": POD_SECURITY,
            **_placement(job, with_selectors=True),
            "containers": [container],
            "volumes": volumes,
        },
    }
