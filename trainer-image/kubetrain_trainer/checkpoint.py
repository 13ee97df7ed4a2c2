"""Checkpoints with torch.distributed.checkpoint (DCP): atomic, resharding, last K kept.

Layout under ``checkpoint_dir``::

    step-00000100/               a complete checkpoint (DCP files + .metadata)
        kubetrain-checkpoint.json  completion marker: step, sample position, ...
    .tmp-step-00000200/          a save in progress (or one that was interrupted)

A save writes into ``.tmp-step-N`` (all ranks, DCP), then rank 0 writes the
marker, fsyncs it and renames the directory to ``step-N`` — a single atomic
rename, so a crash at any point leaves the previous ``step-*`` untouched and a
leftover ``.tmp-*`` that is ignored and later removed. Only directories named
``step-N`` *with* a readable marker count as checkpoints.

Loading works at any world size: DCP reshards DDP's replicated tensors and
FSDP2's DTensor shards to the current layout. The job-wide step, the data
stream position and the goodput counters come from the marker, so the step
counter continues across restarts and world-size changes.

Only rank 0 touches metadata (marker, rename, cleanup); ``checkpoint_dir``
must be one shared filesystem for all pods (checked at start).

A job may start from another job's checkpoints (``init_dir``, a population-based-
training trial continuing a better trial's model): only while its own directory holds
none, so a restart resumes its own progress. The model, optimizer moments, step and
data position come from there; the learning rate stays this job's own.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
import uuid
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
from torch.distributed.checkpoint.stateful import Stateful

from kubetrain_trainer.checkpoint_layout import (  # noqa: F401 - re-exported: the layout's names belong to checkpoints
    MARKER,
    CheckpointMeta,
    latest_checkpoint,
    list_checkpoints,
    step_dir_name,
)
from kubetrain_trainer.failure import ConfigError

log = logging.getLogger(__name__)

OWNER = ".owner.json"
_TMP_PREFIX = ".tmp-"


class StaleWorldError(RuntimeError):
    """Another rendezvous round has taken over the checkpoint directory: this world is stale."""


class TrainState(Stateful):
    """Model + optimizer through DCP's state-dict helpers (DDP and FSDP2 alike)."""

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer):
        self.model = model
        self.optimizer = optimizer

    def state_dict(self) -> dict[str, Any]:
        model_sd, optim_sd = get_state_dict(self.model, self.optimizer)
        return {"model": model_sd, "optim": optim_sd}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        set_state_dict(self.model, self.optimizer, model_state_dict=state_dict["model"], optim_state_dict=state_dict["optim"])


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_marker(path: Path, meta: CheckpointMeta) -> None:
    tmp = path.with_name(path.name + ".part")
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(json.dumps(asdict(meta), indent=1, sort_keys=True))
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


