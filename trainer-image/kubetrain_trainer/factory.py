"""The one way to build a :class:`~kubetrain_trainer.trainer.Trainer`: the worker entrypoint, the benchmarks
and the tests all call :func:`build_trainer`, so what they measure and test is what runs in a pod."""

from __future__ import annotations

import os
from datetime import timedelta
from typing import Sequence

import torch
import torch.distributed as dist

from kubetrain.contract import TrainerContract

from kubetrain_trainer.api import WorkloadContext, load_workload
from kubetrain_trainer.config import Capabilities, detect_capabilities
from kubetrain_trainer.hooks import StepHook
from kubetrain_trainer.metrics import TrainerMetrics
from kubetrain_trainer.stop_flag import StopFlag
from kubetrain_trainer.trainer import DistEnv, Trainer


def device_for(caps: Capabilities, env: DistEnv) -> torch.device:
    """This worker's device: its local rank's GPU (made current), else the CPU."""
    if caps.device_type != "cuda":
        return torch.device("cpu")
    device = torch.device("cuda", env.local_rank % torch.cuda.device_count())
    torch.cuda.set_device(device)
    return device


def build_trainer(
    contract: TrainerContract,
    env: DistEnv | None = None,
    *,
    caps: Capabilities | None = None,
    stop: StopFlag | None = None,
    hooks: Sequence[StepHook] = (),
    process_start: float | None = None,
) -> Trainer:
    """Device, process group (joined here unless the caller already has one), workload, this pod's metrics
    exporter (local rank 0, when the contract asks for metrics; serving it is the caller's) and the Trainer."""
    env = env or DistEnv.from_environ()
    caps = caps or detect_capabilities()
    device = device_for(caps, env)
    if not dist.is_initialized():
        dist.init_process_group(backend=caps.backend, timeout=timedelta(seconds=contract.process_group_timeout_seconds))
    workload = load_workload(contract.workload, WorkloadContext(contract, env.rank, env.world_size, device))
    metrics = None
    if contract.metrics_enabled and env.local_rank == 0:
        from prometheus_client import CollectorRegistry

        pod = contract.pod_name or os.environ.get("HOSTNAME", "") or "local"
        metrics = TrainerMetrics(CollectorRegistry(), trainingjob=contract.job_name, namespace=contract.namespace, pod=pod)
    return Trainer(contract, env, workload, device=device, backend=caps.backend, device_name=caps.device_name,
                   metrics=metrics, stop=stop, process_start=process_start, hooks=hooks)
