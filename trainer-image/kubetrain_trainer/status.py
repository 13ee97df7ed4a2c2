"""The small JSON progress file global rank 0 keeps for the local launcher. Torch-free."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def write_status(path: str | os.PathLike, status: dict[str, Any]) -> None:
    """Replace the file atomically (readers never see half a file)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(status, sort_keys=True))
    os.replace(tmp, p)


def read_status(path: str | os.PathLike) -> dict[str, Any] | None:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
