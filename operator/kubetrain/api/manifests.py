"""Read TrainingJob and TrainingSweep manifests from YAML and validate them with the API models."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from kubetrain.api.base import format_errors
from kubetrain.api.models import API_VERSION, KIND, TrainingJob
from kubetrain.api.sweep import SWEEP_KIND, TrainingSweep


class ManifestError(ValueError):
    """A manifest that is not a valid TrainingJob (or TrainingSweep); ``problems`` name each field."""

    def __init__(self, source: str, problems: list[str], kind: str = KIND):
        self.source = source
        self.problems = problems
        super().__init__(f"{source}: invalid {kind}:\n  " + "\n  ".join(problems))


def parse_trainingjob(obj: dict[str, Any], source: str = "<manifest>") -> TrainingJob:
    try:
        return TrainingJob.model_validate(obj)
    except ValidationError as exc:
        raise ManifestError(source, format_errors(exc)) from None


def _documents(text: str) -> Iterable[dict[str, Any]]:
    for doc in yaml.safe_load_all(text):
        if doc is None:
            continue
        if doc.get("kind") == "List":
            yield from doc.get("items", [])
        else:
            yield doc


def parse_sweep(obj: dict[str, Any], source: str = "<manifest>") -> TrainingSweep:
    try:
        return TrainingSweep.model_validate(obj)
    except ValidationError as exc:
        raise ManifestError(source, format_errors(exc), kind=SWEEP_KIND) from None


def _read(path: Path) -> list[dict[str, Any]]:
    try:
        return list(_documents(path.read_text()))
    except yaml.YAMLError as exc:
        raise ManifestError(str(path), [f"not valid YAML: {exc}"]) from None


def _ours(doc: dict[str, Any], kind: str) -> bool:
    # An object of our group with no kind is taken for a TrainingJob, so that its error says what is missing.
    return doc.get("kind") == kind or (kind == KIND and doc.get("apiVersion") == API_VERSION and not doc.get("kind"))


def load_trainingjobs(path: str | Path) -> list[TrainingJob]:
    """Every TrainingJob in a YAML file (other kinds are skipped); raises ManifestError."""
    path = Path(path)
    jobs = [parse_trainingjob(doc, f"{path}#{i}") for i, doc in enumerate(_read(path)) if _ours(doc, KIND)]
    if not jobs:
        raise ManifestError(str(path), [f"no {KIND} ({API_VERSION}) in the file"])
    return jobs


def load_sweeps(path: str | Path) -> list[TrainingSweep]:
    """Every TrainingSweep in a YAML file (other kinds are skipped); raises ManifestError."""
    path = Path(path)
    sweeps = [parse_sweep(doc, f"{path}#{i}") for i, doc in enumerate(_read(path)) if _ours(doc, SWEEP_KIND)]
    if not sweeps:
        raise ManifestError(str(path), [f"no {SWEEP_KIND} ({API_VERSION}) in the file"], kind=SWEEP_KIND)
    return sweeps


def load_any(path: str | Path) -> list[TrainingJob | TrainingSweep]:
    """Every TrainingJob and TrainingSweep in a YAML file, in order; raises ManifestError."""
    path = Path(path)
    out: list[TrainingJob | TrainingSweep] = []
    for i, doc in enumerate(_read(path)):
        if _ours(doc, KIND):
            out.append(parse_trainingjob(doc, f"{path}#{i}"))
        elif _ours(doc, SWEEP_KIND):
            out.append(parse_sweep(doc, f"{path}#{i}"))
    if not out:
        raise ManifestError(str(path), [f"no {KIND} or {SWEEP_KIND} ({API_VERSION}) in the file"])
    return out
