"""Generate the TrainingJob CustomResourceDefinition from the pydantic models.

pydantic writes JSON Schema (2020-12, with $refs); the apiserver wants a
*structural* OpenAPI v3 schema: every node typed, no $ref, int-or-string and
preserve-unknown-fields spelled as Kubernetes extensions. ``openapi_schema``
does that translation; ``build_crd`` adds names, printer columns, the status
and scale subresources and the CEL rules declared on the models.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from kubetrain.api import models, pod, sweep
from kubetrain.api.base import ApiModel, Rule
from kubetrain.contract.vocabulary import ACTIVE_PHASES

# Only the spec is transition-checked; these may not change while workers train
# on them (suspend the job, change it, resume). Replicas stay mutable: that is
# how a user resizes an elastic job.
IMMUTABLE_WHILE_ACTIVE = {
    "strategy": "spec.strategy",
    "precision": "spec.precision",
    "compression": "spec.compression",
    "checkpoint": "spec.checkpoint",
    "container": "spec.container",
    "pod": "spec.pod",
}

PRINTER_COLUMNS = [
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase", "description": "Lifecycle phase"},
    {"name": "Ready", "type": "integer", "jsonPath": ".status.readyReplicas", "description": "Ready worker pods"},
    {"name": "Desired", "type": "integer", "jsonPath": ".status.desiredReplicas", "description": "Worker pods wanted now"},
    {"name": "Min", "type": "integer", "jsonPath": ".spec.replicas.min", "description": "Fewest replicas"},
    {"name": "Max", "type": "integer", "jsonPath": ".spec.replicas.max", "description": "Most replicas"},
    {"name": "Precision", "type": "string", "jsonPath": ".spec.precision", "description": "Numeric precision"},
    {"name": "Tokens/s", "type": "number", "jsonPath": ".status.throughput.tokensPerSecond", "description": "Job-wide tokens per second"},
    {"name": "Queue", "type": "string", "jsonPath": ".status.queue", "description": "Kueue: admitted (workers, ClusterQueue) or why it waits"},
    {"name": "Step", "type": "integer", "jsonPath": ".status.throughput.step", "priority": 1, "description": "Job-wide step"},
    {"name": "Restarts", "type": "integer", "jsonPath": ".status.restarts", "priority": 1, "description": "Restarts used"},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]

_DROP = {"title", "additionalProperties", "examples"}


def _rules_of(model: type[BaseModel]) -> list[dict[str, Any]]:
    out = []
    for rule in model.__dict__.get("cel_rules", ()):
        entry = {"rule": rule.cel, "message": rule.message}
        if rule.field_path:
            entry["fieldPath"] = rule.field_path
        out.append(entry)
    return out


API_MODULES = (models, pod, sweep)


def _models_by_name() -> dict[str, type[ApiModel]]:
    return {
        name: obj
        for module in API_MODULES
        for name, obj in vars(module).items()
        if isinstance(obj, type) and issubclass(obj, ApiModel) and obj is not ApiModel
    }


class _Translator:
    def __init__(self, defs: dict[str, Any]):
        self.defs = defs
        self.classes = _models_by_name()

    def node(self, schema: dict[str, Any]) -> dict[str, Any]:
        schema = dict(schema)
        if "$ref" in schema:
            name = schema.pop("$ref").rsplit("/", 1)[-1]
            target = self.node(self.defs[name])
            # A description on the field wins over the model's docstring.
            target.update({k: v for k, v in schema.items() if k in ("description", "default")})
            cls = self.classes.get(name)
            if cls is not None:
                _apply_factory_defaults(cls, target)
            rules = _rules_of(cls) if cls is not None else []
            if rules:
                target["x-kubernetes-validations"] = rules
            return self._clean_default(target)
        if "anyOf" in schema:
            branches = [b for b in schema.pop("anyOf") if b.get("type") != "null"]
            types = sorted(b.get("type", "") for b in branches)
            if types == ["integer", "string"]:
                out = {"x-kubernetes-int-or-string": True}
                # Each branch's constraints hold for its form: a quantity's pattern for the
                # string, its lower bound for the integer.
                text = next(b for b in branches if b.get("type") == "string")
                number = next(b for b in branches if b.get("type") == "integer")
                out.update({k: text[k] for k in ("pattern", "maxLength") if k in text})
                out.update({k: number[k] for k in ("minimum",) if k in number})
            elif len(branches) == 1:
                out = self.node(branches[0])
            else:
                raise ValueError(f"cannot express anyOf {branches} structurally")
            for k, v in schema.items():
                if k not in _DROP:
                    out[k] = v
            return self._clean_default(out)
        out: dict[str, Any] = {}
        for key, value in schema.items():
            if key in _DROP:
                continue
            if key == "properties":
                out["properties"] = {k: self.node(v) for k, v in value.items()}
            elif key == "items":
                out["items"] = self.node(value)
            elif key == "exclusiveMinimum":
                out["minimum"], out["exclusiveMinimum"] = value, True
            elif key == "exclusiveMaximum":
                out["maximum"], out["exclusiveMaximum"] = value, True
            elif key == "const":
                out["enum"] = [value]
            else:
                out[key] = value
        if schema.get("type") == "object" and "properties" not in schema:
            extra = schema.get("additionalProperties")
            if isinstance(extra, dict) and extra:
                out["additionalProperties"] = self.node(extra)
            elif not out.get("x-kubernetes-preserve-unknown-fields"):
                out["x-kubernetes-preserve-unknown-fields"] = True
        # pydantic spells map size limits like JSON Schema does for objects.
        if out.get("type") == "object":
            if "minLength" in out:
                out["minProperties"] = out.pop("minLength")
            if "maxLength" in out:
                out["maxProperties"] = out.pop("maxLength")
        if out.get("type") == "array":
            if "maxLength" in out:
                out["maxItems"] = out.pop("maxLength")
            if "minLength" in out:
                out["minItems"] = out.pop("minLength")
        return self._clean_default(out)

    @staticmethod
    def _clean_default(out: dict[str, Any]) -> dict[str, Any]:
        # A null default means "unset": the apiserver must not write it.
        if "default" in out and out["default"] is None:
            del out["default"]
        return out


def _apply_factory_defaults(cls: type[BaseModel], schema: dict[str, Any]) -> None:
    """Give fields built by default_factory a CRD default.

    pydantic leaves them out of JSON Schema. Without a default on a nested
    object the apiserver would not descend into it, and a user who omits
    ``spec.replicas`` would get no min/max at all. The default is the fully
    populated object, not ``{}``: the apiserver checks a default against the
    CEL rules without applying the defaults nested inside it.
    """
    props = schema.get("properties", {})
    for name, field in cls.model_fields.items():
        if field.default_factory is None:
            continue
        key = field.alias or name
        value = field.default_factory()
        if isinstance(value, BaseModel):
            value = value.model_dump(by_alias=True, exclude_none=True, mode="json")
        props[key]["default"] = value


def openapi_schema(model: type[BaseModel]) -> dict[str, Any]:
    """A structural OpenAPI v3 schema for ``model``, CEL rules included."""
    raw = model.model_json_schema(by_alias=True, mode="validation", ref_template="#/$defs/{model}")
    defs = raw.pop("$defs", {})
    out = _Translator(defs).node(raw)
    _apply_factory_defaults(model, out)
    rules = _rules_of(model)
    if rules:
        out["x-kubernetes-validations"] = rules
    return out


@dataclass(frozen=True)
class Kind:
    """One kind this API serves: its models, names and what kubectl shows."""

    kind: str
    plural: str
    short_names: tuple[str, ...]
    spec: type[ApiModel]
    status: type[ApiModel]
    root: type[ApiModel]
    max_name_length: int
    printer_columns: list[dict[str, Any]]
    # spec fields that may not change while the object is active, and the phases that count as active.
    immutable: dict[str, str] = field(default_factory=dict)
    active_phases: tuple[str, ...] = ()
    scale: dict[str, str] | None = None


SWEEP_PRINTER_COLUMNS = [
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase", "description": "Lifecycle phase"},
    {"name": "Running", "type": "integer", "jsonPath": ".status.trials.running", "description": "Trials training"},
    {"name": "Succeeded", "type": "integer", "jsonPath": ".status.trials.succeeded", "description": "Trials trained to the end"},
    {"name": "Pruned", "type": "integer", "jsonPath": ".status.trials.pruned", "description": "Trials stopped early"},
    {"name": "Max", "type": "integer", "jsonPath": ".spec.maxTrials", "description": "Trials in all"},
    {"name": "Best", "type": "number", "jsonPath": ".status.bestTrial.value", "description": "Best objective value so far"},
    {"name": "Failed", "type": "integer", "jsonPath": ".status.trials.failed", "priority": 1, "description": "Failed trials"},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]

TRAINING_JOB = Kind(
    kind=models.KIND, plural=models.PLURAL, short_names=("tj",), spec=models.TrainingJobSpec,
    status=models.TrainingJobStatus, root=models.TrainingJob, max_name_length=models.MAX_JOB_NAME_LENGTH,
    printer_columns=PRINTER_COLUMNS, immutable=IMMUTABLE_WHILE_ACTIVE, active_phases=tuple(p.value for p in ACTIVE_PHASES),
    # `kubectl scale tj NAME --replicas=N` resizes the elastic range's max.
    scale={"specReplicasPath": ".spec.replicas.max", "statusReplicasPath": ".status.currentReplicas",
           "labelSelectorPath": ".status.selector"},
)
TRAINING_SWEEP = Kind(
    kind=sweep.SWEEP_KIND, plural=sweep.SWEEP_PLURAL, short_names=("tsw",), spec=sweep.TrainingSweepSpec,
    status=sweep.TrainingSweepStatus, root=sweep.TrainingSweep, max_name_length=sweep.MAX_SWEEP_NAME_LENGTH,
    printer_columns=SWEEP_PRINTER_COLUMNS,
    # Trials already created keep their own spec; what new trials are drawn from may not change mid-sweep.
    immutable={"template": "spec.template", "parameters": "spec.parameters", "objective": "spec.objective",
               "algorithm": "spec.algorithm", "earlyStopping": "spec.earlyStopping"},
    active_phases=("Running",),
)
KINDS = (TRAINING_JOB, TRAINING_SWEEP)


def _immutability_rules(kind: Kind) -> list[dict[str, str]]:
    active = "[" + ", ".join(f"'{p}'" for p in kind.active_phases) + "]"
    what = kind.kind.replace("Training", "").lower()
    rules = []
    for field_name, path in kind.immutable.items():
        rules.append(
            {
                "rule": f"!has(oldSelf.status) || !has(oldSelf.status.phase) || !(oldSelf.status.phase in {active}) "
                f"|| (has(self.spec.{field_name}) == has(oldSelf.spec.{field_name}) && "
                f"(!has(self.spec.{field_name}) || self.spec.{field_name} == oldSelf.spec.{field_name}))",
                "message": f"{path} cannot change while the {what} is running: suspend it (spec.suspend: true), change it, then resume",
                "reason": "FieldValueForbidden",
                "fieldPath": "." + path,
            }
        )
    return rules


def _name_rule(kind: Kind) -> dict[str, str]:
    named = "the job's pod and Service names" if kind is TRAINING_JOB else "its trials' names (<sweep>-t<number>)"
    return {
        "rule": f"self.metadata.name.size() <= {kind.max_name_length} && "
        "self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')",
        "message": f"metadata.name must be a DNS-1035 label (lower case letters, digits, '-', starting with a letter) "
        f"of at most {kind.max_name_length} characters: it prefixes {named}",
    }


def build_crd(kind: Kind = TRAINING_JOB) -> dict[str, Any]:
    spec_schema = openapi_schema(kind.spec)
    spec_schema["description"] = kind.spec.__doc__.strip()
    status_schema = openapi_schema(kind.status)
    status_schema["description"] = kind.status.__doc__.strip()
    root = {
        "type": "object",
        "description": " ".join(kind.root.__doc__.split()),
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string", "description": f"APIVersion: {models.API_VERSION}."},
            "kind": {"type": "string", "description": f"Kind: {kind.kind}."},
            "metadata": {"type": "object"},
            "spec": spec_schema,
            "status": status_schema,
        },
        "x-kubernetes-validations": [_name_rule(kind), *_immutability_rules(kind)],
    }
    subresources: dict[str, Any] = {"status": {}}
    if kind.scale:
        subresources["scale"] = dict(kind.scale)
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{kind.plural}.{models.GROUP}",
            "labels": {"app.kubernetes.io/name": "kubetrain", "app.kubernetes.io/part-of": "kubetrain"},
        },
        "spec": {
            "group": models.GROUP,
            "names": {
                "kind": kind.kind,
                "listKind": f"{kind.kind}List",
                "plural": kind.plural,
                "singular": kind.kind.lower(),
                "shortNames": list(kind.short_names),
                "categories": ["kubetrain"],
            },
            "scope": "Namespaced",
            "versions": [
                {
                    "name": models.VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": subresources,
                    "additionalPrinterColumns": copy.deepcopy(kind.printer_columns),
                    "schema": {"openAPIV3Schema": root},
                }
            ],
        },
    }


HEADER = "# Generated from operator/kubetrain/api/ by `make crds`. Do not edit.\n"


def render_crd(kind: Kind = TRAINING_JOB) -> str:
    return HEADER + yaml.safe_dump(build_crd(kind), sort_keys=False, width=120)


def crd_file(kind: Kind) -> str:
    return f"{models.GROUP}_{kind.plural}.yaml"


def crd_targets(repo_root: Path, kind: Kind = TRAINING_JOB) -> list[Path]:
    """Every checked-in copy of a kind's CRD: crds/ and the chart's crds/."""
    name = crd_file(kind)
    return [repo_root / "crds" / name, repo_root / "charts" / "kubetrain" / "crds" / name]


def generated_files(repo_root: Path) -> dict[Path, str]:
    """Every checked-in file generated from the models, with its content now."""
    from kubetrain.api.reference import reference_path, render_reference

    files = {target: render_crd(kind) for kind in KINDS for target in crd_targets(repo_root, kind)}
    files[reference_path(repo_root)] = render_reference()
    return files
