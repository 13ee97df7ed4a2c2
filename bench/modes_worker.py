"""Worker of bench/trainer_modes.py and bench/compression_loss.py: many trainer configurations, in rounds, in ONE torchrun launch.

    torchrun --standalone --nproc-per-node=P bench/modes_worker.py SPEC.json OUT.json

A mode is ``[precision, strategy, compression]`` (trainer_modes) or
``{"key": ..., "contract": {field: value, ...}}``: any contract fields over the
spec's base contract (compression_loss: PowerSGD settings, seed).

For each round, every mode (in an order rotated by the round, so no mode
always runs first or last) builds a fresh model and trains it for ``steps``
steps through the real ``Trainer`` (our DDP comm hooks or FSDP2 with counting
comms, autocast / GradScaler / MixedPrecisionPolicy), on CUDA with NCCL when
there is a GPU, else on CPU with gloo. A mode the trainer refuses here
(``config.validate``: fp8 without a Hopper GPU, fsdp + powersgd) is recorded
once with the reason. Rank 0 writes step times, bytes and the job loss per step.
"""

from __future__ import annotations

import gc
import json
import os
import sys
import time
import traceback
from datetime import timedelta

import torch
import torch.distributed as dist

from kubetrain.contract import TrainerContract
from kubetrain_trainer.config import detect_capabilities, validate
from kubetrain_trainer.factory import build_trainer, device_for
from kubetrain_trainer.hooks import StepRecorder
from kubetrain_trainer.trainer import DistEnv


def _mode(m) -> tuple[str, dict]:
    if isinstance(m, dict):
        return m["key"], m["contract"]
    precision, strategy, compression = m
    return f"{precision}/{strategy}/{compression}", dict(precision=precision, strategy=strategy, compression=compression)


def _past_deadline(spec: dict, started: float, device: torch.device) -> bool:
    """Whether the spec's time budget is spent; rank 0's clock decides, so every rank stops before the same mode."""
    if not spec.get("deadline_seconds"):
        return False
    flag = torch.tensor([1 if time.monotonic() - started > spec["deadline_seconds"] else 0], device=device)
    dist.broadcast(flag, src=0)
    return bool(flag.item())


def main() -> None:
    spec = json.loads(open(sys.argv[1]).read())
    out_path = sys.argv[2]
    caps = detect_capabilities()
    env = DistEnv.from_environ()
    device = device_for(caps, env)
    dist.init_process_group(caps.backend, timeout=timedelta(seconds=300))
    base = TrainerContract(job_name="bench-modes", namespace="bench", metrics_enabled=False, checkpoint_dir="",
                           **spec["contract"])
    modes = [_mode(m) for m in spec["modes"]]
    records: list[dict] = []
    refused: dict[str, str] = {}

    def dump() -> None:
        tmp = f"{out_path}.tmp"
        with open(tmp, "w") as fh:
            json.dump({"device": str(device), "device_name": caps.device_name, "backend": caps.backend,
                       "world_size": env.world_size, "records": records, "refused": refused}, fh)
        os.replace(tmp, out_path)

    started = time.monotonic()
    for rnd in range(spec["rounds"]):
        shift = (rnd * 7) % len(modes)
        order = modes[shift:] + modes[:shift]
        for key, overrides in order:
            if key in refused:
                continue
            if _past_deadline(spec, started, device):
                break
            contract = base.replace(**overrides)
            try:
                validate(contract, caps)
            except Exception as exc:  # noqa: BLE001 - refused here: recorded, not timed
                refused[key] = f"{type(exc).__name__}: {exc}"
                continue
            rec = {"mode": key, "round": rnd}
            try:
                steps = StepRecorder(limit=None)
                trainer = build_trainer(contract, env, caps=caps, hooks=[steps])
                t0 = time.monotonic()
                res = trainer.fit()
                rec.update(ok=True, seconds=time.monotonic() - t0, step_seconds=steps.step_seconds, comm_bytes=steps.comm_bytes,
                           first_loss=res.first_loss, last_loss=res.last_loss, losses=steps.losses,
                           compression_errors=steps.compression_errors,
                           params=sum(p.numel() for p in trainer.model.parameters()))
                del trainer
            except Exception as exc:  # noqa: BLE001 - recorded; the other modes still run
                rec.update(ok=False, error=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc()[-3000:])
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
            dist.barrier()
            records.append(rec)
            if env.rank == 0:
                st = rec.get("step_seconds") or [0]
                print(f"round {rnd} {key}: {'ok' if rec.get('ok') else rec.get('error')} "
                      f"{1000 * sorted(st)[len(st) // 2]:.1f} ms", flush=True)
                dump()  # after every mode, not only at the end: a long run cut short keeps what it measured
    if env.rank == 0:
        dump()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
