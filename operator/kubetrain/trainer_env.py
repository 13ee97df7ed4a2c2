"""From a TrainingJob to the trainer's contract: the one mapping the operator's pods and `kubetrain run` share."""

from __future__ import annotations

from kubetrain.api.models import TrainingJob
from kubetrain.api.pod import OPERATOR_VOLUMES
from kubetrain.contract import TrainerContract

# Where the operator mounts the checkpoint volume in every worker pod.
CHECKPOINT_MOUNT = OPERATOR_VOLUMES["checkpoints"]


def checkpoint_subdir(job: TrainingJob) -> str:
    ckpt = job.spec.checkpoint
    if ckpt is None:
        return ""
    return ckpt.path or f"{job.metadata.namespace or 'default'}/{job.metadata.name}"


def contract_for(job: TrainingJob, checkpoint_root: str = CHECKPOINT_MOUNT) -> TrainerContract:
    """The trainer settings for ``job``; ``checkpoint_root`` is where its checkpoint volume is mounted."""
    spec = job.spec
    psgd = spec.compression.powersgd() if spec.compression.type == "powersgd" else None
    ckpt = spec.checkpoint
    fields = dict(
        job_name=job.metadata.name,
        namespace=job.metadata.namespace or "default",
        workload=spec.trainer.workload,
        max_steps=spec.trainer.max_steps,
        batch_size=spec.trainer.batch_size,
        sequence_length=spec.trainer.sequence_length,
        learning_rate=spec.trainer.learning_rate,
        seed=spec.trainer.seed,
        precision=spec.precision,
        strategy=spec.strategy,
        compression=spec.compression.type,
        checkpoint_dir=f"{checkpoint_root.rstrip('/')}/{checkpoint_subdir(job)}" if ckpt else "",
        metrics_enabled=spec.metrics.enabled,
        metrics_port=spec.metrics.port,
        workload_args=",".join(f"{k}={v}" for k, v in sorted((spec.trainer.args or {}).items())),
    )
    if ckpt:
        fields.update(checkpoint_interval_steps=ckpt.interval_steps, checkpoint_keep=ckpt.keep)
        if ckpt.init_from:
            fields.update(init_checkpoint_dir=f"{checkpoint_root.rstrip('/')}/{ckpt.init_from}")
    if psgd:
        fields.update(
            powersgd_rank=psgd.rank,
            powersgd_start_iteration=psgd.start_iteration or 0,  # 0: the trainer takes startFraction of max_steps
            powersgd_start_fraction=psgd.start_fraction,
            powersgd_min_compression_rate=psgd.min_compression_rate,
            powersgd_error_feedback=psgd.error_feedback,
            powersgd_warm_start=psgd.warm_start,
        )
    return TrainerContract(**fields)
