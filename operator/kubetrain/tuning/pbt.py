"""Population-based training: which trial comes next, from which checkpoint, with which values. Pure.

The population is ``maxTrials`` members. Each trains ``maxSteps`` in all, in generations of
``intervalSteps``; every generation of every member is a trial TrainingJob, numbered
``generation * population + member``, whose ``maxSteps`` is the end of its generation. A member's
next generation starts from a checkpoint: its own previous trial's (exploit nothing, explore
nothing), or, for the bottom ``quantile`` of the generation that just ended, a top member's, with
that member's values perturbed (explore). Only parameters that may change on resume
(``api.sweep.PBT_MUTABLE``) can be in a PBT sweep: a checkpoint fixes the model's shape.

Generations are synchronous: a member's next trial waits until every trial of the previous
generation has ended, so the ranking sees the whole population at the same step. Every decision
is a function of the previous generation's trial records and a seed, with its randomness drawn
from a generator seeded by the sweep and the trial number: a rebuilt operator, or the local
runner, decides exactly what the first one did, and the trial jobs are all the state there is.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Any, Callable

from kubetrain.api.sweep import SearchParameter, TrainingSweepSpec, pbt_generations, pbt_settings
from kubetrain.tuning.trials import TrialRecord

ENDED = ("Succeeded", "Failed")


@dataclass(frozen=True)
class PBTTrial:
    """The trial to create next: its values, the trial whose checkpoint it starts from, and where it stops."""

    number: int
    params: dict[str, Any]
    max_steps: int
    parent: TrialRecord | None = None  # None: generation 0, a fresh start
    exploited: bool = False  # True when the parent is another member's trial (its values were perturbed)


def total_trials(spec: TrainingSweepSpec) -> int:
    """Every trial job of the sweep: each member's every generation."""
    return spec.max_trials * pbt_generations(spec)


def generation_of(spec: TrainingSweepSpec, number: int) -> tuple[int, int]:
    """(generation, member) of trial ``number``."""
    return divmod(number, spec.max_trials)


def generation_end(spec: TrainingSweepSpec, generation: int) -> int:
    """The step a trial of ``generation`` trains to (the last generation may be shorter)."""
    return min((generation + 1) * pbt_settings(spec).interval_steps, spec.template.spec.trainer.max_steps)


def _score(spec: TrainingSweepSpec, rec: TrialRecord) -> float | None:
    """Lower is better; None for a trial with nothing to rank (failed, or never reported)."""
    if rec.state != "Succeeded" or rec.last is None:
        return None
    return rec.last[1] if spec.objective.goal == "minimize" else -rec.last[1]


def _rng(seed_key: str, number: int) -> random.Random:
    # A string seed hashes the same in every process (unlike hash()): a rebuilt operator draws the same.
    return random.Random(f"kubetrain-pbt:{seed_key}:{number}")


def explore(p: SearchParameter, value: Any, rng: random.Random, factors: list[float], resample: float) -> Any:
    """A perturbed ``value`` of parameter ``p``: drawn afresh with probability ``resample``, else multiplied
    by one of ``factors`` (a categorical one moves to a neighbouring choice), kept within the range."""
    if p.type == "categorical":
        values = list(p.values or ())
        if rng.random() < resample:
            return rng.choice(values)
        i = values.index(str(value)) if str(value) in values else 0
        return values[min(len(values) - 1, max(0, i + rng.choice((-1, 1))))]
    lo, hi = float(p.min), float(p.max)
    if rng.random() < resample:
        x = math.exp(rng.uniform(math.log(lo), math.log(hi))) if p.log else rng.uniform(lo, hi)
    else:
        x = float(value) * rng.choice(factors)
    x = min(hi, max(lo, x))
    if p.type == "int" or p.step is not None:
        step = p.step or 1
        x = min(hi, max(lo, lo + round((x - lo) / step) * step))
    return int(round(x)) if p.type == "int" else x


def decide(spec: TrainingSweepSpec, previous: list[TrialRecord], seed_key: str) -> dict[int, tuple[TrialRecord, dict[str, Any], bool]]:
    """For each member, (the trial it continues from, its values, exploited?) after the generation ``previous``
    (one ended trial per member, by member). The bottom quantile and every failed member copy a top member."""
    pbt = pbt_settings(spec)
    population = len(previous)
    first = min(r.number for r in previous)
    ranked = sorted((r for r in previous if _score(spec, r) is not None), key=lambda r: (_score(spec, r), r.number))
    # Ray Tune's rule: the quantile rounded up, at most half the population (so the top and bottom never overlap).
    n = min(population // 2, math.ceil(population * pbt.quantile))
    top = ranked[: max(1, n)]
    bottom = {r.number for r in ranked[len(ranked) - n:]} if n else set()
    out: dict[int, tuple[TrialRecord, dict[str, Any], bool]] = {}
    for rec in previous:
        member = rec.number - first
        if rec.number not in bottom and _score(spec, rec) is not None:
            out[member] = (rec, dict(rec.params), False)  # keeps its own checkpoint and values
            continue
        rng = _rng(seed_key, rec.number + population)  # the number of the trial this decision makes
        parent = rng.choice(top)
        params = {p.name: explore(p, parent.params[p.name], rng, pbt.perturbation_factors, pbt.resample_probability)
                  for p in spec.parameters}
        out[member] = (parent, params, True)
    return out


def next_trial(spec: TrainingSweepSpec, number: int, records: dict[int, TrialRecord], seed_key: str,
               ask: Callable[[int], dict[str, Any]]) -> PBTTrial | None:
    """Trial ``number`` if it can start now, else None (its previous generation is still training).

    ``records`` are the sweep's trials by number; ``ask`` draws a first-generation member's values (the study's
    random sampler). Raises LookupError when the whole previous generation failed (nothing to continue from)."""
    generation, member = generation_of(spec, number)
    end = generation_end(spec, generation)
    if generation == 0:
        return PBTTrial(number, ask(number), end)
    base = (generation - 1) * spec.max_trials
    previous = [records.get(base + m) for m in range(spec.max_trials)]
    if any(r is None or r.state not in ENDED for r in previous):
        return None
    if all(_score(spec, r) is None for r in previous):
        raise LookupError(f"every trial of generation {generation - 1} failed: no checkpoint to continue from")
    parent, params, exploited = decide(spec, previous, seed_key)[member]
    return PBTTrial(number, params, end, parent, exploited)


def best(spec: TrainingSweepSpec, records: list[TrialRecord]) -> TrialRecord | None:
    """The best trial of the latest generation that has a succeeded one: earlier generations stopped earlier,
    so their values are not comparable with the later ones'."""
    done = [r for r in records if _score(spec, r) is not None]
    if not done:
        return None
    latest = max(generation_of(spec, r.number)[0] for r in done)
    pool = [r for r in done if generation_of(spec, r.number)[0] == latest]
    return min(pool, key=lambda r: (_score(spec, r), r.number))
