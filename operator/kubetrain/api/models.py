"""The TrainingJob API (kubetrain.dev/v1alpha1), modelled once.

These models are the single source of truth: the CRD in ``crds/`` is generated
from them (``make crds``), ``kubetrain validate`` and ``kubetrain run`` parse
manifests with them, and the operator reads specs through them. Every field
carries the description ``kubectl explain`` shows.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from kubetrain.api.base import ApiModel, Rule
from kubetrain.contract import vocabulary
from kubetrain.api.pod import (
    OPERATOR_CONTAINERS,
    OPERATOR_VOLUMES,
    ContainerPort,
    ContainerSecurityContext,
    DnsLabel,
    LABEL_VALUE,
    ImageReference,
    LocalObjectReference,
    Quantity,
    ObjectName,
    PodMetadata,
    PodSecurityContext,
    Volume,
    VolumeMount,
)

GROUP = "kubetrain.dev"
VERSION = "v1alpha1"
KIND = "TrainingJob"
PLURAL = "trainingjobs"
API_VERSION = f"{GROUP}/{VERSION}"

# Pods are named <job>-w<slot>-<attempt> (slot < 1024, attempt <= 1001) and the
# store Service <job>-rdzv: a job
# name longer than this would overflow the 63-character DNS label.
MAX_JOB_NAME_LENGTH = 50

Precision = Literal["fp32", "tf32", "bf16", "fp16", "fp8"]
Strategy = Literal["ddp", "fsdp"]
CompressionType = Literal["none", "fp16", "bf16", "powersgd"]
# The CRD's enums, built from the one vocabulary (kubetrain.contract.vocabulary).
RetryableReason = Literal[tuple(r.value for r in vocabulary.RETRYABLE_REASONS)]  # type: ignore[valid-type]
Phase = Literal[tuple(p.value for p in vocabulary.Phase)]  # type: ignore[valid-type]

# Env var names that must never carry a literal value: read them from a Secret.
_SECRET_NAME_CEL = r"(?i)(^|_)(PASSWORD|PASSWD|SECRET|TOKEN|API_?KEY|ACCESS_?KEY|PRIVATE_?KEY|CREDENTIALS?)$"
_SECRET_NAME = re.compile(_SECRET_NAME_CEL)

ResourceMap = Annotated[dict[str, Quantity], Field(max_length=16)]


def _require_unique(items: list[Any] | None, key: str, path: str) -> None:
    """Twin of the CRD's list-type map: the apiserver refuses two entries with the same key."""
    seen: set[Any] = set()
    for item in items or ():
        value = getattr(item, key)
        if value in seen:
            raise ValueError(f"{path}: duplicate entry {value!r}")
        seen.add(value)


# Resources the scheduler may overcommit; any other (GPUs, RDMA devices, hugepages) needs
# its request equal to its limit, or the apiserver refuses the pod.
_OVERCOMMITTABLE = ("cpu", "memory", "ephemeral-storage")


def _not_overcommitted(s: "ResourceRequirements") -> bool:
    limits = s.limits or {}
    return all(k in _OVERCOMMITTABLE or (k in limits and str(v) == str(limits[k])) for k, v in (s.requests or {}).items())


def _resource_rules(path: str) -> tuple[Rule, ...]:
    """The rules of a container's resources; ``path`` names the field in their messages."""
    return (
        Rule(
            "(!has(self.requests) || !('nvidia.com/gpu' in self.requests)) && (!has(self.limits) || !('nvidia.com/gpu' in self.limits))",
            f"{path} must not set nvidia.com/gpu: use spec.container.gpusPerReplica",
            lambda s: "nvidia.com/gpu" not in (s.requests or {}) and "nvidia.com/gpu" not in (s.limits or {}),
        ),
        Rule(
            "!has(self.requests) || self.requests.all(k, k in " + str(list(_OVERCOMMITTABLE)).replace('"', "'")
            + " || (has(self.limits) && k in self.limits && string(self.requests[k]) == string(self.limits[k])))",
            f"{path}.requests: a device or hugepages resource (e.g. rdma/hca, hugepages-2Mi) needs the same value "
            "in limits: it cannot be overcommitted",
            _not_overcommitted,
        ),
    )


class ResourceRequirements(ApiModel):
    """CPU, memory and other resources (RDMA devices, hugepages) for each replica's trainer container."""

    requests: ResourceMap | None = Field(
        None, description="Minimum resources per replica, e.g. {cpu: 8, memory: 64Gi}. GPUs go in gpusPerReplica."
    )
    limits: ResourceMap | None = Field(
        None,
        description="Maximum resources per replica, e.g. {memory: 80Gi, rdma/hca_shared_devices_a: 1, "
        "hugepages-2Mi: 1Gi}. Devices and hugepages need requests equal to limits (or limits alone).",
    )

    cel_rules = _resource_rules("spec.container.resources")


