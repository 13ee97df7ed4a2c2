"""Gradient communication: our DDP comm hooks and FSDP2 comms, each counting the bytes it sends.

Counting is what every mode reports as ``kubetrain_trainer_communicated_bytes_total``:
the size of the tensors handed to the collectives (all-reduce: the tensor;
FSDP2 all-gather: the gathered output; reduce-scatter: the input), per process.

DDP hooks (registered for every compression mode, "none" included, so every
mode is counted the same way):

* ``none``: all-reduce of the fp32 bucket (what DDP does without a hook).
* ``fp16`` / ``bf16``: cast the bucket, divide by the world size, all-reduce,
  cast back (upstream ``fp16_compress_hook`` semantics).
* ``powersgd``: upstream ``powerSGD_hook`` with ``PowerSGDState`` (rank, start
  iteration, min compression rate, error feedback, warm start), wrapped:

  - On gloo the upstream hook deadlocks or crashes when a model has several
    buckets (reproduced on torch 2.14.1: 2 of 3 runs hung, 1 failed with
    "Connection reset by peer"). Its future callbacks block a gloo worker
    thread in ``.wait()`` on the next all-reduce; two buckets in flight block
    both of gloo's threads. We wait for each bucket's chain inside the hook, so
    one chain is in flight at a time and collectives are issued in the same
    order on every rank. NCCL runs the upstream hook asynchronously.
  - Under fp16 with a GradScaler, an overflow step turns the error-feedback
    memory into inf/NaN for good; we reset a bucket's PowerSGD memories when
    they are not finite (the scaler skips that step anyway).
  - Bytes: the vanilla warm-up steps all-reduce the whole bucket; compressed
    steps send exactly what the hook counts in ``total_numel_after_compression``
    (uncompressed tensors + P + Q).

Gradient noise scale (every hook, world size > 1): each bucket's squared norm before the
all-reduce (this rank's gradient at its own batch) and after it (the job's gradient at the global
batch), summed over buckets and kept as device tensors until ``take_gradient_norms`` (once per
step, after the loss is read, like the compression error): no extra device sync and no extra
collective; the trainer averages the local norms over ranks in its per-step all-gather. PowerSGD
is measured on its plain all-reduce (warm-up) steps only: once it compresses, the reduced bucket is
a low-rank approximation plus the carried error, whose norm is not the average gradient's (measured
on the built-in GPT: it exceeds the local norm, S < 0, and the estimate collapses to 0), so the
trainer keeps the warm-up estimate. FSDP2 has no hook here (its reduce-scatter leaves each rank a
shard): no measurement.

``batched_powerSGD_hook`` is not offered: it fails in ``_orthogonalize`` on
2.14.1 as it did on 2.13.
"""

from __future__ import annotations

import logging
import math
import threading

import torch
import torch.distributed as dist
from torch.distributed.algorithms.ddp_comm_hooks import powerSGD_hook as psgd
from torch.distributed.algorithms.ddp_comm_hooks.powerSGD_hook import PowerSGDState

log = logging.getLogger(__name__)


