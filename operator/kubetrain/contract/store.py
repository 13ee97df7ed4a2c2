"""The job's c10d rendezvous store, alone: a TCPStore and nothing else.

torchrun's c10d rendezvous normally lets one agent host the TCPStore; losing
that agent ends the job for everyone (verified: every other agent raised
RendezvousConnectionError within a second). This program only holds the store
(no training, no GPU), so the operator runs it in its own small pod and the
local launcher as its own process, and every agent joins with
``--rdzv-endpoint=<store>:<port> --rdzv-conf=is_host=false,...``.

It needs nothing but the standard library and torch: the operator runs this
file's source with ``python -c`` in the job's own image, so a user's image
without kubetrain gets a store too, and the store speaks the TCPStore protocol
of the very torch the agents use. Serves until SIGTERM/SIGINT, then exits 0.
"""

from __future__ import annotations  # the job's image may run an older Python

import argparse
import signal
import sys
import threading
from datetime import timedelta


def serve(host: str, port: int, stop: threading.Event, ready: threading.Event | None = None) -> None:
    from torch.distributed import TCPStore

    # The server listens on every interface; ``host`` is where its own client connects.
    store = TCPStore(host, port, is_master=True, wait_for_workers=False, timeout=timedelta(seconds=60))
    store.set("kubetrain/store", "ready")
    print(f"kubetrain rdzv store ready on port {store.port}", flush=True)
    if ready is not None:
        ready.set()
    while not stop.wait(3600):
        pass
    del store


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kubetrain rendezvous store", description="the job's c10d rendezvous store")
    parser.add_argument("--port", type=int, default=29400)
    parser.add_argument("--host", default="127.0.0.1", help="address the store's own client connects to (it listens on all)")
    args = parser.parse_args(argv)
    stop = threading.Event()

    def handle(signum, frame):  # noqa: ARG001
        print(f"signal {signum}: stopping the rendezvous store", flush=True)
        stop.set()

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)
    serve(args.host, args.port, stop)
    return 0


if __name__ == "__main__":
    sys.exit(main())
