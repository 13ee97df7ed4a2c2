"""Children that die with their parent: Linux's ``PR_SET_PDEATHSIG``. Torch-free, import-light.

Why: a launcher killed without a chance to clean up (SIGKILL, a crash, the
OOM killer) must not leave its rendezvous store, torchrun agents and trainers
running; a pod gets this for free (its container dies whole), local processes
do not. The kernel sends the chosen signal to a child when its parent dies,
whatever killed the parent. Two rules of the kernel shape this module:

* The setting is *not* inherited across fork, so grandchildren need their own:
  torchrun starts its workers without it, so the local launcher runs each
  worker through ``python -m kubetrain_trainer.parent_death <program...>``,
  which sets it and then ``exec``s the program (the setting survives exec).
* "Parent" is the *thread* that forked the child. A launcher must start its
  children from a thread that lives as long as they should (the main thread);
  torchrun starts its workers from its main thread.

A parent that died *before* the child set the flag would never signal it, so
each entry point checks that its parent is still the one that started it.
Off Linux this is a no-op (nothing to set); the launchers still stop their
children on every exit they get to run.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from collections.abc import Callable

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
# Set by the local launcher in its store's and agents' environment (one value per job);
# a worker checks that its parent carries the same value, i.e. is still its agent.
LAUNCH_MARK = "KUBETRAIN_LOCAL_JOB"


def _prctl() -> Callable[..., int] | None:
    """libc's prctl, or None off Linux. Resolved before any fork: loading a library in
    a child forked from a threaded parent can deadlock on the loader's lock."""
    if not sys.platform.startswith("linux"):
        return None
    return ctypes.CDLL(None, use_errno=True).prctl


def set_parent_death_signal(sig: int = signal.SIGKILL, prctl: Callable[..., int] | None = None) -> bool:
    """Ask the kernel to send ``sig`` to this process when its parent dies. False where it cannot (not Linux)."""
    prctl = prctl or _prctl()
    if prctl is None:
        return False
    if prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    return True


def die_with(parent: int, sig: int = signal.SIGKILL) -> Callable[[], None]:
    """A ``preexec_fn`` for ``subprocess.Popen``: the child gets ``sig`` when ``parent`` (pass ``os.getpid()``) dies.

    Runs in the forked child before exec; if the parent is already gone
    (re-parented), the child ends itself at once rather than run orphaned.
    """
    prctl = _prctl()

    def preexec() -> None:
        if prctl is not None and set_parent_death_signal(sig, prctl) and os.getppid() != parent:
            os.kill(os.getpid(), sig)

    return preexec


def _parent_is_launcher(parent: int) -> bool:
    """Whether ``parent`` still is the agent that started us: it carries our launch mark (a reaper does not)."""
    from kubetrain_trainer.process_scan import environ_of

    mine = os.environ.get(LAUNCH_MARK)
    return mine is None or (environ_of(parent) or {}).get(LAUNCH_MARK) == mine


def main(argv: list[str]) -> None:
    """``python -m kubetrain_trainer.parent_death PROGRAM [ARGS...]``: die with the parent, then become PROGRAM."""
    if not argv:
        sys.exit("usage: python -m kubetrain_trainer.parent_death PROGRAM [ARGS...]")
    parent = os.getppid()
    if set_parent_death_signal(signal.SIGKILL) and (os.getppid() != parent or not _parent_is_launcher(parent)):
        os.kill(os.getpid(), signal.SIGKILL)
    os.execvp(argv[0], argv)


if __name__ == "__main__":
    main(sys.argv[1:])
