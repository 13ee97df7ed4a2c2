"""``kubetrain run``: a TrainingJob manifest, validated by the API models, trained on this machine.

The same spec -> contract mapping as the operator's pods (``contract_for``), the
same trainer and the same torchrun flags, with local agents instead of pods:
what runs here is what the cluster will run.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Any

from kubetrain.api.models import TrainingJob
from kubetrain.trainer_env import contract_for

LOCAL_REPLICAS = 2  # enough for a real elastic rendezvous, small enough for a laptop


def local_processes(job: TrainingJob) -> int:
    """Processes per local replica: the spec's, capped by the GPUs here (1 on CPU)."""
    import torch

    if torch.cuda.is_available():
        return min(job.spec.container.nproc(), torch.cuda.device_count())
    return 1


def cpu_precision_warning(precision: str) -> str | None:
    """Whether to warn that this machine's CPU emulates ``precision`` (never with a GPU: the job runs there)."""
    import torch

    if torch.cuda.is_available():
        return None
    from kubetrain_trainer.cpu_precision import emulation_warning

    return emulation_warning(precision)


def configmaps_in(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The ConfigMaps a manifest file carries beside its job, by name."""
    return {o["metadata"]["name"]: o for o in objects
            if o.get("kind") == "ConfigMap" and o.get("apiVersion") == "v1" and (o.get("metadata") or {}).get("name")}


def local_mounts(job: TrainingJob, objects: list[dict[str, Any]], root: Path) -> dict[str, Path]:
    """The trainer's mounts this host can stand in for: each configMap volume whose ConfigMap is in the
    same file is written under ``root``; mountPath -> that directory."""
    configmaps = configmaps_in(objects)
    volumes = {v.name: v for v in job.spec.pod.volumes or ()}
    out: dict[str, Path] = {}
    for mount in job.spec.container.volume_mounts or ():
        vol = volumes.get(mount.name)
        if vol is None or vol.config_map is None or vol.config_map.name not in configmaps:
            continue
        data = configmaps[vol.config_map.name].get("data") or {}
        files = {i.path: data[i.key] for i in vol.config_map.items if i.key in data} if vol.config_map.items else data
        target = root / "volumes" / vol.name
        for rel, text in files.items():
            (target / rel).parent.mkdir(parents=True, exist_ok=True)
            (target / rel).write_text(text)
        out[mount.mount_path.rstrip("/")] = target / (mount.sub_path or "")
    return out


def local_program(job: TrainingJob, mounts: dict[str, Path]) -> tuple[str, ...]:
    """The job's own command and args as this host runs them: paths under a stood-in mount point at its
    local copy, and ``python``/``python3`` is this interpreter (the one with torch)."""
    def local(word: str) -> str:
        if word in ("python", "python3"):
            return sys.executable
        for mount_path, target in mounts.items():
            if word == mount_path or word.startswith(mount_path + "/"):
                return str(target) + word[len(mount_path):]
        return word

    c = job.spec.container
    return tuple(local(w) for w in (*c.command, *(c.args or ())))


def run_locally(job: TrainingJob, *, replicas: int | None = None, max_steps: int | None = None,
                workdir: str | None = None, objects: list[dict[str, Any]] | None = None) -> int:
    """Run ``job`` here; ``objects`` are the other objects of its manifest file (ConfigMaps it mounts)."""
    from kubetrain_trainer.local import run_local

    work = Path(workdir or tempfile.mkdtemp(prefix=f"kubetrain-{job.metadata.name}-"))
    program = None
    extra_env: dict[str, str] = {}
    if job.spec.container.command:
        mounts = local_mounts(job, objects or [], work)
        program = local_program(job, mounts)
        for mount_path, target in mounts.items():
            print(f"kubetrain run: {mount_path} is {target} here (its ConfigMap is in the manifest)", flush=True)
        print(f"kubetrain run: your program under the job's torchrun: {' '.join(program)}", flush=True)
    for var in job.spec.container.env or ():
        if var.value is not None:
            extra_env[var.name] = var.value
        else:
            print(f"kubetrain run: not applied on this host: spec.container.env {var.name} (valueFrom)", file=sys.stderr)
    contract = contract_for(job, str(work / "checkpoints"))
    if max_steps is not None:
        contract = contract.replace(max_steps=max_steps)
    n = replicas or min(job.spec.replicas.max, LOCAL_REPLICAS)
    print(f"kubetrain run: {job.metadata.name}: {n} local replicas x {local_processes(job)} processes, "
          f"precision {contract.precision}, {contract.strategy}, compression {contract.compression}; workdir {work}", flush=True)
    warning = cpu_precision_warning(contract.precision)
    if warning:  # up front: the slowdown would otherwise show only in the ETA, minutes in
        print(warning, file=sys.stderr, flush=True)
    result = run_local(
        contract,
        replicas=n,
        nproc_per_node=local_processes(job),
        min_replicas=min(job.spec.replicas.min, n),
        max_restarts=job.spec.failure_policy.max_restarts,
        workdir=work,
        extra_env=extra_env,
        program=program,
    )
    return result.returncode
