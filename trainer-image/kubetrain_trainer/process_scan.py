"""Finding processes: the descendants of one, and every process that carries a marker in its environment. Torch-free.

Why a marker: a process whose parent died is re-parented (to init or a
subreaper), so walking the tree from the launcher no longer finds it. An
environment variable set at launch is inherited by every descendant (torchrun
hands its own environment to its workers), whoever its parent is now.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

_PROC = Path("/proc")


def descendants(pid: int) -> list[int]:
    """All descendants of ``pid`` (torchrun's workers run in their own sessions, so process groups do not find them)."""
    try:
        import psutil

        return [p.pid for p in psutil.Process(pid).children(recursive=True)]
    except Exception:  # noqa: BLE001 - no psutil or the process is gone: scan /proc
        parents: dict[int, int] = {}
        for entry in _PROC.iterdir():
            if entry.name.isdigit():
                with contextlib.suppress(OSError, ValueError, IndexError):
                    stat = (entry / "stat").read_text()
                    parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
        out, frontier = [], [pid]
        while frontier:
            cur = frontier.pop()
            kids = [p for p, pp in parents.items() if pp == cur]
            out += kids
            frontier += kids
        return out


def environ_of(pid: int) -> dict[str, str] | None:
    """The environment ``pid`` was started with; None if it is gone, a zombie or not ours to read."""
    try:
        raw = (_PROC / str(pid) / "environ").read_bytes()
    except OSError:
        return None
    if not raw:  # a zombie (or a kernel thread): it runs nothing any more
        return None
    pairs = (item.split(b"=", 1) for item in raw.split(b"\0") if b"=" in item)
    return {k.decode(errors="replace"): v.decode(errors="replace") for k, v in pairs}


def marked(key: str, value: str) -> list[int]:
    """Live processes (not this one) started with ``key=value`` in their environment. Linux only: [] elsewhere."""
    if not _PROC.is_dir():
        return []
    found = []
    for entry in _PROC.iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            env = environ_of(int(entry.name))
            if env is not None and env.get(key) == value:
                found.append(int(entry.name))
    return found


def command_line(pid: int) -> str:
    try:
        return (_PROC / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return "?"
