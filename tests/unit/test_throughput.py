"""The operator's pod-scrape fallback reads the trainer's real exposition format."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest

from kubetrain.operator.throughput import Throughput, aggregate_expositions
from kubetrain_trainer.metrics import TrainerMetrics


def _pod_text(pod: str, step: int, tokens: float, samples: float, loss: float = 2.0, noise_scale: float | None = None) -> str:
    r = CollectorRegistry()
    m = TrainerMetrics(r, trainingjob="gpt", namespace="ml", pod=pod)
    m.observe_step(step=step, loss=loss, step_seconds=1.0, pod_tokens=tokens, pod_samples=samples,
                   tokens_per_second=tokens, samples_per_second=samples, noise_scale=noise_scale)
    return generate_latest(r).decode()


def test_job_figures_sum_pods_and_take_the_highest_step():
    tp = aggregate_expositions([_pod_text("gpt-w0-0", 10, 1000.0, 8.0), _pod_text("gpt-w1-0", 11, 3000.0, 24.0)])
    assert tp.tokens_per_second == 4000.0 and tp.samples_per_second == 32.0 and tp.step == 11
    assert tp.status()["tokensPerSecond"] == 4000.0 and tp.status()["step"] == 11


def test_the_loss_reaches_the_status_for_sweeps():
    tp = aggregate_expositions([_pod_text("gpt-w0-0", 10, 1.0, 1.0, loss=2.25), _pod_text("gpt-w1-0", 10, 1.0, 1.0, loss=2.25)])
    assert tp.loss == 2.25 and tp.status()["loss"] == 2.25
    nan = aggregate_expositions([_pod_text("gpt-w0-0", 10, 1.0, 1.0, loss=float("nan"))])
    assert "loss" not in nan.status()  # a diverged trial shows no loss rather than an invalid status


def test_the_gradient_noise_scale_reaches_the_status_for_the_goodput_allocator():
    tp = aggregate_expositions([_pod_text("gpt-w0-0", 10, 1.0, 1.0, noise_scale=412.5),
                                _pod_text("gpt-w1-0", 10, 1.0, 1.0, noise_scale=412.5)])
    assert tp.gradient_noise_scale == 412.5 and tp.status()["gradientNoiseScale"] == 412.5
    # World size 1: the trainer exports no estimate, so the status has none (the allocator weighs throughput only).
    alone = aggregate_expositions([_pod_text("gpt-w0-0", 10, 1.0, 1.0)])
    assert alone.gradient_noise_scale is None and "gradientNoiseScale" not in alone.status()


def test_no_trainer_metrics_means_no_figures():
    assert aggregate_expositions(["# nothing here\n"]) == Throughput()
