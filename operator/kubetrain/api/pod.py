"""What a TrainingJob may add to its pods: data volumes, identity, pull secrets,
security context, init containers and sidecars, pod metadata.

The shape is curated rather than a free pod template: every field here is typed,
so the CRD schema and the CEL rules refuse a bad value at admission and name the
field, instead of the apiserver refusing the pod later, when the operator
creates it. What the operator owns (restart policy, the trainer container's
name, command and ports, the GPU resource, its own volumes and mounts) has no
field here, and the names and paths it uses are reserved.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field

from kubetrain.api.base import ApiModel, Rule

# The volumes every worker pod gets from the operator, by name, with where the
# trainer container mounts them. User volumes and mounts may not reuse either.
OPERATOR_VOLUMES = {"tmp": "/tmp", "dshm": "/dev/shm", "checkpoints": "/checkpoints"}
# The container names the operator gives its own containers (worker, store).
OPERATOR_CONTAINERS = ("trainer", "store")
# Label and annotation keys under our API group are the operator's (job name, role, slot, ...).
RESERVED_KEY_PREFIX = "kubetrain.dev/"

# Kubernetes' own validation, as RE2 (CEL) and Python regexes alike.
DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
# A qualified name (label and annotation keys): [prefix/]name, name <= 63 characters.
QUALIFIED_NAME = r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?([A-Za-z0-9][-A-Za-z0-9_.]{0,61})?[A-Za-z0-9]$"
LABEL_VALUE = r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$"
# An image reference as the container runtimes parse it: [registry[:port]/]path[:tag][@digest].
# Kubernetes accepts any string here; the kubelet then fails with InvalidImageName.
IMAGE_REFERENCE = (
    r"^([A-Za-z0-9]([-A-Za-z0-9]*[A-Za-z0-9])?(\.[A-Za-z0-9]([-A-Za-z0-9]*[A-Za-z0-9])?)*(:[0-9]+)?/)?"
    r"[a-z0-9]+(([._]|__|-+)[a-z0-9]+)*(/[a-z0-9]+(([._]|__|-+)[a-z0-9]+)*)*"
    r"(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(@[A-Za-z][A-Za-z0-9]*([-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,})?$"
)
ABSOLUTE_PATH = r"^/.*$"
# resource.Quantity's syntax, as Kubernetes' own CRDs declare it, without the minus sign (every
# quantity here is a size or an amount, and a pod with a negative one is refused): a schema
# pattern, not a CEL rule, so it costs nothing in the CRD's CEL budget however many containers
# carry resources.
QUANTITY = r"^\+?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
_QUANTITY = re.compile(QUANTITY)


def _quantity(value: str) -> str:
    if len(value) > 64 or not _QUANTITY.match(value):
        raise ValueError("must be a Kubernetes quantity (e.g. 8, 500m, 64Gi)")
    return value


Quantity = Annotated[
    Annotated[int, Field(ge=0)] | Annotated[str, AfterValidator(_quantity), Field(json_schema_extra={"pattern": QUANTITY, "maxLength": 64})],
    Field(description="A Kubernetes quantity, e.g. 500m, 16Gi or 4."),
]

_QUALIFIED_NAME = re.compile(QUALIFIED_NAME)
_LABEL_VALUE = re.compile(LABEL_VALUE)

DnsLabel = Annotated[str, Field(min_length=1, max_length=63, pattern=DNS_LABEL)]
ObjectName = Annotated[str, Field(min_length=1, max_length=253, pattern=DNS_SUBDOMAIN)]
ImageReference = Annotated[str, Field(min_length=1, max_length=512, pattern=IMAGE_REFERENCE)]
# Container ports are a pod's, shared by all its containers.
ContainerPortNumber = Annotated[int, Field(ge=1, le=65535)]


def _valid_labels(labels: dict[str, str] | None) -> bool:
    return all(len(k.rsplit("/", 1)[-1]) <= 63 and len(k) <= 316 and _QUALIFIED_NAME.match(k)
               for k in labels or {})


def _valid_label_values(labels: dict[str, str] | None) -> bool:
    return all(len(v) <= 63 and _LABEL_VALUE.match(v) for v in (labels or {}).values())


def _unreserved(keys: dict[str, str] | None) -> bool:
    return not any(k.startswith(RESERVED_KEY_PREFIX) for k in keys or {})


class PodMetadata(ApiModel):
    """Labels and annotations added to every pod of the job: the worker pods and the rendezvous store pod."""

    labels: dict[str, Annotated[str, Field(max_length=63)]] | None = Field(
        None,
        max_length=64,
        description="Labels for the job's pods, e.g. {team: vision, cost-center: ml-42}. Keys under kubetrain.dev/ "
        "are the operator's.",
    )
    annotations: dict[str, Annotated[str, Field(max_length=65536)]] | None = Field(
        None,
        max_length=64,
        description="Annotations for the job's pods, e.g. {cluster-autoscaler.kubernetes.io/safe-to-evict: \"false\", "
        "sidecar.istio.io/inject: \"false\"}. Keys under kubetrain.dev/ are the operator's.",
    )

    cel_rules = (
        Rule(
            f"!has(self.labels) || self.labels.all(k, k.size() <= 316 && k.matches(r'{QUALIFIED_NAME}'))",
            "spec.pod.metadata.labels: every key must be a qualified name ([prefix/]name, name at most 63 "
            "characters of letters, digits, '-', '_' and '.')",
            lambda s: _valid_labels(s.labels),
        ),
        Rule(
            f"!has(self.labels) || self.labels.all(k, self.labels[k].matches(r'{LABEL_VALUE}'))",
            "spec.pod.metadata.labels: every value must be a label value (at most 63 letters, digits, '-', '_' "
            "and '.', starting and ending with a letter or digit)",
            lambda s: _valid_label_values(s.labels),
        ),
        Rule(
            f"!has(self.annotations) || self.annotations.all(k, k.size() <= 316 && k.matches(r'{QUALIFIED_NAME}'))",
            "spec.pod.metadata.annotations: every key must be a qualified name ([prefix/]name)",
            lambda s: _valid_labels(s.annotations),
        ),
        Rule(
            f"(!has(self.labels) || !self.labels.exists(k, k.startsWith('{RESERVED_KEY_PREFIX}'))) && "
            f"(!has(self.annotations) || !self.annotations.exists(k, k.startsWith('{RESERVED_KEY_PREFIX}')))",
            f"spec.pod.metadata: keys under {RESERVED_KEY_PREFIX} are the operator's (job name, role, replica index)",
            lambda s: _unreserved(s.labels) and _unreserved(s.annotations),
        ),
    )


class LocalObjectReference(ApiModel):
    """A reference to an object in the job's namespace, by name."""

    name: ObjectName = Field(..., description="Name of the object.")


