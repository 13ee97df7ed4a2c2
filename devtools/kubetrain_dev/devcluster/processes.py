"""Start, track and stop the control plane's processes; find and check loopback ports.

Every component runs in its own session (``setsid``), so it is its own process
group: stopping it signals the whole group and nothing it started can linger.
Each started process is recorded (pid + binary path) in a JSON file in the
state dir, so ``python -m kubetrain_dev.devcluster down`` can stop a cluster whose
launcher has long exited, or crashed. Before signalling a recorded pid we check
it still runs the binary we recorded: pids get reused.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from kubetrain.contract.ports import free_port, port_is_free  # noqa: F401 - the cluster's ports come from the one picker

_PR_SET_PDEATHSIG = 1
# Loaded here, in the parent: dlopen between fork and exec can deadlock.
_LIBC = ctypes.CDLL(None, use_errno=True)


@dataclass(frozen=True)
class Record:
    """One started process, as written to the state file."""

    name: str
    pid: int
    binary: str
    ports: tuple[int, ...] = ()










def _die_with_parent() -> None:
    # Runs in the child between fork and exec: if the launching process dies
    # (a pytest run killed with SIGKILL), the kernel kills this component too.
    _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def spawn(name: str, argv: list[str], log_path: Path, *, die_with_parent: bool,
          ports: tuple[int, ...] = ()) -> tuple[subprocess.Popen, Record]:
    """Start ``argv`` in a new session with stdout+stderr appended to ``log_path``."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent if die_with_parent else None,
            close_fds=True,
        )
    return proc, Record(name=name, pid=proc.pid, binary=argv[0], ports=ports)


def _is_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def is_running(record: Record) -> bool:
    """True if ``record.pid`` is alive and still the binary we started (not a reused pid)."""
    try:
        cmdline = Path(f"/proc/{record.pid}/cmdline").read_bytes()
    except OSError:
        return False
    return cmdline.split(b"\0", 1)[0].decode(errors="replace") == record.binary and not _is_zombie(record.pid)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A group whose only member is an unreaped zombie leader is as good as gone.
    return not (_is_zombie(pgid) and not _other_group_members(pgid))


def _other_group_members(pgid: int) -> bool:
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == pgid:
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:  # field 5 of stat: pgrp
            return True
    return False


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


def _wait_group_gone(pgid: int, proc: subprocess.Popen | None, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if proc is not None:
            proc.poll()  # reap our own child so it does not stay a zombie
        if not _group_alive(pgid):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)


def terminate(record: Record, proc: subprocess.Popen | None = None, timeout: float = 15.0) -> None:
    """SIGTERM the process group of ``record``; SIGKILL it if it outlives ``timeout``.

    Does nothing if the pid no longer runs the recorded binary: we never
    signal a process we did not start.
    """
    if proc is None and not is_running(record):
        return
    pgid = record.pid  # start_new_session: the leader's pid is the group id
    _signal_group(pgid, signal.SIGTERM)
    if _wait_group_gone(pgid, proc, timeout):
        return
    _signal_group(pgid, signal.SIGKILL)
    if not _wait_group_gone(pgid, proc, 10.0):
        raise RuntimeError(f"{record.name} (pid {record.pid}) survived SIGKILL")


def log_tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def write_records(path: Path, records: list[Record], **extra: object) -> None:
    """Atomically write the state file: a crash mid-write must not lose the pids."""
    data = {**extra, "processes": [asdict(r) for r in records]}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    tmp.replace(path)


def read_state(path: Path) -> tuple[list[Record], dict]:
    """The records and the extra fields of a state file; nothing if there is none."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return [], {}
    records = [Record(p["name"], p["pid"], p["binary"], tuple(p.get("ports", ()))) for p in data.pop("processes", [])]
    return records, data
