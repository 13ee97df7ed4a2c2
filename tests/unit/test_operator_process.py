"""The dev tools' operator process and wait loop, shared by the integration tests and the benchmarks."""

from __future__ import annotations

import sys

import pytest

from kubetrain_dev.operator_process import OperatorProcess, kubetrain_operator
from kubetrain_dev.wait import Unrecoverable, WaitTimeout, wait_for


def test_an_unrecoverable_probe_ends_the_wait_other_errors_are_not_yet():
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionRefusedError("starting")
        return "up"

    assert wait_for(flaky, timeout=10, what="flaky", interval=0.001) == "up" and len(calls) == 3

    def gone():
        raise Unrecoverable("the process exited")

    with pytest.raises(Unrecoverable):
        wait_for(gone, timeout=3600, what="never")
    with pytest.raises(WaitTimeout):
        wait_for(lambda: None, timeout=0, what="nothing")


def test_a_process_that_exits_before_it_is_ready_fails_its_start_with_its_log(tmp_path):
    log = tmp_path / "op.log"
    proc = OperatorProcess([sys.executable, "-c", "print('no kubeconfig'); raise SystemExit(3)"], {}, log,
                           "http://127.0.0.1:9/healthz")
    with pytest.raises(Unrecoverable, match="exited with 3") as info:
        proc.start(timeout=3600)
    assert "no kubeconfig" in str(info.value)


def test_the_kubetrain_operator_gets_free_ports_and_the_callers_env_on_top(tmp_path):
    a = kubetrain_operator(tmp_path / "kubeconfig", tmp_path / "a.log", {"KUBETRAIN_RECONCILE_INTERVAL": "1"})
    b = kubetrain_operator(tmp_path / "kubeconfig", tmp_path / "b.log", {"KUBETRAIN_METRICS_PORT": "1234"})
    assert a.launch_env["KUBETRAIN_METRICS_PORT"] != "8000" and b.launch_env["KUBETRAIN_METRICS_PORT"] == "1234"
    assert a.launch_env["KUBETRAIN_RECONCILE_INTERVAL"] == "1" and a.launch_env["KUBETRAIN_STANDALONE"] == "true"
    assert a.ready_url != b.ready_url and a.argv[1:3] == ["-m", "kubetrain.operator"]
