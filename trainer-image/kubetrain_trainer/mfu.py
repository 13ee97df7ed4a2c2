"""Model FLOPs utilisation, the torchtitan way. Pure arithmetic: no torch.

``flops_per_token = 6·N + 12·L·H·Q·T`` where N is the number of parameters
without the embedding tables, L layers, H attention heads, Q head dimension and
T the sequence length (the first term is the dense matmuls forward + backward,
the second the attention scores and values). MFU is then
``flops_per_token × tokens/s ÷ peak FLOP/s`` of the devices that produced those
tokens.

The peak table holds dense bf16 tensor-core figures (what torchtitan divides by
for every precision but fp8). It is keyed by substrings of the name the driver
reports (NVML / ``torch.cuda.get_device_name``). Unknown GPUs and CPUs have no
entry: MFU is then not reported at all rather than made up.
"""

from __future__ import annotations

# Dense bf16 peak FLOP/s per device. Order matters: more specific names first.
PEAK_BF16_FLOPS: tuple[tuple[str, float], ...] = (
    ("H100 NVL", 835e12),
    ("H100 PCIE", 756e12),
    ("H100", 989e12),  # SXM (e.g. "NVIDIA H100 80GB HBM3")
    ("H200", 989e12),
    ("GH200", 989e12),
    ("A100", 312e12),
    ("B200", 2.25e15),
)


def flops_per_token(
    non_embedding_params: int, n_layers: int, n_heads: int, head_dim: int, seq_len: int
) -> float:
    """Training FLOPs per token (forward + backward) of a decoder-only transformer."""
    return 6.0 * non_embedding_params + 12.0 * n_layers * n_heads * head_dim * seq_len


def peak_flops_for(device_name: str | None) -> float | None:
    """Dense bf16 peak FLOP/s of one device called ``device_name``; None if unknown (CPUs included)."""
    if not device_name:
        return None
    name = device_name.upper()
    if "GH200" in name:
        return 989e12
    for key, peak in PEAK_BF16_FLOPS:
        if key in name:
            return peak
    return None


def mfu(flops_per_tok: float | None, tokens_per_second: float, peak_flops: float | None, devices: int = 1) -> float | None:
    """MFU as a 0–1 ratio, or None when the FLOPs per token or the peak is unknown."""
    if not flops_per_tok or not peak_flops or devices <= 0 or tokens_per_second < 0:
        return None
    return flops_per_tok * tokens_per_second / (peak_flops * devices)
