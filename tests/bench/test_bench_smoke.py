"""Every benchmark runs in its quickest mode and writes results that match its schema.

Smoke only: the figures of a ``--quick`` run mean nothing and nothing here
asserts on a time. The trainer benchmarks start real torchrun processes
(marked ``torchrun``, ~30 s each); the control-plane one starts the local
control plane and both operators (marked ``integration``; it builds
training-operator from the Go module proxy the first time, ~3 min).
Results go to a temp dir, never to bench/results/.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from bench.schema import schema_for  # noqa: E402


def run_quick(name: str, out: Path, timeout: float) -> dict:
    proc = subprocess.run([sys.executable, "-m", f"bench.{name}", "--quick", "--out", str(out)], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-4000:]
    doc = json.loads((out / f"{name}.json").read_text())
    jsonschema.validate(doc, schema_for(name))
    assert doc["quick"] is True
    md = (out / f"{name}.md").read_text()
    assert doc["question"] in md and "quick smoke run" in md
    return doc


@pytest.mark.torchrun
@pytest.mark.timeout(300)
def test_trainer_overhead_quick(tmp_path):
    doc = run_quick("trainer_overhead", tmp_path, 280)
    assert doc["errors"] == [], doc["errors"]
    assert {r["side"] for r in doc["results"]["runs"]} == {"kubetrain", "plain", "pair"}


@pytest.mark.torchrun
@pytest.mark.timeout(300)
def test_trainer_modes_quick(tmp_path):
    doc = run_quick("trainer_modes", tmp_path, 280)
    assert doc["errors"] == [], doc["errors"]
    modes = doc["results"]["modes"]
    assert modes["fp32/ddp/fp16"]["bytes_per_step"] * 2 == modes["fp32/ddp/none"]["bytes_per_step"]
    assert modes["fp32/ddp/powersgd"]["bytes_per_step"] < modes["fp32/ddp/powersgd"]["bytes_first_step"]
    if not doc["machine"]["gpu"]["cuda"]:
        assert "fp8/ddp/none" in doc["results"]["refused"]


@pytest.mark.torchrun
@pytest.mark.timeout(300)
def test_compression_loss_quick(tmp_path):
    doc = run_quick("compression_loss", tmp_path, 280)
    assert doc["errors"] == [], doc["errors"]
    modes = doc["results"]["modes"]
    # Paired per seed: none against itself costs nothing; fp16 halves the bytes; PowerSGD's job mean counts its warm-up.
    assert modes["none"]["loss_cost"]["max"] == 0 and modes["none"]["loss_cost"]["n"] == len(doc["params"]["seeds"])
    assert modes["fp16"]["saving"] == 2
    psgd = modes["powersgd/r1/s0.1/ef+ws"]
    assert psgd["bytes_per_step_compressed"] < psgd["bytes_per_step_mean"] < modes["none"]["bytes_per_step_mean"]


@pytest.mark.torchrun
@pytest.mark.timeout(300)
def test_trainer_elastic_quick(tmp_path):
    doc = run_quick("trainer_elastic", tmp_path, 280)
    assert doc["errors"] == [], doc["errors"]
    assert {e["event"] for e in doc["results"]["events"]} == {"node_loss", "scale_up"}


@pytest.mark.integration
@pytest.mark.timeout(900)
def test_control_plane_quick(tmp_path):
    doc = run_quick("control_plane", tmp_path, 880)
    # A training-operator that cannot be built is reported as an error, not hidden; the test shows it.
    assert doc["errors"] == [], doc["errors"]
    runs = doc["results"]["runs"]
    assert {r["operator"] for r in runs} == {"kubetrain", "pytorchjob"}
    assert all(not r["timed_out"] and r["jobs_running"] == r["jobs"] for r in runs)
    assert all(r["operator_requests_burst"] > 0 for r in runs)


@pytest.mark.integration
@pytest.mark.timeout(600)
def test_operator_memory_quick(tmp_path):
    doc = run_quick("operator_memory", tmp_path, 580)
    assert doc["errors"] == [], doc["errors"]
    idle, loaded = doc["results"]["idle"], doc["results"]["loaded"]
    # Both censuses come from the running operator: it had its jobs' objects in memory at the second.
    assert loaded["gc_objects"] > idle["gc_objects"] and loaded["tasks"] > idle["tasks"]
    assert "per job" in (tmp_path / "operator_memory.md").read_text()


def test_summary_is_rebuilt_from_json(tmp_path):
    """The results README is generated from whatever JSON exists (no benchmark run needed)."""
    from bench.__main__ import write_summary

    path = write_summary(tmp_path)
    text = path.read_text()
    assert "Headline figures" in text and "Not run yet." in text
