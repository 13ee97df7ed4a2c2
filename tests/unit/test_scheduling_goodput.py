"""Goodput per job: the step-time model recovers known parameters, efficiency and noise scale follow the formulas."""

from __future__ import annotations

import math

import pytest

from kubetrain.scheduling import restart_cost
from kubetrain.scheduling.efficiency import (NoiseScaleEstimator, efficiency, gain, noise_scale_from_moments,
                                             noise_scale_from_norms)
from kubetrain.scheduling.goodput import GoodputModel
from kubetrain.scheduling.throughput_model import StepObservation, StepTimeParams, fit, rms_log_error

TRUE = StepTimeParams(alpha_c=0.05, beta_c=0.002, alpha_r=0.02, beta_r=0.004, alpha_n=0.15, beta_n=0.01, gamma=2.0)


def _grid(params: StepTimeParams, noise: float = 0.0) -> list[StepObservation]:
    obs = []
    k = 0
    for replicas in (1, 2, 3, 4, 6, 8, 12, 16):
        for nodes in {1 if replicas <= 4 else None, max(1, math.ceil(replicas / 4)), min(replicas, 4)} - {None}:
            if nodes > 1 and replicas < 2:
                continue
            for local in (16, 32, 64, 128):
                # Deterministic +-noise pattern: the test is repeatable and still sees scatter.
                wobble = 1.0 + noise * (1 if k % 3 == 0 else -1 if k % 3 == 1 else 0)
                k += 1
                obs.append(StepObservation(replicas, nodes, local, params.step_time(replicas, nodes, local) * wobble))
    return obs


def test_fit_recovers_known_parameters():
    got = fit(_grid(TRUE))
    for name in ("alpha_c", "beta_c", "alpha_r", "beta_r", "alpha_n", "beta_n", "gamma"):
        assert getattr(got, name) == pytest.approx(getattr(TRUE, name), rel=0.05), name


def test_fit_predicts_within_the_noise_of_noisy_points():
    obs = _grid(TRUE, noise=0.05)
    got = fit(obs)
    assert rms_log_error(got, obs) < 0.05
    # And it still extrapolates: a size it never saw, within 10%.
    assert got.step_time(32, 8, 64) == pytest.approx(TRUE.step_time(32, 8, 64), rel=0.10)


def test_unobserved_sync_terms_stay_optimistic():
    only_one_gpu = [StepObservation(1, 1, b, TRUE.step_time(1, 1, b)) for b in (16, 32, 64, 128)]
    got = fit(only_one_gpu)
    assert got.step_time(1, 1, 64) == pytest.approx(TRUE.step_time(1, 1, 64), rel=0.01)
    # Never run on more than one GPU: predicted to scale almost linearly, so the allocator lets it try.
    assert got.samples_per_second(8, 2, 64) > 7.5 * got.samples_per_second(1, 1, 64)


def test_fit_refuses_nothing_to_fit():
    with pytest.raises(ValueError):
        fit([])


def test_accumulation_adds_unsynchronised_micro_steps():
    one = TRUE.step_time(4, 1, 32)
    assert TRUE.step_time(4, 1, 32, accum_steps=3) == pytest.approx(one + 2 * (TRUE.alpha_c + TRUE.beta_c * 32))


def test_efficiency_follows_the_noise_scale():
    assert efficiency(100, 100, 1000.0) == 1.0
    assert efficiency(1000, 100, 1000.0) == pytest.approx(1100 / 2000)
    # Bigger batches: less efficient per sample, but each step still makes more progress.
    assert efficiency(2000, 100, 1000.0) < efficiency(1000, 100, 1000.0)
    assert gain(100, 100, 1000.0) < gain(1000, 100, 1000.0) < gain(2000, 100, 1000.0) < 2000 / 100
    # No noise-scale data: throughput only.
    assert efficiency(5000, 100, None) == 1.0
    assert efficiency(5000, 100, math.inf) == 1.0


def test_noise_scale_from_norms_inverts_the_expected_norms():
    g2, trace_sigma = 2.0, 800.0  # |G|^2 and tr(Sigma): B_noise = 400 samples
    local, glob = 32, 256
    small = g2 + trace_sigma / local  # E|g|^2 at a batch B is |G|^2 + tr(Sigma)/B
    big = g2 + trace_sigma / glob
    assert noise_scale_from_norms(small, local, big, glob) == pytest.approx(400.0)
    assert noise_scale_from_norms(small, local, small, local) is None  # one replica: no pair
    assert noise_scale_from_moments(grad_sqr=2.0, grad_var=25.0, batch=32) == pytest.approx(400.0)


