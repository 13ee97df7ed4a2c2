"""``python -m kubetrain_trainer.rdzv_store --port P``: the job's c10d rendezvous store, alone.

torchrun's c10d rendezvous normally lets one agent host the TCPStore; losing
that agent ends the job for everyone (verified: every other agent raised
RendezvousConnectionError within a second). This process only holds the store
— no training, no GPU — so the operator runs it in its own small pod (and the
local launcher as its own process), and every agent joins with
``--rdzv-endpoint=<store>:<port> --rdzv-conf=is_host=false,...``.

It serves until SIGTERM/SIGINT and then exits 0.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from datetime import timedelta

log = logging.getLogger("kubetrain_trainer.rdzv_store")


def serve(host: str, port: int, stop: threading.Event, ready: threading.Event | None = None) -> None:
    from torch.distributed import TCPStore

    # The server listens on every interface; ``host`` is where its own client connects.
    store = TCPStore(host, port, is_master=True, wait_for_workers=False, timeout=timedelta(seconds=60))
    store.set("kubetrain/store", "ready")
    log.info("rendezvous store listening on port %d", store.port)
    print(f"kubetrain rdzv store ready on port {store.port}", flush=True)
    if ready is not None:
        ready.set()
    while not stop.wait(3600):
        pass
    del store


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kubetrain_trainer.rdzv_store", description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=29400)
    parser.add_argument("--host", default="127.0.0.1", help="address the store's own client connects to (it listens on all)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    stop = threading.Event()

    def handle(signum, frame):  # noqa: ARG001
        log.info("signal %d: stopping the rendezvous store", signum)
        stop.set()

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)
    serve(args.host, args.port, stop)
    return 0


if __name__ == "__main__":
    sys.exit(main())