class CheckpointManager:
    """Collective save/load; every method that says so must be called by all ranks."""

    def __init__(self, directory: str, keep: int, rank: int, world_size: int, init_dir: str = ""):
        self.root = Path(directory)
        self.init_dir = Path(init_dir) if init_dir else None
        self.keep = max(1, keep)
        self.rank = rank
        self.world_size = world_size
        self.last_saved_step: int | None = None
        self.last_saved_at: float | None = None
        self.world_id: str | None = None

    def _barrier(self) -> None:
        if dist.is_available() and dist.is_initialized():
            dist.barrier()

    def _broadcast(self, obj: Any) -> Any:
        if not (dist.is_available() and dist.is_initialized()) or self.world_size == 1:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    # -- collective ---------------------------------------------------------
    def prepare(self) -> None:
        """Create the directory and check that every rank sees the same files (collective)."""
        if self.rank == 0:
            self.root.mkdir(parents=True, exist_ok=True)
        self._barrier()
        if self.world_size == 1:
            return
        token = self._broadcast(uuid.uuid4().hex if self.rank == 0 else None)
        probe = self.root / f".probe-{token}"
        if self.rank == 0:
            probe.write_text(token)
        self._barrier()
        ok = probe.is_file() and probe.read_text() == token
        flag = torch.tensor([0 if ok else 1], dtype=torch.int64, device=self._device())
        dist.all_reduce(flag)
        self._barrier()
        if self.rank == 0:
            probe.unlink(missing_ok=True)
        if int(flag.item()):
            raise ConfigError(
                f"checkpoint_dir {self.root} is not one shared filesystem: {int(flag.item())} rank(s) cannot see rank 0's "
                "files. Use a ReadWriteMany volume (or a single replica) for checkpoints."
            )

    def _device(self) -> torch.device:
        if dist.get_backend() == "nccl":
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")

    def claim(self) -> str:
        """Record this world (this rendezvous round's worker group) as the directory's writer (collective).

        Fencing: torch elastic can, after a missed heartbeat, form a new round
        while the old one keeps training (its agent is never told). Both would
        then write here. The newest world claims the directory at start; a
        world that finds another owner at save time raises StaleWorldError, so
        its agent restarts it into the current round instead.
        """
        world = self._broadcast(uuid.uuid4().hex if self.rank == 0 else None)
        if self.rank == 0:
            tmp = self.root / f"{OWNER}.{world}.part"
            tmp.write_text(json.dumps({"world": world, "world_size": self.world_size, "since": time.time()}))
            os.replace(tmp, self.root / OWNER)
        self.world_id = world
        self._barrier()
        return world

    def _owner_ok(self) -> bool:
        try:
            return json.loads((self.root / OWNER).read_text()).get("world") == self.world_id
        except (OSError, ValueError):
            return True  # no owner file (e.g. a pre-fencing checkpoint dir): nothing to fence against

    def load_latest(self, state: TrainState) -> CheckpointMeta | None:
        """Load the newest complete checkpoint into ``state`` (collective); None if there is none.

        With none of its own, the newest of ``init_dir`` (another job's), keeping this job's learning rate.
        """
        choice = None
        if self.rank == 0:
            found, borrowed = latest_checkpoint(self.root), False
            if found is None and self.init_dir is not None:
                found, borrowed = latest_checkpoint(self.init_dir), True
                if found is None:
                    choice = ("error", f"init_checkpoint_dir {self.init_dir} holds no complete checkpoint to start from")
            if found:
                choice = (str(found[0]), json.dumps(asdict(found[1])), borrowed)
        choice = self._broadcast(choice)
        if choice is None:
            return None
        if choice[0] == "error":  # every rank raises, none waits in a collective for rank 0
            raise ConfigError(choice[1])
        path, meta_json, borrowed = choice
        meta = CheckpointMeta.from_json(meta_json)
        t0 = time.monotonic()
        # DCP restores the optimizer's param groups too: a borrowed checkpoint would bring the other
        # job's learning rate, and the point of starting from it is to go on with a perturbed one.
        own_lrs = [g["lr"] for g in state.optimizer.param_groups]
        dcp.load({"train": state}, checkpoint_id=path)
        if borrowed:
            for group, lr in zip(state.optimizer.param_groups, own_lrs):
                group["lr"] = lr
        log.info(
            "resumed from %s%s (step %d, saved at world size %d, now %d) in %.2fs",
            path, " (another job's)" if borrowed else "", meta.step, meta.world_size, self.world_size, time.monotonic() - t0,
        )
        self.last_saved_step = meta.step
        self.last_saved_at = meta.saved_at
        return meta

    def save(self, state: TrainState, meta: CheckpointMeta) -> Path:
        """Write a checkpoint for ``meta.step`` atomically (collective); returns its final path."""
        final = self.root / step_dir_name(meta.step)
        tmp = self.root / f"{_TMP_PREFIX}{step_dir_name(meta.step)}"
        if self.world_id is not None and not self._broadcast(self._owner_ok() if self.rank == 0 else None):
            raise StaleWorldError(
                f"another rendezvous round now owns {self.root} (this world missed a heartbeat and was replaced); "
                "exiting so the agent rejoins the current round"
            )
        if self._broadcast(any(step == meta.step for step, _, _ in list_checkpoints(self.root)) if self.rank == 0 else None):
            # This step is saved and complete already (SIGTERM right after an interval save, or
            # right after a resume): the state is the same. Rewriting it would leave a moment
            # with no checkpoint of it at all, so keep the one there is.
            self.last_saved_step = meta.step
            return final
        if self.rank == 0:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)  # an interrupted earlier attempt at this step
            tmp.mkdir(parents=True)
        self._barrier()
        dcp.save({"train": state}, checkpoint_id=str(tmp))
        self._barrier()
        if self.rank == 0:
            _write_marker(tmp / MARKER, meta)
            _fsync_dir(tmp)
            if final.exists():  # an incomplete directory of this step (no marker): never a valid checkpoint
                shutil.rmtree(final)
            os.rename(tmp, final)
            _fsync_dir(self.root)
            self._cleanup(keep_step=meta.step)
        self._barrier()
        self.last_saved_step = meta.step
        self.last_saved_at = meta.saved_at
        return final

    # -- rank 0 only ----------------------------------------------------------
    def _cleanup(self, keep_step: int) -> None:
        found = list_checkpoints(self.root)
        for step, path, _ in found[: max(0, len(found) - self.keep)]:
            if step != keep_step:
                shutil.rmtree(path, ignore_errors=True)
                log.info("removed old checkpoint %s", path.name)
        for entry in self.root.iterdir():
            if entry.name.startswith(_TMP_PREFIX) and entry.is_dir():
                shutil.rmtree(entry, ignore_errors=True)
                log.info("removed interrupted checkpoint %s", entry.name)
