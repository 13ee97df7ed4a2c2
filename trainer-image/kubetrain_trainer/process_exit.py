"""Ending a worker process without CPython's interpreter finalization.

Why: gloo runs the Python callbacks of a collective's future (``fut.then(...)``:
every DDP comm hook, PowerSGD's chain) on its own worker threads, and releases
each callback object there *after* the waiting thread has already been woken.
If the main thread reaches ``Py_FinalizeEx`` first, that worker thread asks for
the GIL during finalization; CPython 3.11-3.13 answer with ``pthread_exit``,
whose forced unwind crosses a ``noexcept`` frame in libtorch and calls
``std::terminate`` ("terminate called without an active exception", exit -6).
A job that trained to completion would then be reported as a crash and
restarted. NCCL runs these callbacks inline, so GPU jobs never saw it; the
CPU path (demo, tests, CPU clusters) did, intermittently.

So every exit path runs Python's exit handlers (``atexit``: logging, our
benchmark probes, multiprocessing's child reaping), flushes stdio, and leaves
with ``os._exit``: nothing after that can take the GIL.

The failure path runs the atexit handlers too (it used to skip them, as "a
broken process group can hang in destructors"). What a worker registers
(torch 2.14.1, listed by wrapping ``atexit.register``): ``logging.shutdown``;
multiprocessing's ``_exit_function`` (terminates and joins daemonic children:
DataLoader workers exit on their parent's SIGTERM); torch.utils.data's exit
flag; ``weakref.finalize`` (torch.library registrations); torch._dynamo and
fake-tensor statistics; a pybind11 cleanup. prometheus_client registers none.
None of them touches a process group: with a peer SIGKILLed mid-all-reduce
they took 13 ms. The destructors that can hang on a broken group run in
interpreter teardown, which ``os._exit`` still skips. (A user workload's own
atexit handlers run as well, as at any normal exit.)
"""

from __future__ import annotations

import atexit
import os
import sys
from typing import NoReturn


def exit_process(code: int) -> NoReturn:
    """Run atexit handlers, flush stdout/stderr, and end the process with ``code`` (no interpreter teardown)."""
    try:
        atexit._run_exitfuncs()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):  # closed or broken pipe: nothing more can be said
                pass
        os._exit(code)
