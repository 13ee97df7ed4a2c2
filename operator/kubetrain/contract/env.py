"""The one contract between the operator and the trainer: environment variables.

The operator writes these into every worker container (``TrainerContract.to_env``);
the trainer reads them back (``TrainerContract.from_env``). Nothing else crosses
the boundary, so a plain torchrun script that ignores them still runs under
kubetrain: it just gets torchrun's own ``RANK``/``WORLD_SIZE``/... and none of
our precision, compression, checkpoint or metrics handling.

This module imports only the standard library: the trainer image has no kopf
and the operator image has no torch, and both import it.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields

PREFIX = "KUBETRAIN_"

# The path the trainer writes its failure reason to; the operator sets it as the
# container's terminationMessagePath so the reason shows up in the pod status.
TERMINATION_MESSAGE_PATH = "/dev/termination-log"

# The trainer's exit codes and failure reasons: kubetrain.contract.vocabulary.


def _env_name(attr: str) -> str:
    return PREFIX + attr.upper()


def _parse(value: str, typ: type):
    if typ is bool:
        return value.strip().lower() in ("1", "true", "yes", "on")
    return typ(value)


def _format(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


@dataclass(frozen=True)
class TrainerContract:
    """Everything the trainer needs to know, one environment variable per field.

    The variable for a field is ``KUBETRAIN_`` + its name in upper case, e.g.
    ``precision`` -> ``KUBETRAIN_PRECISION``. Field types are str, int, float or
    bool, so the mapping stays flat and readable in ``kubectl describe pod``.
    """

    # Identity: bounded labels for metrics, and where logs point.
    job_name: str = "local"
    namespace: str = "default"
    pod_name: str = ""
    # What to train: "builtin:gpt" for the shipped model, or "module:function"
    # for user code that returns a kubetrain_trainer.api.Workload.
    workload: str = "builtin:gpt"
    max_steps: int = 200
    batch_size: int = 8  # per process (micro-batch)
    sequence_length: int = 128
    learning_rate: float = 3e-4
    seed: int = 0
    # Numerics and parallelism.
    precision: str = "fp32"  # fp32 | tf32 | bf16 | fp16 | fp8
    strategy: str = "ddp"  # ddp | fsdp
    compression: str = "none"  # none | fp16 | bf16 | powersgd
    powersgd_rank: int = 16  # = PowerSGDSpec's default (tests/unit/test_contract.py)
    # Plain all-reduce steps before PowerSGD compresses: 0 means powersgd_start_fraction of max_steps, so the
    # uncompressed warm-up scales with the job (bench/results/compression_loss.md: what an early start costs).
    powersgd_start_iteration: int = 0
    powersgd_start_fraction: float = 0.05
    powersgd_min_compression_rate: float = 2.0
    powersgd_error_feedback: bool = True
    powersgd_warm_start: bool = True
    # Checkpointing: empty dir means no checkpoints.
    checkpoint_dir: str = ""
    checkpoint_interval_steps: int = 100
    checkpoint_keep: int = 2
    # Another job's checkpoint directory to start from while checkpoint_dir holds none (a population-based-
    # training trial continues a better trial's model with its own learning rate). Empty: none.
    init_checkpoint_dir: str = ""
    # Collective timeout for the process group, seconds.
    process_group_timeout_seconds: int = 600
    # Metrics: one exporter per pod, served by local rank 0.
    metrics_enabled: bool = True
    metrics_port: int = 9404
    # Where a failure reason is written (the operator reads it from pod status).
    termination_message_path: str = TERMINATION_MESSAGE_PATH
    # Extra free-form settings for user workloads, "k=v,k2=v2".
    workload_args: str = field(default="")
    # Local runs and tests only (the operator leaves them empty). Global rank 0
    # rewrites a small JSON progress file here (step, loss, tokens/s, ETA) for
    # the local launcher's progress bar.
    status_path: str = ""
    # Debug: global rank 0 appends, per step, the ids of the samples every rank
    # trained on (gathered from all ranks) as JSON lines; tests check data order.
    sample_log_path: str = ""

    def to_env(self) -> dict[str, str]:
        return {_env_name(f.name): _format(getattr(self, f.name)) for f in fields(self)}

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "TrainerContract":
        environ = os.environ if environ is None else environ
        kwargs = {}
        for f in fields(cls):
            name = _env_name(f.name)
            if name in environ:
                typ = {"str": str, "int": int, "float": float, "bool": bool}[f.type if isinstance(f.type, str) else f.type.__name__]
                try:
                    kwargs[f.name] = _parse(environ[name], typ)
                except ValueError as exc:
                    raise ValueError(f"{name}={environ[name]!r} is not a valid {typ.__name__}") from exc
        return cls(**kwargs)

    def replace(self, **changes) -> "TrainerContract":
        return dataclasses.replace(self, **changes)

    def powersgd_start(self) -> int:
        """The step PowerSGD starts compressing at: the explicit iteration, else the fraction of max_steps.

        At least 2 with error feedback or warm start (their memories need a plain step first), else at least 1.
        """
        if self.powersgd_start_iteration > 0:
            return self.powersgd_start_iteration
        floor = 2 if (self.powersgd_error_feedback or self.powersgd_warm_start) else 1
        return max(floor, round(self.powersgd_start_fraction * self.max_steps))

    def workload_kwargs(self) -> dict[str, str]:
        pairs = [p for p in self.workload_args.split(",") if p.strip()]
        return dict(p.split("=", 1) for p in pairs)


def env_names() -> list[str]:
    """All variable names of the contract, for docs and tests."""
    return [_env_name(f.name) for f in fields(TrainerContract)]
