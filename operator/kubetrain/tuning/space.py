"""A sweep's search space: Optuna distributions from the spec, and a trial's values set into its TrainingJob.

Pure: no Kubernetes calls. A value lands on the field its parameter names (a path in the
TrainingJob spec, camelCase as in the manifest); the result is validated by the same
models as any TrainingJob, so a combination that cannot run (powersgd without its
parameters, a batch the model refuses) is refused before a trial job exists.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

from kubetrain.api.base import format_errors
from kubetrain.api.models import TrainingJobSpec
from kubetrain.api.sweep import SearchParameter, target_type
from pydantic import ValidationError

if TYPE_CHECKING:  # Optuna (with numpy and SQLAlchemy) loads with the first sweep: an operator without sweeps never pays for it
    from optuna.distributions import BaseDistribution


class InvalidTrial(ValueError):
    """A trial's values do not make a valid TrainingJob: the trial fails, no job is created."""


def distribution(p: SearchParameter) -> BaseDistribution:
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    if p.type == "categorical":
        return CategoricalDistribution(tuple(p.values or ()))
    if p.type == "int":
        return IntDistribution(int(p.min), int(p.max), log=p.log, step=int(p.step or 1))
    return FloatDistribution(p.min, p.max, log=p.log, step=p.step)


def distributions(parameters: list[SearchParameter]) -> dict[str, BaseDistribution]:
    return {p.name: distribution(p) for p in parameters}


def grid(parameters: list[SearchParameter]) -> dict[str, list[Any]]:
    """Every value of each parameter, for grid search (the models require a step or choices)."""
    out: dict[str, list[Any]] = {}
    for p in parameters:
        if p.type == "categorical":
            out[p.name] = list(p.values or ())
            continue
        count = int(round((p.max - p.min) / p.step)) + 1
        values = [p.min + i * p.step for i in range(count) if p.min + i * p.step <= p.max + 1e-12]
        out[p.name] = [int(v) for v in values] if p.type == "int" else values
    return out


def _set(spec: dict[str, Any], target: str, value: Any) -> None:
    kind = target_type(target)
    if target.startswith("container.env."):
        name = target.removeprefix("container.env.")
        env = spec.setdefault("container", {}).setdefault("env", [])
        env[:] = [e for e in env if e.get("name") != name] + [{"name": name, "value": str(value)}]
        return
    if target.startswith("trainer.args."):
        spec.setdefault("trainer", {}).setdefault("args", {})[target.removeprefix("trainer.args.")] = str(value)
        return
    *parents, leaf = target.split(".")
    node = spec
    for key in parents:
        node = node.setdefault(key, {})
    node[leaf] = int(value) if kind == "int" else float(value) if kind == "float" else value


def trial_spec(template: TrainingJobSpec, parameters: list[SearchParameter], values: dict[str, Any]) -> TrainingJobSpec:
    """The template with each parameter's value set at its target; raises InvalidTrial naming the fields."""
    spec = copy.deepcopy(template.to_k8s())
    for p in parameters:
        _set(spec, p.target, values[p.name])
    try:
        return TrainingJobSpec.model_validate(spec)
    except ValidationError as exc:
        shown = ", ".join(f"{p.name}={values[p.name]!r}" for p in parameters)
        raise InvalidTrial(f"the trial's values ({shown}) make an invalid TrainingJob: " + "; ".join(format_errors(exc))) from None


def as_strings(values: dict[str, Any]) -> dict[str, str]:
    """Values as status and labels show them: floats in short scientific form."""
    return {k: (f"{v:.4g}" if isinstance(v, float) else str(v)) for k, v in values.items()}