class SidecarResources(ResourceRequirements):
    """CPU and memory for an init container or sidecar."""

    cel_rules = _resource_rules("spec.pod.initContainers.resources")


def _env_rules(path: str) -> tuple[Rule, ...]:
    """The rules of a container's env; ``path`` names the field in their messages."""
    return (
        Rule(
            "!(has(self.value) && has(self.valueFrom))",
            f"{path}: set either value or valueFrom, not both",
            lambda s: not (s.value is not None and s.value_from is not None),
        ),
        Rule(
            f"!has(self.value) || !self.name.matches('{_SECRET_NAME_CEL}')",
            f"{path}: a variable named like a secret (PASSWORD, TOKEN, API_KEY, ...) must use "
            "valueFrom.secretKeyRef, not a literal value",
            lambda s: s.value is None or not _SECRET_NAME.search(s.name),
        ),
    )


class EnvVar(ApiModel):
    """An environment variable for the trainer container."""

    name: str = Field(
        ..., min_length=1, max_length=128, pattern=r"^[-._a-zA-Z][-._a-zA-Z0-9]*$", description="Variable name."
    )
    value: str | None = Field(None, max_length=32768, description="A literal value. Never put a secret here.")
    value_from: dict[str, Any] | None = Field(
        None,
        description="A source for the value, as in a Pod: secretKeyRef, configMapKeyRef, fieldRef or resourceFieldRef.",
        json_schema_extra={"x-kubernetes-preserve-unknown-fields": True},
    )

    cel_rules = _env_rules("spec.container.env")


class SidecarEnvVar(EnvVar):
    """An environment variable for an init container or sidecar."""

    cel_rules = _env_rules("spec.pod.initContainers.env")


# Where the operator mounts its own volumes in the trainer container.
_RESERVED_PATHS = list(OPERATOR_VOLUMES.values())


class ContainerSpec(ApiModel):
    """The trainer container every worker pod runs under torchrun."""

    image: ImageReference | None = Field(
        None,
        description="Container image with torch and the trainer. Defaults to the operator's configured "
        "trainer image (the Helm value trainerImage), which runs the built-in trainer.",
    )
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] | None = Field(
        None, description="When to pull the image: Always, IfNotPresent or Never."
    )
    command: list[Annotated[str, Field(min_length=1, max_length=4096)]] | None = Field(
        None,
        min_length=1,
        max_length=64,
        description="The program each worker process runs, launched by torchrun with --no-python "
        "(e.g. [python, /app/train.py]). torchrun provides RANK, WORLD_SIZE, MASTER_ADDR and the "
        "rendezvous; a plain script gets elastic plumbing but not kubetrain's metrics. Unset: the "
        "built-in trainer (python -m kubetrain_trainer), configured by spec.trainer.",
    )
    args: list[Annotated[str, Field(max_length=4096)]] | None = Field(
        None, max_length=256, description="Arguments appended to command."
    )
    env: list[EnvVar] | None = Field(
        None,
        max_length=128,
        description="Extra environment variables. Secrets must come from valueFrom.secretKeyRef.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
    )
    resources: ResourceRequirements = Field(
        default_factory=ResourceRequirements,
        description="CPU and memory per replica. GPUs are requested through gpusPerReplica.",
    )
    gpus_per_replica: int = Field(
        0, ge=0, le=64, description="GPUs each replica (pod) requests as gpuResourceName. 0 trains on CPU."
    )
    gpu_resource_name: str = Field(
        "nvidia.com/gpu", max_length=253, description="The extended resource that names a GPU on your nodes."
    )
    processes_per_replica: int | None = Field(
        None,
        ge=1,
        le=64,
        description="Training processes per replica (torchrun --nproc-per-node). Defaults to "
        "gpusPerReplica, or 1 on CPU.",
    )
    volume_mounts: list[VolumeMount] | None = Field(
        None,
        max_length=64,
        description="Volumes from spec.pod.volumes to mount into the trainer container, e.g. a dataset at /data, "
        "read-only. /tmp, /dev/shm and /checkpoints are the operator's.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["mountPath"]},
    )
    security_context: ContainerSecurityContext | None = Field(
        None,
        description="Merged field by field over the restricted defaults (non-root, no privilege escalation, "
        "read-only root filesystem, capabilities dropped, seccomp RuntimeDefault).",
    )

    cel_rules = (
        Rule(
            "!has(self.processesPerReplica) || self.gpusPerReplica == 0 || self.processesPerReplica <= self.gpusPerReplica",
            "spec.container.processesPerReplica must not exceed spec.container.gpusPerReplica: each process needs its own GPU",
            lambda s: s.processes_per_replica is None
            or s.gpus_per_replica == 0
            or s.processes_per_replica <= s.gpus_per_replica,
        ),
        Rule(
            "!has(self.volumeMounts) || !self.volumeMounts.exists(m, m.mountPath in "
            + str(_RESERVED_PATHS).replace('"', "'") + ")",
            "spec.container.volumeMounts.mountPath: " + ", ".join(_RESERVED_PATHS) + " are the operator's mounts; "
            "choose another path",
            lambda s: not any(m.mount_path in _RESERVED_PATHS for m in s.volume_mounts or ()),
        ),
    )

    def nproc(self) -> int:
        return self.processes_per_replica or max(self.gpus_per_replica, 1)

    @model_validator(mode="after")
    def _unique_entries(self):
        _require_unique(self.env, "name", "spec.container.env")
        _require_unique(self.volume_mounts, "mount_path", "spec.container.volumeMounts.mountPath")
        return self