class SeccompProfile(ApiModel):
    """The seccomp profile a container runs under."""

    type: Literal["RuntimeDefault", "Localhost", "Unconfined"] = Field(
        ..., description="RuntimeDefault (the default here), Localhost (a profile file on the node) or Unconfined."
    )
    localhost_profile: str | None = Field(
        None, max_length=4096, description="With type Localhost: the profile's path relative to the kubelet's seccomp directory."
    )

    cel_rules = (
        Rule(
            "self.type == 'Localhost' ? has(self.localhostProfile) : !has(self.localhostProfile)",
            "seccompProfile.localhostProfile must be set with type Localhost, and only then",
            lambda s: (s.type == "Localhost") == (s.localhost_profile is not None),
        ),
    )


class Capabilities(ApiModel):
    """Linux capabilities added to or dropped from the restricted default (which drops ALL)."""

    add: list[Annotated[str, Field(max_length=64, pattern=r"^[A-Z_]+$")]] | None = Field(
        None, max_length=64, description="Capabilities to add, e.g. [IPC_LOCK] for RDMA memory registration."
    )
    drop: list[Annotated[str, Field(max_length=64, pattern=r"^[A-Z_]+$")]] | None = Field(
        None, max_length=64, description="Capabilities to drop. Default: [ALL]."
    )


