"""Which low precisions this CPU computes natively, and what emulating the others costs. Torch-free.

Why: ``kubetrain run`` trains on the CPU when there is no GPU, and a manifest
written for GPUs often asks for fp16 or bf16. A CPU without the matching
instructions converts to fp32 and back around every matmul: the job trains
correctly but several times slower, which a user otherwise only finds out
minutes later. The figures below are the one place these measurements live.
"""

from __future__ import annotations

import platform
from pathlib import Path

# /proc/cpuinfo flags of full arithmetic in a precision. AVX512-BF16 (and Arm's BF16)
# only add bf16 dot products: every other op converts, and bf16 measured slower than
# fp32 on such a CPU (below), so only AMX counts as native bf16.
NATIVE_FLAGS = {
    "bf16": {"amx_bf16"},
    "fp16": {"avx512_fp16", "amx_fp16", "asimdhp"},
}

# Step time relative to fp32 where the CPU emulates the precision: (lowest, highest) measured.
# Machine: 2-CPU Intel Xeon with avx512_bf16, no avx512_fp16/AMX, shared with other work.
# fp16: kubetrain run of examples/minimal.yaml's model (builtin:gpt layers=4, d_model=128),
#   2 replicas x 1 process, 40 steps, tokens/s of the last steps, two rounds on 2026-11-30:
#   fp32 8,268 / 5,809 against fp16 1,005 / 472 tokens/s (fp16 with fp16 gradient
#   compression, examples/fp16-compression.yaml: 618 tokens/s, 13x).
# bf16: the same runs gave 10,002 / 4,084 tokens/s (0.83x, 1.42x); bench/results/trainer_modes.md
#   measured 2.05x for the same model (ddp, no compression, 2026-11-22).
MEASURED_SLOWDOWN = {"fp16": (8.2, 12.3), "bf16": (0.83, 2.05)}
MEASURED_ON = "2-CPU Xeon, examples/minimal.yaml's model; see kubetrain_trainer/cpu_precision.py"


def cpu_flags() -> set[str]:
    """The CPU's feature flags (Linux); empty where they cannot be read."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):  # x86, Arm
            return set(value.split())
    return set()


def emulated_on_cpu(precision: str, flags: set[str] | None = None) -> bool:
    """True when ``precision`` has no native arithmetic on this CPU (fp32 and tf32 never need any)."""
    native = NATIVE_FLAGS.get(precision)
    if native is None:
        return False
    return not (native & (cpu_flags() if flags is None else flags))


def emulation_warning(precision: str, flags: set[str] | None = None) -> str | None:
    """The line ``kubetrain run`` prints before a CPU job in an emulated precision; None when there is nothing to say."""
    if not emulated_on_cpu(precision, flags):
        return None
    low, high = MEASURED_SLOWDOWN[precision]
    return (f"kubetrain run: this CPU ({platform.machine()}) has no full {precision} arithmetic, so the trainers "
            f"emulate it: expect steps {low:g}x to {high:g}x as long as in fp32 (measured on a {MEASURED_ON}). "
            f"For a quick local try set spec.precision: fp32; a recent GPU (Ampere or newer) runs {precision} natively.")
