"""`kubetrain run` through the real CLI: manifest -> API models -> contract -> local rendezvous store + torchrun agents."""

from __future__ import annotations

import re
import subprocess
import time
import urllib.request

import pytest
import yaml

from conftest import child_env, kubetrain_cli, tiny_manifest

pytestmark = pytest.mark.torchrun


def _scrape(url: str) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=1) as resp:
            return resp.read().decode()
    except OSError:
        return None


def test_kubetrain_run_trains_a_manifest_and_summarises(tmp_path):
    manifest = tiny_manifest(tmp_path)
    port = yaml.safe_load(open(manifest))["spec"]["metrics"]["port"]
    out_path = tmp_path / "stdout.txt"
    with open(out_path, "w") as out:
        proc = subprocess.Popen(kubetrain_cli("run", manifest, "--workdir", str(tmp_path / "work")), env=child_env(),
                                stdout=out, stderr=subprocess.STDOUT, text=True)
        # The summary only prints URLs; check one really served the trainer's metrics while the job ran.
        scraped, deadline = None, time.monotonic() + 240
        while proc.poll() is None and time.monotonic() < deadline:
            body = _scrape(f"http://127.0.0.1:{port}/metrics")
            if body and "kubetrain_trainer_tokens_per_second" in body:
                scraped = body
            time.sleep(0.1)
        rc = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    text = out_path.read_text()
    assert rc == 0, text + (tmp_path / "work" / "agent-0.log").read_text()[-3000:]
    assert "kubetrain: job 'gpt-tiny' completed (exit 0)" in text, text
    assert "emulate" not in text, text  # fp32: no precision warning
    assert re.search(r"steps\s+0 -> 100 of 100", text), text
    first, last = map(float, re.search(r"loss\s+([\d.]+) -> ([\d.]+)", text).groups())
    assert last < 0.7 * first, text  # about 5.5 -> 2 here
    assert float(re.search(r"throughput\s+([\d,]+) tokens/s", text).group(1).replace(",", "")) > 0, text
    assert f"http://127.0.0.1:{port}/metrics" in text and f"http://127.0.0.1:{port + 1}/metrics" in text, text
    assert scraped is not None, "no scrape of the metrics URL succeeded while the job ran"
    assert 'trainingjob="gpt-tiny"' in scraped


@pytest.mark.parametrize(
    "change,field",
    [
        ({"trainer": {"batchSize": 0}}, "spec.trainer.batchSize"),  # schema
        ({"compression": {"type": "powersgd", "powerSGD": {"rank": 1, "startIteration": 1}}},
         "spec.compression.powerSGD.startIteration"),  # a CEL rule
    ],
)
def test_kubetrain_run_refuses_an_invalid_manifest_before_training(tmp_path, change, field):
    manifest = tiny_manifest(tmp_path, **change)
    work = tmp_path / "work"
    proc = subprocess.run(kubetrain_cli("run", manifest, "--workdir", str(work)), env=child_env(),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert field in proc.stderr, proc.stderr
    # Refused before anything started: no "kubetrain run:" banner, no workdir, no agent.
    assert "kubetrain run" not in proc.stdout and not work.exists(), proc.stdout
