"""Numerics of a job: autocast, GradScaler, FSDP2 MixedPrecisionPolicy, TF32, fp8.

* DDP: parameters stay fp32; bf16/fp16 run the forward pass and loss under
  ``torch.autocast``; fp16 adds a ``GradScaler`` (CUDA and CPU).
* FSDP2 (torchtitan style): no autocast; ``MixedPrecisionPolicy`` casts the
  gathered parameters to ``param_dtype`` and reduce-scatters gradients in
  ``reduce_dtype`` — fp32 unless compression bf16/fp16 asks for it. The root's
  outputs are cast back to fp32. fp16 also gets a GradScaler.
* tf32: fp32 with TF32 tensor-core matmuls on CUDA (plain fp32 elsewhere).
* fp8: torchao float8 linears (CUDA, compute capability >= 8.9) with bf16
  autocast/params for the rest; validated in :mod:`.config` before we get here.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass

import torch
from torch import nn

log = logging.getLogger(__name__)

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class PrecisionPlan:
    precision: str
    strategy: str
    compression: str
    device_type: str

    @property
    def compute_dtype(self) -> torch.dtype | None:
        """The low-precision dtype of matmuls, or None for fp32/tf32."""
        return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp8": torch.bfloat16}.get(self.precision)

    @property
    def uses_autocast(self) -> bool:
        return self.strategy == "ddp" and self.compute_dtype is not None

    @property
    def uses_grad_scaler(self) -> bool:
        return self.precision == "fp16"

    def apply_backend_flags(self) -> None:
        """TF32 on for tf32 (and the fp8/bf16 leftovers in fp32), off for strict fp32."""
        if self.device_type != "cuda":
            return
        allow = self.precision in ("tf32", "bf16", "fp8")
        torch.backends.cuda.matmul.allow_tf32 = allow
        torch.backends.cudnn.allow_tf32 = allow

    def autocast(self) -> contextlib.AbstractContextManager:
        if not self.uses_autocast:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device_type, dtype=self.compute_dtype)

    def grad_scaler(self) -> torch.amp.GradScaler:
        return torch.amp.GradScaler(self.device_type, enabled=self.uses_grad_scaler)

    def fsdp_mp_policy(self, root: bool = False):
        """FSDP2's MixedPrecisionPolicy: param dtype from precision, reduce dtype from compression (fp32 default).

        Only the root casts its outputs back to fp32 (inner units must hand
        the next unit activations in the parameter dtype).
        """
        from torch.distributed.fsdp import MixedPrecisionPolicy

        param_dtype = self.compute_dtype  # None = keep fp32
        # reduce_dtype=None would mean "same as param_dtype"; be explicit.
        reduce_dtype = DTYPES.get(self.compression, torch.float32) if self.compression in ("fp16", "bf16") else torch.float32
        return MixedPrecisionPolicy(
            param_dtype=param_dtype, reduce_dtype=reduce_dtype, output_dtype=torch.float32 if root and param_dtype else None
        )

    def reports_mfu(self) -> bool:
        # torchtitan does not report MFU under fp8 (the bf16 peak would be the wrong denominator).
        return self.precision != "fp8"

    def convert_fp8(self, model: nn.Module) -> nn.Module:
        """Swap eligible nn.Linear layers for torchao float8 training linears (dims divisible by 16)."""
        if self.precision != "fp8":
            return model
        from torchao.float8 import convert_to_float8_training  # validated to exist

        def eligible(mod: nn.Module, fqn: str) -> bool:
            return isinstance(mod, nn.Linear) and mod.in_features % 16 == 0 and mod.out_features % 16 == 0

        convert_to_float8_training(model, module_filter_fn=eligible)
        log.info("fp8: converted eligible Linear layers to torchao Float8Linear")
        return model
