"""The user API: describe *what* to train; kubetrain decides *how*.

A job names its workload in ``spec.trainer.workload`` (``KUBETRAIN_WORKLOAD``)
as ``module:function``. The function returns a :class:`Workload`; it may take
one argument, a :class:`WorkloadContext` (the job's settings). Everything else
— process group, DDP/FSDP2 wrapping, precision (autocast, GradScaler,
MixedPrecisionPolicy), gradient compression, the elastic data order,
checkpoints (save, SIGTERM, resume at any world size), metrics and failure
reporting — is applied by the trainer without the user writing it::

    # mypkg/train.py
    import torch
    from torch import nn
    from kubetrain_trainer.api import Workload, WorkloadContext

    def workload(ctx: WorkloadContext) -> Workload:
        hidden = int(ctx.args.get("hidden", "256"))
        data = torch.randn(10_000, 32)

        def loss_fn(model, batch):  # batch: what the DataLoader collates
            x = batch
            return nn.functional.mse_loss(model(x), x)

        return Workload(
            model_factory=lambda: nn.Sequential(nn.Linear(32, hidden), nn.ReLU(), nn.Linear(hidden, 32)),
            dataset=data,  # any map-style dataset: len() and [i]
            loss_fn=loss_fn,
            tokens_per_sample=1,
        )

Rules the trainer relies on:

* ``model_factory()`` builds the model on the CPU in fp32; the trainer moves it
  to the device and wraps it. Parameters must be floating point.
* ``dataset`` is map-style; the trainer owns the sampler (the elastic order of
  :mod:`kubetrain_trainer.data`) and moves collated tensors to the device.
* ``loss_fn(model, batch)`` returns the scalar mean loss of the batch. It runs
  under the trainer's autocast; keep it free of ``.backward()`` and optimizer
  calls.
* ``tokens_per_sample`` turns samples/s into tokens/s; ``flops_per_token`` (if
  known) turns tokens/s into MFU.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from kubetrain.contract import TrainerContract

from kubetrain_trainer.failure import ConfigError


@dataclass(frozen=True)
class WorkloadContext:
    """What a workload factory may want to know about the job."""

    contract: TrainerContract
    rank: int = 0
    world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def args(self) -> dict[str, str]:
        """``spec.trainer.args`` (``KUBETRAIN_WORKLOAD_ARGS``) as a dict of strings."""
        return self.contract.workload_kwargs()

    @property
    def seed(self) -> int:
        return self.contract.seed

    @property
    def sequence_length(self) -> int:
        return self.contract.sequence_length

    @property
    def batch_size(self) -> int:
        return self.contract.batch_size

    @property
    def learning_rate(self) -> float:
        return self.contract.learning_rate


@dataclass
class Workload:
    """A model, its data and its loss: everything kubetrain needs from user code."""

    model_factory: Callable[[], nn.Module]
    dataset: Any  # map-style: __len__ and __getitem__
    loss_fn: Callable[[nn.Module, Any], torch.Tensor]
    # Optimizer over the (wrapped) model's parameters; default AdamW at the job's learning rate.
    optimizer_factory: Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer] | None = None
    tokens_per_sample: int = 1
    flops_per_token: float | None = None
    collate_fn: Callable[[list[Any]], Any] | None = None
    # FSDP2: the submodules to shard as their own units (e.g. transformer blocks); the root is always sharded last.
    shard_modules: Callable[[nn.Module], Iterable[nn.Module]] | None = None
    grad_clip_norm: float | None = 1.0
    num_workers: int = 0  # DataLoader worker processes
    name: str = "workload"


def load_workload(spec: str, ctx: WorkloadContext) -> Workload:
    """Resolve ``builtin:gpt`` or ``module:function`` to a :class:`Workload`.

    An unknown module or function is a :class:`ConfigError` (never retried);
    exceptions raised *inside* the user's function propagate as they are
    (classified as UserError).
    """
    if spec == "builtin:gpt":
        from kubetrain_trainer.builtin_gpt import make_workload

        return make_workload(ctx)
    module_name, sep, func_name = spec.partition(":")
    if not sep or not module_name or not func_name:
        raise ConfigError(f"workload {spec!r} must be builtin:gpt or module:function")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):
            raise ConfigError(f"workload module {module_name!r} cannot be imported: {exc}") from exc
        raise
    factory = getattr(module, func_name, None)
    if factory is None or not callable(factory):
        raise ConfigError(f"workload {spec!r}: module {module_name!r} has no function {func_name!r}")
    params = [p for p in inspect.signature(factory).parameters.values() if p.default is inspect.Parameter.empty]
    result = factory(ctx) if params else factory()
    if not isinstance(result, Workload):
        raise ConfigError(f"workload {spec!r} returned {type(result).__name__}, not kubetrain_trainer.api.Workload")
    return result
