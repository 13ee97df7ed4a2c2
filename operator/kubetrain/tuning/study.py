"""The Optuna study of a sweep, rebuilt from its trial records whenever the operator needs it.

Optuna does the search (its samplers) and the early stopping (its pruners), driven
ask-and-tell: the study lives in memory and holds nothing the trial jobs do not, so
an operator restart, or a second operator replica taking over, rebuilds the same
study from the same objects. Trial numbers are the sweep's own (in the job names),
kept beside Optuna's in a user attribute.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.trial import TrialState, create_trial

from kubetrain.api.sweep import TrainingSweepSpec
from kubetrain.tuning import space
from kubetrain.tuning.trials import TrialRecord

optuna.logging.set_verbosity(logging.WARNING)

NUMBER_ATTR = "kubetrain_trial"
_STATES = {"Succeeded": TrialState.COMPLETE, "Pruned": TrialState.PRUNED, "Failed": TrialState.FAIL,
           "Running": TrialState.RUNNING, "Pending": TrialState.RUNNING}


def sampler(spec: TrainingSweepSpec, drawn: int = 0) -> optuna.samplers.BaseSampler:
    """The sampler of ``spec``; ``drawn`` trials exist already. A rebuilt study must not repeat the draws
    of the one before it, so its seed moves on with them (a sweep that never restarts stays reproducible)."""
    algo = spec.algorithm
    seed = None if algo.seed is None else algo.seed + 7919 * drawn
    if algo.type == "random" or algo.type == "pbt":  # PBT draws its first population at random
        return optuna.samplers.RandomSampler(seed=seed)
    if algo.type == "grid":
        return optuna.samplers.GridSampler(space.grid(spec.parameters), seed=seed)
    if algo.type == "cmaes":
        return optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False)
    # TPE starts with random draws before it models anything: Optuna's 10 would make a sweep of fewer
    # than 10 trials a random search. A quarter of the budget, at least 2 and at most 10.
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=max(2, min(10, spec.max_trials // 4)))


def pruner(spec: TrainingSweepSpec) -> optuna.pruners.BasePruner:
    es, max_steps = spec.early_stopping, spec.template.spec.trainer.max_steps
    if es.type == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=es.startup_trials, n_warmup_steps=es.min_steps)
    if es.type == "asha":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=es.min_steps, reduction_factor=es.reduction_factor)
    if es.type == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=es.min_steps, max_resource=max_steps,
                                              reduction_factor=es.reduction_factor)
    return optuna.pruners.NopPruner()


def _sign(spec: TrainingSweepSpec) -> float:
    return 1.0 if spec.objective.goal == "minimize" else -1.0


@dataclass
class SweepStudy:
    """A sweep's study with its trials in it; ``trial_of`` maps the sweep's trial numbers to Optuna's trials."""

    spec: TrainingSweepSpec
    study: optuna.Study
    trial_of: dict[int, int]  # sweep trial number -> Optuna trial number

    @classmethod
    def rebuild(cls, spec: TrainingSweepSpec, records: list[TrialRecord], name: str = "sweep") -> "SweepStudy":
        """The study as it stands after ``records``. ``name`` (the sweep's uid) keeps Hyperband's brackets,
        which Optuna derives from the study name and trial number, the same across rebuilds.

        Each trial's reports are replayed in step order through the pruner, as they happened live:
        the pruners keep their rung decisions in the trials (ASHA's completed rungs), not in the values.
        """
        study = optuna.create_study(study_name=name, direction=spec.objective.goal,
                                    sampler=sampler(spec, len(records)), pruner=pruner(spec))
        dists = space.distributions(spec.parameters)
        made = cls(spec, study, {})
        for rec in sorted(records, key=lambda r: r.number):
            if set(rec.params) != set(dists):
                continue  # a trial of another search space (the spec is immutable while running): not comparable
            study.add_trial(create_trial(state=TrialState.RUNNING, params=rec.params, distributions=dists,
                                         user_attrs={NUMBER_ATTR: rec.number}))
            made.trial_of[rec.number] = study.trials[-1].number
            if rec.values:
                made.should_prune(rec.number, rec.values)
            made._finish(rec)
        return made

    def _finish(self, rec: TrialRecord) -> None:
        state = _STATES[rec.state]
        if state == TrialState.RUNNING:
            return
        final = rec.value_at(self.spec.objective.step) if state == TrialState.COMPLETE else None
        if state == TrialState.COMPLETE and final is None:
            state = TrialState.FAIL  # finished without ever reporting the objective
        if state == TrialState.PRUNED and not rec.values:
            state = TrialState.FAIL  # Optuna's pruned trials carry a last value
        self.study.tell(self.trial_of[rec.number], final[1] if final else None, state=state)

    def exhausted(self) -> bool:
        """Whether the sampler has nothing new to offer: grid search has handed out every combination.

        Optuna counts only finished trials, and would hand a running trial's combination out again.
        """
        if self.spec.algorithm.type != "grid":
            return False
        size = 1
        for values in space.grid(self.spec.parameters).values():
            size *= len(values)
        return len({tuple(sorted(t.params.items())) for t in self.study.trials}) >= size

    def ask(self, number: int) -> dict[str, Any]:
        """The values of new trial ``number``, drawn by the sampler (it sees every trial so far)."""
        trial = self.study.ask(space.distributions(self.spec.parameters))
        trial.set_user_attr(NUMBER_ATTR, number)
        self.trial_of[number] = trial.number
        return dict(trial.params)

    def fail(self, number: int) -> None:
        """Trial ``number`` failed, or was asked for but never created (its values could not run)."""
        self.study.tell(self.trial_of[number], state=TrialState.FAIL)

    def pruned(self, number: int) -> None:
        """Trial ``number`` was stopped early (Optuna keeps its last reported value)."""
        self.study.tell(self.trial_of[number], state=TrialState.PRUNED)

    def completed(self, number: int, value: float) -> None:
        self.study.tell(self.trial_of[number], value)

    def should_prune(self, number: int, values: dict[int, float]) -> bool:
        """Whether the pruner stops running trial ``number`` given its values so far (reported in step order)."""
        trial = optuna.trial.Trial(self.study, self.study.trials[self.trial_of[number]]._trial_id)
        known = self.study.trials[self.trial_of[number]].intermediate_values
        # One decision per report, as if each value had been seen on its own: ASHA records a trial's
        # value at each rung it passes, and a later value must not stand in for an earlier rung's.
        for step in sorted(values):
            if step in known:
                continue
            trial.report(values[step], step)
            if trial.should_prune():
                return True
        return False

    def best(self, records: list[TrialRecord]) -> TrialRecord | None:
        """The best trial by the objective: finished ones at the objective's step, pruned ones at their last value
        only if no finished trial exists yet (early in a sweep, a pruned trial is still the best seen)."""
        def score(rec: TrialRecord) -> float | None:
            seen = rec.value_at(self.spec.objective.step) if rec.state == "Succeeded" else rec.last
            return None if seen is None else _sign(self.spec) * seen[1]

        finished = [r for r in records if r.state == "Succeeded" and score(r) is not None]
        pool = finished or [r for r in records if r.state == "Pruned" and score(r) is not None]
        return min(pool, key=lambda r: (score(r), r.number)) if pool else None