class ExtraContainer(ApiModel):
    """An init container, or with restartPolicy Always a native sidecar that runs beside the trainer for the
    whole pod. It gets the restricted security defaults, merged with its securityContext."""

    name: DnsLabel = Field(..., description="Container name, unique in the pod; trainer and store are the operator's.")
    image: ImageReference = Field(..., description="Container image.")
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] | None = Field(None, description="When to pull the image.")
    command: list[Annotated[str, Field(min_length=1, max_length=4096)]] | None = Field(
        None, max_length=64, description="Entrypoint. Default: the image's."
    )
    args: list[Annotated[str, Field(max_length=4096)]] | None = Field(None, max_length=256, description="Arguments.")
    working_dir: str | None = Field(None, max_length=4096, pattern=r"^/.*$", description="Working directory.")
    env: list[SidecarEnvVar] | None = Field(
        None,
        max_length=128,
        description="Environment variables; secrets through valueFrom.secretKeyRef.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
    )
    resources: SidecarResources | None = Field(None, description="CPU and memory for this container.")
    volume_mounts: list[VolumeMount] | None = Field(
        None,
        max_length=64,
        description="Volumes from spec.pod.volumes to mount.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["mountPath"]},
    )
    ports: list[ContainerPort] | None = Field(None, max_length=16, description="Ports a sidecar serves; not the metrics port.")
    security_context: ContainerSecurityContext | None = Field(
        None, description="Merged over the restricted defaults, as for the trainer container."
    )
    restart_policy: Literal["Always"] | None = Field(
        None,
        description="Always: a native sidecar (starts before the trainer, runs beside it, stops after it). "
        "Unset: an init container that must finish before the trainer starts.",
    )

    cel_rules = (
        Rule(
            "!(self.name in " + str(list(OPERATOR_CONTAINERS)).replace('"', "'") + ")",
            "spec.pod.initContainers.name: " + " and ".join(OPERATOR_CONTAINERS) + " are the operator's containers",
            lambda s: s.name not in OPERATOR_CONTAINERS,
        ),
    )

    @model_validator(mode="after")
    def _unique_entries(self):
        _require_unique(self.env, "name", "spec.pod.initContainers.env")
        _require_unique(self.volume_mounts, "mount_path", "spec.pod.initContainers.volumeMounts.mountPath")
        return self


