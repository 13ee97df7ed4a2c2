"""The training loop: one :class:`Trainer` per worker process.

``Trainer.train_step`` is one optimizer step (forward + loss under the
precision plan, backward through the wrapped model — whose DDP hook or FSDP2
comms do the compressed, counted communication — unscale, clip, step).
``Trainer.fit`` is the elastic loop around it: resume from the newest
checkpoint at the current world size, feed the elastic sampler's batches,
all-gather a small row of per-rank figures each step (job loss, pod
throughput, SIGTERM flags, process figures, the gradient norms of the noise
scale), export metrics, checkpoint every
N steps, and stop cleanly — with a checkpoint — when any rank got SIGTERM.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader

from kubetrain.contract import TrainerContract
from kubetrain.scheduling.efficiency import NoiseScaleEstimator

from kubetrain_trainer.api import Workload
from kubetrain_trainer.checkpoint import CheckpointManager, CheckpointMeta, TrainState
from kubetrain_trainer.compression import CommCounter, PowerSGDState, powersgd_warmup
from kubetrain_trainer.data import ElasticSampler
from kubetrain_trainer.hardware import ProcessProbe
from kubetrain_trainer.metrics import ProcessFigures, TrainerMetrics
from kubetrain_trainer.mfu import peak_flops_for
from kubetrain_trainer.parallel import wrap_model
from kubetrain_trainer.precision import PrecisionPlan
from kubetrain_trainer.status import write_status
from kubetrain_trainer.stop_flag import StopFlag

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistEnv:
    """What torchrun tells a worker about its place in the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    group_rank: int = 0
    restart_count: int = 0

    @classmethod
    def from_environ(cls, environ: dict[str, str] | None = None) -> "DistEnv":
        e = os.environ if environ is None else environ

        def get(name: str, default: int) -> int:
            return int(e.get(name, default))

        return cls(
            rank=get("RANK", 0),
            world_size=get("WORLD_SIZE", 1),
            local_rank=get("LOCAL_RANK", 0),
            local_world_size=get("LOCAL_WORLD_SIZE", 1),
            group_rank=get("GROUP_RANK", 0),
            restart_count=get("TORCHELASTIC_RESTART_COUNT", 0),
        )


# Columns of the row every rank contributes to the per-step all-gather.
_C_LOSS_SUM, _C_SAMPLES, _C_TOKENS, _C_STOP, _C_GROUP, _C_LOCAL = range(6)
_C_COMM, _C_DATA, _C_CPU, _C_RSS, _C_GPU_UTIL, _C_GPU_MEM, _C_GPU_POWER, _C_GPU_ENERGY, _C_COMPUTE = range(6, 15)
_C_COMPRESSION_ERROR = 15  # PowerSGD's relative compression error this step; < 0: none (not compressing)
# This rank's squared gradient norm before the DDP all-reduce, and the all-reduced gradient's after it
# (summed over buckets, unscaled); < 0: not measured (world size 1, FSDP, an fp16 overflow step).
_C_GRAD_LOCAL_SQ, _C_GRAD_GLOBAL_SQ = 16, 17
_NCOLS = 18


@dataclass
class FitResult:
    """How ``fit`` ended: ``completed``, ``sigterm`` (this rank was told to stop) or ``peer_preempted``."""

    outcome: str
    step: int
    start_step: int
    world_size: int
    checkpoint_step: int | None = None
    losses: list[float] = field(default_factory=list)
    comm_bytes: list[int] = field(default_factory=list)  # this process's collective payload bytes per step
    step_seconds: list[float] = field(default_factory=list)
    # PowerSGD: mean over ranks of the relative compression error per step (None: not compressing that step)
    compression_errors: list[float | None] = field(default_factory=list)
    # Smoothed gradient noise scale (samples) after each step; None while unknown (world size 1, FSDP, early)
    noise_scales: list[float | None] = field(default_factory=list)
    tokens_per_second: float = 0.0  # job-wide, last window


