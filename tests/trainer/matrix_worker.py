"""Runs many precision × strategy × compression modes in ONE torchrun launch (CPU, gloo).

Started by test_modes.py as ``torchrun --standalone --nproc-per-node=2 matrix_worker.py OUT.json [MODE ...]``.
Each mode builds a fresh tiny builtin:gpt, trains it through the real Trainer
(DDP/FSDP2 wrapping, our comm hooks, autocast/GradScaler/MixedPrecisionPolicy)
with its own injected Prometheus registry, and rank 0 writes one JSON object per
mode: losses, communicated bytes per step, step times and the registry's samples.
A mode that raises is recorded as an error and the others still run.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from datetime import timedelta

import torch
import torch.distributed as dist
from prometheus_client import CollectorRegistry

from kubetrain.contract import TrainerContract
from kubetrain_trainer.api import WorkloadContext, load_workload
from kubetrain_trainer.config import detect_capabilities, validate
from kubetrain_trainer.metrics import TrainerMetrics
from kubetrain_trainer.process_exit import exit_process
from kubetrain_trainer.trainer import DistEnv, Trainer

STEPS = int(os.environ.get("MATRIX_STEPS", "40"))
BASE = TrainerContract(
    job_name="matrix",
    workload="builtin:gpt",
    workload_args=os.environ.get("MATRIX_WORKLOAD_ARGS", "layers=1,d_model=32,heads=2,corpus_chars=40000"),
    max_steps=STEPS,
    batch_size=int(os.environ.get("MATRIX_BATCH", "8")),
    sequence_length=int(os.environ.get("MATRIX_SEQ", "32")),
    learning_rate=3e-3,
    powersgd_rank=1,
    powersgd_start_iteration=int(os.environ.get("MATRIX_POWERSGD_START", "5")),
    metrics_enabled=False,
)


def samples(registry: CollectorRegistry) -> list[dict]:
    out = []
    for fam in registry.collect():
        for s in fam.samples:
            out.append({"family": fam.name, "type": fam.type, "name": s.name, "labels": s.labels, "value": s.value})
    return out


def main() -> None:
    out_path = sys.argv[1]
    modes = [m.split("/") for m in sys.argv[2:]]
    dist.init_process_group("gloo", timeout=timedelta(seconds=120))
    env = DistEnv.from_environ()
    caps = detect_capabilities()
    results = []
    for precision, strategy, compression in modes:
        contract = BASE.replace(precision=precision, strategy=strategy, compression=compression)
        rec = {"precision": precision, "strategy": strategy, "compression": compression}
        try:
            rec["warnings"] = validate(contract, caps)
            workload = load_workload(contract.workload, WorkloadContext(contract, env.rank, env.world_size))
            registry = CollectorRegistry()
            metrics = TrainerMetrics(registry, job="matrix", namespace="test", pod=f"pod-{env.group_rank}")
            trainer = Trainer(contract, env, workload, device=torch.device("cpu"), backend="gloo", metrics=metrics)
            t0 = time.monotonic()
            res = trainer.fit()
            rec.update(
                ok=True, seconds=time.monotonic() - t0, losses=res.losses, comm_bytes=res.comm_bytes,
                step_seconds=res.step_seconds, steps=res.step, metrics=samples(registry),
                scaler_enabled=trainer.scaler.is_enabled(), world_size=env.world_size,
                params=sum(p.numel() for p in trainer.model.parameters()),
            )
            del trainer
        except Exception as exc:  # noqa: BLE001
            rec.update(ok=False, error=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc())
        dist.barrier()
        results.append(rec)
    if env.rank == 0:
        with open(out_path, "w") as fh:
            json.dump(results, fh)
    dist.destroy_process_group()
    exit_process(0)  # as the trainer does: gloo threads may still release our hooks' callbacks


if __name__ == "__main__":
    main()
