"""builtin:gpt with a fixed pause per step: keeps a run alive long enough for a new agent to boot and join.

Used by the scale-up test, where a tiny model at world size 1 could otherwise
finish before the second agent has imported torch. Pause: ``slow_ms`` (25).
"""

from __future__ import annotations

import time

from kubetrain_trainer.api import Workload, WorkloadContext
from kubetrain_trainer.builtin_gpt import make_workload


def workload(ctx: WorkloadContext) -> Workload:
    base = make_workload(ctx)
    pause = float(ctx.args.get("slow_ms", "25")) / 1000
    inner = base.loss_fn

    def loss_fn(model, batch):
        time.sleep(pause)
        return inner(model, batch)

    base.loss_fn = loss_fn
    return base