class _Indexed(torch.utils.data.Dataset):
    """Wraps a dataset so every batch also carries its sample ids."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int):
        return i, self.dataset[i]


def _collate_with_ids(collate):
    def fn(items):
        ids = torch.tensor([i for i, _ in items], dtype=torch.int64)
        return ids, collate([s for _, s in items])

    return fn


def to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        out = [to_device(v, device) for v in batch]
        return type(batch)(out) if isinstance(batch, tuple) and not hasattr(batch, "_fields") else out
    return batch


class Trainer:
    """One worker's training: build, wrap, resume, loop. The process group must be initialised (or world size 1)."""

    def __init__(
        self,
        contract: TrainerContract,
        env: DistEnv,
        workload: Workload,
        *,
        device: torch.device,
        backend: str,
        device_name: str = "cpu",
        metrics: TrainerMetrics | None = None,
        stop: StopFlag | None = None,
        process_start: float | None = None,
    ):
        self.contract = contract
        self.env = env
        self.workload = workload
        self.device = device
        self.backend = backend
        self.metrics = metrics
        self.stop = stop or StopFlag()
        self.process_start = process_start or time.time()
        self.plan = PrecisionPlan(contract.precision, contract.strategy, contract.compression, device.type)
        self.plan.apply_backend_flags()
        self.counter = CommCounter()

        torch.manual_seed(contract.seed)  # identical initial weights on every rank
        model = workload.model_factory().to(device)
        model = self.plan.convert_fp8(model)
        self.model, self.hook_state = wrap_model(
            model,
            contract=contract,
            plan=self.plan,
            device=device,
            backend=backend,
            counter=self.counter,
            shard_modules=workload.shard_modules,
        )
        if workload.optimizer_factory is not None:
            self.optimizer = workload.optimizer_factory(self.model.parameters())
        else:
            self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=contract.learning_rate, weight_decay=0.0)
        self.scaler = self.plan.grad_scaler()
        self.state = TrainState(self.model, self.optimizer)
        self.ckpt = (
            CheckpointManager(contract.checkpoint_dir, contract.checkpoint_keep, env.rank, env.world_size,
                              init_dir=contract.init_checkpoint_dir)
            if contract.checkpoint_dir
            else None
        )
        self.probe = ProcessProbe(device.index if device.type == "cuda" else None)
        self.peak_flops = peak_flops_for(device_name) if device.type == "cuda" and self.plan.reports_mfu() else None
        self.flops_per_token = workload.flops_per_token if self.plan.reports_mfu() else None
        self._data_seconds = 0.0
        # Gradient noise scale from the DDP hooks' norms: undefined at world size 1 (one batch size),
        # and FSDP2's reduce-scatter leaves no full gradient to measure.
        self.noise = NoiseScaleEstimator() if contract.strategy == "ddp" and env.world_size > 1 else None
        self._grad_scale: torch.Tensor | None = None

    # -- one step ---------------------------------------------------------------
    def train_step(self, batch: Any) -> torch.Tensor:
        """Forward + loss (precision plan), backward (comm hooks run here), unscale, clip, step. Returns the detached loss."""
        self.model.train()
        with self.plan.autocast():
            loss = self.workload.loss_fn(self.model, batch)
        if loss.dim() != 0:
            raise ValueError(f"loss_fn must return a scalar, got shape {tuple(loss.shape)}")
        self.scaler.scale(loss).backward()
        if self.scaler.is_enabled():
            # The scale this backward ran at (the hooks' norms are scaled by it), kept on the device:
            # get_scale() would sync here, and update() below may change it.
            scale = getattr(self.scaler, "_scale", None)
            self._grad_scale = scale.detach().clone() if scale is not None else None
        if self.workload.grad_clip_norm:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.workload.grad_clip_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    # -- gradient noise scale -----------------------------------------------------
    def _take_gradient_norms(self) -> tuple[float, float]:
        """This step's (local, all-reduced) squared gradient norms from the hooks, unscaled; (-1, -1) if none."""
        norms = self.counter.take_gradient_norms()
        if norms is None or self.noise is None:
            return -1.0, -1.0
        local, reduced = norms
        if self.scaler.is_enabled() and self._grad_scale is not None:
            s2 = float(self._grad_scale.item()) ** 2  # the loss was read already: nothing left to wait for
            if not (math.isfinite(s2) and s2 > 0):
                return -1.0, -1.0
            local, reduced = local / s2, reduced / s2
        return local, reduced

    def _observe_noise_scale(self, rows: torch.Tensor) -> float | None:
        """Feed the gathered norms to the estimator: |g_small|^2 is the mean over ranks at the per-rank batch,
        |g_big|^2 the all-reduced norm at the global batch. The same rows on every rank: the same value."""
        if self.noise is None:
            return None
        local, reduced = rows[:, _C_GRAD_LOCAL_SQ], rows[:, _C_GRAD_GLOBAL_SQ]
        if bool((local >= 0).all()) and bool((reduced >= 0).all()):
            samples = rows[:, _C_SAMPLES]
            self.noise.update(float(local.mean().item()), float(samples.mean().item()),
                              float(reduced.mean().item()), float(samples.sum().item()))
        value = self.noise.value
        return value if value is not None and math.isfinite(value) else None

    # -- collectives ------------------------------------------------------------
    def _stats_device(self) -> torch.device:
        return self.device if self.backend == "nccl" else torch.device("cpu")

    def _gather_rows(self, row: list[float]) -> torch.Tensor:
        t = torch.tensor(row, dtype=torch.float64, device=self._stats_device())
        if self.env.world_size == 1 or not dist.is_initialized():
            return t.unsqueeze(0).cpu()
        out = torch.empty(self.env.world_size * _NCOLS, dtype=torch.float64, device=t.device)
        dist.all_gather_single(out, t)
        return out.view(self.env.world_size, _NCOLS).cpu()

    def _gather_ids(self, ids: torch.Tensor) -> list[list[int]]:
        if self.env.world_size == 1 or not dist.is_initialized():
            return [ids.tolist()]
        t = ids.to(self._stats_device())
        out = [torch.empty_like(t) for _ in range(self.env.world_size)]
        dist.all_gather(out, t)
        return [o.cpu().tolist() for o in out]

    # -- the loop ---------------------------------------------------------------
    def _loader(self, sampler: ElasticSampler):
        from torch.utils.data import default_collate

        wl = self.workload
        return DataLoader(
            _Indexed(wl.dataset),
            batch_sampler=sampler,
            collate_fn=_collate_with_ids(wl.collate_fn or default_collate),
            num_workers=wl.num_workers,
            pin_memory=self.device.type == "cuda",
        )

    def _save(self, step: int, position: int, reason: str, productive: float, job_start: float, tokens: int, samples: int) -> None:
        meta = CheckpointMeta(
            step=step,
            sample_position=position,
            world_size=self.env.world_size,
            job_start_time=job_start,
            productive_seconds=productive,
            tokens_total=tokens,
            samples_total=samples,
            scaler=self.scaler.state_dict() if self.scaler.is_enabled() else None,
            reason=reason,
        )
        t0 = time.monotonic()
        path = self.ckpt.save(self.state, meta)
        seconds = time.monotonic() - t0
        log.info("checkpoint %s written (%s) in %.2fs", path.name, reason, seconds)
        if self.metrics:
            self.metrics.observe_checkpoint(completed_at=time.time(), seconds=seconds)

    def fit(self) -> FitResult:
        c, env = self.contract, self.env
        meta = None
        if self.ckpt:
            self.ckpt.prepare()
            meta = self.ckpt.load_latest(self.state)
            self.ckpt.claim()
        step = meta.step if meta else 0
        start_step = step
        position = meta.sample_position if meta else 0
        job_start = meta.job_start_time if meta and meta.job_start_time else self.process_start
        productive = meta.productive_seconds if meta else 0.0
        tokens_total = meta.tokens_total if meta else 0
        samples_total = meta.samples_total if meta else 0
        if meta and meta.scaler and self.scaler.is_enabled():
            self.scaler.load_state_dict(meta.scaler)
        if step and isinstance(self.hook_state, PowerSGDState):
            self.hook_state.start_powerSGD_iter = powersgd_warmup(c, step)
        if self.metrics:
            self.metrics.set_static(world_size=env.world_size, max_steps=c.max_steps, restart_count=env.restart_count)
            self.metrics._pod(self.metrics.step).set(step)
            if meta:
                self.metrics.observe_checkpoint(completed_at=meta.saved_at, seconds=None)
        result = FitResult("completed", step, start_step, env.world_size, checkpoint_step=meta.step if meta else None)
        if step >= c.max_steps:
            log.info("nothing to do: the checkpoint is at step %d >= max_steps %d", step, c.max_steps)
            return result
        log.info(
            "training %s: steps %d→%d, world size %d, precision %s, strategy %s, compression %s, device %s",
            self.workload.name, step, c.max_steps, env.world_size, c.precision, c.strategy, c.compression, self.device,
        )
        sampler = ElasticSampler(len(self.workload.dataset), c.batch_size, env.rank, env.world_size, c.seed, position)
        batches = iter(self._loader(sampler))
        tps_window: list[tuple[float, float]] = []
        log_every = max(1, c.max_steps // 20)
        last_status = 0.0
        first_loss = None
        while step < c.max_steps:
            t0 = time.monotonic()
            ids, batch = next(batches)
            batch = to_device(batch, self.device)
            t_data = time.monotonic() - t0
            self._data_seconds += t_data
            loss = self.train_step(batch)
            loss_value = float(loss.item())
            t_compute = time.monotonic() - t0 - t_data
            n = int(ids.numel())
            util, mem, power, energy = self.probe.gpu()
            row = [0.0] * _NCOLS
            row[_C_LOSS_SUM] = loss_value * n
            row[_C_SAMPLES] = n
            row[_C_TOKENS] = n * self.workload.tokens_per_sample
            row[_C_STOP] = 1.0 if self.stop.requested else 0.0
            row[_C_GROUP] = env.group_rank
            row[_C_LOCAL] = env.local_rank
            row[_C_COMM] = self.counter.total
            row[_C_DATA] = self._data_seconds
            row[_C_CPU] = self.probe.cpu_seconds()
            row[_C_RSS] = self.probe.rss_bytes()
            row[_C_GPU_UTIL], row[_C_GPU_MEM], row[_C_GPU_POWER], row[_C_GPU_ENERGY] = util, mem, power, energy
            row[_C_COMPUTE] = t_compute
            comp_err = self.counter.take_compression_error()
            row[_C_COMPRESSION_ERROR] = -1.0 if comp_err is None else comp_err
            row[_C_GRAD_LOCAL_SQ], row[_C_GRAD_GLOBAL_SQ] = self._take_gradient_norms()
            rows = self._gather_rows(row)
            id_lists = self._gather_ids(ids) if c.sample_log_path else None
            step_seconds = time.monotonic() - t0

            step += 1
            job_samples = int(rows[:, _C_SAMPLES].sum().item())
            job_tokens = int(rows[:, _C_TOKENS].sum().item())
            position += job_samples
            samples_total += job_samples
            tokens_total += job_tokens
            productive += t_compute
            job_loss = float(rows[:, _C_LOSS_SUM].sum().item()) / max(job_samples, 1)
            if first_loss is None:
                first_loss = job_loss
            result.losses.append(job_loss)
            result.comm_bytes.append(self.counter.take())
            result.step_seconds.append(step_seconds)
            errs = rows[:, _C_COMPRESSION_ERROR]
            result.compression_errors.append(float(errs[errs >= 0].mean().item()) if bool((errs >= 0).any()) else None)
            noise_scale = self._observe_noise_scale(rows)
            result.noise_scales.append(noise_scale)
            tps_window.append((step_seconds, job_tokens))
            tps_window = tps_window[-20:]
            job_tps = sum(t for _, t in tps_window) / max(sum(s for s, _ in tps_window), 1e-9)
            result.tokens_per_second = job_tps
            stoppers = int(rows[:, _C_STOP].sum().item())
            goodput = productive / max(time.time() - job_start, 1e-9)

            if env.rank == 0 and id_lists is not None:
                with open(c.sample_log_path, "a", encoding="utf-8") as fh:
                    fh.write(json.dumps({"step": step, "world_size": env.world_size, "restart": env.restart_count,
                                         "position": position - job_samples, "ids": id_lists}) + "\n")
            pod_tps = None
            mfu = None
            if self.metrics:
                mine = rows[rows[:, _C_GROUP] == env.group_rank]
                procs = [
                    ProcessFigures(
                        local_rank=int(r[_C_LOCAL]), communicated_bytes=float(r[_C_COMM]), data_loading_seconds=float(r[_C_DATA]),
                        cpu_seconds=float(r[_C_CPU]), rss_bytes=float(r[_C_RSS]), gpu_utilization=float(r[_C_GPU_UTIL]),
                        gpu_memory_bytes=float(r[_C_GPU_MEM]), gpu_power_watts=float(r[_C_GPU_POWER]), gpu_energy_joules=float(r[_C_GPU_ENERGY]),
                        compression_error=float(r[_C_COMPRESSION_ERROR]),
                    )
                    for r in mine
                ]
                pod_tps, _, mfu = self.metrics.observe_step(
                    step=step, loss=job_loss, step_seconds=step_seconds,
                    pod_tokens=float(mine[:, _C_TOKENS].sum().item()), pod_samples=float(mine[:, _C_SAMPLES].sum().item()),
                    goodput=goodput, flops_per_token=self.flops_per_token, peak_flops=self.peak_flops,
                    pod_devices=env.local_world_size, processes=procs, noise_scale=noise_scale,
                )
            if env.rank == 0:
                if step <= 3 or step % log_every == 0 or step == c.max_steps:
                    log.info(
                        "step %d/%d loss %.4f tokens/s %.0f (job) step %.3fs comm %.1f KiB/step%s",
                        step, c.max_steps, job_loss, job_tps, step_seconds, self.counter.total / max(step - start_step, 1) / 1024,
                        f" mfu {mfu:.3f}" if mfu is not None else "",
                    )
            if stoppers:
                result.outcome = "sigterm" if self.stop.requested else "peer_preempted"
                log.warning("%d rank(s) got SIGTERM: checkpointing at step %d and stopping", stoppers, step)
                if self.ckpt:
                    self._save(step, position, "sigterm", productive, job_start, tokens_total, samples_total)
            elif self.ckpt and (step % c.checkpoint_interval_steps == 0 or step == c.max_steps):
                self._save(step, position, "final" if step == c.max_steps else "interval", productive, job_start,
                           tokens_total, samples_total)
            if env.rank == 0 and c.status_path:
                now = time.monotonic()
                if now - last_status > 0.25 or step == c.max_steps or stoppers:
                    last_status = now
                    write_status(c.status_path, {
                        "step": step, "max_steps": c.max_steps, "start_step": start_step, "loss": job_loss,
                        "first_loss": first_loss, "tokens_per_second": job_tps, "world_size": env.world_size,
                        "eta_seconds": (c.max_steps - step) * (sum(s for s, _ in tps_window) / len(tps_window)),
                        "goodput": goodput, "restart": env.restart_count,
                        "checkpoint_step": self.ckpt.last_saved_step if self.ckpt else None,
                        "mfu": mfu, "outcome": "running" if step < c.max_steps and not stoppers else result.outcome,
                        "time": time.time(),
                    })
            if stoppers:
                break
        result.step = step
        result.checkpoint_step = self.ckpt.last_saved_step if self.ckpt else None
        if result.losses and not all(math.isfinite(x) for x in result.losses[-5:]):
            log.warning("the loss is not finite at the end of training")
        return result
