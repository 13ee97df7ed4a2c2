"""Pod customisation (spec.pod, spec.container.volumeMounts/securityContext): merged into the worker and
store pods as documented, with the operator's own fields winning."""

from __future__ import annotations

import copy

import pytest

from kubetrain.api.manifests import load_trainingjobs, parse_trainingjob
from kubetrain.cli import pod_only_settings
from kubetrain.operator import builders, naming
from kubetrain.operator.builders import BuildConfig
from support.variants import REPO, load_yaml

BODY = {"metadata": {"name": "gpt-full", "namespace": "ml-team", "uid": "1234-abcd", "generation": 1}}
CFG = BuildConfig(trainer_image="example.com/trainer:1")


def _example(name):
    return load_trainingjobs(REPO / "examples" / f"{name}.yaml")[0]


def _with(spec_patch):
    manifest = load_yaml(REPO / "examples" / "minimal.yaml")
    manifest["spec"] = {**manifest["spec"], **copy.deepcopy(spec_patch)}
    return parse_trainingjob(manifest)


def test_worker_pod_gets_every_customisation_of_the_full_example():
    job = _example("full")
    pod = builders.worker_pod(job, BODY, 0, 0, CFG)
    spec, meta = pod["spec"], pod["metadata"]
    c = spec["containers"][0]
    # Volumes: the operator's first, then the job's, each exactly as written.
    assert [v["name"] for v in spec["volumes"]] == ["tmp", "dshm", "checkpoints", "dataset", "staged", "hugepages"]
    assert spec["volumes"][3] == {"name": "dataset", "persistentVolumeClaim": {"claimName": "text-corpus", "readOnly": True}}
    assert spec["volumes"][4]["ephemeral"]["volumeClaimTemplate"]["spec"]["storageClassName"] == "local-nvme"
    assert spec["volumes"][1] == {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "64Gi"}}
    assert c["volumeMounts"][3:] == [{"name": "dataset", "mountPath": "/data", "readOnly": True},
                                     {"name": "staged", "mountPath": "/scratch"},
                                     {"name": "hugepages", "mountPath": "/hugepages"}]
    # Identity and pull secrets.
    assert spec["serviceAccountName"] == "trainer" and spec["imagePullSecrets"] == [{"name": "regcred"}]
    assert spec["automountServiceAccountToken"] is False
    # Security: merged field by field over the restricted defaults.
    assert spec["securityContext"] == {"runAsNonRoot": True, "runAsUser": 1000, "runAsGroup": 1000, "fsGroup": 2000,
                                       "fsGroupChangePolicy": "OnRootMismatch", "supplementalGroups": [3000],
                                       "seccompProfile": {"type": "RuntimeDefault"}}
    assert c["securityContext"]["capabilities"] == {"drop": ["ALL"], "add": ["IPC_LOCK"]}
    assert c["securityContext"]["readOnlyRootFilesystem"] and not c["securityContext"]["allowPrivilegeEscalation"]
    # Devices and hugepages beside the GPUs that gpusPerReplica owns.
    assert c["resources"]["limits"] == {"memory": "512Gi", "rdma/hca_shared_devices_a": "1", "hugepages-2Mi": "2Gi",
                                        "nvidia.com/gpu": "8"}
    # Metadata: the job's beside the operator's.
    assert meta["labels"]["cost-center"] == "ml-research" and meta["labels"][naming.LABEL_ROLE] == "worker"
    assert meta["annotations"]["cluster-autoscaler.kubernetes.io/safe-to-evict"] == "false"
    assert meta["annotations"][naming.ANNOTATION_RDZV_ID] == "1234-abcd"
    # Init container and native sidecar, each with the restricted defaults.
    stage, shipper = spec["initContainers"]
    assert stage["name"] == "stage-data" and "restartPolicy" not in stage
    assert stage["resources"] == {"requests": {"cpu": "4", "memory": "8Gi"}, "limits": {"memory": "8Gi"}}
    assert shipper["restartPolicy"] == "Always" and shipper["ports"] == [{"name": "http", "containerPort": 2020}]
    for extra in (stage, shipper):
        assert extra["securityContext"] == builders.RESTRICTED_CONTAINER_SECURITY


