"""Every precision × strategy × compression mode the CPU supports trains the built-in GPT and exports metrics.

All modes run in ONE torchrun launch (2 processes, gloo) through the real
Trainer; each mode then gets its own test with the recorded outcome.
"""

from __future__ import annotations

import json
import statistics

import pytest

from conftest import HERE, child_env, torchrun_standalone

pytestmark = pytest.mark.torchrun

PRECISIONS = ("fp32", "tf32", "bf16", "fp16")
MODES = [(p, "ddp", c) for p in PRECISIONS for c in ("none", "fp16", "bf16", "powersgd")] + [
    (p, "fsdp", c) for p in PRECISIONS for c in ("none", "fp16", "bf16")
]
STEPS = 40


@pytest.fixture(scope="module")
def matrix(tmp_path_factory):
    out = tmp_path_factory.mktemp("matrix") / "results.json"
    proc = torchrun_standalone(
        [str(HERE / "matrix_worker.py"), str(out), *("/".join(m) for m in MODES)],
        nproc=2,
        env=child_env(MATRIX_STEPS=str(STEPS)),
        timeout=280,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    results = json.loads(out.read_text())
    return {(r["precision"], r["strategy"], r["compression"]): r for r in results}


def _metric(rec, name, **labels):
    for s in rec["metrics"]:
        if s["name"] == name and all(s["labels"].get(k) == v for k, v in labels.items()):
            return s["value"]
    return None


@pytest.mark.parametrize("mode", MODES, ids=["-".join(m) for m in MODES])
def test_mode_trains_and_exports_metrics(matrix, mode):
    rec = matrix[mode]
    assert rec["ok"], rec.get("traceback")
    losses = rec["losses"]
    assert rec["steps"] == STEPS and len(losses) == STEPS
    first, last = statistics.mean(losses[:10]), statistics.mean(losses[-10:])
    assert last < first - 1.0, f"loss did not fall clearly: {first:.3f} -> {last:.3f}"
    # Metrics from the injected registry: throughput counters, job step, communicated bytes.
    assert _metric(rec, "kubetrain_trainer_step") == STEPS
    # Standalone torchrun: both processes are on this "pod" (group rank 0): 2 × batch 8 × seq 32 per step.
    assert _metric(rec, "kubetrain_trainer_tokens_total") == STEPS * 2 * 8 * 32
    assert _metric(rec, "kubetrain_trainer_tokens_per_second") > 0
    assert _metric(rec, "kubetrain_trainer_communicated_bytes_total", local_rank="0") == sum(rec["comm_bytes"]) > 0
    assert rec["scaler_enabled"] == (mode[0] == "fp16")
    # PowerSGD (error feedback on by default) exports its compression error; the other modes have none to export.
    error = _metric(rec, "kubetrain_trainer_compression_error_ratio", local_rank="0")
    assert (0 < error <= 1) if mode[2] == "powersgd" else error is None, error


def test_bytes_per_step_match_the_compression(matrix):
    params = matrix[("fp32", "ddp", "none")]["params"]
    for precision in PRECISIONS:
        ddp = {c: matrix[(precision, "ddp", c)]["comm_bytes"] for c in ("none", "fp16", "bf16", "powersgd")}
        assert set(ddp["none"]) == {params * 4}  # fp32 gradients, whatever the autocast dtype
        assert set(ddp["fp16"]) == set(ddp["bf16"]) == {params * 2}
        # PowerSGD: plain all-reduce for the first start_iteration (5) steps, then a fraction of it.
        assert ddp["powersgd"][:5] == [params * 4] * 5
        assert max(ddp["powersgd"][5:]) < params * 4 / 5
        fsdp = {c: matrix[(precision, "fsdp", c)]["comm_bytes"][-1] for c in ("none", "fp16", "bf16")}
        assert fsdp["fp16"] == fsdp["bf16"] < fsdp["none"]  # reduce-scatter in 2 bytes
    # Low-precision params make FSDP's all-gathers smaller too.
    assert matrix[("bf16", "fsdp", "none")]["comm_bytes"][-1] < matrix[("fp32", "fsdp", "none")]["comm_bytes"][-1]


def test_powersgd_with_many_buckets_on_gloo_does_not_hang(tmp_path):
    out = tmp_path / "stress.json"
    proc = torchrun_standalone([str(HERE / "powersgd_stress_worker.py"), str(out)], nproc=2, env=child_env(), timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    for run in json.loads(out.read_text()):
        assert len(run["bytes"]) == 150
        assert run["bytes"][0] == run["params"] * 4  # warm-up: plain all-reduce
        assert max(run["bytes"][3:]) < run["params"] * 4 / 4  # compressed afterwards
        assert statistics.mean(run["losses"][-10:]) < statistics.mean(run["losses"][:10])
        # The error error feedback carries: measured on every compressed step, never during the warm-up.
        assert run["errors"][:3] == [None] * 3
        assert all(0 < e <= 1 for e in run["errors"][3:]), run["errors"][3:13]
