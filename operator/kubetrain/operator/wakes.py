"""Pod events wake their job's reconcile, so status follows the pods instead of the timer.

The first pod event of a burst schedules one reconcile ``delay`` seconds later; the
events until it starts join it (coalesced), so a gang of pods turning Running costs
one reconcile. An event that arrives while that reconcile runs schedules the next.
The job's timer stays as the level-triggered safety net: a lost wake is only late.

A job's timer registers what a wake runs (the timer's body is the live one Kopf keeps
fresh); a job without a registration, not yet timed or already deleted, is not woken.
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
from collections.abc import Callable

JobKey = tuple[str, str]  # (namespace, job)
# Long enough to gather a gang's events (they come within milliseconds of each other),
# short enough that status follows the pods within a second.
DEBOUNCE_SECONDS = 0.2


class Wakes:
    def __init__(self, delay: float = DEBOUNCE_SECONDS):
        self.delay = delay
        self._runs: dict[JobKey, Callable[[], None]] = {}
        self._pending: set[JobKey] = set()
        self._guard = threading.Lock()  # register/forget come from handler threads, wake from the loop
        # Kopf's loop and a context of its (the one Events are posted through), from the latest pod event's wake.
        self._loop: asyncio.AbstractEventLoop | None = None
        self._context: contextvars.Context | None = None
        self._due: dict[JobKey, float] = {}  # the loop time of each job's scheduled recheck (``recheck_from_thread``)

    def register(self, key: JobKey, run: Callable[[], None]) -> None:
        with self._guard:
            self._runs[key] = run

    def forget(self, key: JobKey) -> None:
        with self._guard:
            self._runs.pop(key, None)
        self._due.pop(key, None)

    def wake(self, key: JobKey, loop: asyncio.AbstractEventLoop) -> bool:
        """Schedule the job's reconcile (call on ``loop``); False when one is pending already or none is registered."""
        # The reconcile posts Events through Kopf's context variables: run it in this context.
        context = contextvars.copy_context()
        self._loop, self._context = loop, context
        with self._guard:
            if key in self._pending or key not in self._runs:
                return False
            self._pending.add(key)
        loop.call_later(self.delay, self._fire, key, loop, context)
        return True

    def wake_from_thread(self, keys: set[JobKey]) -> None:
        """Wake these jobs from another thread (the throughput reader's, when their figures changed). Before any
        pod event there is no loop to wake on, and no job with pods to read figures from."""
        if keys:
            self._on_loop(self._wake_all, keys)

    def recheck_from_thread(self, key: JobKey, seconds: float) -> None:
        """Wake the job ``seconds`` from now, from a reconcile's thread: when a rule that acts on elapsed time alone
        (a deadline, a TTL, a grace) is due. A recheck already due by then stands; only an earlier one is added."""
        self._on_loop(self._recheck, key, seconds)

    def _on_loop(self, fn: Callable[..., None], *args: object) -> None:
        """Call ``fn(*args, loop)`` on Kopf's loop from another thread, in Kopf's context, not the calling
        thread's: a reconcile without it would post its Events nowhere. No-op before the first pod event."""
        loop, context = self._loop, self._context
        if loop is not None and context is not None and not loop.is_closed():
            loop.call_soon_threadsafe(fn, *args, loop, context=context)

    def _recheck(self, key: JobKey, seconds: float, loop: asyncio.AbstractEventLoop) -> None:
        now, due = loop.time(), loop.time() + seconds
        scheduled = self._due.get(key)
        if scheduled is not None and now < scheduled <= due + self.delay:
            return
        self._due[key] = due
        loop.call_later(seconds, self._recheck_due, key, loop, due)

    def _recheck_due(self, key: JobKey, loop: asyncio.AbstractEventLoop, due: float) -> None:
        if self._due.get(key) == due:
            del self._due[key]
        self.wake(key, loop)

    def _wake_all(self, keys: set[JobKey], loop: asyncio.AbstractEventLoop) -> None:
        for key in keys:
            self.wake(key, loop)

    def wake_later(self, key: JobKey, loop: asyncio.AbstractEventLoop, seconds: float) -> None:
        """Wake the job ``seconds`` from now (when the pods on a NotReady node come to count as lost)."""
        loop.call_later(seconds, self.wake, key, loop)

    def _fire(self, key: JobKey, loop: asyncio.AbstractEventLoop, context: contextvars.Context) -> None:
        with self._guard:
            self._pending.discard(key)
            run = self._runs.get(key)
        if run is not None:
            loop.run_in_executor(None, context.run, run)
