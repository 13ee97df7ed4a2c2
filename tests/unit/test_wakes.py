"""Pod events wake their job's reconcile: debounced, coalesced, in Kopf's context."""

from __future__ import annotations

import asyncio
import contextvars
import time

from kubetrain.operator.wakes import Wakes

KEY = ("ns", "j")
CONTEXT = contextvars.ContextVar("context")  # stands for Kopf's event queue, which a reconcile posts Events to


async def _until(cond, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


def test_a_burst_of_pod_events_costs_one_reconcile_and_the_next_burst_another():
    runs: list[str] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        wakes = Wakes(delay=0.05)
        CONTEXT.set("kopf")
        wakes.register(KEY, lambda: runs.append(CONTEXT.get("none")))
        assert wakes.wake(KEY, loop)
        assert not any(wakes.wake(KEY, loop) for _ in range(20))  # joined the pending one
        await _until(lambda: len(runs) == 1)
        await asyncio.sleep(0.1)
        assert runs == ["kopf"]  # one run, in the context of the event that scheduled it
        assert wakes.wake(KEY, loop)
        await _until(lambda: len(runs) == 2)

    asyncio.run(main())


def test_a_job_is_not_woken_before_its_timer_registers_it_or_after_it_is_forgotten():
    runs: list[int] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        wakes = Wakes(delay=0.01)
        assert not wakes.wake(KEY, loop)
        wakes.register(KEY, lambda: runs.append(1))
        assert wakes.wake(KEY, loop)
        wakes.forget(KEY)  # deleted before the debounce ended: the pending wake runs nothing
        await asyncio.sleep(0.1)
        assert not wakes.wake(KEY, loop)

    asyncio.run(main())
    assert runs == []


def test_a_later_wake_runs_after_its_delay_not_before():
    """A NotReady node's pods count as lost only after the grace period: its jobs are woken then."""
    runs: list[float] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        wakes = Wakes(delay=0.0)
        wakes.register(KEY, lambda: runs.append(loop.time()))
        asked = loop.time()
        wakes.wake_later(KEY, loop, 0.3)
        await _until(lambda: runs)
        assert runs[0] - asked >= 0.3

    asyncio.run(main())


def test_a_recheck_from_a_reconcile_thread_wakes_the_job_when_due_once_per_due_time_in_kopf_s_context():
    runs: list[str] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        wakes = Wakes(delay=0.01)
        CONTEXT.set("kopf")
        wakes.register(KEY, lambda: runs.append(CONTEXT.get("none")))
        wakes.recheck_from_thread(KEY, 0.05)  # before any pod event: no loop known, nothing scheduled
        assert wakes.wake(KEY, loop)  # a pod event: the loop and Kopf's context are known from here on
        await _until(lambda: len(runs) == 1)

        def from_a_thread() -> None:
            wakes.recheck_from_thread(KEY, 0.2)
            wakes.recheck_from_thread(KEY, 0.2)  # the same due time again (every round of a running job): dropped
            wakes.recheck_from_thread(KEY, 0.1)  # an earlier rule: added

        await loop.run_in_executor(None, from_a_thread)
        await asyncio.sleep(0.05)
        assert len(runs) == 1  # not yet due
        await _until(lambda: len(runs) == 2)  # the 0.1 s recheck
        await asyncio.sleep(0.3)
        assert runs == ["kopf"] * 3  # and the 0.2 s one, once

    asyncio.run(main())
