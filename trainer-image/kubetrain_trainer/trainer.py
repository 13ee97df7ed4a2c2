"""The training loop: one :class:`Trainer` per worker process.

``Trainer.train_step`` is one optimizer step (forward + loss under the
precision plan, backward through the wrapped model — whose DDP hook or FSDP2
comms do the compressed, counted communication — unscale, clip, step).
``Trainer.fit`` is the elastic loop around it: resume from the newest
checkpoint at the current world size, feed the elastic sampler's batches,
all-gather one :class:`~kubetrain_trainer.stats.StepStats` per rank each step
(job loss, throughput, SIGTERM flags, process figures, the gradient norms of
the noise scale), hand the job-wide :class:`~kubetrain_trainer.stats.StepRecord`
to the metrics processor and the step hooks, checkpoint every N steps, and stop
cleanly — with a checkpoint — when any rank got SIGTERM.

Build a Trainer with :func:`kubetrain_trainer.factory.build_trainer`.
"""

from __future__ import annotations

import collections
import json
import logging
import math
import os
import time
from dataclasses import dataclass
from typing import Any, Sequence

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader

from kubetrain.contract import TrainerContract
from kubetrain.contract.noise_scale import NoiseScaleEstimator

from kubetrain_trainer.api import Workload
from kubetrain_trainer.checkpoint import CheckpointManager, CheckpointMeta, TrainState
from kubetrain_trainer.compression import CommCounter, PowerSGDState, powersgd_warmup
from kubetrain_trainer.data import ElasticSampler
from kubetrain_trainer.hardware import ProcessProbe
from kubetrain_trainer.hooks import StepHook
from kubetrain_trainer.metrics import TrainerMetrics
from kubetrain_trainer.metrics_processor import MetricsProcessor
from kubetrain_trainer.mfu import peak_flops_for
from kubetrain_trainer.parallel import wrap_model
from kubetrain_trainer.precision import PrecisionPlan
from kubetrain_trainer.stats import StepRecord, StepStats
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


@dataclass
class FitResult:
    """How ``fit`` ended: ``completed``, ``sigterm`` (this rank was told to stop) or ``peer_preempted``.

    Per-step figures are not kept here: pass a :class:`~kubetrain_trainer.hooks.StepRecorder` hook for them.
    """

    outcome: str
    step: int
    start_step: int
    world_size: int
    checkpoint_step: int | None = None
    first_loss: float | None = None  # job loss of this fit's first and last steps
    last_loss: float | None = None
    tokens_per_second: float = 0.0  # job-wide, last window