class PodTemplate(ApiModel):
    """What the job adds to its pods. Worker pods get all of it. The rendezvous store pod gets the metadata,
    imagePullSecrets, serviceAccountName (its token stays unmounted) and securityContext, but none of the
    volumes, mounts or init containers: it only serves the rendezvous."""

    metadata: PodMetadata | None = Field(None, description="Labels and annotations for the worker and store pods.")
    service_account_name: ObjectName | None = Field(
        None,
        description="ServiceAccount the pods run as: the identity that reads an object store (IRSA, Workload "
        "Identity). Default: the namespace's default ServiceAccount.",
    )
    automount_service_account_token: bool | None = Field(
        None,
        description="Mount the ServiceAccount's API token into the worker pods. Default: false (the trainer does "
        "not call the Kubernetes API). Cloud identities that use projected tokens of their own do not need it.",
    )
    image_pull_secrets: list[LocalObjectReference] | None = Field(
        None,
        max_length=16,
        description="Secrets of type kubernetes.io/dockerconfigjson for pulling from a private registry.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
    )
    security_context: PodSecurityContext | None = Field(
        None, description="Merged field by field over the defaults (runAsNonRoot, UID/GID/fsGroup 1000, seccomp RuntimeDefault)."
    )
    volumes: list[Volume] | None = Field(
        None,
        max_length=64,
        description="Volumes for the worker pods: datasets (persistentVolumeClaim, nfs, csi), scripts and config "
        "(configMap), credentials (secret, projected), scratch (emptyDir, ephemeral). Mount them with "
        "spec.container.volumeMounts.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
    )
    init_containers: list[ExtraContainer] | None = Field(
        None,
        max_length=16,
        description="Init containers (e.g. stage data to local disk) and native sidecars (restartPolicy: Always), "
        "in order, for the worker pods.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
    )
    shm_size: Quantity | None = Field(
        None,
        description="Size limit of /dev/shm (a memory-backed volume that counts toward the pod's memory), e.g. 16Gi. "
        "Default: no limit of its own.",
    )

    def volume_names(self) -> set[str]:
        return {v.name for v in self.volumes or ()}

    @model_validator(mode="after")
    def _unique_entries(self):
        _require_unique(self.volumes, "name", "spec.pod.volumes.name")
        _require_unique(self.init_containers, "name", "spec.pod.initContainers.name")
        _require_unique(self.image_pull_secrets, "name", "spec.pod.imagePullSecrets.name")
        return self


class ReplicaSpec(ApiModel):
    """How many worker pods (torchrun agents) the job may run: it trains with any number between min and max."""

    min: int = Field(1, ge=1, le=1024, description="Fewest replicas the job trains with; below this it waits.")
    max: int = Field(1, ge=1, le=1024, description="Most replicas; the operator grows the job toward max when capacity allows.")

    cel_rules = (
        Rule(
            "self.min <= self.max",
            "spec.replicas.min must be less than or equal to spec.replicas.max",
            lambda s: s.min <= s.max,
        ),
    )


class TrainerSpec(ApiModel):
    """Settings of the built-in trainer (ignored when spec.container.command runs your own program)."""

    workload: str = Field(
        "builtin:gpt",
        max_length=256,
        pattern=r"^(builtin:[a-z0-9-]+|[A-Za-z_][A-Za-z0-9_.]*:[A-Za-z_][A-Za-z0-9_]*)$",
        description="What to train: builtin:gpt (a small GPT on bundled text) or module:function in "
        "your image that returns a kubetrain_trainer.api.Workload.",
    )
    max_steps: int = Field(1000, ge=1, description="Job-wide optimizer steps to train; the job succeeds when reached.")
    batch_size: int = Field(8, ge=1, le=65536, description="Samples per process per step (micro-batch).")
    sequence_length: int = Field(128, ge=8, le=1048576, description="Tokens per sample.")
    learning_rate: float = Field(3e-4, gt=0, le=10, description="Peak learning rate.")
    seed: int = Field(0, ge=0, description="Seed for model init and the data order.")
    args: dict[str, Annotated[str, Field(max_length=1024)]] | None = Field(
        None, max_length=64, description="Free-form settings passed to the workload function."
    )


# PowerSGD defaults, from bench/results/compression_loss.md (builtin:gpt, 0.9M parameters, 300 steps, 2 replicas):
# no setting kept the loss within 1% of no compression at >= 10x fewer bytes; rank 16 came nearest on the loss side.
DEFAULT_POWERSGD_RANK = 16
DEFAULT_POWERSGD_START_FRACTION = 0.05


class PowerSGDSpec(ApiModel):
    """PowerSGD low-rank gradient compression (DDP only). Measured trade-off: bench/results/compression_loss.md."""

    rank: int = Field(
        DEFAULT_POWERSGD_RANK, ge=1, le=64,
        description="Rank of the low-rank approximation: higher costs less loss and saves fewer bytes. Measured on "
        "the built-in GPT (0.9M parameters, 300 steps), final loss against no compression and bytes saved over the "
        "job: rank 16 about +1% at 4.6x fewer bytes, 8 about +5% at 7x, 4 about +13% at 10x, 1 about +27% at 15x "
        "(fp16/bf16 compression: no measurable loss at 2x). A larger model needs more rank, not less.",
    )
    start_fraction: float = Field(
        DEFAULT_POWERSGD_START_FRACTION, ge=0, le=1,
        description="Fraction of trainer.maxSteps trained with plain all-reduce before compression starts, so the "
        "warm-up scales with the job (0.05 of 20,000 steps = 1,000, torch's default). Measured at rank 4: starting at "
        "1%, 5% or 10% cost the same loss (+13%), 20% a little less (+11%); every warm-up step sends the full "
        "gradient, so a start at f caps the saving at 1/f.",
    )
    start_iteration: int | None = Field(
        None, ge=1,
        description="Steps of plain all-reduce before compression starts, instead of startFraction x maxSteps "
        "(at least 2 with errorFeedback or warmStart). A fixed count does not scale with the job: 10 steps is 3% of "
        "300 but 0.05% of 20,000, below what torch's PowerSGD guidance advises (10%).",
    )
    min_compression_rate: float = Field(
        2.0, ge=1, description="Only tensors that compress at least this much are compressed."
    )
    error_feedback: bool = Field(
        True, description="Carry the compression error into the next step. Off, it cost +20% loss instead of +13% at "
        "rank 4 (measured).",
    )
    warm_start: bool = Field(
        True, description="Reuse the previous step's low-rank factors. Off, it cost +18% loss instead of +13% at rank 4 "
        "(measured).",
    )

    cel_rules = (
        Rule(
            "!(self.errorFeedback || self.warmStart) || !has(self.startIteration) || self.startIteration >= 2",
            "spec.compression.powerSGD.startIteration must be at least 2 when errorFeedback or warmStart is on",
            lambda s: not (s.error_feedback or s.warm_start) or s.start_iteration is None or s.start_iteration >= 2,
        ),
    )