class CommCounter:
    """Thread-safe byte counter (hooks' callbacks may run on backend threads), and PowerSGD's compression error.

    The error is what error feedback carries to the next step, relative to what was to be sent
    (this step's gradient plus the error carried in): ‖e‖ / ‖g + e_prev‖ over every compressed bucket
    of a step, per process. torch's hook defines e against the all-reduced approximation, so e also
    holds this rank's difference from the average (small when ranks agree). Kept as tensors until
    ``take_compression_error`` (once per step, after the loss is read): no extra device sync.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._total = 0
        self._mark = 0
        self._err_sq: list[torch.Tensor] = []
        self._input_sq: list[torch.Tensor] = []
        self._local_sq: list[torch.Tensor] = []
        self._global_sq: list[torch.Tensor] = []

    def add_gradient_norms(self, local_sq: torch.Tensor, global_sq: torch.Tensor) -> None:
        """One bucket's squared norm before (this rank's gradient) and after (the all-reduced one) its all-reduce."""
        with self._lock:
            self._local_sq.append(local_sq)
            self._global_sq.append(global_sq)

    def take_gradient_norms(self) -> tuple[float, float] | None:
        """(|g_local|^2, |g_reduced|^2) summed over the buckets since the previous call; None if none, or not finite.

        One device-to-host copy for all buckets; called after the step's loss was read, so nothing waits.
        """
        with self._lock:
            loc, glob, self._local_sq, self._global_sq = self._local_sq, self._global_sq, [], []
        if not loc:
            return None
        both = torch.stack([t.to(torch.float64) for t in loc + glob]).view(2, -1).sum(1).tolist()
        if not all(math.isfinite(x) for x in both):
            return None  # an fp16 overflow step (GradScaler skips it)
        return both[0], both[1]

    def add_compression_error(self, err_sq: torch.Tensor, input_sq: torch.Tensor) -> None:
        with self._lock:
            self._err_sq.append(err_sq)
            self._input_sq.append(input_sq)

    def take_compression_error(self) -> float | None:
        """‖e‖ / ‖g + e_prev‖ of the buckets compressed since the previous call (0-1, capped); None if none was."""
        with self._lock:
            err, inp, self._err_sq, self._input_sq = self._err_sq, self._input_sq, [], []
        if not err:
            return None
        e, i = float(sum(t.item() for t in err)), float(sum(t.item() for t in inp))
        if not (math.isfinite(e) and math.isfinite(i)):
            return None  # an fp16 overflow step (GradScaler skips it; the memories are reset): nothing to report
        # Capped: a ratio above 1 (an approximation further from the input than zero) is "all of it lost".
        return min(1.0, (e / i) ** 0.5) if i > 0 else 0.0

    def add(self, nbytes: int) -> None:
        with self._lock:
            self._total += int(nbytes)

    @property
    def total(self) -> int:
        with self._lock:
            return self._total

    def take(self) -> int:
        """Bytes since the previous call."""
        with self._lock:
            delta, self._mark = self._total - self._mark, self._total
            return delta


def _group(pg):
    return pg if pg is not None else dist.group.WORLD


def _sq(t: torch.Tensor) -> torch.Tensor:
    """Squared L2 norm of a flat bucket, accumulated in fp32 or better; a device tensor (no sync)."""
    t = t.detach()
    if t.dtype not in (torch.float32, torch.float64):
        t = t.float()
    return t.dot(t)


def allreduce_hook(counter: CommCounter, process_group=None):
    def hook(state, bucket):  # unannotated: DDP checks annotations, which are strings here
        group = _group(process_group)
        buf = bucket.buffer()
        local_sq = _sq(buf) if group.size() > 1 else None
        buf.div_(group.size())
        counter.add(buf.numel() * buf.element_size())

        def done(fut):
            out = fut.value()[0]
            if local_sq is not None:
                counter.add_gradient_norms(local_sq, _sq(out))
            return out

        return dist.all_reduce(buf, group=group, async_op=True).get_future().then(done)

    return hook


def cast_compress_hook(dtype: torch.dtype, counter: CommCounter, process_group=None):
    """All-reduce the bucket in ``dtype`` (fp16/bf16), then write it back in the bucket's dtype."""

    def hook(state, bucket):  # unannotated: DDP checks annotations, which are strings here
        group = _group(process_group)
        buf = bucket.buffer()
        local_sq = _sq(buf) if group.size() > 1 else None  # before the cast: this rank's gradient as computed
        compressed = buf.to(dtype).div_(group.size())
        counter.add(compressed.numel() * compressed.element_size())
        fut = dist.all_reduce(compressed, group=group, async_op=True).get_future()

        def decompress(f):
            buf.copy_(f.value()[0])
            if local_sq is not None:
                counter.add_gradient_norms(local_sq, _sq(buf))
            return buf

        return fut.then(decompress)

    return hook


def powersgd_warmup(contract, resumed_step: int = 0) -> int:
    """Plain all-reduce steps this process runs before PowerSGD compresses (``PowerSGDState.start_powerSGD_iter``).

    The hook counts steps from 0 in every process, and its memories are not checkpointed. A job
    resumed at ``resumed_step`` only runs what is left of its warm-up, but at least the plain step(s)
    error feedback and warm start need to fill their memories: a restart late in a long job would
    otherwise send the whole warm-up (e.g. 5% of the steps) uncompressed again.
    """
    start = contract.powersgd_start()
    floor = 2 if (contract.powersgd_error_feedback or contract.powersgd_warm_start) else 1
    return start if resumed_step <= 0 else max(floor, start - resumed_step)


def make_powersgd_state(contract, process_group=None) -> psgd.PowerSGDState:
    return psgd.PowerSGDState(
        process_group=process_group,
        matrix_approximation_rank=contract.powersgd_rank,
        start_powerSGD_iter=powersgd_warmup(contract),
        min_compression_rate=contract.powersgd_min_compression_rate,
        use_error_feedback=contract.powersgd_error_feedback,
        warm_start=contract.powersgd_warm_start,
        random_seed=contract.seed,
    )


