"""A TrainingSweep's Prometheus series: its trials by state, its best objective value, and what early stopping saved.

Read from the status ``tuning.plan.plan_sweep`` writes, so they say what ``kubectl get tsw`` says, and after an
operator restart they come back from the trial jobs with it. Labels: namespace, trainingsweep and, on the
trial counts, state (a closed set). A deleted sweep's series are removed.
"""

from __future__ import annotations

from typing import Any, get_args

from prometheus_client import CollectorRegistry, Gauge

from kubetrain.api.sweep import TrialState
from kubetrain.contract.metric_names import OPERATOR_SWEEP_LABELS, OperatorMetric as M

TRIAL_STATES: tuple[str, ...] = get_args(TrialState)


class SweepMetrics:
    def __init__(self, registry: CollectorRegistry):
        sweep = list(OPERATOR_SWEEP_LABELS)
        self.trials = Gauge(M.SWEEP_TRIALS, "A sweep's trials by state (Pending, Running, Succeeded, Pruned, Failed).",
                            [*sweep, "state"], registry=registry)
        self.best = Gauge(M.SWEEP_BEST_VALUE, "The objective's value of the sweep's best trial so far, in the objective's "
                          "own terms (spec.objective.metric: loss, tokens/s or MFU).", sweep, registry=registry)
        self.saved_steps = Gauge(M.SWEEP_SAVED_TRIAL_STEPS, "Trial-steps early stopping saved: for each pruned trial, "
                                 "maxSteps minus the step it stopped at.", sweep, registry=registry)
        self.saved_gpu_seconds = Gauge(M.SWEEP_SAVED_GPU_SECONDS, "GPU time early stopping saved: each pruned trial's "
                                       "remaining steps at the GPU-seconds per step it had spent (divide by 3600 for "
                                       "GPU-hours).", sweep, registry=registry)

    def observe(self, namespace: str, sweep: str, status: dict[str, Any]) -> None:
        """Record the sweep's status after a round (``status`` as plan_sweep wrote it)."""
        counts = status.get("trials") or {}
        for state in TRIAL_STATES:
            self.trials.labels(namespace, sweep, state).set(counts.get(state.lower(), 0))
        best = (status.get("bestTrial") or {}).get("value")
        if best is None:
            self._drop(self.best, namespace, sweep)
        else:
            self.best.labels(namespace, sweep).set(best)
        self.saved_steps.labels(namespace, sweep).set(status.get("prunedSteps") or 0)
        self.saved_gpu_seconds.labels(namespace, sweep).set(status.get("prunedGpuSeconds") or 0.0)

    def forget(self, namespace: str, sweep: str) -> None:
        """Remove a deleted sweep's series."""
        for state in TRIAL_STATES:
            self._drop(self.trials, namespace, sweep, state)
        for gauge in (self.best, self.saved_steps, self.saved_gpu_seconds):
            self._drop(gauge, namespace, sweep)

    @staticmethod
    def _drop(gauge: Gauge, *labels: str) -> None:
        try:
            gauge.remove(*labels)
        except KeyError:
            pass
