"""Polling with a deadline: the only way the dev cluster code waits for anything."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class WaitTimeout(TimeoutError):
    """A condition did not hold before its deadline; the message says what and the last state seen."""


class Unrecoverable(Exception):
    """Raised by a probe: stop waiting, the condition can never hold (e.g. the process it waits for exited)."""


def wait_for(
    probe: Callable[[], T],
    *,
    timeout: float,
    what: str,
    interval: float = 0.25,
    max_interval: float = 2.0,
) -> T:
    """Call ``probe`` until it returns something truthy, and return that.

    Exceptions from ``probe`` count as "not yet" (an apiserver that is still
    starting refuses connections); the last one is reported on timeout, and
    ``Unrecoverable`` ends the wait at once. The interval backs off so that a
    long wait does not hammer the apiserver.
    """
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            result = probe()
            if result:
                return result
            last = result
        except Unrecoverable:
            raise
        except Exception as exc:  # noqa: BLE001 - "not ready yet" takes many forms
            last = exc
        if time.monotonic() >= deadline:
            raise WaitTimeout(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")
        time.sleep(min(interval, max(0.0, deadline - time.monotonic())))
        interval = min(interval * 1.5, max_interval)
