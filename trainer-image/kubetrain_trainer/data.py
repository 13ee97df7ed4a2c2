"""Elastic data order: every sample once per epoch, whatever happens to the world size.

The job consumes one endless *stream*: the concatenation of per-epoch seeded
permutations of ``range(num_samples)``. The only state is the job-wide
``position`` in that stream (samples consumed so far, all ranks together),
which is checkpointed. A step at world size ``W`` with per-rank batch ``B``
takes the next ``W·B`` stream entries; rank ``r`` gets the contiguous slice
``[r·B, (r+1)·B)`` of them; the position then advances by ``W·B``.

So a world-size change (2 → 1, 1 → 2, ...) between two steps only changes how
the *remaining* samples of the epoch are cut up: within an epoch no sample is
seen twice and none is skipped. The last step of an epoch may run into the next
epoch's permutation; those samples then count for the next epoch, whose
offset is already past them. Steps lost to a crash after the last checkpoint
are replayed from the checkpointed position, together with the model state
they had updated.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch


def epoch_permutation(num_samples: int, seed: int, epoch: int) -> list[int]:
    """The order of ``epoch``: a permutation of ``range(num_samples)``, the same on every rank and restart."""
    g = torch.Generator()
    g.manual_seed((seed * 1_000_003 + epoch * 7_919 + 17) % (2**63 - 1))
    return torch.randperm(num_samples, generator=g).tolist()


class ElasticSampler:
    """A batch sampler: each item is the list of dataset indices this rank trains on in one step.

    Endless; the trainer stops it. Pass it as ``batch_sampler`` to a DataLoader.
    """

    def __init__(self, num_samples: int, batch_size: int, rank: int, world_size: int, seed: int = 0, position: int = 0):
        if num_samples < 1:
            raise ValueError("the dataset is empty")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world size {world_size}")
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.rank = rank
        self.world_size = world_size
        self.seed = seed
        self.position = position
        self._perms: dict[int, list[int]] = {}

    @property
    def global_batch(self) -> int:
        return self.world_size * self.batch_size

    def epoch_of(self, position: int) -> int:
        return position // self.num_samples

    def _perm(self, epoch: int) -> list[int]:
        perm = self._perms.get(epoch)
        if perm is None:
            # Keep at most the current and the next epoch.
            for old in [e for e in self._perms if e < epoch - 1]:
                del self._perms[old]
            perm = self._perms[epoch] = epoch_permutation(self.num_samples, self.seed, epoch)
        return perm

    def stream(self, start: int, count: int) -> list[int]:
        """Entries ``[start, start+count)`` of the job's sample stream."""
        out: list[int] = []
        pos = start
        while len(out) < count:
            epoch, offset = divmod(pos, self.num_samples)
            take = min(count - len(out), self.num_samples - offset)
            out.extend(self._perm(epoch)[offset : offset + take])
            pos += take
        return out

    def indices_at(self, position: int) -> list[int]:
        """This rank's indices for the step that starts at stream ``position``."""
        return self.stream(position + self.rank * self.batch_size, self.batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        pos = self.position
        while True:
            yield self.indices_at(pos)
            pos += self.global_batch
