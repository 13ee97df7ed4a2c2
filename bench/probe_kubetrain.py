"""kubetrain's worker entrypoint, unchanged, with one time stamp per step for the benchmark.

torchrun runs this file instead of ``python -m kubetrain_trainer``: it calls
``kubetrain_trainer.main.main()``, the real entrypoint, with one step hook
(:class:`StepStamps`, which bench/overhead_worker.py uses too) that records
``time.perf_counter()`` when each step starts (after the batch is on the
device, before forward: the same point as ``bench/plain_ddp.py``).
Everything else (contract, checks, per-step all-gather, metrics exporter,
status file, comm hook) runs as in a pod. Global rank 0 writes the stamps to
``$BENCH_STAMPS`` at exit.
"""

from __future__ import annotations

import atexit
import json
import os
import time

from kubetrain_trainer.hooks import StepHook


class StepStamps(StepHook):
    """``time.perf_counter()`` at the start of every step."""

    def __init__(self) -> None:
        self.stamps: list[float] = []

    def on_step_start(self, step: int) -> None:
        self.stamps.append(time.perf_counter())


def _dump(stamps: StepStamps) -> None:
    path = os.environ.get("BENCH_STAMPS")
    if path and os.environ.get("RANK", "0") == "0" and stamps.stamps:
        with open(path, "w") as fh:
            json.dump({"program": "kubetrain", "stamps": stamps.stamps, "world_size": int(os.environ.get("WORLD_SIZE", 1))}, fh)


if __name__ == "__main__":
    from kubetrain_trainer.main import main

    stamps = StepStamps()
    atexit.register(_dump, stamps)  # main() ends in exit_process, which runs the atexit handlers
    main(hooks=[stamps])
