"""The gradient noise scale: measured in the DDP comm hooks of every compression mode, exported, and free of collectives.

One torchrun launch (2 processes, gloo, CPU) trains the tiny built-in GPT through the real Trainer
in a few modes (matrix_worker.py), counting every torch.distributed collective and every DDP hook
call: the measurement adds no collective (one all-reduce per bucket, as without it, plus the
trainer's one per-step all-gather of its stats row, which carries the norms).
"""

from __future__ import annotations

import json
import math

import pytest

from conftest import HERE, child_env, torchrun_standalone

pytestmark = pytest.mark.torchrun

STEPS = 30
MODES = [("fp32", "ddp", "none"), ("fp32", "ddp", "bf16"), ("fp32", "ddp", "powersgd"), ("fp16", "ddp", "none"),
         ("fp32", "fsdp", "none")]
METRIC = "kubetrain_trainer_gradient_noise_scale"


def _run(tmp_path, nproc: int, modes, steps: int) -> dict:
    out = tmp_path / f"noise-{nproc}.json"
    proc = torchrun_standalone([str(HERE / "matrix_worker.py"), str(out), *("/".join(m) for m in modes)], nproc=nproc,
                               env=child_env(MATRIX_STEPS=str(steps), MATRIX_COUNT_COLLECTIVES="1"), timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    records = {(r["precision"], r["strategy"], r["compression"]): r for r in json.loads(out.read_text())}
    for rec in records.values():
        assert rec["ok"], rec.get("traceback")
    return records


def _exported(rec) -> list[float]:
    return [s["value"] for s in rec["metrics"] if s["name"] == METRIC]


@pytest.fixture(scope="module")
def world2(tmp_path_factory):
    return _run(tmp_path_factory.mktemp("noise"), 2, MODES, STEPS)


@pytest.mark.parametrize("mode", [m for m in MODES if m[1] == "ddp"], ids=lambda m: "-".join(m))
def test_ddp_exports_a_positive_finite_noise_scale(world2, mode):
    rec = world2[mode]
    values = _exported(rec)
    assert len(values) == 1 and math.isfinite(values[0]) and values[0] > 0, values
    assert values[0] == rec["noise_scales"][-1]
    assert all(v is not None and math.isfinite(v) and v >= 0 for v in rec["noise_scales"]), rec["noise_scales"]


def test_the_measurement_adds_no_collective(world2):
    for mode in [m for m in MODES if m[1] == "ddp"]:
        calls = world2[mode]["collectives"]
        # The stats row all-gather the trainer did anyway (it carries the norms), once per step.
        assert calls["all_gather_single"] == STEPS, (mode, calls)
        if mode[2] == "powersgd":
            assert set(calls) == {"ddp_hook", "all_reduce", "all_gather_single"}, (mode, calls)
            continue
        # One all-reduce per bucket per step, as the hook does without the measurement; nothing else.
        assert calls == {"ddp_hook": STEPS, "all_reduce": STEPS, "all_gather_single": STEPS}, (mode, calls)


def test_fp16_loss_scaling_does_not_change_the_estimate(world2):
    # The hooks see gradients times the GradScaler's scale (2**16): the trainer divides it out.
    fp32, fp16 = world2[("fp32", "ddp", "none")]["noise_scales"][-1], world2[("fp16", "ddp", "none")]["noise_scales"][-1]
    assert fp16 == pytest.approx(fp32, rel=0.2)


def test_fsdp_and_world_size_one_export_none(world2, tmp_path):
    fsdp = world2[("fp32", "fsdp", "none")]
    assert _exported(fsdp) == [] and set(fsdp["noise_scales"]) == {None}
    single = _run(tmp_path, 1, [("fp32", "ddp", "none")], 3)[("fp32", "ddp", "none")]
    assert _exported(single) == [] and single["noise_scales"] == [None] * 3