@pytest.mark.parametrize("ranks,per_rank", [(2, 8), (4, 16), (8, 4)])
def test_noise_scale_estimator_recovers_a_known_noise_scale(ranks, per_rank):
    """Synthetic DDP steps: each rank's gradient is G + Gaussian noise of per-sample covariance Sigma averaged over
    its batch; the all-reduced one is their mean. tr(Sigma) / |G|^2 = 64 samples; the estimator must recover it
    from what the trainer sees (the mean over ranks of |g_i|^2 and |mean g_i|^2), though single steps cannot."""
    np = pytest.importorskip("numpy")
    rng = np.random.default_rng(7)
    dim = 32  # few coordinates: one step's norms are far from their expectations
    true_g = rng.normal(size=dim)
    true_g *= 1.0 / np.linalg.norm(true_g)  # |G|^2 = 1
    # Anisotropic Sigma (the estimator only needs its trace): per-coordinate variances with tr = 64.
    var = rng.uniform(0.2, 1.8, size=dim)
    var *= 64.0 / var.sum()
    est = NoiseScaleEstimator(beta=0.99)
    single = []
    for _ in range(3000):
        g = true_g + rng.normal(size=(ranks, dim)) * np.sqrt(var / per_rank)
        local = float((g * g).sum(axis=1).mean())
        reduced = float((g.mean(axis=0) ** 2).sum())
        est.update(local, per_rank, reduced, ranks * per_rank)
        single.append(noise_scale_from_norms(local, per_rank, reduced, ranks * per_rank))
    assert est.value == pytest.approx(64.0, rel=0.2)
    assert est.grad_sqr == pytest.approx(1.0, rel=0.2)
    assert est.grad_var == pytest.approx(64.0, rel=0.2)
    # Why the smoothing: one step's ratio is often undefined (|G|^2 estimate <= 0) or far off.
    assert sum(1 for x in single if x is None or not 32 < x < 128) > len(single) // 10


def test_noise_scale_estimator_is_unknown_without_two_batch_sizes():
    est = NoiseScaleEstimator()
    assert est.value is None and est.grad_sqr is None
    assert est.update(5.0, 8, 5.0, 8) is None  # world size 1: one batch size, nothing to compare
    assert est.steps == 0
    assert est.update(10.0, 8, 2.0, 16) is None  # |G|^2 estimate <= 0: unknown, not negative
    assert est.update(float("nan"), 8, 1.0, 16) is None and est.steps == 1  # a non-finite step is skipped
    # Bias-corrected: after one step the value is that step's ratio, not pulled towards 0.
    one = NoiseScaleEstimator()
    assert one.update(2.0 + 800 / 32, 32, 2.0 + 800 / 256, 256) == pytest.approx(400.0)
    with pytest.raises(ValueError):
        NoiseScaleEstimator(beta=1.0)


def test_goodput_weighs_throughput_by_efficiency():
    common = dict(step_time=TRUE, local_batch=64, base_batch=64, gpus_per_node=4)
    tput = GoodputModel(noise_scale=None, **common)
    noisy = GoodputModel(noise_scale=1e6, **common)
    clean = GoodputModel(noise_scale=64.0, **common)
    assert tput.goodput(8) == pytest.approx(TRUE.samples_per_second(8, 2, 64))
    assert noisy.goodput(8) == pytest.approx(tput.goodput(8), rel=1e-3)
    # A small noise scale makes the big global batch (8 x 64) worth far less than its samples/s.
    assert clean.goodput(8) < 0.3 * tput.goodput(8)
    assert clean.table(8)[0] == 0.0 and len(clean.table(8)) == 9
    # Spanning nodes costs the cross-node all-reduce.
    assert tput.goodput(4, nodes=2) < tput.goodput(4, nodes=1)


def test_goodput_caps_the_global_batch_and_accumulates_above_memory():
    m = GoodputModel(step_time=TRUE, local_batch=64, base_batch=64, max_batch=256, max_local_batch=32)
    assert m.batch(2) == (128, 32, 2)
    assert m.batch(8) == (256, 32, 1)


def test_a_resize_costs_the_wall_time_since_it_began_less_the_steps_made_meanwhile():
    # Read at t=100 at step 1000, 0.5 s a step; resized at t=110 (it would have been at step 1020);
    # read at t=150 at the new size, 0.25 s a step, at step 1100: 80 steps in 40 s took 20 s, 20 s were lost.
    assert restart_cost.lost_seconds(110.0, (100.0, 1000, 0.5), (150.0, 1100, 0.25)) == 20.0
    # Resumed from a checkpoint 20 steps back (step 1000 -> the 1020 expected is replayed): those steps are lost too.
    assert restart_cost.lost_seconds(110.0, (100.0, 1000, 0.5), (150.0, 1060, 0.25)) == 30.0
    # When the reading after it was taken does not matter: the steps made while nobody looked are subtracted.
    assert restart_cost.lost_seconds(110.0, (100.0, 1000, 0.5), (190.0, 1260, 0.25)) == 20.0
    # Readings that do not bracket the resize say nothing; a job faster than expected lost nothing, never less.
    assert restart_cost.lost_seconds(110.0, (120.0, 1000, 0.5), (150.0, 1100, 0.25)) is None
    assert restart_cost.lost_seconds(110.0, (100.0, 1000, 0.5), (110.0, 1100, 0.25)) is None
    assert restart_cost.lost_seconds(110.0, (100.0, 1000, 0.5), (150.0, 1200, 0.25)) == 0.0


def test_restart_cost_is_learned_from_what_resizes_cost():
    assert restart_cost.update(None, 40.0) == 40.0
    assert restart_cost.update(40.0, 20.0) == 30.0
