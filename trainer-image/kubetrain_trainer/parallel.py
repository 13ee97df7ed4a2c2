"""DDP or FSDP2 around the user's model, with our communication counting built in."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from kubetrain_trainer.compression import CommCounter, counting_fsdp_comms, register_ddp_hook
from kubetrain_trainer.precision import PrecisionPlan

log = logging.getLogger(__name__)


def wrap_model(
    model: nn.Module,
    *,
    contract,
    plan: PrecisionPlan,
    device: torch.device,
    backend: str,
    counter: CommCounter,
    shard_modules: Callable[[nn.Module], Iterable[nn.Module]] | None = None,
) -> tuple[nn.Module, object | None]:
    """Return (wrapped model, comm-hook state or None). The model must already be on ``device``."""
    if contract.strategy == "ddp":
        ddp = DDP(
            model,
            device_ids=[device.index] if device.type == "cuda" else None,
            # Buffers are synced once at init; skipping the per-forward
            # broadcast keeps the collective order simple (see compression.py).
            forward_sync_buffers=False,
        )
        state = register_ddp_hook(ddp, contract, backend, counter, fp16_scaler=plan.uses_grad_scaler)
        return ddp, state

    from torch.distributed.fsdp import fully_shard

    mp = plan.fsdp_mp_policy()
    root_mp = plan.fsdp_mp_policy(root=True)
    units = list(shard_modules(model)) if shard_modules else []
    all_gather, reduce_scatter = counting_fsdp_comms(counter)
    for unit in units:
        fully_shard(unit, mp_policy=mp)
    fully_shard(model, mp_policy=root_mp)
    for unit in [*units, model]:
        unit.set_custom_all_gather(all_gather)
        unit.set_custom_reduce_scatter(reduce_scatter)
    log.info("FSDP2: %d shard units + root, mp_policy=%s", len(units), root_mp)
    return model, None


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, DDP) else model