class CompressionSpec(ApiModel):
    """Gradient compression for the gradient all-reduce."""

    type: CompressionType = Field(
        "none",
        description="none; fp16 or bf16 (gradients cast for communication; with fsdp, the reduce dtype); "
        "powersgd (low-rank, DDP only; powerSGD's defaults unless set). Measured loss cost against bytes saved: "
        "bench/results/compression_loss.md.",
    )
    power_sgd: PowerSGDSpec | None = Field(
        None, alias="powerSGD", description="PowerSGD parameters (type powersgd only); omitted: every default."
    )

    cel_rules = (
        Rule(
            "self.type == 'powersgd' || !has(self.powerSGD)",
            "spec.compression.powerSGD is only allowed when spec.compression.type is powersgd",
            lambda s: s.type == "powersgd" or s.power_sgd is None,
        ),
    )

    def powersgd(self) -> PowerSGDSpec:
        """The PowerSGD settings in force (the defaults when powerSGD is omitted)."""
        return self.power_sgd or PowerSGDSpec()


class PVCSource(ApiModel):
    """A PersistentVolumeClaim in the job's namespace."""

    claim_name: str = Field(..., min_length=1, max_length=253, description="Name of the PersistentVolumeClaim.")


class EmptyDirSource(ApiModel):
    """A pod-local scratch volume: checkpoints die with the pod. For tests and demos only."""

    medium: Literal["", "Memory"] | None = Field(None, description="Empty for node disk, Memory for tmpfs.")
    size_limit: Quantity | None = Field(None, description="Size limit of the volume, e.g. 10Gi.")


class CheckpointSpec(ApiModel):
    """Where and how often the trainer saves distributed checkpoints; every start resumes from the latest."""

    persistent_volume_claim: PVCSource | None = Field(
        None, description="Store checkpoints on this claim (ReadWriteMany, so every replica and every restart sees them)."
    )
    empty_dir: EmptyDirSource | None = Field(
        None, description="Store checkpoints in a pod-local emptyDir (lost with the pod; for tests)."
    )
    path: str = Field(
        "",
        max_length=1024,
        pattern=r"^([A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*)?$",
        description="Relative directory inside the volume; empty means <namespace>/<job name>.",
    )
    interval_steps: int = Field(100, ge=1, description="Save every this many steps (and on SIGTERM).")
    keep: int = Field(2, ge=1, le=100, description="Complete checkpoints to keep; older ones are deleted.")
    init_from: str = Field(
        "",
        max_length=1024,
        pattern=r"^([A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*)?$",
        description="Another job's checkpoint directory in the same volume to start from while this job has no "
        "checkpoint of its own: its model, optimizer state and step, with this job's learning rate (a "
        "population-based-training trial continuing a better trial). Empty: start fresh.",
    )

    cel_rules = (
        Rule(
            "has(self.persistentVolumeClaim) != has(self.emptyDir)",
            "spec.checkpoint: set exactly one of persistentVolumeClaim or emptyDir",
            lambda s: (s.persistent_volume_claim is None) != (s.empty_dir is None),
        ),
    )


class FailurePolicy(ApiModel):
    """How many restarts the job may use and which failures deserve one."""

    max_restarts: int = Field(
        3,
        ge=0,
        le=1000,
        description="Restarts the whole job may use (failed or lost workers re-rendezvous); beyond it the job Fails.",
    )
    retry_on: list[RetryableReason] = Field(
        default_factory=lambda: [r.value for r in vocabulary.DEFAULT_RETRY_ON],
        max_length=7,
        description="Failure reasons that use a restart; any other fails the job at once. ConfigError and "
        "ImagePullError are never retried.",
        json_schema_extra={"x-kubernetes-list-type": "set"},
    )