def _root_needs_consent(s: Any) -> bool:
    return s.run_as_user != 0 or s.run_as_non_root is False


_ROOT_NEEDS_CONSENT_CEL = "!has(self.runAsUser) || self.runAsUser != 0 || (has(self.runAsNonRoot) && !self.runAsNonRoot)"


class ContainerSecurityContext(ApiModel):
    """Container security settings, merged field by field over the restricted defaults: non-root, no privilege
    escalation, read-only root filesystem, all capabilities dropped, seccomp RuntimeDefault. A field left
    unset keeps its default. Loosening one (root, privilege, escalation, a writable root) must be spelled
    out here and takes the pod out of the Pod Security "restricted" profile (see docs/operator.md)."""

    run_as_user: int | None = Field(None, ge=0, le=2147483647, description="UID the container runs as. 0 (root) needs runAsNonRoot: false.")
    run_as_group: int | None = Field(None, ge=0, le=2147483647, description="GID the container runs as.")
    run_as_non_root: bool | None = Field(None, description="Refuse to start as root. Default: true.")
    read_only_root_filesystem: bool | None = Field(
        None, description="Mount the image read-only. Default: true; /tmp and /dev/shm stay writable."
    )
    allow_privilege_escalation: bool | None = Field(
        None, description="Allow setuid binaries to gain privileges. Default: false. privileged and CAP_SYS_ADMIN need true."
    )
    privileged: bool | None = Field(None, description="Run privileged (full access to the node). Needs allowPrivilegeEscalation: true.")
    capabilities: Capabilities | None = Field(None, description="Capabilities to add or drop. Default: drop ALL.")
    seccomp_profile: SeccompProfile | None = Field(None, description="Seccomp profile. Default: RuntimeDefault.")

    cel_rules = (
        Rule(
            _ROOT_NEEDS_CONSENT_CEL,
            "securityContext.runAsUser 0 (root) needs runAsNonRoot: false, set explicitly (the default refuses root)",
            _root_needs_consent,
        ),
        Rule(
            "!has(self.privileged) || !self.privileged || (has(self.allowPrivilegeEscalation) && self.allowPrivilegeEscalation)",
            "securityContext.privileged needs allowPrivilegeEscalation: true, set explicitly (the default is false)",
            lambda s: not s.privileged or s.allow_privilege_escalation is True,
        ),
        Rule(
            "!has(self.capabilities) || !has(self.capabilities.add) || "
            "!self.capabilities.add.exists(c, c == 'SYS_ADMIN' || c == 'CAP_SYS_ADMIN') || "
            "(has(self.allowPrivilegeEscalation) && self.allowPrivilegeEscalation)",
            "securityContext.capabilities.add SYS_ADMIN needs allowPrivilegeEscalation: true, set explicitly",
            lambda s: s.capabilities is None
            or not {"SYS_ADMIN", "CAP_SYS_ADMIN"} & set(s.capabilities.add or ())
            or s.allow_privilege_escalation is True,
        ),
    )


class Sysctl(ApiModel):
    """A namespaced kernel parameter for the pod."""

    name: str = Field(..., min_length=1, max_length=253, pattern=r"^([a-z0-9]([-_a-z0-9]*[a-z0-9])?[./])*[a-z0-9]([-_a-z0-9]*[a-z0-9])?$",
                      description="Parameter name, e.g. net.ipv4.tcp_keepalive_time.")
    value: str = Field(..., max_length=1024, description="Value to set.")


