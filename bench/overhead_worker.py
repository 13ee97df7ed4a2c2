"""Worker of bench/trainer_overhead.py's fine-grained A/B: both loops in the same processes, alternating.

    torchrun --standalone --nproc-per-node=P bench/overhead_worker.py SPEC.json OUT.json

Separate launches (the main comparison) are what a user runs, but on a shared
machine the load drifts between two runs half a minute apart. Here every
process holds both: kubetrain's ``Trainer`` (with its metrics registry, as
local rank 0 has in a pod; comm hook; per-step all-gather) and the plain
DDP loop of ``bench/plain_ddp.py`` (same model, data, optimizer), and runs
them in alternating segments of ``steps`` steps (A B, B A, ...), so both see
the same load within seconds. Time stamps at the same point as the two
programs: the start of every step.
"""

from __future__ import annotations

import json
import sys
import time
from datetime import timedelta

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader, DistributedSampler

from bench.probe_kubetrain import StepStamps
from kubetrain.contract import TrainerContract
from kubetrain_trainer.api import WorkloadContext
from kubetrain_trainer.builtin_gpt import GPT, TokenWindows, config_from, generate_corpus, lm_loss
from kubetrain_trainer.config import detect_capabilities
from kubetrain_trainer.factory import build_trainer
from kubetrain_trainer.process_exit import exit_process
from kubetrain_trainer.trainer import DistEnv


def main() -> None:
    spec = json.loads(open(sys.argv[1]).read())
    caps = detect_capabilities()
    env = DistEnv.from_environ()
    cuda = caps.device_type == "cuda"
    device = torch.device("cuda", env.local_rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    dist.init_process_group(caps.backend, timeout=timedelta(seconds=300))
    contract = TrainerContract(job_name="bench", namespace="bench", pod_name="bench-w0-0", checkpoint_dir="",
                               metrics_enabled=True, **spec["contract"])
    ctx = WorkloadContext(contract, env.rank, env.world_size, device)

    # kubetrain: the Trainer as main.run builds it (the factory), with the exporter's registry on local rank 0.
    stamps = StepStamps()
    trainer = build_trainer(contract, env, caps=caps, hooks=[stamps])

    # plain: bench/plain_ddp.py's loop.
    cfg = config_from(ctx)
    tokens = torch.frombuffer(bytearray(generate_corpus(int(contract.workload_kwargs()["corpus_chars"])).encode()), dtype=torch.uint8)
    data = TokenWindows(tokens, cfg.seq_len)
    sampler = DistributedSampler(data, shuffle=True, seed=0, drop_last=True)
    loader = DataLoader(data, batch_size=contract.batch_size, sampler=sampler, drop_last=True, pin_memory=cuda)
    torch.manual_seed(0)
    model = DDP(GPT(cfg).to(device), device_ids=[env.local_rank] if cuda else None)
    opt = torch.optim.AdamW(model.parameters(), lr=contract.learning_rate, weight_decay=0.0)
    epoch = [0]
    it = [iter(loader)]

    def plain_segment(n: int) -> list[float]:
        stamps = []
        for _ in range(n):
            try:
                batch = next(it[0])
            except StopIteration:
                epoch[0] += 1
                sampler.set_epoch(epoch[0])
                it[0] = iter(loader)
                batch = next(it[0])
            batch = batch.to(device, non_blocking=True)
            stamps.append(time.perf_counter())
            loss = lm_loss(model, batch)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
        if cuda:
            torch.cuda.synchronize()
        stamps.append(time.perf_counter())  # the end of the segment's last step
        return stamps

    def kubetrain_segment(n: int) -> list[float]:
        stamps.stamps.clear()
        trainer.contract = contract.replace(max_steps=n)
        trainer.fit()
        if cuda:
            torch.cuda.synchronize()
        return [*stamps.stamps, time.perf_counter()]

    segments = []
    for i in range(spec["pairs"]):
        order = ("kubetrain", "plain") if i % 2 == 0 else ("plain", "kubetrain")
        for side in order:
            dist.barrier()
            s = kubetrain_segment(spec["steps"]) if side == "kubetrain" else plain_segment(spec["steps"])
            w = spec["warmup"]
            segments.append({"pair": i, "side": side, "mean_step_seconds": (s[-1] - s[w]) / (len(s) - 1 - w)})
        if env.rank == 0:
            k, b = segments[-2:] if segments[-2]["side"] == "kubetrain" else segments[-1:-3:-1]
            print(f"pair {i}: kubetrain {k['mean_step_seconds'] * 1000:.1f} ms, plain {b['mean_step_seconds'] * 1000:.1f} ms",
                  flush=True)
    if env.rank == 0:
        with open(sys.argv[2], "w") as fh:
            json.dump({"segments": segments, "device": caps.device_name, "world_size": env.world_size}, fh)
    dist.destroy_process_group()
    exit_process(0)


if __name__ == "__main__":
    main()