class Toleration(ApiModel):
    """A toleration, as in a Pod."""

    key: str | None = Field(None, max_length=316, description="Taint key; empty with Exists matches all taints.")
    operator: Literal["Exists", "Equal"] | None = Field(None, description="Exists or Equal (the default).")
    value: str | None = Field(None, max_length=63, description="Taint value for Equal.")
    effect: Literal["", "NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(
        None, description="Taint effect to match; empty matches all."
    )
    toleration_seconds: int | None = Field(None, description="For NoExecute: how long the pod stays bound after the taint.")


class GoodputSchedulingSpec(ApiModel):
    """Whether the operator's goodput allocator may move this job's GPUs (docs/scheduling.md)."""

    enabled: bool | None = Field(
        None,
        description="true: every interval the allocator sets this job's replicas between min and max to give each GPU "
        "to the job that gains most from it (its measured throughput, weighed by the statistical efficiency of its "
        "reported gradient noise scale; every resize is charged what this job's resizes have cost it). false: the "
        "job grows to max when GPUs are free, as without the allocator, and is never resized by it. Unset: the "
        "operator's default (Helm value scheduling.goodput.default).",
    )


class SchedulingSpec(ApiModel):
    """Where the worker pods may run and who admits them."""

    node_selector: dict[str, Annotated[str, Field(max_length=63)]] | None = Field(
        None, max_length=32, description="Node labels the worker pods require, e.g. {nvidia.com/gpu.product: NVIDIA-H100-80GB-HBM3}."
    )
    tolerations: list[Toleration] | None = Field(None, max_length=32, description="Tolerations for the worker pods.")
    affinity: dict[str, Any] | None = Field(
        None,
        description="Pod affinity and anti-affinity, as in a Pod's spec.affinity.",
        json_schema_extra={"x-kubernetes-preserve-unknown-fields": True},
    )
    priority_class_name: str | None = Field(None, max_length=253, description="PriorityClass of the worker pods.")
    scheduler_name: str | None = Field(None, max_length=253, description="Scheduler for the worker pods (default kube-scheduler).")
    queue_name: str | None = Field(
        None,
        max_length=63,
        # It becomes the kueue.x-k8s.io/queue-name label: a label value, or the label patch fails.
        pattern=LABEL_VALUE,
        description="Kueue LocalQueue. Kueue reads the kueue.x-k8s.io/queue-name label; the operator "
        "keeps a job with either suspended until Kueue admits it.",
    )
    goodput: GoodputSchedulingSpec | None = Field(
        None, description="Goodput-aware elastic scheduling across jobs: opt in or out (unset: the operator's default)."
    )


class MetricsSpec(ApiModel):
    """The Prometheus endpoint each worker pod serves."""

    enabled: bool = Field(True, description="Serve trainer metrics (tokens/s, MFU, loss, GPU) for Prometheus.")
    port: int = Field(9404, ge=1024, le=65535, description="Container port of the metrics endpoint (non-root, so ≥ 1024).")


