"""Reproduces the gloo exit race that :mod:`kubetrain_trainer.process_exit` avoids.

``python gloo_exit_worker.py return|exit_process``. Two gloo ranks in this one
process (threads); rank 0 all-reduces with a Python ``then`` callback, as every
DDP comm hook does. gloo runs that callback, and then releases it, on its
worker thread, after the waiting main thread has been woken. Releasing it is
made slow here (a finalizer that sleeps in short steps, each time asking for
the GIL again), as a busy 2-core machine makes it by chance. ``return`` ends
through interpreter finalization, during which the worker thread asks for the
GIL and libtorch aborts (SIGABRT, "terminate called without an active
exception"); ``exit_process`` ends the way the trainer does and exits 0.

Made deterministic: the callback must be attached while the all-reduce is still
pending, or it runs (and is released) inline on the main thread and nothing
races. A one-rank group finishes its all-reduce before ``.then`` can attach
(we tried: the callback ran on the main thread every time), so rank 1 only
joins the all-reduce after rank 0 has attached its callback. The groups are
never destroyed: dropping the last reference to a group joins gloo's threads
and so waits for the release; in the trainer something else holds the group
(DDP's reducer) or it is not destroyed at all (SIGTERM and peer-preempted exits).
"""

from __future__ import annotations

import sys
import threading
import time
from datetime import timedelta

import torch
import torch.distributed as dist

from kubetrain_trainer.process_exit import exit_process

PRECONDITION_FAILED = 3
# Module-global, like torch's default group: a group freed when main() returns would join gloo's threads first.
GROUPS: dict[int, dist.ProcessGroupGloo] = {}


class SlowToRelease:
    def __del__(self) -> None:
        for _ in range(300):
            time.sleep(0.01)


def callback_holding(obj, ran_on: list[int]):
    """A ``then`` callback whose closure is the only owner of ``obj``; records the thread it ran on."""

    def callback(fut):
        ran_on.append(threading.get_ident())
        return (obj, fut.value()[0])[1]

    return callback


def main() -> None:
    store, groups = dist.HashStore(), GROUPS

    def connect(rank: int) -> None:
        groups[rank] = dist.ProcessGroupGloo(store, rank, 2, timedelta(seconds=30))

    connecting = [threading.Thread(target=connect, args=(r,)) for r in (0, 1)]
    for t in connecting:
        t.start()
    for t in connecting:
        t.join()

    attached = threading.Event()

    def peer() -> None:  # rank 1 completes the all-reduce only once rank 0's callback is attached
        attached.wait(30)
        groups[1].allreduce([torch.ones(4)]).wait()

    peer_thread = threading.Thread(target=peer)
    peer_thread.start()
    ran_on: list[int] = []
    fut = groups[0].allreduce([torch.ones(4)]).get_future().then(callback_holding(SlowToRelease(), ran_on))
    attached.set()
    fut.wait()
    peer_thread.join()
    if ran_on == [threading.get_ident()]:  # cannot happen as arranged above; never pass vacuously
        print("PRECONDITION FAILED: the callback ran on the main thread", file=sys.stderr, flush=True)
        exit_process(PRECONDITION_FAILED)
    print("callback ran on a gloo worker thread", file=sys.stderr, flush=True)
    if sys.argv[1] == "exit_process":
        exit_process(0)
    # "return": interpreter finalization starts while gloo's thread is still releasing the callback.


if __name__ == "__main__":
    main()