class PodSecurityContext(ApiModel):
    """Pod security settings, merged field by field over the defaults: runAsNonRoot, UID/GID/fsGroup 1000,
    seccomp RuntimeDefault. Set fsGroup to your volume's group so a claim is writable. The worker pods and
    the rendezvous store pod both get it."""

    run_as_user: int | None = Field(None, ge=0, le=2147483647, description="UID of every container. Default: 1000. 0 needs runAsNonRoot: false.")
    run_as_group: int | None = Field(None, ge=0, le=2147483647, description="GID of every container. Default: 1000.")
    run_as_non_root: bool | None = Field(None, description="Refuse to start containers as root. Default: true.")
    fs_group: int | None = Field(None, ge=0, le=2147483647, description="Group that owns the pod's volumes. Default: 1000.")
    fs_group_change_policy: Literal["OnRootMismatch", "Always"] | None = Field(
        None, description="When to change volume ownership to fsGroup: Always, or OnRootMismatch (faster on large volumes)."
    )
    supplemental_groups: list[Annotated[int, Field(ge=0, le=2147483647)]] | None = Field(
        None, max_length=32, description="Extra groups of every container, e.g. the group of an NFS export."
    )
    seccomp_profile: SeccompProfile | None = Field(None, description="Seccomp profile of every container. Default: RuntimeDefault.")
    sysctls: list[Sysctl] | None = Field(None, max_length=32, description="Namespaced sysctls for the pod.")

    cel_rules = (
        Rule(
            _ROOT_NEEDS_CONSENT_CEL,
            "spec.pod.securityContext.runAsUser 0 (root) needs runAsNonRoot: false, set explicitly (the default refuses root)",
            _root_needs_consent,
        ),
    )


class VolumeMount(ApiModel):
    """A volume from spec.pod.volumes mounted into a container."""

    name: DnsLabel = Field(..., description="Name of a volume in spec.pod.volumes.")
    mount_path: str = Field(..., min_length=1, max_length=4096, pattern=ABSOLUTE_PATH, description="Absolute path in the container.")
    read_only: bool | None = Field(None, description="Mount read-only (recommended for datasets).")
    sub_path: str | None = Field(
        None, max_length=1024, pattern=r"^[^/].*$", description="A relative path inside the volume to mount instead of its root."
    )

    cel_rules = (
        Rule(
            "!has(self.subPath) || !(self.subPath == '..' || self.subPath.startsWith('../') || "
            "self.subPath.endsWith('/..') || self.subPath.contains('/../'))",
            "volumeMounts.subPath must not contain '..'",
            lambda s: s.sub_path is None or ".." not in s.sub_path.split("/"),
        ),
    )


class KeyToPath(ApiModel):
    """One key of a ConfigMap or Secret, projected to a file."""

    key: str = Field(..., min_length=1, max_length=253, description="The key.")
    path: str = Field(..., min_length=1, max_length=4096, pattern=r"^[^/].*$", description="Relative file path for it.")
    mode: int | None = Field(None, ge=0, le=0o777, description="File mode bits (octal 0444 is decimal 292).")


class ConfigMapVolumeSource(ApiModel):
    """A ConfigMap's keys as files, e.g. a training script."""

    name: ObjectName = Field(..., description="Name of the ConfigMap in the job's namespace.")
    items: list[KeyToPath] | None = Field(None, max_length=256, description="Only these keys, at these paths. Default: every key.")
    default_mode: int | None = Field(None, ge=0, le=0o777, description="Mode of the files (octal 0644 is decimal 420).")
    optional: bool | None = Field(None, description="Start without the ConfigMap if it is missing.")


class SecretVolumeSource(ApiModel):
    """A Secret's keys as files, e.g. credentials for an object store."""

    secret_name: ObjectName = Field(..., description="Name of the Secret in the job's namespace.")
    items: list[KeyToPath] | None = Field(None, max_length=256, description="Only these keys, at these paths. Default: every key.")
    default_mode: int | None = Field(None, ge=0, le=0o777, description="Mode of the files (octal 0400 is decimal 256).")
    optional: bool | None = Field(None, description="Start without the Secret if it is missing.")


