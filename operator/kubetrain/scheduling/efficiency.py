"""Statistical efficiency of a batch size, from the gradient noise scale.

With B_noise the gradient noise scale in samples (McCandlish et al. 2018, "An Empirical
Model of Large-Batch Training": B_simple = tr(Sigma) / |G|^2), reaching a given loss takes
fewer steps but more samples at a larger batch. Pollux (OSDI'21) writes the samples' worth as
the efficiency of a batch M relative to a base batch M0:

    E(M) = (B_noise + M0) / (B_noise + M)        (= 1 at M = M0, falls as M grows)

and the progress of one step at M, in steps at M0, is the gain  E(M) * M / M0.
A large noise scale (late in training, noisy gradients) makes big batches nearly free; a
small one makes them wasteful. Goodput = samples/s x E(M).
"""

from __future__ import annotations

import math

from kubetrain.contract.noise_scale import NoiseScaleEstimator, moments_from_norms, noise_scale_from_norms  # noqa: F401 - re-exported: the estimator belongs to the contract


def efficiency(batch: float, base_batch: float, noise_scale: float | None) -> float:
    """E(M) relative to ``base_batch``; 1.0 when the noise scale is unknown (throughput only)."""
    if noise_scale is None:
        return 1.0
    b = max(noise_scale, 0.0)
    if math.isinf(b):
        return 1.0  # pure noise: every sample counts fully at any batch
    return (b + base_batch) / (b + batch)


def gain(batch: float, base_batch: float, noise_scale: float | None) -> float:
    """Progress of one step at ``batch`` in steps at ``base_batch``: E(M) * M / M0."""
    return efficiency(batch, base_batch, noise_scale) * batch / base_batch


def noise_scale_from_moments(grad_sqr: float, grad_var: float, batch: float) -> float:
    """B_noise in samples from |G|^2 and the variance of a gradient estimated at ``batch``.

    ``grad_var`` is the variance of the mean gradient over ``batch`` samples, so the per-sample
    variance is ``grad_var * batch`` and B_noise = grad_var * batch / grad_sqr (Pollux's data
    records the two moments at the job's initial batch size).
    """
    if grad_sqr <= 0:
        return float("inf")
    return max(grad_var, 0.0) * batch / grad_sqr
