"""The operator's heap trims: a thread that returns the C heap's free pages to the system, started and stopped with the runtime."""

from __future__ import annotations

import threading

from kubetrain.operator.heap import HeapTrimmer, glibc_malloc_trim


def _rss_bytes() -> int:
    return int(open("/proc/self/status").read().split("VmRSS:")[1].split()[0]) * 1024


def test_trims_run_every_interval_until_stopped():
    calls, twice = [], threading.Event()

    def trim() -> int:
        calls.append(1)
        if len(calls) >= 2:
            twice.set()
        return 1

    heap = HeapTrimmer(0.01, trim)
    heap.start()
    assert twice.wait(5), calls
    heap.stop()
    assert heap._thread is None and heap.trims == len(calls) >= 2  # noqa: SLF001 - stop joined the thread


def test_interval_zero_or_no_malloc_trim_starts_nothing():
    off = HeapTrimmer(0, lambda: 1)  # KUBETRAIN_HEAP_TRIM_INTERVAL=0
    musl = HeapTrimmer(10, lambda: 1)
    musl.trim = None  # what glibc_malloc_trim() gives on a C library without malloc_trim
    for heap in (off, musl):
        heap.start()
        assert heap._thread is None  # noqa: SLF001
        heap.stop()


def test_glibc_malloc_trim_gives_freed_heap_pages_back():
    trim = glibc_malloc_trim()
    assert trim is not None  # this machine's Python runs on glibc, as the operator image's does
    # 64 MiB of 4 KiB chunks (under the mmap threshold: in the heap); free all but every 64th, so the
    # heap cannot shrink from its top and free() alone returns nothing.
    chunks = [bytearray(4096) for _ in range(16384)]
    keep = chunks[::64]
    del chunks
    before = _rss_bytes()
    trim()
    after = _rss_bytes()
    assert before - after > 16 * 2**20, (before, after)
    assert len(keep) == 256
