"""A test must not leave a process behind: every child it started, and every orphan of those.

Each test runs with its own value of :data:`TEST_MARK` in the environment, which
every process it starts inherits (however deep, whoever its parent is now: an
orphan is re-parented to init, out of reach of a walk from pytest). After the
test, what still carries the mark, or is still a child of pytest, is a leak:
the test fails, naming each process, and the leftovers are killed so that
they cannot disturb the next test.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
import uuid
from collections.abc import Iterator

from kubetrain_trainer.process_scan import command_line, descendants, environ_of, marked

TEST_MARK = "KUBETRAIN_TEST_PROCESS_MARK"
# How long a test's processes may take to finish exiting after the test returns (a SIGKILLed
# process is gone at once, a SIGTERMed one flushes its logs): a liveness bound, not a timing claim.
SETTLE_SECONDS = 10.0


def _live_children() -> list[int]:
    """This process's descendants that still run (a zombie has exited: its parent just has not reaped it yet)."""
    return [pid for pid in descendants(os.getpid()) if environ_of(pid) is not None]


def leftovers(mark: str) -> list[int]:
    return sorted(set(marked(TEST_MARK, mark)) | set(_live_children()))


def _describe(pids: list[int]) -> str:
    return "\n".join(f"  pid {pid}: {command_line(pid)[:300]}" for pid in pids)


@contextlib.contextmanager
def no_leaked_processes(monkeypatch, settle: float = SETTLE_SECONDS) -> Iterator[str]:
    """Mark what the block starts; on exit, fail if any of it still runs after ``settle`` seconds."""
    mark = uuid.uuid4().hex
    before = set(_live_children())  # a session-scoped helper started earlier is not this test's
    monkeypatch.setenv(TEST_MARK, mark)
    yield mark
    deadline = time.monotonic() + settle
    left = [p for p in leftovers(mark) if p not in before]
    while left and time.monotonic() < deadline:
        time.sleep(0.2)
        left = [p for p in leftovers(mark) if p not in before]
    if not left:
        return
    report = _describe(left)
    for pid in left:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    raise AssertionError(f"the test left {len(left)} process(es) running {settle:g}s after it ended:\n{report}")
