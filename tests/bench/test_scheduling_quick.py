"""The scheduling benchmark runs in its quickest mode and writes a page and JSON of the common envelope.

Smoke only: a ``--quick`` run replays one workload cut to 40 jobs, so its figures mean nothing,
and nothing here asserts on a time. Its results schema lives next to the benchmark
(bench/scheduling.py, RESULTS_SCHEMA) and is checked inside the common envelope.
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

from bench.schema import ENVELOPE  # noqa: E402
from bench.scheduling import RESULTS_SCHEMA  # noqa: E402


@pytest.mark.timeout(300)
def test_scheduling_quick(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "bench.scheduling", "--quick", "--out", str(tmp_path)], cwd=REPO,
                          capture_output=True, text=True, timeout=280)
    assert proc.returncode == 0, proc.stderr[-4000:]
    doc = json.loads((tmp_path / "scheduling.json").read_text())
    schema = json.loads(json.dumps(ENVELOPE))
    schema["properties"]["benchmark"] = {"const": "scheduling"}
    schema["properties"]["results"] = RESULTS_SCHEMA
    jsonschema.validate(doc, schema)
    assert doc["quick"] is True and doc["errors"] == []
    h = doc["results"]["headline"]
    assert {"elastic", "fifo", "fifo_backfill", "tiresias"} <= set(h)
    assert h["elastic"]["unfinished"] == 0
    assert doc["results"]["allocator_rounds"]["jobs"] == 1000
    md = (tmp_path / "scheduling.md").read_text()
    assert doc["question"] in md and "quick smoke run" in md and "Pollux, published" in md