class ClaimVolumeSource(ApiModel):
    """A PersistentVolumeClaim in the job's namespace."""

    claim_name: ObjectName = Field(..., description="Name of the claim.")
    read_only: bool | None = Field(None, description="Mount the claim read-only.")


class NFSVolumeSource(ApiModel):
    """An NFS export."""

    server: str = Field(..., min_length=1, max_length=253, description="Hostname or IP address of the NFS server.")
    path: str = Field(..., min_length=1, max_length=4096, pattern=ABSOLUTE_PATH, description="Exported path.")
    read_only: bool | None = Field(None, description="Mount the export read-only.")


class CSIVolumeSource(ApiModel):
    """An inline volume from a CSI driver (e.g. an object-store FUSE driver)."""

    driver: str = Field(..., min_length=1, max_length=63, pattern=DNS_SUBDOMAIN, description="Name of the CSI driver.")
    read_only: bool | None = Field(None, description="Mount read-only.")
    fs_type: str | None = Field(None, max_length=63, description="Filesystem type, if the driver needs one.")
    volume_attributes: dict[str, Annotated[str, Field(max_length=4096)]] | None = Field(
        None, max_length=64, description="Driver-specific attributes."
    )
    node_publish_secret_ref: LocalObjectReference | None = Field(None, description="Secret the driver needs to mount the volume.")


class EmptyDirVolumeSource(ApiModel):
    """Scratch space that lives as long as the pod."""

    medium: Literal["", "Memory", "HugePages", "HugePages-2Mi", "HugePages-1Gi"] | None = Field(
        None, description="Empty for node disk, Memory for tmpfs, HugePages[-<size>] for huge pages."
    )
    size_limit: Quantity | None = Field(None, description="Size limit, e.g. 100Gi.")


class HostPathVolumeSource(ApiModel):
    """A directory or file of the node. Ties the pod to the node's contents; Pod Security baseline refuses it."""

    path: str = Field(..., min_length=1, max_length=4096, pattern=ABSOLUTE_PATH, description="Path on the node.")
    type: Literal["", "DirectoryOrCreate", "Directory", "FileOrCreate", "File", "Socket", "CharDevice", "BlockDevice"] | None = Field(
        None, description="What must be at the path."
    )


# The sources that have no typed model here: the apiserver validates their content
# when the operator creates the pod, and a refusal is reported in status (ReplicaFailure).
_UNTYPED_SOURCES = {
    "projected": "Several ConfigMaps, Secrets, downward API items and service account tokens in one directory, as in a Pod.",
    "ephemeral": "A per-pod PersistentVolumeClaim from volumeClaimTemplate, deleted with the pod, as in a Pod.",
    "downwardAPI": "Pod fields as files, as in a Pod.",
    "image": "An OCI image's content as a read-only volume (reference, pullPolicy), as in a Pod.",
    "iscsi": "An iSCSI disk, as in a Pod.",
    "fc": "A Fibre Channel disk, as in a Pod.",
    "cephfs": "A CephFS mount, as in a Pod.",
    "rbd": "A Ceph RBD image, as in a Pod.",
    "azureFile": "An Azure File share, as in a Pod.",
    "azureDisk": "An Azure Data Disk, as in a Pod.",
    "awsElasticBlockStore": "An AWS EBS volume, as in a Pod.",
    "gcePersistentDisk": "A GCE persistent disk, as in a Pod.",
    "cinder": "An OpenStack Cinder volume, as in a Pod.",
    "flexVolume": "A FlexVolume driver's volume, as in a Pod.",
    "portworxVolume": "A Portworx volume, as in a Pod.",
    "vsphereVolume": "A vSphere volume, as in a Pod.",
}
_TYPED_SOURCES = ("persistentVolumeClaim", "configMap", "secret", "nfs", "csi", "emptyDir", "hostPath")
VOLUME_SOURCES = _TYPED_SOURCES + tuple(_UNTYPED_SOURCES)