class TrainingJobSpec(ApiModel):
    """The desired state of an elastic PyTorch training job."""

    replicas: ReplicaSpec = Field(default_factory=ReplicaSpec, description="Elastic replica range (worker pods).")
    container: ContainerSpec = Field(default_factory=ContainerSpec, description="The trainer container.")
    trainer: TrainerSpec = Field(default_factory=TrainerSpec, description="Built-in trainer settings.")
    precision: Precision = Field(
        "fp32",
        description="Numeric precision: fp32; tf32 (fp32 with TF32 matmuls on CUDA); bf16 or fp16 autocast "
        "(fp16 with a gradient scaler); fp8 (Hopper-class GPUs only, refused elsewhere).",
    )
    strategy: Strategy = Field("ddp", description="Data parallelism: ddp (replicated) or fsdp (FSDP2, sharded).")
    compression: CompressionSpec = Field(default_factory=CompressionSpec, description="Gradient compression.")
    checkpoint: CheckpointSpec | None = Field(
        None, description="Checkpoint storage and cadence. Without it, a restart begins training from step 0."
    )
    failure_policy: FailurePolicy = Field(default_factory=FailurePolicy, description="Restart cap and retryable failures.")
    active_deadline_seconds: int | None = Field(
        None, ge=1, description="Fail the job this many seconds after status.startTime (when the operator started it), "
        "as a Kubernetes Job does: time spent waiting for capacity counts; a suspension restarts the clock."
    )
    ttl_seconds_after_finished: int | None = Field(
        None, ge=0, description="Delete the job this long after it Succeeded or Failed. Unset keeps it."
    )
    keep_pods: Literal["None", "Failed", "All"] = Field(
        "Failed",
        description="Worker pods kept after the job ends: None, Failed (for their logs), or All.",
    )
    suspend: bool = Field(
        False, description="Delete the pods and keep the checkpoint; set back to false to resume. Kueue flips it to admit."
    )
    scheduling: SchedulingSpec = Field(default_factory=SchedulingSpec, description="Placement and queueing.")
    metrics: MetricsSpec = Field(default_factory=MetricsSpec, description="Trainer metrics endpoint.")
    pod: PodTemplate = Field(
        default_factory=PodTemplate,
        description="What the job adds to its pods: volumes, ServiceAccount, pull secrets, security context, "
        "init containers and sidecars, labels and annotations. The operator's own fields stay its own.",
    )

    cel_rules = (
        Rule(
            "!has(self.container.volumeMounts) || self.container.volumeMounts.all(m, has(self.pod.volumes) && "
            "self.pod.volumes.exists(v, v.name == m.name))",
            "spec.container.volumeMounts.name must name a volume in spec.pod.volumes",
            lambda s: all(m.name in s.pod.volume_names() for m in s.container.volume_mounts or ()),
        ),
        Rule(
            "!has(self.pod.initContainers) || self.pod.initContainers.all(c, !has(c.volumeMounts) || "
            "c.volumeMounts.all(m, has(self.pod.volumes) && self.pod.volumes.exists(v, v.name == m.name)))",
            "spec.pod.initContainers.volumeMounts.name must name a volume in spec.pod.volumes",
            lambda s: all(m.name in s.pod.volume_names() for c in s.pod.init_containers or () for m in c.volume_mounts or ()),
        ),
        Rule(
            "!has(self.pod.initContainers) || self.pod.initContainers.all(c, !has(c.ports) || "
            "c.ports.all(p, !self.metrics.enabled || p.containerPort != self.metrics.port))",
            "spec.pod.initContainers.ports.containerPort must not be spec.metrics.port: the trainer serves its metrics there",
            lambda s: not s.metrics.enabled
            or all(p.container_port != s.metrics.port for c in s.pod.init_containers or () for p in c.ports or ()),
        ),
        Rule(
            "self.strategy == 'ddp' || self.compression.type != 'powersgd'",
            "spec.compression.type powersgd needs spec.strategy ddp (FSDP compresses through its reduce dtype: use fp16 or bf16)",
            lambda s: s.strategy == "ddp" or s.compression.type != "powersgd",
        ),
        Rule(
            "!has(self.checkpoint) || !has(self.checkpoint.emptyDir) || self.replicas.max == 1",
            "spec.checkpoint.emptyDir needs spec.replicas.max 1: every replica must see the same checkpoints, "
            "so use a ReadWriteMany persistentVolumeClaim",
            lambda s: s.checkpoint is None or s.checkpoint.empty_dir is None or s.replicas.max == 1,
        ),
        Rule(
            "self.precision != 'fp8' || self.container.gpusPerReplica > 0",
            "spec.precision fp8 needs GPUs: set spec.container.gpusPerReplica (fp8 runs on Hopper-class GPUs only)",
            lambda s: s.precision != "fp8" or s.container.gpus_per_replica > 0,
        ),
    )


class Condition(ApiModel):
    """A condition in the Kubernetes convention."""

    type: str = Field(..., max_length=316, description="Running, Succeeded, Failed, Suspended, Restarting, Scaling, Admitted or Schedulable.")
    status: Literal["True", "False", "Unknown"] = Field(..., description="True, False or Unknown.")
    reason: str = Field("", max_length=1024, description="CamelCase reason, e.g. NodeLost, OOMKilled, InsufficientCapacity.")
    message: str = Field("", max_length=32768, description="Human-readable details.")
    last_transition_time: datetime | None = Field(None, description="When status last changed.")
    observed_generation: int | None = Field(None, ge=0, description="The spec generation this condition reflects.")


class Throughput(ApiModel):
    """The latest throughput read from the trainer's metrics."""

    tokens_per_second: float | None = Field(None, ge=0, description="Job-wide tokens per second.")
    samples_per_second: float | None = Field(None, ge=0, description="Job-wide samples per second.")
    step: int | None = Field(None, ge=0, description="Job-wide optimizer step.")
    loss: float | None = Field(None, description="Training loss at that step (mean over all ranks): a sweep's objective.")
    gradient_noise_scale: float | None = Field(
        None, ge=0,
        description="Gradient noise scale in samples (kubetrain_trainer_gradient_noise_scale; absent at world size 1 "
        "and under FSDP): the global batch beyond which more replicas buy throughput but little progress. The goodput "
        "allocator weighs each job's throughput by the statistical efficiency it implies.",
    )
    observed_time: datetime | None = Field(None, description="When these figures were read.")