class _Gathered:
    """The per-step all-gather: one :class:`StepStats` row per rank, read by field name."""

    __slots__ = ("rows",)

    def __init__(self, rows: torch.Tensor):
        self.rows = rows

    def __getitem__(self, name: str) -> torch.Tensor:
        return self.rows[:, StepStats.column(name)]

    def totals(self) -> StepStats:
        """Every field summed over the ranks (one reduction for the job's samples, tokens, loss and stop flags)."""
        return StepStats.from_row(self.rows.sum(0).tolist())

    def mean_where_set(self, name: str) -> float | None:
        """The mean over the ranks that reported the figure (>= 0); None if none did."""
        v = self[name]
        return float(v[v >= 0].mean().item()) if bool((v >= 0).any()) else None

    def of_pod(self, group_rank: int) -> tuple[StepStats, ...]:
        return tuple(StepStats.from_row(r) for r in self.rows[self["group_rank"] == group_rank].tolist())


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
        hooks: Sequence[StepHook] = (),
    ):
        self.contract = contract
        self.env = env
        self.workload = workload
        self.device = device
        self.backend = backend
        self.metrics = metrics  # this pod's exporter: local rank 0 only, when the job exports metrics
        self.hooks = tuple(hooks)
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

    def _observe_noise_scale(self, gathered: _Gathered) -> float | None:
        """Feed the gathered norms to the estimator: |g_small|^2 is the mean over ranks at the per-rank batch,
        |g_big|^2 the all-reduced norm at the global batch. The same rows on every rank: the same value."""
        if self.noise is None:
            return None
        local, reduced = gathered["grad_local_sq"], gathered["grad_global_sq"]
        if bool((local >= 0).all()) and bool((reduced >= 0).all()):
            samples = gathered["samples"]
            self.noise.update(float(local.mean().item()), float(samples.mean().item()),
                              float(reduced.mean().item()), float(samples.sum().item()))
        value = self.noise.value
        return value if value is not None and math.isfinite(value) else None

    # -- collectives ------------------------------------------------------------
    def _stats_device(self) -> torch.device:
        return self.device if self.backend == "nccl" else torch.device("cpu")

    def _gather(self, mine: StepStats) -> _Gathered:
        t = torch.tensor(mine.row(), dtype=torch.float64, device=self._stats_device())
        if self.env.world_size == 1 or not dist.is_initialized():
            return _Gathered(t.unsqueeze(0).cpu())
        out = torch.empty(self.env.world_size * t.numel(), dtype=torch.float64, device=t.device)
        dist.all_gather_single(out, t)
        return _Gathered(out.view(self.env.world_size, t.numel()).cpu())

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

    def _save(self, processor: MetricsProcessor, step: int, position: int, reason: str, productive: float,
              job_start: float, tokens: int, samples: int) -> None:
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
        processor.observe_checkpoint(completed_at=time.time(), seconds=seconds)

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
        processor = MetricsProcessor(
            c, rank=env.rank, world_size=env.world_size, restart_count=env.restart_count,
            local_world_size=env.local_world_size, exporter=self.metrics,
            flops_per_token=self.flops_per_token, peak_flops=self.peak_flops,
        )
        processor.start(step=step, checkpoint_saved_at=meta.saved_at if meta else None)
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
        hooks = self.hooks
        recent_losses: collections.deque[float] = collections.deque(maxlen=5)
        while step < c.max_steps:
            t0 = time.monotonic()
            ids, batch = next(batches)
            batch = to_device(batch, self.device)
            t_data = time.monotonic() - t0
            self._data_seconds += t_data
            for hook in hooks:
                hook.on_step_start(step + 1)
            loss = self.train_step(batch)
            loss_value = float(loss.item())
            t_compute = time.monotonic() - t0 - t_data
            n = int(ids.numel())
            util, mem, power, energy = self.probe.gpu()
            comp_err = self.counter.take_compression_error()
            grad_local_sq, grad_global_sq = self._take_gradient_norms()
            gathered = self._gather(StepStats(
                loss_sum=loss_value * n, samples=n, tokens=n * self.workload.tokens_per_sample,
                stop=1.0 if self.stop.requested else 0.0, group_rank=env.group_rank, local_rank=env.local_rank,
                communicated_bytes=self.counter.total, data_loading_seconds=self._data_seconds,
                cpu_seconds=self.probe.cpu_seconds(), rss_bytes=self.probe.rss_bytes(),
                gpu_utilization=util, gpu_memory_bytes=mem, gpu_power_watts=power, gpu_energy_joules=energy,
                compute_seconds=t_compute, compression_error=-1.0 if comp_err is None else comp_err,
                grad_local_sq=grad_local_sq, grad_global_sq=grad_global_sq,
            ))
            id_lists = self._gather_ids(ids) if c.sample_log_path else None
            step_seconds = time.monotonic() - t0

            step += 1
            totals = gathered.totals()
            job_samples, job_tokens = int(totals.samples), int(totals.tokens)
            position += job_samples
            samples_total += job_samples
            tokens_total += job_tokens
            productive += t_compute
            record = StepRecord(
                step=step, loss=totals.loss_sum / max(job_samples, 1), step_seconds=step_seconds,
                job_tokens=job_tokens, job_samples=job_samples, comm_bytes=self.counter.take(),
                compression_error=gathered.mean_where_set("compression_error"),
                noise_scale=self._observe_noise_scale(gathered),
                goodput=productive / max(time.time() - job_start, 1e-9), stopping=int(totals.stop),
                pod=gathered.of_pod(env.group_rank) if processor.exports_pod else (),
            )
            if result.first_loss is None:
                result.first_loss = record.loss
            result.last_loss = record.loss
            recent_losses.append(record.loss)

            if env.rank == 0 and id_lists is not None:
                with open(c.sample_log_path, "a", encoding="utf-8") as fh:
                    fh.write(json.dumps({"step": step, "world_size": env.world_size, "restart": env.restart_count,
                                         "position": position - job_samples, "ids": id_lists}) + "\n")
            processor.observe(record)
            for hook in hooks:
                hook.on_step_end(record)
            stoppers = record.stopping
            if stoppers:
                result.outcome = "sigterm" if self.stop.requested else "peer_preempted"
                log.warning("%d rank(s) got SIGTERM: checkpointing at step %d and stopping", stoppers, step)
                if self.ckpt:
                    self._save(processor, step, position, "sigterm", productive, job_start, tokens_total, samples_total)
            elif self.ckpt and (step % c.checkpoint_interval_steps == 0 or step == c.max_steps):
                self._save(processor, step, position, "final" if step == c.max_steps else "interval", productive, job_start,
                           tokens_total, samples_total)
            processor.write_status(
                record, outcome="running" if step < c.max_steps and not stoppers else result.outcome,
                checkpoint_step=self.ckpt.last_saved_step if self.ckpt else None,
            )
            if stoppers:
                break
        result.step = step
        result.checkpoint_step = self.ckpt.last_saved_step if self.ckpt else None
        result.tokens_per_second = processor.rates.tokens_per_second
        if not all(math.isfinite(x) for x in recent_losses):
            log.warning("the loss is not finite at the end of training")
        return result
