"""A user workload: classify points of two interleaved spirals with an MLP.

Referenced from a TrainingJob as ``spec.trainer.workload: mypkg.train:workload``
(``examples/user-workload.yaml``); ``spec.trainer.args`` arrive in ``ctx.args``.
Nothing here deals with processes, devices, precision, gradient compression,
checkpoints or metrics: kubetrain applies them to what this function returns.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from kubetrain_trainer.api import Workload, WorkloadContext


def spirals(n: int, seed: int = 0, noise: float = 0.05) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` 2-D points on two interleaved spirals and their 0/1 labels (deterministic)."""
    g = torch.Generator().manual_seed(seed)
    t = torch.rand(n, generator=g) * 3 * math.pi + 0.5
    label = torch.randint(0, 2, (n,), generator=g)
    angle = t + label * math.pi
    xy = torch.stack([t * torch.cos(angle), t * torch.sin(angle)], dim=1) / (3 * math.pi)
    return xy + noise * torch.randn(n, 2, generator=g), label


class PointDataset(torch.utils.data.Dataset):
    def __init__(self, n: int, seed: int):
        self.x, self.y = spirals(n, seed)

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"x": self.x[i], "y": self.y[i]}


def workload(ctx: WorkloadContext) -> Workload:
    hidden = int(ctx.args.get("hidden", "128"))
    samples = int(ctx.args.get("samples", "20000"))

    def model_factory() -> nn.Module:
        return nn.Sequential(nn.Linear(2, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU(), nn.Linear(hidden, 2))

    def loss_fn(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        logits = model(batch["x"])
        return nn.functional.cross_entropy(logits.float(), batch["y"])

    params = 2 * hidden + hidden + hidden * hidden + hidden + hidden * 2 + 2
    return Workload(
        model_factory=model_factory,
        dataset=PointDataset(samples, seed=1234),  # the same data on every rank and restart
        loss_fn=loss_fn,
        optimizer_factory=lambda p: torch.optim.AdamW(p, lr=ctx.learning_rate, weight_decay=0.01),
        tokens_per_sample=1,  # one point = one "token" for throughput
        flops_per_token=6.0 * params,  # dense layers: 6 FLOPs per parameter per sample
        name="spirals-mlp",
    )
