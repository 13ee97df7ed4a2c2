"""Loopback ports (the control plane, the local launcher, tests, benchmarks): free, and never from the ephemeral range."""

from __future__ import annotations

import socket

from kubetrain.contract import ports


def test_free_ports_avoid_the_ephemeral_range_and_can_be_listened_on():
    low, high = ports._ephemeral_range()
    picked = {ports.free_port() for _ in range(20)}
    assert len(picked) > 1
    for port in picked:
        # An outgoing connection's local port comes from [low, high]: a listener port there can be taken first.
        assert not low <= port <= high, port
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))
            sock.listen()


def test_a_port_someone_listens_on_is_never_handed_out(monkeypatch):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        picks = iter([busy, busy, busy + 1 if busy < 65535 else busy - 1])
        monkeypatch.setattr(ports.random.SystemRandom, "choice", lambda self, pool: next(picks))
        assert ports.free_port() != busy
