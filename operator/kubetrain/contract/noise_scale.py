"""The gradient noise scale the trainer exports (``kubetrain_trainer_gradient_noise_scale``), and how it is measured.

Part of the contract: the trainer computes it with this code and the operator's goodput model
(:mod:`kubetrain.scheduling.efficiency`) reads it as a batch size in samples. Stdlib only.
"""

from __future__ import annotations

import math


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
