"""PowerSGD on gloo with many DDP buckets: upstream's hook hangs or crashes here; ours must not.

``torchrun --standalone --nproc-per-node=2 powersgd_stress_worker.py OUT.json``.
Three fresh DDP models × 150 steps, 8 linear layers, 10 KB buckets (8+ buckets
in flight per backward). Rank 0 writes the bytes, the loss and the compression error of each step.
"""

from __future__ import annotations

import json
import sys
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from kubetrain.contract import TrainerContract
from kubetrain_trainer.compression import CommCounter, register_ddp_hook
from kubetrain_trainer.process_exit import exit_process


def main() -> None:
    dist.init_process_group("gloo", timeout=timedelta(seconds=60))
    contract = TrainerContract(compression="powersgd", powersgd_rank=2, powersgd_start_iteration=3, powersgd_min_compression_rate=1.0)
    runs = []
    for run in range(3):
        torch.manual_seed(run)
        model = nn.Sequential(*[nn.Linear(64, 64) for _ in range(8)])
        ddp = DDP(model, bucket_cap_mb=0.01)
        counter = CommCounter()
        register_ddp_hook(ddp, contract, "gloo", counter, fp16_scaler=False)
        opt = torch.optim.SGD(ddp.parameters(), lr=0.05)
        per_step, losses, errors = [], [], []
        g = torch.Generator().manual_seed(100 + dist.get_rank())
        target = nn.Linear(64, 64)
        torch.manual_seed(999)
        target = nn.Linear(64, 64)
        for _ in range(150):
            x = torch.randn(32, 64, generator=g)
            loss = (ddp(x) - target(x).detach()).pow(2).mean()
            loss.backward()
            opt.step()
            opt.zero_grad()
            per_step.append(counter.take())
            errors.append(counter.take_compression_error())
            losses.append(loss.item())
        runs.append({"bytes": per_step, "losses": losses, "errors": errors, "buckets": len(ddp._module_copies_to_bucket()) if hasattr(ddp, "_module_copies_to_bucket") else None,
                     "params": sum(p.numel() for p in model.parameters())})
    if dist.get_rank() == 0:
        with open(sys.argv[1], "w") as fh:
            json.dump(runs, fh)
    dist.destroy_process_group()
    exit_process(0)  # as the trainer does: gloo threads may still release our hooks' callbacks


if __name__ == "__main__":
    main()
