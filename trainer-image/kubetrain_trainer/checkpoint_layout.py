"""Where checkpoints are and which are complete: the directory layout of :mod:`.checkpoint`. Torch-free.

Split from the saving and loading (torch, DCP) so the local launcher can say
where a stopped job's checkpoint is without importing torch. The layout itself
is described in :mod:`.checkpoint`.
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MARKER = "kubetrain-checkpoint.json"
_STEP_DIR = re.compile(r"^step-(\d{8,})$")


@dataclass
class CheckpointMeta:
    """What the marker holds: the job-wide training progress at this checkpoint."""

    step: int
    sample_position: int
    world_size: int
    saved_at: float = field(default_factory=time.time)
    job_start_time: float = 0.0  # wall time the job first started training (goodput denominator)
    productive_seconds: float = 0.0  # kept step time up to this checkpoint (goodput numerator)
    tokens_total: int = 0
    samples_total: int = 0
    scaler: dict[str, Any] | None = None  # GradScaler state (fp16)
    reason: str = "interval"  # interval | final | sigterm

    @classmethod
    def from_json(cls, text: str) -> "CheckpointMeta":
        data = json.loads(text)
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)


def step_dir_name(step: int) -> str:
    return f"step-{step:08d}"


def list_checkpoints(directory: str | os.PathLike) -> list[tuple[int, Path, CheckpointMeta]]:
    """Complete checkpoints, oldest first. Ignores temp dirs, unmarked and unreadable ones."""
    root = Path(directory)
    found = []
    if not root.is_dir():
        return found
    for entry in root.iterdir():
        m = _STEP_DIR.match(entry.name)
        if not m or not entry.is_dir():
            continue
        marker = entry / MARKER
        try:
            meta = CheckpointMeta.from_json(marker.read_text())
        except (OSError, ValueError, TypeError):
            continue
        if not (entry / ".metadata").is_file():
            continue
        found.append((int(m.group(1)), entry, meta))
    found.sort(key=lambda t: t[0])
    return found


def latest_checkpoint(directory: str | os.PathLike) -> tuple[Path, CheckpointMeta] | None:
    found = list_checkpoints(directory)
    return (found[-1][1], found[-1][2]) if found else None
