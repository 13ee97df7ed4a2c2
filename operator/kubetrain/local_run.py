"""``kubetrain run``: a TrainingJob manifest, validated by the API models, trained on this machine.

The same spec -> contract mapping as the operator's pods (``contract_for``), the
same trainer and the same torchrun flags, with local agents instead of pods:
what runs here is what the cluster will run.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

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


def run_locally(job: TrainingJob, *, replicas: int | None = None, max_steps: int | None = None,
                workdir: str | None = None) -> int:
    if job.spec.container.command:
        print("kubetrain run trains the built-in trainer or a spec.trainer.workload; "
              "spec.container.command runs inside your image: run it with torchrun directly", file=sys.stderr)
        return 2
    from kubetrain_trainer.local import run_local

    work = Path(workdir or tempfile.mkdtemp(prefix=f"kubetrain-{job.metadata.name}-"))
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
    )
    return result.returncode
