"""Pure builders: the manifests the operator creates for a TrainingJob."""

from __future__ import annotations

import ast
import sys

from kubetrain.api.manifests import load_trainingjobs
from kubetrain.operator import builders, naming
from kubetrain.operator.builders import BuildConfig
from support.variants import REPO

BODY = {"metadata": {"name": "gpt-full", "namespace": "ml-team", "uid": "1234-abcd", "generation": 1}}
CFG = BuildConfig(trainer_image="example.com/trainer:1")


def _job(name="full"):
    return load_trainingjobs(REPO / "examples" / f"{name}.yaml")[0]


def _env(container):
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


def test_worker_pod_runs_elastic_torchrun_against_the_dedicated_store():
    pod = builders.worker_pod(_job(), BODY, slot=2, attempt=1, cfg=CFG)
    c = pod["spec"]["containers"][0]
    cmd = c["command"]
    assert cmd[:3] == ["python", "-m", "torch.distributed.run"]
    assert "--nnodes=2:4" in cmd and "--nproc-per-node=8" in cmd and "--rdzv-backend=c10d" in cmd
    assert "--rdzv-endpoint=gpt-full-rdzv.ml-team.svc:29400" in cmd
    assert "--rdzv-id=1234-abcd" in cmd and "--max-restarts=10" in cmd
    conf = next(a for a in cmd if a.startswith("--rdzv-conf="))
    assert "is_host=false" in conf
    assert "--local-addr=$(POD_IP)" in cmd
    assert cmd[cmd.index("--no-python") + 1:] == ["python", "-m", "kubetrain_trainer"]
    env = _env(c)
    assert env["TORCH_DISABLE_SHARE_RDZV_TCP_STORE"] == "1"
    assert env["KUBETRAIN_PRECISION"] == "bf16" and env["KUBETRAIN_COMPRESSION"] == "powersgd"
    assert env["KUBETRAIN_CHECKPOINT_DIR"] == "/checkpoints/gpt-full"
    assert env["HF_TOKEN"] == {"secretKeyRef": {"name": "hf-credentials", "key": "token"}}
    assert env["POD_IP"] == {"fieldRef": {"fieldPath": "status.podIP"}}


def test_worker_pod_carries_placement_identity_and_security():
    pod = builders.worker_pod(_job(), BODY, slot=2, attempt=1, cfg=CFG)
    meta, spec = pod["metadata"], pod["spec"]
    c = spec["containers"][0]
    assert meta["name"] == "gpt-full-w2-1"
    assert meta["labels"][naming.LABEL_JOB] == "gpt-full" and meta["labels"][naming.LABEL_SLOT] == "2"
    assert meta["labels"][naming.LABEL_ROLE] == "worker"
    assert meta["ownerReferences"][0] | {} == {"apiVersion": "kubetrain.dev/v1alpha1", "kind": "TrainingJob", "name": "gpt-full",
                                               "uid": "1234-abcd", "controller": True, "blockOwnerDeletion": True}
    assert meta["finalizers"] == [naming.TRACKING_FINALIZER]
    assert meta["annotations"]["prometheus.io/port"] == "9404"
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "8" and c["resources"]["requests"]["cpu"] == "32"
    assert spec["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    assert spec["tolerations"][0]["key"] == "nvidia.com/gpu"
    assert spec["priorityClassName"] == "training-high"
    assert "podAntiAffinity" in spec["affinity"]
    assert spec["restartPolicy"] == "Never"
    assert c["terminationMessagePath"] == "/dev/termination-log"
    sc = c["securityContext"]
    assert sc["runAsNonRoot"] and sc["readOnlyRootFilesystem"] and not sc["allowPrivilegeEscalation"]
    # full.yaml adds IPC_LOCK (RDMA); dropping ALL stays.
    assert sc["capabilities"] == {"drop": ["ALL"], "add": ["IPC_LOCK"]} and sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert spec["automountServiceAccountToken"] is False
    claims = [v["persistentVolumeClaim"]["claimName"] for v in spec["volumes"] if "persistentVolumeClaim" in v]
    assert claims == ["training-checkpoints", "text-corpus"]
    assert {"name": "checkpoints", "mountPath": "/checkpoints"} in c["volumeMounts"]
    assert c["image"] == "ghcr.io/kubetrain/trainer:0.1.0"


def test_plain_script_and_default_image():
    pod = builders.worker_pod(_job("plain-torchrun-script"), BODY, 0, 0, CFG)
    cmd = pod["spec"]["containers"][0]["command"]
    assert cmd[cmd.index("--no-python") + 1:] == ["python", "/app/train.py", "--steps", "200"]
    assert "prometheus.io/scrape" not in pod["metadata"]["annotations"]
    minimal = builders.worker_pod(_job("minimal"), BODY, 0, 0, CFG)
    assert minimal["spec"]["containers"][0]["image"] == "example.com/trainer:1"
    assert "nvidia.com/gpu" not in minimal["spec"]["containers"][0]["resources"].get("limits", {})


def test_store_pod_and_service():
    job = _job()
    pod = builders.store_pod(job, BODY, CFG)
    svc = builders.store_service(job, BODY)
    c = pod["spec"]["containers"][0]
    assert pod["metadata"]["name"] == svc["metadata"]["name"] == "gpt-full-rdzv"
    assert c["command"][:2] == ["python", "-c"] and c["command"][-2:] == ["--port", "29400"]
    assert c["image"] == job.spec.container.image  # the agents' own torch speaks to the store
    assert "nvidia.com/gpu" not in str(c["resources"]) and "nodeSelector" not in pod["spec"]
    assert pod["spec"]["tolerations"] == [t.to_k8s() for t in job.spec.scheduling.tolerations]
    assert svc["spec"]["selector"] == {naming.LABEL_JOB: "gpt-full", naming.LABEL_ROLE: "rendezvous"}
    assert svc["spec"]["ports"][0]["port"] == 29400
    assert c["securityContext"]["readOnlyRootFilesystem"]


def test_pod_names_fit_a_dns_label_and_parse_back():
    name = naming.worker_pod_name("a" * 50, 1023, 1001)
    assert len(name) <= 63
    assert naming.parse_worker_pod_name(name) == ("a" * 50, 1023, 1001)


def _imported_modules(source: str) -> set[str]:
    tree = ast.parse(source)
    names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    names |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    return {n.split(".")[0] for n in names}


def test_store_program_imports_only_torch_beyond_the_stdlib():
    """The store pod runs the job's own image: its program needs torch and nothing of kubetrain.
    (It is run for real, serving a TCPStore, in tests/trainer/test_store_program.py.)"""
    cmd = builders.store_pod(_job("plain-torchrun-script"), BODY, CFG)["spec"]["containers"][0]["command"]
    assert _imported_modules(cmd[2]) - set(sys.stdlib_module_names) - {"__future__"} == {"torch"}
