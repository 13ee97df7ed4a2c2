"""Runs many precision × strategy × compression modes in ONE torchrun launch (CPU, gloo).

Started by test_modes.py as ``torchrun --standalone --nproc-per-node=2 matrix_worker.py OUT.json [MODE ...]``.
Each mode builds a fresh tiny builtin:gpt, trains it through the real Trainer
(DDP/FSDP2 wrapping, our comm hooks, autocast/GradScaler/MixedPrecisionPolicy)
with its own Prometheus registry (built by the trainer factory, as in a pod), and rank 0 writes one JSON object per
mode: losses, communicated bytes per step, step times, noise scales and the registry's samples.
A mode that raises is recorded as an error and the others still run.

MATRIX_COUNT_COLLECTIVES=1 also records, per mode, the calls to torch.distributed's collectives and
to the DDP comm hook (one per bucket per step); MATRIX_NOISE_OFF=1 turns the hooks' gradient norm
measurement off (to time what it costs).
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from datetime import timedelta

import torch.distributed as dist
from prometheus_client import CollectorRegistry

from kubetrain.contract import TrainerContract
from kubetrain_trainer.config import Capabilities, detect_capabilities, validate
from kubetrain_trainer.factory import build_trainer
from kubetrain_trainer.hooks import StepRecorder
from kubetrain_trainer.process_exit import exit_process
from kubetrain_trainer.trainer import DistEnv

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
    metrics_enabled=True,  # the registry is read below, never served
)


def samples(registry: CollectorRegistry) -> list[dict]:
    out = []
    for fam in registry.collect():
        for s in fam.samples:
            out.append({"family": fam.name, "type": fam.type, "name": s.name, "labels": s.labels, "value": s.value})
    return out


COLLECTIVES = ("all_reduce", "all_gather", "all_gather_single", "all_gather_into_tensor", "broadcast",
               "reduce_scatter_tensor", "all_to_all_single", "barrier", "reduce", "gather", "scatter")


def count_collectives(counts: dict[str, int]) -> None:
    """Count every call to torch.distributed's collectives and to each DDP comm hook, by name."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    def counted(name, fn):
        def wrapper(*args, **kwargs):
            counts[name] = counts.get(name, 0) + 1
            return fn(*args, **kwargs)
        return wrapper

    for name in COLLECTIVES:
        if hasattr(dist, name):
            setattr(dist, name, counted(name, getattr(dist, name)))
    register = DDP.register_comm_hook

    def register_counted(self, state, hook):
        def counted_hook(state, bucket):  # DDP checks the hook's parameter names
            counts["ddp_hook"] = counts.get("ddp_hook", 0) + 1
            return hook(state, bucket)

        return register(self, state, counted_hook)

    DDP.register_comm_hook = register_counted


def main() -> None:
    out_path = sys.argv[1]
    modes = [m.split("/") for m in sys.argv[2:]]
    dist.init_process_group("gloo", timeout=timedelta(seconds=120))
    env = DistEnv.from_environ()
    caps = detect_capabilities()
    results = []
    counts: dict[str, int] = {}
    if os.environ.get("MATRIX_COUNT_COLLECTIVES") == "1":
        count_collectives(counts)
    if os.environ.get("MATRIX_NOISE_OFF") == "1":
        from kubetrain_trainer import compression
        compression._sq = lambda t: None  # the hooks skip the measurement when there is no local norm
    for precision, strategy, compression in modes:
        contract = BASE.replace(precision=precision, strategy=strategy, compression=compression)
        rec = {"precision": precision, "strategy": strategy, "compression": compression}
        try:
            rec["warnings"] = validate(contract, caps)
            recorder = StepRecorder(limit=None)
            # CPU and gloo whatever this machine has (Capabilities() is a CPU's).
            trainer = build_trainer(contract.replace(pod_name=f"pod-{env.group_rank}"), env, caps=Capabilities(),
                                    hooks=[recorder])
            counts.clear()
            t0 = time.monotonic()
            res = trainer.fit()
            rec["collectives"] = dict(counts)
            rec.update(
                ok=True, seconds=time.monotonic() - t0, losses=recorder.losses, comm_bytes=recorder.comm_bytes,
                step_seconds=recorder.step_seconds, steps=res.step, noise_scales=recorder.noise_scales,
                metrics=samples(trainer.metrics.registry) if trainer.metrics else [],
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
