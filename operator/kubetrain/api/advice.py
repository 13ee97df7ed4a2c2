"""Settings that are valid but likely to hurt the model: warnings that name the field.

The CRD's CEL rules can only refuse, so these are not CEL: ``kubetrain validate``
and ``kubetrain run`` print them, and the operator's planner shows them on the
job as the ``SpecWarning`` condition (with one Warning event when they appear),
which is what ``kubectl describe`` and ``kubectl get -o yaml`` show after
``kubectl apply``. Pure functions of the spec.

The thresholds come from bench/results/compression_loss.md (builtin:gpt,
875,264 parameters, 300 steps, 2 replicas, over seeds): see the figures quoted in
the messages.
"""

from __future__ import annotations

from dataclasses import dataclass

from kubetrain.api.models import DEFAULT_POWERSGD_RANK, DEFAULT_POWERSGD_START_FRACTION, TrainingJob

# Below this fraction of maxSteps of plain all-reduce, PowerSGD starts compressing while the gradients still change
# fast. torch's PowerSGDState documentation advises 10% of the steps and more (and 1,000 steps by default); the
# benchmark measured starts from 1% to 20% (at 300 steps: nearly the same loss), nothing earlier.
MIN_START_FRACTION = 0.01
# Ranks at or below this cost >10% loss in the benchmark; the message quotes the figure of the rank measured.
WARN_AT_OR_BELOW_RANK = 4
MEASURED_RANK_COST = {1: "+27%", 2: "+20%", 4: "+13%"}  # median over seeds, start 5%, error feedback on
MEASURED_NO_ERROR_FEEDBACK = "+20% instead of +13% at rank 4"
MEASURED_NO_WARM_START = "+18% instead of +13% at rank 4"
MEASURED_ON = "the built-in GPT (0.9M parameters, 300 steps; bench/results/compression_loss.md)"


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
                                      f"before the gradients settle: torch's PowerSGD guidance is 10% of the steps, "
                                      f"kubetrain measured 1% to 20% (nearly the same loss). Leave startIteration unset "
                                      f"(startFraction {DEFAULT_POWERSGD_START_FRACTION:g} of maxSteps) or start later"))
    if p.rank <= WARN_AT_OR_BELOW_RANK:
        measured = max(r for r in MEASURED_RANK_COST if r <= p.rank)
        out.append(SpecWarning(f"{base}.rank", f"rank {p.rank}: rank {measured} cost {MEASURED_RANK_COST[measured]} loss "
                                               f"against no compression at equal steps on {MEASURED_ON}, and a larger "
                                               f"model's gradients need more rank, not less; the default "
                                               f"{DEFAULT_POWERSGD_RANK} cost about +1%"))
    if not p.error_feedback:
        out.append(SpecWarning(f"{base}.errorFeedback", f"without error feedback the compression error is lost every "
                                                        f"step: {MEASURED_NO_ERROR_FEEDBACK} on {MEASURED_ON}"))
    if not p.warm_start:
        out.append(SpecWarning(f"{base}.warmStart", f"without warm start every step approximates from random factors: "
                                                    f"{MEASURED_NO_WARM_START} on {MEASURED_ON}"))
    return out
