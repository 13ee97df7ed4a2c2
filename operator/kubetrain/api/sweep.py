"""The TrainingSweep API (kubetrain.dev/v1alpha1): a hyperparameter search whose trials are TrainingJobs.

Modelled once, like the TrainingJob: the CRD is generated from these models and
``kubetrain validate`` / ``kubetrain sweep`` parse manifests with them. A sweep
holds a TrainingJob template, a search space whose parameters each name the
template field they set, an objective read from the trainer's metrics, a search
algorithm and an early-stopping rule. The trials' truth lives in the TrainingJobs
the sweep owns; its status only counts them, so it stays small at any trial count.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Literal

from pydantic import Field, model_validator

from kubetrain.api.base import ApiModel, Rule
from kubetrain.api.models import MAX_JOB_NAME_LENGTH, Condition, ObjectMeta, TrainingJobSpec
from kubetrain.api.pod import PodMetadata

SWEEP_KIND = "TrainingSweep"
SWEEP_PLURAL = "trainingsweeps"

# Trials are TrainingJobs named <sweep>-t<number>: with up to 999,999 trials the suffix takes
# 8 characters, and the job name must stay within the TrainingJob's limit.
TRIAL_SUFFIX_LENGTH = len("-t999999")
MAX_SWEEP_NAME_LENGTH = MAX_JOB_NAME_LENGTH - TRIAL_SUFFIX_LENGTH
MAX_TRIALS = 999_999

# Where a parameter may land in the trial's spec, and the type that field has. trainer.args.<key>
# and container.env.<NAME> carry strings: a user's own workload or script reads them.
NUMERIC_TARGETS = {
    "trainer.learningRate": "float",
    "trainer.batchSize": "int",
    "trainer.seed": "int",
    "trainer.sequenceLength": "int",
    "compression.powerSGD.rank": "int",
    "compression.powerSGD.startIteration": "int",
    "compression.powerSGD.startFraction": "float",
}
CATEGORICAL_TARGETS = ("precision", "strategy", "compression.type")
FREE_TARGET = r"^(trainer\.args\.[A-Za-z0-9_.-]+|container\.env\.[A-Za-z_][A-Za-z0-9_]*)$"
# What population-based training may change when a trial resumes from another's checkpoint: the
# optimiser's step size and the batch. Anything that shapes the model or its state (sequence
# length, precision, strategy, compression) would not fit the copied checkpoint.
PBT_MUTABLE = ("trainer.learningRate", "trainer.batchSize")

_TARGET = re.compile(FREE_TARGET)
_TARGET_CEL = (
    "self.target in " + str(list(NUMERIC_TARGETS) + list(CATEGORICAL_TARGETS)).replace('"', "'")
    + f" || self.target.matches(r'{FREE_TARGET}')"
)

ObjectiveMetric = Literal["loss", "tokensPerSecond", "mfu"]
TrialState = Literal["Pending", "Running", "Succeeded", "Pruned", "Failed"]
SweepPhase = Literal["Pending", "Running", "Suspended", "Succeeded", "Failed"]


def target_type(target: str) -> str:
    """float, int, categorical or string: what a value for ``target`` must be."""
    if target in NUMERIC_TARGETS:
        return NUMERIC_TARGETS[target]
    if target in CATEGORICAL_TARGETS:
        return "categorical"
    return "string"


class SearchParameter(ApiModel):
    """One hyperparameter: its range or choices, and the template field each trial's value sets."""

    name: str = Field(..., min_length=1, max_length=63, pattern=r"^[A-Za-z][A-Za-z0-9_]*$",
                      description="Name of the parameter, as the trial's labels, status and Optuna show it.")
    target: str = Field(
        ...,
        max_length=253,
        description="The TrainingJob field the value sets: trainer.learningRate, trainer.batchSize, trainer.seed, "
        "trainer.sequenceLength, compression.powerSGD.rank, compression.powerSGD.startIteration, "
        "compression.powerSGD.startFraction, precision, "
        "strategy, compression.type, trainer.args.<key> (your workload's settings) or container.env.<NAME> "
        "(your script's environment).",
    )
    type: Literal["float", "int", "categorical"] = Field(
        ..., description="float or int (a range from min to max), or categorical (one of values)."
    )
    min: float | None = Field(None, description="Lower bound of a float or int range (inclusive).")
    max: float | None = Field(None, description="Upper bound of a float or int range (inclusive).")
    log: bool = Field(False, description="Sample on a log scale (learning rates); min must then be above 0.")
    step: float | None = Field(None, gt=0, description="Spacing of the values in a range (needed for grid search).")
    values: list[Annotated[str, Field(max_length=253)]] | None = Field(
        None, min_length=1, max_length=256, description="The choices of a categorical parameter."
    )

    cel_rules = (
        Rule(
            _TARGET_CEL,
            "spec.parameters.target must be a tunable TrainingJob field (trainer.learningRate, trainer.batchSize, "
            "..., trainer.args.<key> or container.env.<NAME>)",
            lambda s: s.target in NUMERIC_TARGETS or s.target in CATEGORICAL_TARGETS or bool(_TARGET.match(s.target)),
        ),
        Rule(
            "self.type == 'categorical' ? (has(self.values) && !has(self.min) && !has(self.max)) : "
            "(has(self.min) && has(self.max) && self.min < self.max && !has(self.values))",
            "spec.parameters: a float or int parameter needs min < max (and no values); a categorical one needs values",
            lambda s: (s.values is not None and s.min is None and s.max is None) if s.type == "categorical"
            else (s.min is not None and s.max is not None and s.min < s.max and s.values is None),
        ),
        Rule(
            "!self.log || (self.type != 'categorical' && has(self.min) && self.min > 0.0 && !has(self.step))",
            "spec.parameters.log needs a float or int range with min above 0 and no step",
            lambda s: not s.log or (s.type != "categorical" and s.min is not None and s.min > 0 and s.step is None),
        ),
        Rule(
            "!(self.target in " + str([t for t, k in NUMERIC_TARGETS.items() if k == "int"]).replace('"', "'")
            + ") || self.type == 'int'",
            "spec.parameters.type must be int for an integer field (trainer.batchSize, trainer.seed, ...)",
            lambda s: NUMERIC_TARGETS.get(s.target) != "int" or s.type == "int",
        ),
        Rule(
            "!(self.target in " + str(list(CATEGORICAL_TARGETS)).replace('"', "'") + ") || self.type == 'categorical'",
            "spec.parameters.type must be categorical for precision, strategy and compression.type",
            lambda s: s.target not in CATEGORICAL_TARGETS or s.type == "categorical",
        ),
    )