def _sanitize_powersgd_memory(state: psgd.PowerSGDState, bucket_index: int) -> bool:
    """Drop a bucket's error/P/Q memories if an overflowed (fp16) step left inf/NaN in them."""
    bad = False
    err = state.error_dict.get(bucket_index)
    if err is not None and not bool(torch.isfinite(err).all()):
        err.zero_()
        bad = True
    for memory in (state.p_memory_dict, state.q_memory_dict):
        t = memory.get(bucket_index)
        if t is not None and not bool(torch.isfinite(t).all()):
            bad = True
    if bad:
        # Missing P/Q memories make the hook re-initialise them randomly next step.
        state.p_memory_dict.pop(bucket_index, None)
        state.q_memory_dict.pop(bucket_index, None)
    return bad


def _measure_error(state: psgd.PowerSGDState, index: int, approx: torch.Tensor, counter: CommCounter,
                   local_sq: torch.Tensor | None = None, compressed: bool = True) -> torch.Tensor:
    """After the hook: record ‖e‖² and ‖e + approx‖² (= ‖g + e_prev‖²) of the bucket, from the error feedback
    memory the hook just wrote; three dot products, no copy of the bucket. With ``local_sq`` (this rank's
    gradient before the hook), also the gradient norms of the noise scale (‖approx‖² as the reduced one)."""
    if local_sq is not None:
        counter.add_gradient_norms(local_sq, _sq(approx))
    err = state.error_dict.get(index) if compressed and state.use_error_feedback else None
    if err is not None and err.numel() == approx.numel():
        e2, ea, a2 = err.dot(err), err.dot(approx), approx.dot(approx)
        counter.add_compression_error(e2.detach(), (e2 + 2 * ea + a2).detach())
    return approx


def powersgd_hook(counter: CommCounter, *, serialize: bool, sanitize: bool):
    """The upstream PowerSGD hook, made safe on gloo (``serialize``) and under fp16 (``sanitize``), counting bytes."""

    def hook(state, bucket):
        buf = bucket.buffer()
        esize = buf.element_size()
        index = bucket.index()
        vanilla = state.iter < state.start_powerSGD_iter
        before = state.total_numel_after_compression
        # Plain all-reduce steps only (see the module docstring); before the hook, which would add the
        # carried error into the bucket in place.
        local_sq = _sq(buf) if vanilla and _group(state.process_group).size() > 1 else None
        if vanilla:
            counter.add(buf.numel() * esize)
        fut = psgd.powerSGD_hook(state, bucket)
        if not vanilla:
            counter.add((state.total_numel_after_compression - before) * esize)
        if local_sq is not None or (not vanilla and state.use_error_feedback):
            fut = fut.then(lambda f: _measure_error(state, index, f.value(), counter, local_sq, compressed=not vanilla))
        if serialize:
            fut.wait()
        if not sanitize:
            return fut

        def check(f):
            if _sanitize_powersgd_memory(state, index):
                log.debug("PowerSGD memories of bucket %d reset after a non-finite step", index)
            return f.value()

        return fut.then(check)

    return hook


def register_ddp_hook(ddp_model, contract, backend: str, counter: CommCounter, fp16_scaler: bool):
    """Register the hook for ``contract.compression`` on a DDP model; returns the hook state (PowerSGD) or None."""
    mode = contract.compression
    if mode == "none":
        ddp_model.register_comm_hook(None, allreduce_hook(counter))
        return None
    if mode in ("fp16", "bf16"):
        dtype = torch.float16 if mode == "fp16" else torch.bfloat16
        ddp_model.register_comm_hook(None, cast_compress_hook(dtype, counter))
        return None
    if mode == "powersgd":
        state = make_powersgd_state(contract)
        ddp_model.register_comm_hook(state, powersgd_hook(counter, serialize=(backend == "gloo"), sanitize=fp16_scaler))
        return state
    raise ValueError(f"unknown compression {mode!r}")


def counting_fsdp_comms(counter: CommCounter):
    """FSDP2 all-gather / reduce-scatter implementations that count their bytes (set per FSDP module)."""
    from torch.distributed.fsdp._fully_shard._fsdp_collectives import DefaultAllGather, DefaultReduceScatter

    class CountingAllGather(DefaultAllGather):
        def __call__(self, output_tensor, input_tensor, group, async_op=False):
            counter.add(output_tensor.numel() * output_tensor.element_size())
            return super().__call__(output_tensor, input_tensor, group, async_op)

    class CountingReduceScatter(DefaultReduceScatter):
        def __call__(self, output_tensor, input_tensor, group, op, async_op=False):
            counter.add(input_tensor.numel() * input_tensor.element_size())
            return super().__call__(output_tensor, input_tensor, group, op, async_op)

    return CountingAllGather(), CountingReduceScatter()
