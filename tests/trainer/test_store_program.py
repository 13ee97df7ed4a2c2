"""The store pod's program, run as is with real torch (kept out of tests/unit, which never starts torch)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from datetime import timedelta

from kubetrain.api.manifests import load_trainingjobs
from kubetrain.contract.ports import free_port
from kubetrain.operator import builders
from kubetrain.operator.builders import BuildConfig
from support.variants import REPO

BODY = {"metadata": {"name": "gpt-full", "namespace": "ml-team", "uid": "1234-abcd", "generation": 1}}


def test_store_program_runs_in_any_image_with_torch(tmp_path):
    """The store pod's command, run as is: it serves a TCPStore and stops on SIGTERM, from an empty directory."""
    job = load_trainingjobs(REPO / "examples" / "plain-torchrun-script.yaml")[0]
    cmd = builders.store_pod(job, BODY, BuildConfig(trainer_image="example.com/trainer:1"))["spec"]["containers"][0]["command"]
    port = free_port()
    # Without this repository on the path, as in a user's image.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.Popen([sys.executable, *cmd[1:-1], str(port)], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert "ready on port" in proc.stdout.readline()
        from torch.distributed import TCPStore

        client = TCPStore("127.0.0.1", port, is_master=False, timeout=timedelta(seconds=10))
        assert client.get("kubetrain/store") == b"ready"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        proc.kill()