class Objective(ApiModel):
    """What the sweep optimises: a trainer metric, read by step from the trials' metrics."""

    metric: ObjectiveMetric = Field("loss", description="loss (training loss), tokensPerSecond or mfu.")
    goal: Literal["minimize", "maximize"] = Field("minimize", description="minimize (loss) or maximize (throughput).")
    step: int | None = Field(
        None, ge=1, description="Judge each trial at this step. Default: its last step (spec.template.spec.trainer.maxSteps)."
    )


class PBTSpec(ApiModel):
    """Population-based training: the bottom trials copy a top trial's checkpoint, perturb, and resume.

    The population is maxTrials members, each training maxSteps in all, in generations of intervalSteps:
    every generation of every member is a trial TrainingJob (maxTrials x generations trial jobs)."""

    interval_steps: int = Field(100, ge=1, description="Steps of one generation: between two exploit-and-explore "
                                "rounds, each member's trial trains this many steps (must be below maxSteps).")
    quantile: float = Field(0.25, gt=0, le=0.5, description="Fraction of trials at the bottom that copy one at the top.")
    perturbation_factors: list[Annotated[float, Field(gt=0)]] = Field(
        default_factory=lambda: [0.8, 1.2], min_length=1, max_length=8,
        description="Factors a copied trial's numeric parameters are multiplied by (one drawn at random).",
    )
    resample_probability: float = Field(
        0.25, ge=0, le=1, description="Probability of drawing a parameter afresh from its range instead of perturbing it."
    )


