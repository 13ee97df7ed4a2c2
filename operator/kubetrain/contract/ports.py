"""Picking a free loopback port: the one picker the local launcher, the dev cluster, tests and benchmarks share.

Stdlib only, so the trainer's local launcher can use it without the operator's dependencies.
"""

from __future__ import annotations

import random
import socket
from pathlib import Path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now, outside the ephemeral range.

    Ports from the kernel's ephemeral range (``ip_local_port_range``) are also
    the local ends of outgoing connections: one picked there at start-up was
    taken by a client connection before KWOK bound it, in a benchmark that
    opens thousands. Below that range only listeners compete, and a port is
    checked free when it is picked.
    """
    low, high = _ephemeral_range()
    pool = range(20000, low) if low - 20000 >= 2000 else range(high + 1, 65536)
    rng = random.SystemRandom()
    for _ in range(200):
        port = rng.choice(pool)
        if port_is_free(port) and _bindable(port):
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:  # a crowded machine: let the kernel choose
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]

def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default

def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False

def port_is_free(port: int) -> bool:
    """True if nothing listens on 127.0.0.1:port.

    SO_REUSEADDR makes connections lingering in TIME_WAIT not count: only a
    listener makes the bind fail.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True
