"""Which precision × strategy × compression combinations run here, decided before training.

:func:`validate` is pure (torch-free): it takes the contract and a
:class:`Capabilities` snapshot and raises :class:`ConfigError` (exit code 2,
never retried) for anything that would crash, hang or silently do something
else. :func:`detect_capabilities` fills the snapshot from torch on the worker.

Support matrix (verified on CPU/gloo with torch 2.14.1; CUDA rows follow the
upstream documentation and are not exercised by our CPU test suite):

* precision fp32, bf16, fp16 (autocast + GradScaler) on CPU and CUDA.
* tf32 on CUDA; on CPU it has no meaning and runs as fp32 (logged).
* fp8 only on CUDA with compute capability >= 8.9 and torchao installed.
* strategy ddp with compression none | fp16 | bf16 | powersgd (our wrapped hooks,
  see :mod:`.compression`); fsdp (FSDP2) with compression none | fp16 | bf16,
  which become the reduce dtype of its MixedPrecisionPolicy.
* refused: fsdp + powersgd (PowerSGD is a DDP gradient hook; FSDP reduce-scatters
  shards), batched PowerSGD (crashes upstream), bf16 on a CUDA GPU without bf16.
"""

from __future__ import annotations

from dataclasses import dataclass

from kubetrain.contract import TrainerContract

from kubetrain_trainer.failure import ConfigError

PRECISIONS = ("fp32", "tf32", "bf16", "fp16", "fp8")
STRATEGIES = ("ddp", "fsdp")
COMPRESSIONS = ("none", "fp16", "bf16", "powersgd")

__all__ = ["ConfigError", "Capabilities", "validate", "detect_capabilities", "PRECISIONS", "STRATEGIES", "COMPRESSIONS"]


@dataclass(frozen=True)
class Capabilities:
    """What this worker can do: filled by :func:`detect_capabilities`, or by hand in tests."""

    device_type: str = "cpu"  # "cpu" | "cuda"
    backend: str = "gloo"  # "gloo" | "nccl"
    cuda_capability: tuple[int, int] | None = None
    bf16_supported: bool = True
    has_torchao: bool = False
    device_name: str = "cpu"


def validate(contract: TrainerContract, caps: Capabilities) -> list[str]:
    """Raise :class:`ConfigError` for a combination we do not run; return warnings for ones we adjust."""
    warnings: list[str] = []
    c = contract
    if c.precision not in PRECISIONS:
        raise ConfigError(f"precision {c.precision!r} is not one of {', '.join(PRECISIONS)}")
    if c.strategy not in STRATEGIES:
        raise ConfigError(f"strategy {c.strategy!r} is not one of {', '.join(STRATEGIES)}")
    if c.compression not in COMPRESSIONS:
        raise ConfigError(f"compression {c.compression!r} is not one of {', '.join(COMPRESSIONS)}")
    for name in ("max_steps", "batch_size", "checkpoint_interval_steps", "checkpoint_keep", "process_group_timeout_seconds"):
        if getattr(c, name) < 1:
            raise ConfigError(f"{name} must be >= 1, got {getattr(c, name)}")
    if c.sequence_length < 2:
        raise ConfigError(f"sequence_length must be >= 2, got {c.sequence_length}")
    if not c.learning_rate > 0:
        raise ConfigError(f"learning_rate must be > 0, got {c.learning_rate}")
    if not 0 < c.metrics_port < 65536:
        raise ConfigError(f"metrics_port must be a TCP port, got {c.metrics_port}")

    # Precision against the hardware.
    if c.precision == "fp8":
        if caps.device_type != "cuda":
            raise ConfigError("precision fp8 needs an NVIDIA GPU (compute capability >= 8.9, e.g. H100); this worker has none. Use bf16.")
        if caps.cuda_capability is None or tuple(caps.cuda_capability) < (8, 9):
            raise ConfigError(
                f"precision fp8 needs compute capability >= 8.9 (Ada/Hopper or newer); {caps.device_name} has "
                f"{caps.cuda_capability}. Use bf16."
            )
        if not caps.has_torchao:
            raise ConfigError("precision fp8 needs the torchao package (float8 training) in the trainer image; it is not installed. Use bf16.")
    if c.precision == "bf16" and caps.device_type == "cuda" and not caps.bf16_supported:
        raise ConfigError(f"precision bf16 is not supported by {caps.device_name} (needs Ampere or newer). Use fp16 or fp32.")
    if c.precision == "tf32":
        if caps.device_type != "cuda":
            warnings.append("precision tf32 only affects NVIDIA tensor cores; on CPU the job runs in plain fp32")
        elif caps.cuda_capability is not None and tuple(caps.cuda_capability) < (8, 0):
            warnings.append(f"precision tf32 needs Ampere or newer; {caps.device_name} runs it as plain fp32")
    if c.compression == "bf16" and caps.device_type == "cuda" and not caps.bf16_supported:
        raise ConfigError(f"compression bf16 is not supported by {caps.device_name} (needs Ampere or newer). Use fp16.")

    # Strategy against compression.
    if c.strategy == "fsdp" and c.compression == "powersgd":
        raise ConfigError(
            "compression powersgd works with strategy ddp only: it is a DDP gradient hook, and FSDP reduce-scatters "
            "gradient shards instead. With fsdp use compression bf16 or fp16 (the reduce dtype)."
        )
    if c.compression == "powersgd":
        if c.powersgd_rank < 1:
            raise ConfigError(f"powersgd_rank must be >= 1, got {c.powersgd_rank}")
        if c.powersgd_min_compression_rate <= 0:
            raise ConfigError(f"powersgd_min_compression_rate must be > 0, got {c.powersgd_min_compression_rate}")
        if c.powersgd_start_iteration < 0:
            raise ConfigError(f"powersgd_start_iteration must be >= 0, got {c.powersgd_start_iteration}")
        if not 0 <= c.powersgd_start_fraction <= 1:
            raise ConfigError(f"powersgd_start_fraction must be in [0, 1], got {c.powersgd_start_fraction}")
        if (c.powersgd_error_feedback or c.powersgd_warm_start) and c.powersgd_start() <= 1:
            raise ConfigError(
                "powersgd_start_iteration must be > 1 when error feedback or warm start is on (PowerSGD needs a few "
                f"plain all-reduce steps first); got {c.powersgd_start()}"
            )
    if c.workload.startswith("builtin:") and c.workload not in ("builtin:gpt",):
        raise ConfigError(f"unknown built-in workload {c.workload!r}; the built-in one is builtin:gpt")
    if not c.workload.startswith("builtin:") and ":" not in c.workload:
        raise ConfigError(f"workload {c.workload!r} must be builtin:gpt or module:function")
    return warnings


def detect_capabilities() -> Capabilities:
    """Inspect torch, CUDA and optional libraries on this worker."""
    import importlib.util
    import os

    import torch

    if torch.cuda.is_available():
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        dev = local_rank % max(torch.cuda.device_count(), 1)
        return Capabilities(
            device_type="cuda",
            backend="nccl",
            cuda_capability=tuple(torch.cuda.get_device_capability(dev)),
            bf16_supported=bool(torch.cuda.is_bf16_supported()),
            has_torchao=importlib.util.find_spec("torchao") is not None,
            device_name=torch.cuda.get_device_name(dev),
        )
    return Capabilities(device_type="cpu", backend="gloo", bf16_supported=True, has_torchao=False, device_name="cpu")