class Algorithm(ApiModel):
    """How the next trial's parameters are chosen (Optuna's samplers)."""

    type: Literal["tpe", "random", "grid", "cmaes", "pbt"] = Field(
        "tpe", description="tpe (Optuna's default), random, grid (every combination of values and steps), cmaes, "
        "or pbt (population-based training over elastic checkpoints).",
    )
    seed: int | None = Field(None, ge=0, description="Seed of the sampler, for a reproducible sweep.")
    pbt: PBTSpec | None = Field(None, description="Population-based training settings; only with type pbt.")

    cel_rules = (
        Rule(
            "self.type == 'pbt' || !has(self.pbt)",
            "spec.algorithm.pbt is only allowed when spec.algorithm.type is pbt",
            lambda s: s.type == "pbt" or s.pbt is None,
        ),
    )


class EarlyStopping(ApiModel):
    """Stop trials that will lose, from the objective's value at intermediate steps (Optuna's pruners)."""

    type: Literal["none", "median", "asha", "hyperband"] = Field(
        "none", description="none; median (below the median of earlier trials at the same step); asha "
        "(asynchronous successive halving); hyperband.",
    )
    min_steps: int = Field(50, ge=1, description="Steps every trial trains before it can be stopped (ASHA's minimum resource).")
    reduction_factor: int = Field(3, ge=2, le=10, description="ASHA and Hyperband: keep 1 in this many trials at each rung.")
    startup_trials: int = Field(3, ge=0, le=1000, description="median: trials that finish before any is stopped.")


def pbt_settings(spec: "TrainingSweepSpec") -> PBTSpec:
    """The sweep's PBT settings (their defaults when the manifest names only the type)."""
    return spec.algorithm.pbt or PBTSpec()


