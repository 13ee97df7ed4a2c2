"""Goodput of one job at each candidate replica count: throughput x statistical efficiency.

The batch rule is kubetrain's trainer: every replica keeps its per-replica batch
(``spec.trainer.batchSize``), so the global batch grows with the replicas, M = r x local,
unless the job caps it (``max_batch``: then the per-replica batch shrinks to fit); a per-replica
batch above what fits in memory (``max_local_batch``) runs as accumulated micro-batches. Growing r
buys samples/s but each sample is worth less once M passes the noise scale, which is exactly
what goodput weighs. Without a noise scale the efficiency is 1 (throughput only).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from kubetrain.scheduling.efficiency import efficiency
from kubetrain.scheduling.throughput_model import StepTimeParams


@dataclass(frozen=True)
class GoodputModel:
    step_time: StepTimeParams
    local_batch: float  # per-replica batch the trainer runs
    base_batch: float  # M0: the batch E(M) is relative to (the job's batch at its min replicas, or its initial one)
    noise_scale: float | None = None  # B_noise in samples; None = throughput only
    max_batch: float | None = None  # cap on the global batch
    max_local_batch: float | None = None  # largest micro-batch that fits in memory; above it, accumulate
    gpus_per_node: int = 4  # compact placement: r replicas span ceil(r / gpus_per_node) nodes

    def batch(self, replicas: int) -> tuple[float, float, int]:
        """(global batch, micro-batch, accumulation steps) at ``replicas``."""
        local = self.local_batch
        if self.max_batch is not None and replicas * local > self.max_batch:
            local = self.max_batch / replicas
        accum = 1
        if self.max_local_batch is not None and local > self.max_local_batch:
            accum = math.ceil(local / self.max_local_batch)
        return replicas * local, local / accum, accum

    def nodes(self, replicas: int) -> int:
        return max(1, math.ceil(replicas / self.gpus_per_node))

    def goodput(self, replicas: int, nodes: int | None = None) -> float:
        """Useful samples/s (samples at the base batch's efficiency) at ``replicas``; 0 at 0 replicas."""
        if replicas <= 0:
            return 0.0
        m, micro, accum = self.batch(replicas)
        n = self.nodes(replicas) if nodes is None else nodes
        return (self.step_time.samples_per_second(replicas, n, micro, accum)
                * efficiency(m, self.base_batch, self.noise_scale))

    def table(self, max_replicas: int) -> tuple[float, ...]:
        """goodput(r) for r = 0..max_replicas, compact placement: the allocator's input."""
        return tuple(self.goodput(r) for r in range(max_replicas + 1))
