"""Settings that are valid but likely to hurt the model: warnings that name the field.

The CRD's CEL rules can only refuse, so these are not CEL: ``kubetrain validate``
and ``kubetrain run`` print them, and the operator's planner shows them on the
job as the ``SpecWarning`` condition (with one Warning event when they appear),
which is what ``kubectl describe`` and ``kubectl get -o yaml`` show after
``kubectl apply``. Pure functions of the spec.

The thresholds come from bench/results/compression_loss.md (builtin:gpt,
875,264 parameters, 300 steps, 2 replicas, 3 seeds): see the figures quoted in
the messages.
"""

from __future__ import annotations

from dataclasses import dataclass

from kubetrain.api.models import DEFAULT_POWERSGD_START_FRACTION, TrainingJob

# Below this fraction of maxSteps of plain all-reduce, PowerSGD starts compressing while the gradients still change
# fast; torch's PowerSGDState documentation suggests 10% and more (and 1,000 steps by default).
MIN_START_FRACTION = 0.01
# Measured loss cost (median over seeds, against no compression, same steps) quoted by the warnings.
MEASURED_COST = {
    "start_1pct": "+?%",
    "rank_1": "+?%",
    "no_error_feedback": "+?%",
}
MEASURED_ON = "builtin:gpt (0.9M parameters, 300 steps, bench/results/compression_loss.md)"


@dataclass(frozen=True)
class SpecWarning:
    """One setting that will probably cost the model: the field's path and why."""

    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"


def spec_warnings(job: TrainingJob) -> list[SpecWarning]:
    """What in ``job``'s spec is valid but likely to hurt it, each naming its field."""
    spec = job.spec
    out: list[SpecWarning] = []
    if spec.compression.type == "powersgd":
        out += _powersgd(spec.compression.powersgd(), spec.trainer.max_steps)
    return out


def _powersgd(p, max_steps: int) -> list[SpecWarning]:
    base = "spec.compression.powerSGD"
    out: list[SpecWarning] = []
    if p.start_iteration is not None:
        start, field = p.start_iteration, f"{base}.startIteration"
    else:
        start, field = max(2, round(p.start_fraction * max_steps)), f"{base}.startFraction"
    if start >= max_steps:
        out.append(SpecWarning(field, f"compression starts at step {start}, at or after spec.trainer.maxSteps "
                                      f"({max_steps}): the job never compresses"))
    elif start < MIN_START_FRACTION * max_steps:
        out.append(SpecWarning(field, f"compression starts at step {start} of {max_steps} ({start / max_steps:.2%}), "
                                      f"before the gradients settle; starting at 1% cost {MEASURED_COST['start_1pct']} "
                                      f"loss on {MEASURED_ON}. Leave startIteration unset (startFraction "
                                      f"{DEFAULT_POWERSGD_START_FRACTION:g} of maxSteps) or start later"))
    if p.rank == 1:
        out.append(SpecWarning(f"{base}.rank", f"rank 1 cost {MEASURED_COST['rank_1']} loss on {MEASURED_ON}, and a larger "
                                               "model's gradients need more rank, not less; use rank 2 or more"))
    if not p.error_feedback:
        out.append(SpecWarning(f"{base}.errorFeedback", f"without error feedback the compression error is lost every step: "
                                                        f"it cost {MEASURED_COST['no_error_feedback']} loss on {MEASURED_ON}"))
    return out
