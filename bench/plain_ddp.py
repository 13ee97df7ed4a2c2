"""The baseline: a plain torchrun DDP script, the kind a user writes without kubetrain.

    torchrun --standalone --nproc-per-node=2 bench/plain_ddp.py --steps 200

It trains the same model on the same data with the same optimizer as
kubetrain's built-in trainer (``builtin:gpt``: the model, the generated corpus
and the loss are imported from it, so the two cannot drift apart): AdamW
(weight decay 0), gradient clipping at 1.0, fp32, a DistributedSampler,
PyTorch's own all-reduce (no comm hook) and a loss print every 10 steps.

For the benchmark it records one ``time.perf_counter()`` at the start of
every step (after the batch is on the device, before forward): the interval
between two stamps is one whole loop iteration. Rank 0 writes them to
``--stamps`` as JSON. ``bench/probe_kubetrain.py`` stamps our trainer at the
same point of its loop.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader, DistributedSampler

from kubetrain_trainer.builtin_gpt import GPT, GPTConfig, TokenWindows, generate_corpus, lm_loss


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--d-model", type=int, default=128)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--corpus-chars", type=int, default=400_000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--stamps", default="")
    args = p.parse_args()

    cuda = torch.cuda.is_available()
    dist.init_process_group("nccl" if cuda else "gloo")
    rank, local_rank = dist.get_rank(), int(os.environ.get("LOCAL_RANK", 0))
    if cuda:
        torch.cuda.set_device(local_rank)
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")

    cfg = GPTConfig(seq_len=args.seq_len, d_model=args.d_model, n_layers=args.layers, n_heads=args.heads)
    tokens = torch.frombuffer(bytearray(generate_corpus(args.corpus_chars).encode()), dtype=torch.uint8)
    data = TokenWindows(tokens, cfg.seq_len)
    sampler = DistributedSampler(data, shuffle=True, seed=args.seed, drop_last=True)
    loader = DataLoader(data, batch_size=args.batch_size, sampler=sampler, drop_last=True, pin_memory=cuda)

    torch.manual_seed(args.seed)
    model = DDP(GPT(cfg).to(device), device_ids=[local_rank] if cuda else None)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)

    stamps: list[float] = []
    step, epoch = 0, 0
    while step < args.steps:
        sampler.set_epoch(epoch)
        for batch in loader:
            batch = batch.to(device, non_blocking=True)
            stamps.append(time.perf_counter())
            loss = lm_loss(model, batch)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            step += 1
            if step % 10 == 0 and rank == 0:
                print(f"step {step} loss {loss.item():.4f}", flush=True)
            if step >= args.steps:
                break
        epoch += 1
    if rank == 0 and args.stamps:
        with open(args.stamps, "w") as fh:
            json.dump({"program": "plain_ddp", "stamps": stamps, "device": str(device),
                       "world_size": dist.get_world_size()}, fh)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