def test_store_pod_gets_identity_metadata_and_security_but_no_data():
    job = _example("full")
    store = builders.store_pod(job, BODY, CFG)
    spec, meta = store["spec"], store["metadata"]
    assert spec["imagePullSecrets"] == [{"name": "regcred"}] and spec["serviceAccountName"] == "trainer"
    assert spec["automountServiceAccountToken"] is False  # never the token, whatever the job asks
    assert spec["securityContext"]["fsGroup"] == 2000
    assert meta["labels"]["cost-center"] == "ml-research" and meta["labels"][naming.LABEL_ROLE] == naming.ROLE_STORE
    assert meta["annotations"] == {"cluster-autoscaler.kubernetes.io/safe-to-evict": "false"}
    assert "volumes" not in spec and "initContainers" not in spec
    assert "volumeMounts" not in spec["containers"][0]


def test_the_operators_own_fields_win():
    job = _with({
        "pod": {"metadata": {"annotations": {"prometheus.io/port": "1"}}, "automountServiceAccountToken": True},
        "container": {"securityContext": {"runAsUser": 4242}},
    })
    pod = builders.worker_pod(job, BODY, 0, 0, CFG)
    c = pod["spec"]["containers"][0]
    assert pod["metadata"]["annotations"]["prometheus.io/port"] == "9404"
    assert pod["spec"]["restartPolicy"] == "Never" and c["name"] == "trainer"
    assert c["ports"] == [{"name": "metrics", "containerPort": 9404, "protocol": "TCP"}]
    assert c["command"][:3] == ["python", "-m", "torch.distributed.run"]
    # What the job may set, it gets.
    assert pod["spec"]["automountServiceAccountToken"] is True
    assert c["securityContext"]["runAsUser"] == 4242 and c["securityContext"]["runAsNonRoot"] is True


def test_root_only_when_the_job_says_so_and_the_rest_stays_restricted():
    job = _with({"pod": {"securityContext": {"runAsUser": 0, "runAsNonRoot": False}}})
    pod = builders.worker_pod(job, BODY, 0, 0, CFG)
    assert pod["spec"]["securityContext"]["runAsUser"] == 0 and pod["spec"]["securityContext"]["runAsNonRoot"] is False
    sc = pod["spec"]["containers"][0]["securityContext"]
    # The pod's choice reaches the container (whose default would veto it); nothing else loosens.
    assert sc["runAsNonRoot"] is False
    assert sc["readOnlyRootFilesystem"] and sc["allowPrivilegeEscalation"] is False and sc["capabilities"] == {"drop": ["ALL"]}
    with pytest.raises(ValueError, match="runAsNonRoot: false"):
        _with({"pod": {"securityContext": {"runAsUser": 0}}})


def test_plain_script_runs_from_its_configmap():
    pod = builders.worker_pod(_example("plain-torchrun-script"), BODY, 0, 0, CFG)
    c = pod["spec"]["containers"][0]
    assert {"name": "script", "configMap": {"name": "train-script"}} in pod["spec"]["volumes"]
    assert {"name": "script", "mountPath": "/app", "readOnly": True} in c["volumeMounts"]
    assert c["command"][c["command"].index("--no-python") + 1:][:2] == ["python", "/app/train.py"]


def test_referenced_objects_are_what_pods_wait_for_and_never_secrets():
    job = _with({
        "pod": {"serviceAccountName": "reader", "imagePullSecrets": [{"name": "regcred"}],
                "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "corpus"}},
                            {"name": "script", "configMap": {"name": "train-script"}},
                            {"name": "extra", "configMap": {"name": "maybe", "optional": True}},
                            {"name": "creds", "secret": {"secretName": "s3"}}]},
        "checkpoint": {"persistentVolumeClaim": {"claimName": "ckpt"}},
    })
    assert builders.referenced_objects(job) == [
        ("ServiceAccount", "reader", "spec.pod.serviceAccountName"),
        ("PersistentVolumeClaim", "corpus", "spec.pod.volumes[data].persistentVolumeClaim.claimName"),
        ("ConfigMap", "train-script", "spec.pod.volumes[script].configMap.name"),
        ("PersistentVolumeClaim", "ckpt", "spec.checkpoint.persistentVolumeClaim.claimName"),
    ]


def test_kubetrain_run_names_what_it_cannot_do_on_the_host():
    said = pod_only_settings(_example("dataset-pvc"))
    assert any(line.startswith("spec.pod.volumes (dataset: persistentVolumeClaim)") for line in said)
    assert any(line.startswith("spec.container.volumeMounts (/data)") for line in said)
    assert any(line.startswith("spec.pod.securityContext") for line in said)
    assert pod_only_settings(_example("minimal")) == []
    private = pod_only_settings(_example("private-registry"))
    assert any("imagePullSecrets" in line for line in private) and any("spec.pod.metadata" in line for line in private)
