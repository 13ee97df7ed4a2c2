"""The warning `kubetrain run` gives before a CPU job in a precision the CPU only emulates."""

from __future__ import annotations

import subprocess

import pytest

from conftest import child_env, kubetrain_cli, tiny_manifest
from kubetrain_trainer.cpu_precision import MEASURED_SLOWDOWN, emulated_on_cpu, emulation_warning

XEON_AVX512_BF16 = {"fpu", "avx2", "avx512f", "avx512_bf16"}  # the machine of the measurements


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_an_emulated_precision_is_named_with_its_measured_slowdown(precision):
    text = emulation_warning(precision, XEON_AVX512_BF16)
    low, high = MEASURED_SLOWDOWN[precision]
    assert f"no full {precision} arithmetic" in text and f"{low:g}x to {high:g}x" in text, text


@pytest.mark.parametrize("precision,flags", [
    ("fp32", set()), ("tf32", set()),  # fp32 arithmetic everywhere
    ("bf16", {"amx_bf16"}), ("fp16", {"avx512_fp16"}), ("fp16", {"amx_fp16"}), ("fp16", {"asimdhp"}),
])
def test_native_or_full_precision_gets_no_warning(precision, flags):
    assert emulation_warning(precision, flags) is None


@pytest.mark.torchrun
@pytest.mark.skipif(not emulated_on_cpu("fp16"), reason="this CPU has native fp16")
def test_kubetrain_run_warns_before_training(tmp_path):
    manifest = tiny_manifest(tmp_path, precision="fp16")
    proc = subprocess.run(kubetrain_cli("run", manifest, "--workdir", str(tmp_path / "work"), "--max-steps", "2"),
                          env=child_env(), capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    warning = proc.stderr.splitlines()[0]
    assert warning == emulation_warning("fp16"), proc.stderr
