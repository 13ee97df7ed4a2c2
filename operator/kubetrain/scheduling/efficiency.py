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


def noise_scale_from_norms(local_sq_norm: float, local_batch: float, global_sq_norm: float,
                           global_batch: float) -> float | None:
    """B_noise from one replica's gradient norm and the all-reduced one (McCandlish, appendix A.1).

    What DDP gives for free: |g_small|^2 at the per-replica batch before the all-reduce and
    |g_big|^2 at the global batch after it. Unbiased estimates of |G|^2 and tr(Sigma):
        |G|^2 ~ (B_big |g_big|^2 - B_small |g_small|^2) / (B_big - B_small)
        S     ~ (|g_small|^2 - |g_big|^2) / (1/B_small - 1/B_big)
    Each step's pair is noisy: average |G|^2 and S over steps before dividing, as
    ``NoiseScaleEstimator`` (the trainer's metric) does; this function is the per-window ratio. None when the two batches are
    equal (one replica) or the estimate of |G|^2 is not positive.
    """
    moments = moments_from_norms(local_sq_norm, local_batch, global_sq_norm, global_batch)
    if moments is None or moments[0] <= 0:
        return None
    g2, s = moments
    return max(s, 0.0) / g2


def moments_from_norms(local_sq_norm: float, local_batch: float, global_sq_norm: float,
                       global_batch: float) -> tuple[float, float] | None:
    """One step's unbiased estimates (|G|^2, S = tr(Sigma)) from the two norms; None if the batches are equal."""
    if global_batch <= local_batch or local_batch <= 0:
        return None
    g2 = (global_batch * global_sq_norm - local_batch * local_sq_norm) / (global_batch - local_batch)
    s = (local_sq_norm - global_sq_norm) / (1.0 / local_batch - 1.0 / global_batch)
    return g2, s


class NoiseScaleEstimator:
    """B_noise smoothed over steps: EMAs of the per-step |G|^2 and S estimates, divided (McCandlish app. A.1).

    Each step's pair is very noisy (|G|^2 is a small difference of two large norms, and often
    negative), so the two moments are averaged separately and only their ratio is reported.
    The EMAs are bias-corrected (as Adam's), so the first steps are an average of what was seen,
    not pulled towards 0. ``value`` is None until the smoothed |G|^2 is positive. Stdlib only:
    the trainer image ships this module (trainer-image/Dockerfile).
    """

    def __init__(self, beta: float = 0.99):
        if not 0.0 <= beta < 1.0:
            raise ValueError(f"beta must be in [0, 1), got {beta}")
        self.beta = beta
        self.steps = 0
        self._g2 = 0.0
        self._s = 0.0

    def update(self, local_sq_norm: float, local_batch: float, global_sq_norm: float,
               global_batch: float) -> float | None:
        """Add one step (|g_small|^2 averaged over ranks at the per-rank batch, |g_big|^2 at the global batch)."""
        moments = moments_from_norms(local_sq_norm, local_batch, global_sq_norm, global_batch)
        if moments is not None and all(math.isfinite(m) for m in moments):
            g2, s = moments
            self._g2 = self.beta * self._g2 + (1.0 - self.beta) * g2
            self._s = self.beta * self._s + (1.0 - self.beta) * s
            self.steps += 1
        return self.value

    @property
    def grad_sqr(self) -> float | None:
        """The smoothed |G|^2 estimate (bias-corrected); None before the first step."""
        return self._g2 / (1.0 - self.beta ** self.steps) if self.steps else None

    @property
    def grad_var(self) -> float | None:
        """The smoothed S = tr(Sigma) estimate, per sample (bias-corrected); None before the first step."""
        return self._s / (1.0 - self.beta ** self.steps) if self.steps else None

    @property
    def value(self) -> float | None:
        """B_noise in samples; None while unknown (no step yet, or the smoothed |G|^2 is not positive)."""
        g2, s = self.grad_sqr, self.grad_var
        if g2 is None or g2 <= 0:
            return None
        return max(s, 0.0) / g2
