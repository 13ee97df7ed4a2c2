"""The examples and the invalid variants, shared by unit and integration tests."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
_ALL_EXAMPLES = sorted((REPO / "examples").glob("*.yaml"))
# Examples by the kind they show: a TrainingJob (with what it needs), or a TrainingSweep. Files of
# neither (kueue-queues.yaml: Kueue's queues for kueue.yaml) are applied by the tests that need them.
SWEEP_EXAMPLES = [p for p in _ALL_EXAMPLES if "\nkind: TrainingSweep" in p.read_text()]
EXAMPLES = [p for p in _ALL_EXAMPLES if p not in SWEEP_EXAMPLES and "\nkind: TrainingJob" in p.read_text()]
_VARIANTS = yaml.safe_load((REPO / "tests" / "data" / "invalid-variants.yaml").read_text())
_SWEEP_VARIANTS = yaml.safe_load((REPO / "tests" / "data" / "invalid-sweep-variants.yaml").read_text())


def load_yaml(path: Path, kind: str = "TrainingJob") -> dict[str, Any]:
    """The TrainingJob (or ``kind``) of an example; an example may carry what it needs (a ConfigMap) before it."""
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    return next(d for d in docs if d.get("kind") == kind)


def load_all(path: Path) -> list[dict[str, Any]]:
    """Every object of an example, in order."""
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def merge(base: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """JSON merge patch (RFC 7386): dicts merge, None deletes, anything else replaces."""
    out = copy.deepcopy(base)
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def refusal_status(name: str) -> int:
    """The HTTP status the apiserver refuses a variant with: 422 (schema, CEL), or 400 for a field
    that does not exist in the API (strict field validation)."""
    return next(v.get("status", 422) for v in _VARIANTS if v["name"] == name)


def invalid_variants() -> list[tuple[str, dict[str, Any], str]]:
    """(name, manifest, field its error must name) for every invalid variant."""
    base = load_yaml(REPO / "examples" / "minimal.yaml")
    return [(v["name"], merge(base, v["patch"]), v["field"]) for v in _VARIANTS]


def invalid_sweep_variants() -> list[tuple[str, dict[str, Any], str]]:
    """(name, manifest, field its error must name) for every invalid TrainingSweep variant."""
    base = load_yaml(REPO / "examples" / "sweep.yaml", kind="TrainingSweep")
    return [(v["name"], merge(base, v["patch"]), v["field"]) for v in _SWEEP_VARIANTS]
