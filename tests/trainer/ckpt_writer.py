"""Helper process for test_checkpoint.py: saves a good checkpoint, then hangs in the middle of the next one.

``python ckpt_writer.py DIR MODE``; MODE ``during-dcp`` hangs inside DCP's file
writing (at the first fsync of a data file), ``before-rename`` after the
marker is written but before the directory is renamed. The test SIGKILLs it
once DIR/READY exists.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import torch

from kubetrain_trainer import checkpoint as ck
from kubetrain_trainer.builtin_gpt import GPT, GPTConfig


def train_step(model, opt):
    x = torch.randint(0, 256, (2, 17))
    loss = torch.nn.functional.cross_entropy(model(x[:, :-1]).reshape(-1, 256), x[:, 1:].reshape(-1))
    loss.backward()
    opt.step()
    opt.zero_grad()


def main() -> None:
    root, mode = Path(sys.argv[1]), sys.argv[2]
    torch.manual_seed(0)
    model = GPT(GPTConfig(seq_len=16, d_model=32, n_layers=1, n_heads=2))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    train_step(model, opt)
    mgr = ck.CheckpointManager(str(root / "ckpt"), keep=2, rank=0, world_size=1)
    mgr.prepare()
    mgr.claim()
    state = ck.TrainState(model, opt)
    mgr.save(state, ck.CheckpointMeta(step=10, sample_position=80, world_size=1))
    torch.save({k: v.clone() for k, v in model.state_dict().items()}, root / "good_weights.pt")
    train_step(model, opt)  # the next checkpoint would hold different weights

    ready = root / "READY"
    if mode == "during-dcp":
        real_fsync = os.fsync

        def hanging_fsync(fd):
            try:
                target = os.readlink(f"/proc/self/fd/{fd}")
            except OSError:
                target = ""
            if ".tmp-step-" in target and target.endswith(".distcp"):
                ready.write_text(target)
                time.sleep(600)
            return real_fsync(fd)

        os.fsync = hanging_fsync
    elif mode == "before-rename":
        real_write_marker = ck._write_marker

        def hanging_marker(path, meta):
            real_write_marker(path, meta)
            ready.write_text(str(path))
            time.sleep(600)

        ck._write_marker = hanging_marker
    else:
        raise SystemExit(f"unknown mode {mode}")
    mgr.save(state, ck.CheckpointMeta(step=20, sample_position=160, world_size=1))
    raise SystemExit("the save was supposed to hang")


if __name__ == "__main__":
    main()