class ScalingEvent(ApiModel):
    """The last scaling decision."""

    time: datetime | None = Field(None, description="When the operator decided.")
    from_replicas: int | None = Field(None, ge=0, description="Replicas before.")
    to_replicas: int | None = Field(None, ge=0, description="Replicas after.")
    reason: str = Field("", description="Why, e.g. NodeLost, CapacityAvailable, BelowMinimum.")


class AllocationStatus(ApiModel):
    """What the goodput allocator holds for a job it manages (docs/scheduling.md)."""

    replicas: int | None = Field(None, ge=0, description="The allocator's replicas for the job (desiredReplicas follows as GPUs free up).")
    restart_seconds: float | None = Field(
        None, ge=0,
        description="Seconds of progress one resize costs this job, charged against every move the allocator weighs: "
        "learned from the job's own resizes (wall time from the resize to throughput at the new size, less the steps "
        "made meanwhile) or, before the first, the operator's default (scheduling.goodput.restartSeconds).",
    )
    restarts_measured: int | None = Field(None, ge=0, description="Resizes restartSeconds was learned from (0: the default).")


class TrainingJobStatus(ApiModel):
    """The observed state of the job, written by the operator."""

    phase: Phase | None = Field(None, description="Pending, Running, Restarting, Scaling, Suspended, Succeeded or Failed.")
    conditions: list[Condition] | None = Field(
        None,
        description="Conditions in the Kubernetes convention.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )
    observed_generation: int | None = Field(None, ge=0, description="The spec generation the operator last acted on.")
    desired_replicas: int | None = Field(None, ge=0, description="Replicas the operator wants now (between min and max, as capacity allows).")
    current_replicas: int | None = Field(None, ge=0, description="Worker pods that exist and are not finished.")
    ready_replicas: int | None = Field(None, ge=0, description="Worker pods that are Running and ready.")
    world_size: int | None = Field(None, ge=0, description="Training processes: ready replicas × processes per replica.")
    restarts: int | None = Field(None, ge=0, description="Restarts used, out of spec.failurePolicy.maxRestarts.")
    start_time: datetime | None = Field(
        None,
        description="When the operator started the job (first pods created, or the last resume from suspension); "
        "spec.activeDeadlineSeconds counts from it.",
    )
    completion_time: datetime | None = Field(None, description="When the job Succeeded or Failed.")
    throughput: Throughput | None = Field(None, description="Latest throughput, read from the trainer's metrics.")
    last_scaling: ScalingEvent | None = Field(None, description="The last scaling decision.")
    allocation: AllocationStatus | None = Field(None, description="The goodput allocator's view of the job, when it manages it.")
    rendezvous_id: str | None = Field(None, description="The torchrun rendezvous id of this job.")
    queue: str | None = Field(
        None, max_length=256,
        description="Kueue (docs/kueue.md), for a queued job: 'Admitted <workers>/<max> (<ClusterQueue>)', "
        "or why it waits: WaitingForQueue, QueueInadmissible, Preempted, Evicted.",
    )
    selector: str | None = Field(None, description="Label selector of the worker pods (for the scale subresource).")


class ObjectMeta(ApiModel):
    """The part of ObjectMeta a manifest carries; the apiserver owns the rest."""

    model_config = ApiModel.model_config | {"extra": "allow"}

    name: str = Field(
        ...,
        max_length=MAX_JOB_NAME_LENGTH,
        pattern=r"^[a-z]([-a-z0-9]*[a-z0-9])?$",
        description="Job name: a DNS-1035 label of at most 50 characters (it prefixes pod and Service names).",
    )
    namespace: str | None = None
    labels: dict[str, str] | None = None
    annotations: dict[str, str] | None = None


class TrainingJob(ApiModel):
    """An elastic PyTorch training job: torchrun workers between min and max replicas, with
    precision, gradient compression, checkpoints and throughput metrics."""

    api_version: Literal["kubetrain.dev/v1alpha1"] = Field(API_VERSION, description="kubetrain.dev/v1alpha1")
    kind: Literal["TrainingJob"] = Field(KIND, description="TrainingJob")
    metadata: ObjectMeta
    spec: TrainingJobSpec = Field(default_factory=TrainingJobSpec, description="Desired state.")
    status: TrainingJobStatus | None = Field(None, description="Observed state.")
