"""Give the C heap's free pages back to the system every few seconds (glibc ``malloc_trim``).

A burst of jobs parses thousands of watch events and API responses; glibc keeps the freed
chunks in its heap, so the operator's resident memory stays at the burst's peak although
the objects are gone (measured at 300 jobs: 16.6 MiB free in the heap, 10 MiB of RSS back
after one trim). Dask's workers trim for the same reason. Elsewhere than glibc (musl) there
is no ``malloc_trim``, and this does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)


def glibc_malloc_trim() -> Callable[[], int] | None:
    """``malloc_trim(0)`` of this process's C library, or None where it has none."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return lambda: int(trim(0))


class HeapTrimmer:
    """A daemon thread that calls ``trim`` every ``interval`` seconds until ``stop`` (0 or no trim: never starts)."""

    def __init__(self, interval: float, trim: Callable[[], int] | None = None):
        self.interval = interval
        self.trim = trim if trim is not None else glibc_malloc_trim()
        self.trims = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self.interval <= 0 or self.trim is None or self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="heap-trim", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.trim()  # a few milliseconds on a 50 MiB heap; ctypes releases the GIL meanwhile
                self.trims += 1
            except Exception:  # noqa: BLE001 - memory housekeeping must never take the operator down
                log.exception("malloc_trim failed; not trying again")
                return

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
