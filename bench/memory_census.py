"""The operator (``python -m kubetrain.operator``) with a memory census on SIGUSR1, for bench/operator_memory.py.

Each SIGUSR1 appends one JSON line to ``$KUBETRAIN_BENCH_CENSUS``: resident memory (and its anonymous
part), the C heap (glibc ``mallinfo2``: in use and free), Python's small-object allocator (pymalloc:
arenas, bytes in live blocks, bytes free in its pools), the objects the garbage collector tracks by type,
and the asyncio tasks by coroutine; then the same resident figure after one ``malloc_trim(0)``.
Strings, numbers and bytes are not tracked by the collector: they show in pymalloc's live bytes.
"""

from __future__ import annotations

import asyncio
import collections
import ctypes
import gc
import json
import os
import re
import runpy
import signal
import sys
import tempfile

from kubetrain.operator.heap import glibc_malloc_trim


class _Mallinfo2(ctypes.Structure):
    _fields_ = [(f, ctypes.c_size_t) for f in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
                                               "uordblks", "fordblks", "keepcost")]


def _rss() -> dict[str, int]:
    out = {}
    for line in open("/proc/self/smaps_rollup"):
        key, _, rest = line.partition(":")
        if key in ("Rss", "Anonymous"):
            out[key.lower() + "_bytes"] = int(rest.split()[0]) * 1024
    return out


def _pymalloc() -> dict[str, int]:
    """sys._debugmallocstats writes to the C stderr: read it back through a temporary file."""
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+") as fh:
        os.dup2(fh.fileno(), 2)
        try:
            sys._debugmallocstats()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        fh.seek(0)
        text = fh.read()

    def field(label: str) -> int:
        m = re.search(rf"# {label}\s*=\s*([\d,]+)", text)
        return int(m.group(1).replace(",", "")) if m else -1

    return {"arenas": field("arenas allocated current"), "live_bytes": field("bytes in allocated blocks"),
            "free_bytes": field("bytes in available blocks")}


def census(libc: ctypes.CDLL, trim) -> dict:
    mi = libc.mallinfo2()
    types: collections.Counter[str] = collections.Counter()
    sizes: collections.Counter[str] = collections.Counter()
    objects = gc.get_objects()
    for o in objects:
        t = type(o)
        key = f"{t.__module__}.{t.__qualname__}"
        types[key] += 1
        sizes[key] += sys.getsizeof(o)
    try:
        tasks = collections.Counter(getattr(t.get_coro(), "__qualname__", "?") for t in asyncio.all_tasks())
    except RuntimeError:  # no running loop in this thread
        tasks = collections.Counter()
    out = {**_rss(), "heap_in_use_bytes": mi.uordblks, "heap_free_bytes": mi.fordblks, "pymalloc": _pymalloc(),
           "gc_objects": len(objects), "gc_types": {k: [types[k], sizes[k]] for k, _ in types.most_common(60)},
           "tasks": sum(tasks.values()), "task_coroutines": dict(tasks.most_common(8))}
    del objects
    trim()
    out["rss_after_trim_bytes"] = _rss()["rss_bytes"]
    return out


def main() -> None:
    path = os.environ["KUBETRAIN_BENCH_CENSUS"]
    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = _Mallinfo2
    trim = glibc_malloc_trim()  # the operator's own trim (kubetrain.operator.heap)

    def on_signal(signum, frame) -> None:
        with open(path, "a") as fh:
            fh.write(json.dumps(census(libc, trim)) + "\n")

    signal.signal(signal.SIGUSR1, on_signal)
    sys.argv = ["kubetrain.operator", *sys.argv[1:]]
    runpy.run_module("kubetrain.operator", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
