"""Read TrainingJob manifests from YAML and validate them with the API models."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from kubetrain.api.base import format_errors
from kubetrain.api.models import API_VERSION, KIND, TrainingJob


class ManifestError(ValueError):
    """A manifest that is not a valid TrainingJob; ``problems`` name each field."""

    def __init__(self, source: str, problems: list[str]):
        self.source = source
        self.problems = problems
        super().__init__(f"{source}: invalid TrainingJob:\n  " + "\n  ".join(problems))


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


def load_trainingjobs(path: str | Path) -> list[TrainingJob]:
    """Every TrainingJob in a YAML file (other kinds are skipped); raises ManifestError."""
    path = Path(path)
    try:
        docs = list(_documents(path.read_text()))
    except yaml.YAMLError as exc:
        raise ManifestError(str(path), [f"not valid YAML: {exc}"]) from None
    jobs = [
        parse_trainingjob(doc, f"{path}#{i}")
        for i, doc in enumerate(docs)
        if doc.get("kind") == KIND or doc.get("apiVersion") == API_VERSION
    ]
    if not jobs:
        raise ManifestError(str(path), [f"no {KIND} ({API_VERSION}) in the file"])
    return jobs