def _free_source(key: str) -> Any:
    return Field(None, description=_UNTYPED_SOURCES[key], json_schema_extra={"x-kubernetes-preserve-unknown-fields": True})


class Volume(ApiModel):
    """A volume for the worker pods: exactly one source, as in a Pod's spec.volumes."""

    name: DnsLabel = Field(..., description="Volume name, referenced by volumeMounts. tmp, dshm and checkpoints are the operator's.")
    persistent_volume_claim: ClaimVolumeSource | None = Field(None, description="A PersistentVolumeClaim, e.g. a dataset.")
    config_map: ConfigMapVolumeSource | None = Field(None, description="A ConfigMap, e.g. a training script.")
    secret: SecretVolumeSource | None = Field(None, description="A Secret's keys as files.")
    nfs: NFSVolumeSource | None = Field(None, description="An NFS export.")
    csi: CSIVolumeSource | None = Field(None, description="An inline CSI volume.")
    empty_dir: EmptyDirVolumeSource | None = Field(None, description="Scratch space for the pod's lifetime.")
    host_path: HostPathVolumeSource | None = Field(None, description="A path on the node (avoid: ties pods to node contents).")
    projected: dict[str, Any] | None = _free_source("projected")
    ephemeral: dict[str, Any] | None = _free_source("ephemeral")
    downward_api: dict[str, Any] | None = Field(
        None, alias="downwardAPI", description=_UNTYPED_SOURCES["downwardAPI"],
        json_schema_extra={"x-kubernetes-preserve-unknown-fields": True},
    )
    image: dict[str, Any] | None = _free_source("image")
    iscsi: dict[str, Any] | None = _free_source("iscsi")
    fc: dict[str, Any] | None = _free_source("fc")
    cephfs: dict[str, Any] | None = _free_source("cephfs")
    rbd: dict[str, Any] | None = _free_source("rbd")
    azure_file: dict[str, Any] | None = _free_source("azureFile")
    azure_disk: dict[str, Any] | None = _free_source("azureDisk")
    aws_elastic_block_store: dict[str, Any] | None = _free_source("awsElasticBlockStore")
    gce_persistent_disk: dict[str, Any] | None = _free_source("gcePersistentDisk")
    cinder: dict[str, Any] | None = _free_source("cinder")
    flex_volume: dict[str, Any] | None = _free_source("flexVolume")
    portworx_volume: dict[str, Any] | None = _free_source("portworxVolume")
    vsphere_volume: dict[str, Any] | None = _free_source("vsphereVolume")

    cel_rules = (
        Rule(
            "[" + ", ".join(f"has(self.{k})" for k in VOLUME_SOURCES) + "].filter(x, x).size() == 1",
            "spec.pod.volumes: each volume needs exactly one source (persistentVolumeClaim, configMap, secret, "
            "nfs, csi, emptyDir, projected, ephemeral, ...)",
            lambda s: sum(k in s.to_k8s() for k in VOLUME_SOURCES) == 1,
        ),
        Rule(
            "!(self.name in [" + ", ".join(f"'{n}'" for n in OPERATOR_VOLUMES) + "])",
            "spec.pod.volumes.name: " + ", ".join(OPERATOR_VOLUMES) + " are the operator's own volumes; choose another name",
            lambda s: s.name not in OPERATOR_VOLUMES,
        ),
    )

    def source(self) -> str:
        """The volume's source kind, as Kubernetes spells it (``persistentVolumeClaim``, ...)."""
        return next(k for k in self.to_k8s() if k != "name")


class ContainerPort(ApiModel):
    """A port a sidecar serves."""

    name: str | None = Field(None, max_length=15, pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", description="Port name (IANA_SVC_NAME).")
    container_port: ContainerPortNumber = Field(..., description="Port number. Must not be the job's metrics port.")
    protocol: Literal["TCP", "UDP", "SCTP"] | None = Field(None, description="TCP (default), UDP or SCTP.")
