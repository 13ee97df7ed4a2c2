"""The gloo exit race (see kubetrain_trainer.process_exit) and how workers end: subprocesses, no torchrun."""

from __future__ import annotations

import signal
import subprocess
import sys

from conftest import HERE, child_env


def _run_worker(variant: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(HERE / "gloo_exit_worker.py"), variant], env=child_env(),
                          capture_output=True, text=True, timeout=120)


def test_exit_process_avoids_the_gloo_exit_race_that_finalization_hits():
    # The reproducer is deterministic (callback attached while the all-reduce is pending, slow release):
    # ending through interpreter finalization aborted 10 of 10 times here, so both outcomes are asserted.
    ended_by_return = _run_worker("return")
    assert "callback ran on a gloo worker thread" in ended_by_return.stderr, ended_by_return.stderr[-2000:]
    assert ended_by_return.returncode == -signal.SIGABRT, (
        f"the race no longer reproduces (exit {ended_by_return.returncode}): the reproducer, not exit_process, "
        f"needs attention\n{ended_by_return.stderr[-2000:]}"
    )
    assert "terminate called" in ended_by_return.stderr

    ended_by_exit_process = _run_worker("exit_process")
    assert "callback ran on a gloo worker thread" in ended_by_exit_process.stderr, ended_by_exit_process.stderr[-2000:]
    assert ended_by_exit_process.returncode == 0, ended_by_exit_process.stderr[-2000:]
    assert "terminate called" not in ended_by_exit_process.stderr


def test_exit_process_runs_atexit_handlers_flushes_and_keeps_the_code():
    # stdout is a pipe here, so block-buffered: without the flush "buffered" would be lost by os._exit.
    code = (
        "import atexit, sys\n"
        "from kubetrain_trainer.process_exit import exit_process\n"
        "atexit.register(lambda: print('handler ran', file=sys.stderr))\n"
        "print('buffered', end='')\n"
        "exit_process(75)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], env=child_env(), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 75, proc.stderr
    assert proc.stdout == "buffered"
    assert proc.stderr.strip() == "handler ran"
