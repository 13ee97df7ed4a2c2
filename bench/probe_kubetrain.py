"""kubetrain's worker entrypoint, unchanged, with one time stamp per step for the benchmark.

torchrun runs this file instead of ``python -m kubetrain_trainer``: it wraps
``Trainer.train_step`` to record ``time.perf_counter()`` when each step
starts (after the batch is on the device, before forward: the same point as
``bench/plain_ddp.py``), then calls ``kubetrain_trainer.main.main()``, the
real entrypoint. Everything else (contract, checks, per-step all-gather,
metrics exporter, status file, comm hook) runs as in a pod. Global rank 0
writes the stamps to ``$BENCH_STAMPS`` at exit.
"""

from __future__ import annotations

import atexit
import json
import os
import time

from kubetrain_trainer import trainer as _trainer

_stamps: list[float] = []
_original = _trainer.Trainer.train_step


def _stamped(self, batch):
    _stamps.append(time.perf_counter())
    return _original(self, batch)


_trainer.Trainer.train_step = _stamped


def _dump() -> None:
    path = os.environ.get("BENCH_STAMPS")
    if path and os.environ.get("RANK", "0") == "0" and _stamps:
        with open(path, "w") as fh:
            json.dump({"program": "kubetrain", "stamps": _stamps, "world_size": int(os.environ.get("WORLD_SIZE", 1))}, fh)


atexit.register(_dump)

if __name__ == "__main__":
    from kubetrain_trainer.main import main

    main()
