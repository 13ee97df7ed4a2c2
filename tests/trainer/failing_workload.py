"""A user workload whose loss raises on the 4th step: tests the UserError path end to end."""

from __future__ import annotations

from kubetrain_trainer.api import Workload, WorkloadContext
from kubetrain_trainer.builtin_gpt import make_workload


def workload(ctx: WorkloadContext) -> Workload:
    base = make_workload(ctx)
    calls = {"n": 0}

    def loss_fn(model, batch):
        calls["n"] += 1
        if calls["n"] == 4:
            raise ZeroDivisionError("the user's loss divided by zero")
        return base.loss_fn(model, batch)

    base.loss_fn = loss_fn
    return base
