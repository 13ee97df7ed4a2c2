"""Stopping `kubetrain run`: nothing it started outlives it, and a clean stop leaves a checkpoint the next run resumes.

Real processes throughout: the CLI, its rendezvous store, two torchrun agents
and their trainers. Every process of a run carries RUN_MARK in its
environment, so the test finds them wherever they were re-parented. The
moment of the signal is random; every wait is a bounded wait for liveness.
"""

from __future__ import annotations

import os
import pty
import random
import re
import signal
import subprocess
import threading
import time
import uuid
from pathlib import Path

import pytest

from conftest import child_env, kubetrain_cli, tiny_manifest, wait_until
from kubetrain_trainer.checkpoint_layout import list_checkpoints
from kubetrain_trainer.local import STOP_GRACE_SECONDS
from kubetrain_trainer.process_scan import command_line, marked
from kubetrain_trainer.status import read_status

pytestmark = pytest.mark.torchrun

RUN_MARK = "KUBETRAIN_TEST_RUN"
NEVER_ENDS = 100_000  # max steps of a run that only a signal ends


def _processes(mark: str) -> list[int]:
    return marked(RUN_MARK, mark)


def _describe(pids: list[int]) -> str:
    return "; ".join(f"{pid}: {command_line(pid)[:160]}" for pid in pids)


def _start(manifest: str, work: Path, max_steps: int, out) -> tuple[subprocess.Popen, str]:
    mark = uuid.uuid4().hex
    proc = subprocess.Popen(kubetrain_cli("run", manifest, "--workdir", str(work), "--max-steps", str(max_steps)),
                            env=child_env(**{RUN_MARK: mark}), stdout=out, stderr=subprocess.STDOUT, text=True)
    return proc, mark


def _training(work: Path, alive, text) -> dict:
    """Wait until the run's trainers are past their first step (world 2), then a random moment more."""
    def stepping():
        assert alive(), f"kubetrain run exited early: {text()}"
        st = read_status(work / "status.json")
        return st if st and st["step"] >= 1 and st["world_size"] == 2 else None
    st = wait_until(stepping, 200, interval=0.2, what="training at world size 2")
    time.sleep(random.uniform(0, 3))
    return st


def _all_gone(mark: str) -> None:
    """Within the grace period (plus a margin for a loaded machine) no process of the run remains."""
    wait_until(lambda: not _processes(mark), STOP_GRACE_SECONDS + 15, interval=0.2,
               what=f"every process of the run to end (left: {_describe(_processes(mark))})")


def _resumes(manifest: str, work: Path, step: int, log: Path) -> None:
    """A second run with the same workdir continues from the checkpoint at ``step``."""
    with open(log, "w") as out:
        proc, mark = _start(manifest, work, step + 10, out)
        rc = proc.wait(timeout=240)
    text = log.read_text()
    assert rc == 0, text
    assert re.search(rf"steps\s+{step} -> {step + 10} of {step + 10}", text), text
    assert not _processes(mark)


def _stopped_with_checkpoint(text: str, work: Path, signame: str, code: int, seen_step: int) -> int:
    """The summary says how the run ended and where its checkpoint is; that checkpoint is complete on disk."""
    assert f"stopped by {signame} (exit {code})" in text, text
    found = list_checkpoints(work / "checkpoints")
    assert found, f"no complete checkpoint in {work / 'checkpoints'}: {text}"
    step, path, _ = found[-1]
    assert step >= seen_step
    assert f"checkpoint  step {step} in {path}" in text, text
    return step


def test_sigterm_stops_every_process_with_a_checkpoint_and_the_next_run_resumes(tmp_path):
    manifest, work, log = tiny_manifest(tmp_path), tmp_path / "work", tmp_path / "first.txt"
    with open(log, "w") as out:
        proc, mark = _start(manifest, work, NEVER_ENDS, out)
        st = _training(work, lambda: proc.poll() is None, log.read_text)
        running = _processes(mark)
        assert len(running) >= 6, _describe(running)  # the CLI, the store, 2 agents, 2 trainers
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=STOP_GRACE_SECONDS + 30)
    _all_gone(mark)
    text = log.read_text()
    assert rc == 128 + signal.SIGTERM, text
    step = _stopped_with_checkpoint(text, work, "SIGTERM", rc, st["step"])
    _resumes(manifest, work, step, tmp_path / "second.txt")


def test_sigkill_of_kubetrain_run_leaves_no_process(tmp_path):
    """No chance to clean up: the store and agents die with the CLI, each trainer with its agent (at any moment)."""
    manifest, work, log = tiny_manifest(tmp_path), tmp_path / "work", tmp_path / "run.txt"
    with open(log, "w") as out:
        proc, mark = _start(manifest, work, NEVER_ENDS, out)
        if random.random() < 0.5:
            _training(work, lambda: proc.poll() is None, log.read_text)
        else:  # anywhere in the start-up: store, rendezvous, trainers importing torch
            time.sleep(random.uniform(0.5, 8))
        seen = _processes(mark)
        proc.kill()
        proc.wait(timeout=30)
    _all_gone(mark)
    assert len(seen) >= 1


def _drain(fd: int, sink: list[bytes]) -> None:
    """Keep reading the terminal's output (a full pty would block the CLI) until it closes."""
    while True:
        try:
            chunk = os.read(fd, 4096)
        except OSError:  # EIO: the last process holding the terminal has gone
            return
        if not chunk:
            return
        sink.append(chunk)


def test_ctrl_c_in_a_terminal_stops_the_run_like_sigterm(tmp_path):
    """^C typed at a terminal: the line discipline sends SIGINT to the foreground process group (the CLI's)."""
    manifest, work = tiny_manifest(tmp_path), tmp_path / "work"
    mark = uuid.uuid4().hex
    pid, master = pty.fork()  # the child is a session leader with the pty as controlling terminal
    if pid == 0:  # pragma: no cover - the child becomes kubetrain run
        argv = kubetrain_cli("run", manifest, "--workdir", str(work), "--max-steps", str(NEVER_ENDS))
        os.execve(argv[0], argv, child_env(**{RUN_MARK: mark}))
    output: list[bytes] = []
    reader = threading.Thread(target=_drain, args=(master, output), daemon=True)
    reader.start()
    ended: list[int] = []  # the wait status, once reaped

    def alive() -> bool:
        if not ended:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                ended.append(status)
        return not ended

    try:
        st = _training(work, alive, lambda: b"".join(output).decode(errors="replace"))
        os.write(master, b"\x03")
        wait_until(lambda: not alive(), STOP_GRACE_SECONDS + 30, interval=0.2, what="kubetrain run to end after ^C")
        reader.join(timeout=10)
    finally:
        if alive():  # the test failed before the CLI ended: end it here, the leak check covers the rest
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        os.close(master)
    _all_gone(mark)
    text = b"".join(output).decode(errors="replace")
    rc = os.waitstatus_to_exitcode(ended[0])
    assert rc == 128 + signal.SIGINT, text
    step = _stopped_with_checkpoint(text, work, "SIGINT", rc, st["step"])
    _resumes(manifest, work, step, tmp_path / "second.txt")
