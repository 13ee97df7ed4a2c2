"""A completed worker's last figures reach the job's status through its termination message, not only /metrics."""

from __future__ import annotations

import asyncio
import contextvars
import time

import pytest
from test_reconcile import FakeKube, _body, _run, _runtime

from kubetrain.contract.result import FinalFigures, format_result, parse_result
from kubetrain.operator import failures, naming, planner
from kubetrain.operator.reconcile import Indexes
from kubetrain.operator.runtime import JobMemo
from kubetrain.operator.throughput import Throughput, ThroughputReader, final_figures
from kubetrain.operator.wakes import Wakes


def test_the_result_message_round_trips_and_reads_as_no_failure():
    text = format_result(FinalFigures(step=60, loss=2.125, tokens_per_second=1234.5))
    assert text.startswith("Completed: step 60, loss 2.1250\n")
    assert parse_result(text) == FinalFigures(60, 2.125, 1234.5)
    assert parse_result(format_result(FinalFigures(step=0))) == FinalFigures(0)  # resumed at its last step: no loss
    assert parse_result(format_result(FinalFigures(7, float("nan"), float("inf")))) == FinalFigures(7)
    assert failures._from_message(text) is None  # the failure classes never read it


@pytest.mark.parametrize("message", [
    None, "", "OutOfMemory: CUDA out of memory", "Completed: step 3", "Completed: x\nResult: {not json",
    'Completed: x\nResult: {"loss": 1.0}', 'Completed: x\nResult: {"step": -1}', 'Completed: x\nResult: {"step": true}',
    'Completed: x\nResult: []', 'Result: {"step": 5}',
])
def test_anything_else_in_a_termination_message_is_no_result(message):
    assert parse_result(message) is None


def _worker(slot: int, phase: str, message: str | None = None, exit_code: int = 0) -> planner.PodView:
    state = {"terminated": {"exitCode": exit_code, "message": message, "finishedAt": "2026-11-30T10:00:00Z"}} \
        if phase in ("Succeeded", "Failed") else {"running": {}}
    return planner.PodView.from_body({
        "metadata": {"name": f"j-w{slot}-0", "finalizers": [naming.TRACKING_FINALIZER],
                     "labels": {naming.LABEL_ROLE: naming.ROLE_WORKER, naming.LABEL_SLOT: str(slot), naming.LABEL_ATTEMPT: "0"}},
        "spec": {"nodeName": "n0"},
        "status": {"phase": phase, "containerStatuses": [{"name": "trainer", "state": state}]}})


def test_final_figures_take_the_latest_step_of_the_pods_that_exited_zero():
    done = [_worker(0, "Succeeded", format_result(FinalFigures(59, 3.0, 10.0))),
            _worker(1, "Succeeded", format_result(FinalFigures(60, 2.5, 900.0))),
            _worker(2, "Failed", format_result(FinalFigures(99, 1.0)), exit_code=1)]
    figures = final_figures([p.body["status"] for p in done])
    assert (figures.step, figures.loss, figures.tokens_per_second) == (60, 2.5, 900.0)
    assert figures.status()["observedTime"] == "2026-11-30T10:00:00Z"
    assert final_figures([_worker(0, "Succeeded", "").body["status"]]) is None


def test_a_job_that_finished_between_two_reads_ends_with_its_last_loss_in_status():
    """No /metrics read ever saw this job: the Succeeded round still writes its last step and loss (a sweep's result)."""
    kube = FakeKube()
    runtime, state = _runtime(kube), JobMemo()
    pods = [_worker(0, "Succeeded", format_result(FinalFigures(60, 2.5, 900.0))), _worker(1, "Succeeded")]
    idx = Indexes(job_pods={("ns", "j"): pods}, gpu_nodes={}, gpus_in_use={}, gpus_pending={})
    _run(runtime, state, _body() | {"status": {"desiredReplicas": 2, "phase": "Running"}}, idx)
    written = {k: v for patch in kube.status_patches for k, v in patch.items()}
    assert written["phase"] == "Succeeded"
    assert written["throughput"] == {"observedTime": "2026-11-30T10:00:00Z", "step": 60, "loss": 2.5, "tokensPerSecond": 900.0}


class _Readings:
    """A throughput source whose reads return what the test queued."""

    def __init__(self, *reads: dict):
        self.reads = list(reads)

    def read(self) -> dict:
        return self.reads.pop(0) if len(self.reads) > 1 else self.reads[0]


def test_the_reader_tells_which_jobs_figures_changed_and_wakes_reach_them_from_its_thread():
    """New figures wake only their jobs, from the reader's thread onto Kopf's loop: status follows the reads, not the timer."""
    a, b = ("ns", "a"), ("ns", "b")
    runs: list[tuple[str, str]] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        wakes = Wakes(delay=0.01)
        for key in (a, b):
            wakes.register(key, lambda key=key: runs.append(key) if CONTEXT.get(None) == "kopf" else None)
        CONTEXT.set("kopf")  # stands for Kopf's event-posting context: a woken reconcile posts Events through it
        wakes.wake_from_thread({a})  # no pod event yet: no loop known, nothing to wake
        assert wakes.wake(b, loop)  # a pod event of b
        await _until(lambda: runs == [b])
        source = _Readings({a: Throughput(step=1), b: Throughput(step=5)}, {a: Throughput(step=2), b: Throughput(step=5)})
        reader = ThroughputReader(source, interval=0.02, on_change=wakes.wake_from_thread)
        reader.start()
        try:
            await _until(lambda: runs.count(a) >= 2)  # the first read (a, b new) and the second (a moved on)
            await asyncio.sleep(0.2)
        finally:
            reader.stop()
        assert runs.count(b) == 2 and runs.count(a) == 2  # b's unchanged figures woke it no more

    asyncio.run(main())


CONTEXT = contextvars.ContextVar("context")


async def _until(cond, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)
