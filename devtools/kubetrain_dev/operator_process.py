"""An operator as a subprocess, started and stopped the way ``make run`` would: what the integration
tests and the control-plane benchmark share.

The process gets its own session, so stopping it stops whatever it started; ``start`` returns
once its readiness URL answers 200, and fails at once, with the log's tail, if it exits first.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path

from kubetrain.contract.ports import free_port
from kubetrain_dev.wait import Unrecoverable, wait_for


class OperatorProcess:
    def __init__(self, argv: Sequence[str], env: Mapping[str, str], log: Path, ready_url: str, cwd: Path | None = None):
        self.argv, self.launch_env, self.log, self.ready_url, self.cwd = list(argv), dict(env), log, ready_url, cwd
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 120) -> None:
        self.proc = subprocess.Popen(self.argv, env=self.launch_env, stdout=self.log.open("a"), stderr=subprocess.STDOUT,
                                     start_new_session=True, cwd=self.cwd)

        def ready() -> bool:
            if self.proc.poll() is not None:
                raise Unrecoverable(f"{self.argv[0]} exited with {self.proc.returncode}:\n{self.logs(4000)}")
            with urllib.request.urlopen(self.ready_url, timeout=2) as resp:
                return resp.status == 200

        wait_for(ready, timeout=timeout, what=f"operator ready at {self.ready_url}")

    @property
    def pid(self) -> int:
        assert self.proc is not None, "not started"
        return self.proc.pid

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)

    def stop(self, grace: float = 30) -> None:
        """SIGTERM (the operator's cleanup runs), then SIGKILL after ``grace`` seconds."""
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                self.kill()

    def logs(self, n: int = 6000) -> str:
        try:
            return self.log.read_text(errors="replace")[-n:]
        except OSError:
            return ""


def kubetrain_operator(kubeconfig: Path, log: Path, env: Mapping[str, str] | None = None) -> OperatorProcess:
    """``python -m kubetrain.operator`` against ``kubeconfig``, standalone (no peering), ready when its liveness
    endpoint answers; ``env`` on top (e.g. KUBETRAIN_RECONCILE_INTERVAL).

    Its liveness and /metrics ports are free ones, never the default 8000: another operator on the machine
    (a test's, a developer's ``make run``) would hold it, and the startup handler would fail to bind."""
    port = free_port()
    full_env = os.environ | {"KUBECONFIG": str(kubeconfig), "KUBETRAIN_STANDALONE": "true", "PYTHONUNBUFFERED": "1",
                             "KUBETRAIN_METRICS_PORT": str(free_port()),
                             "MALLOC_ARENA_MAX": "2"} | dict(env or {})  # as the chart's Deployment sets it
    argv = [sys.executable, "-m", "kubetrain.operator", "--liveness", f"http://127.0.0.1:{port}/healthz"]
    return OperatorProcess(argv, full_env, log, f"http://127.0.0.1:{port}/healthz")