def pbt_generations(spec: "TrainingSweepSpec") -> int:
    """Generations of a PBT sweep: each member trains maxSteps in all, intervalSteps at a time."""
    interval = pbt_settings(spec).interval_steps
    return -(-spec.template.spec.trainer.max_steps // interval)


class SweepTemplate(ApiModel):
    """The TrainingJob each trial runs: the sweep's parameters are set into a copy of it."""

    metadata: PodMetadata | None = Field(None, description="Labels and annotations for every trial's TrainingJob.")
    spec: TrainingJobSpec = Field(..., description="The trial's TrainingJob spec, before the parameters are set.")


class TrainingSweepSpec(ApiModel):
    """The desired state of a hyperparameter sweep."""

    template: SweepTemplate = Field(..., description="The TrainingJob every trial starts from.")
    parameters: list[SearchParameter] = Field(
        ..., min_length=1, max_length=32, description="The search space: each parameter and the template field it sets.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
    )
    objective: Objective = Field(default_factory=Objective, description="The metric the sweep optimises.")
    algorithm: Algorithm = Field(default_factory=Algorithm, description="How parameters are chosen.")
    early_stopping: EarlyStopping = Field(default_factory=EarlyStopping, description="How losing trials are stopped early.")
    max_trials: int = Field(20, ge=1, le=MAX_TRIALS, description="Trials to run in all (pruned and failed ones count); "
                            "with pbt, the population (each member trains maxSteps over its generations).")
    parallelism: int = Field(2, ge=1, le=1000, description="Trials that run at the same time.")
    max_failed_trials: int = Field(3, ge=0, le=MAX_TRIALS, description="Failed trials beyond which the sweep Fails.")
    suspend: bool = Field(False, description="Suspend every running trial (checkpoints kept) and start no new one.")
    active_deadline_seconds: int | None = Field(
        None, ge=1, description="Fail the sweep this many seconds after it started; its running trials are stopped."
    )
    ttl_seconds_after_finished: int | None = Field(
        None, ge=0, description="Delete the sweep and its trials this long after it Succeeded or Failed."
    )

    cel_rules = (
        Rule(
            "self.parallelism <= self.maxTrials",
            "spec.parallelism must not exceed spec.maxTrials",
            lambda s: s.parallelism <= s.max_trials,
        ),
        Rule(
            "self.algorithm.type != 'grid' || self.parameters.all(p, p.type == 'categorical' || has(p.step))",
            "spec.algorithm.type grid needs every spec.parameters entry categorical or with a step",
            lambda s: s.algorithm.type != "grid" or all(p.type == "categorical" or p.step is not None for p in s.parameters),
        ),
        Rule(
            "self.algorithm.type != 'pbt' || (has(self.template.spec.checkpoint) && "
            "has(self.template.spec.checkpoint.persistentVolumeClaim) && "
            "self.parameters.all(p, p.target in " + str(list(PBT_MUTABLE)).replace('"', "'") + "))",
            "spec.algorithm.type pbt needs spec.template.spec.checkpoint.persistentVolumeClaim (trials start from each "
            "other's checkpoints, so all must see one volume) and parameters that may change on resume: "
            + ", ".join(PBT_MUTABLE),
            lambda s: s.algorithm.type != "pbt"
            or (s.template.spec.checkpoint is not None and s.template.spec.checkpoint.persistent_volume_claim is not None
                and all(p.target in PBT_MUTABLE for p in s.parameters)),
        ),
        Rule(
            "self.algorithm.type != 'pbt' || (has(self.algorithm.pbt) ? self.algorithm.pbt.intervalSteps : 100) "
            "< self.template.spec.trainer.maxSteps",
            "spec.algorithm.pbt.intervalSteps must be below spec.template.spec.trainer.maxSteps (one generation "
            "would be a random search)",
            lambda s: s.algorithm.type != "pbt" or pbt_settings(s).interval_steps < s.template.spec.trainer.max_steps,
        ),
        Rule(
            "self.algorithm.type != 'pbt' || self.maxTrials * ((self.template.spec.trainer.maxSteps + "
            "(has(self.algorithm.pbt) ? self.algorithm.pbt.intervalSteps : 100) - 1) / "
            "(has(self.algorithm.pbt) ? self.algorithm.pbt.intervalSteps : 100)) <= " + str(MAX_TRIALS),
            f"spec.algorithm.type pbt: maxTrials x generations (maxSteps / intervalSteps, rounded up) must be at "
            f"most {MAX_TRIALS} trial jobs",
            lambda s: s.algorithm.type != "pbt" or s.max_trials * pbt_generations(s) <= MAX_TRIALS,
        ),
        Rule(
            "self.algorithm.type != 'pbt' || self.earlyStopping.type == 'none'",
            "spec.earlyStopping must be none with spec.algorithm.type pbt (PBT replaces losing trials itself)",
            lambda s: s.algorithm.type != "pbt" or s.early_stopping.type == "none",
        ),
        Rule(
            "!has(self.objective.step) || self.objective.step <= self.template.spec.trainer.maxSteps",
            "spec.objective.step must not exceed spec.template.spec.trainer.maxSteps",
            lambda s: s.objective.step is None or s.objective.step <= s.template.spec.trainer.max_steps,
        ),
        Rule(
            "self.earlyStopping.type == 'none' || self.earlyStopping.minSteps < self.template.spec.trainer.maxSteps",
            "spec.earlyStopping.minSteps must be below spec.template.spec.trainer.maxSteps",
            lambda s: s.early_stopping.type == "none" or s.early_stopping.min_steps < s.template.spec.trainer.max_steps,
        ),
    )

    @model_validator(mode="after")
    def _unique_names(self):
        names = [p.name for p in self.parameters]
        if len(set(names)) != len(names):
            raise ValueError("spec.parameters.name: duplicate parameter name")
        targets = [p.target for p in self.parameters]
        if len(set(targets)) != len(targets):
            raise ValueError("spec.parameters.target: two parameters set the same field")
        return self


class TrialSummary(ApiModel):
    """One trial, as the sweep's status shows it."""

    number: int = Field(..., ge=0, description="Trial number (Optuna's), also in the TrainingJob's name.")
    job: str = Field(..., description="The trial's TrainingJob.")
    state: TrialState = Field(..., description="Pending, Running, Succeeded, Pruned or Failed.")
    value: float | None = Field(None, description="The objective's value (at the objective's step, or the last one seen).")
    step: int | None = Field(None, ge=0, description="The step that value was read at.")
    parameters: dict[str, str] | None = Field(None, description="The trial's parameters, as strings.")
    reason: str | None = Field(None, max_length=1024, description="Why a trial was pruned or failed.")


class TrialCounts(ApiModel):
    """Trials by state."""

    pending: int = Field(0, ge=0, description="Created, not yet training.")
    running: int = Field(0, ge=0, description="Training.")
    succeeded: int = Field(0, ge=0, description="Trained to the end.")
    pruned: int = Field(0, ge=0, description="Stopped early by the early-stopping rule (checkpoint kept).")
    failed: int = Field(0, ge=0, description="Ended Failed.")


class TrainingSweepStatus(ApiModel):
    """The observed state of the sweep. Bounded at any trial count: counts, the best trial, the last few."""

    phase: SweepPhase | None = Field(None, description="Pending, Running, Suspended, Succeeded or Failed.")
    conditions: list[Condition] | None = Field(
        None, description="Conditions in the Kubernetes convention.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )
    observed_generation: int | None = Field(None, ge=0, description="The spec generation the operator last acted on.")
    trials: TrialCounts | None = Field(None, description="Trials by state.")
    best_trial: TrialSummary | None = Field(None, description="The best finished or pruned trial so far.")
    recent_trials: list[TrialSummary] | None = Field(None, max_length=10, description="The last trials that changed state.")
    pruned_steps: int | None = Field(
        None, ge=0, description="Steps early stopping saved: for each pruned trial, maxSteps minus the step it stopped at."
    )
    pruned_gpu_seconds: float | None = Field(
        None, ge=0, description="GPU time early stopping saved: for each pruned trial, its remaining steps at the "
        "GPU-seconds per step it had spent (an estimate fixed when it was pruned; divide by 3600 for GPU-hours).",
    )
    start_time: datetime | None = Field(None, description="When the sweep started.")
    completion_time: datetime | None = Field(None, description="When the sweep Succeeded or Failed.")


class SweepMeta(ObjectMeta):
    """The part of ObjectMeta a sweep manifest carries."""

    name: str = Field(
        ...,
        max_length=MAX_SWEEP_NAME_LENGTH,
        pattern=r"^[a-z]([-a-z0-9]*[a-z0-9])?$",
        description=f"Sweep name: a DNS-1035 label of at most {MAX_SWEEP_NAME_LENGTH} characters (trials are "
        "named <sweep>-t<number>).",
    )


class TrainingSweep(ApiModel):
    """A hyperparameter sweep: trials run as TrainingJobs from a template, chosen by Optuna, stopped early when
    they lose, and counted in a status that stays small at any trial count."""

    api_version: Literal["kubetrain.dev/v1alpha1"] = Field("kubetrain.dev/v1alpha1", description="kubetrain.dev/v1alpha1")
    kind: Literal["TrainingSweep"] = Field(SWEEP_KIND, description="TrainingSweep")
    metadata: SweepMeta
    spec: TrainingSweepSpec = Field(..., description="Desired state.")
    status: TrainingSweepStatus | None = Field(None, description="Observed state.")

