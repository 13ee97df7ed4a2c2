"""Generate the TrainingJob CustomResourceDefinition from the pydantic models.

pydantic writes JSON Schema (2020-12, with $refs); the apiserver wants a
*structural* OpenAPI v3 schema: every node typed, no $ref, int-or-string and
preserve-unknown-fields spelled as Kubernetes extensions. ``openapi_schema``
does that translation; ``build_crd`` adds names, printer columns, the status
and scale subresources and the CEL rules declared on the models.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from kubetrain.api import models
from kubetrain.api.base import ApiModel, Rule

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
ACTIVE_PHASES = ("Running", "Restarting", "Scaling")

PRINTER_COLUMNS = [
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase", "description": "Lifecycle phase"},
    {"name": "Ready", "type": "integer", "jsonPath": ".status.readyReplicas", "description": "Ready worker pods"},
    {"name": "Desired", "type": "integer", "jsonPath": ".status.desiredReplicas", "description": "Worker pods wanted now"},
    {"name": "Min", "type": "integer", "jsonPath": ".spec.replicas.min", "description": "Fewest replicas"},
    {"name": "Max", "type": "integer", "jsonPath": ".spec.replicas.max", "description": "Most replicas"},
    {"name": "Precision", "type": "string", "jsonPath": ".spec.precision", "description": "Numeric precision"},
    {"name": "Tokens/s", "type": "number", "jsonPath": ".status.throughput.tokensPerSecond", "description": "Job-wide tokens per second"},
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


def _models_by_name() -> dict[str, type[ApiModel]]:
    return {
        name: obj
        for name, obj in vars(models).items()
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


def _immutability_rules() -> list[dict[str, str]]:
    active = "[" + ", ".join(f"'{p}'" for p in ACTIVE_PHASES) + "]"
    rules = []
    for field, path in IMMUTABLE_WHILE_ACTIVE.items():
        rules.append(
            {
                "rule": f"!has(oldSelf.status) || !has(oldSelf.status.phase) || !(oldSelf.status.phase in {active}) "
                f"|| (has(self.spec.{field}) == has(oldSelf.spec.{field}) && "
                f"(!has(self.spec.{field}) || self.spec.{field} == oldSelf.spec.{field}))",
                "message": f"{path} cannot change while the job is running: suspend it (spec.suspend: true), change it, then resume",
                "reason": "FieldValueForbidden",
                "fieldPath": "." + path,
            }
        )
    return rules


def _name_rule() -> dict[str, str]:
    return {
        "rule": f"self.metadata.name.size() <= {models.MAX_JOB_NAME_LENGTH} && "
        "self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')",
        "message": f"metadata.name must be a DNS-1035 label (lower case letters, digits, '-', starting with a letter) "
        f"of at most {models.MAX_JOB_NAME_LENGTH} characters: it prefixes the job's pod and Service names",
    }


def build_crd() -> dict[str, Any]:
    spec_schema = openapi_schema(models.TrainingJobSpec)
    spec_schema["description"] = models.TrainingJobSpec.__doc__.strip()
    status_schema = openapi_schema(models.TrainingJobStatus)
    status_schema["description"] = models.TrainingJobStatus.__doc__.strip()
    root = {
        "type": "object",
        "description": " ".join(models.TrainingJob.__doc__.split()),
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string", "description": "APIVersion: kubetrain.dev/v1alpha1."},
            "kind": {"type": "string", "description": "Kind: TrainingJob."},
            "metadata": {"type": "object"},
            "spec": spec_schema,
            "status": status_schema,
        },
        "x-kubernetes-validations": [_name_rule(), *_immutability_rules()],
    }
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{models.PLURAL}.{models.GROUP}",
            "labels": {"app.kubernetes.io/name": "kubetrain", "app.kubernetes.io/part-of": "kubetrain"},
        },
        "spec": {
            "group": models.GROUP,
            "names": {
                "kind": models.KIND,
                "listKind": f"{models.KIND}List",
                "plural": models.PLURAL,
                "singular": models.KIND.lower(),
                "shortNames": ["tj"],
                "categories": ["kubetrain"],
            },
            "scope": "Namespaced",
            "versions": [
                {
                    "name": models.VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {
                        "status": {},
                        # `kubectl scale tj NAME --replicas=N` resizes the elastic range's max.
                        "scale": {
                            "specReplicasPath": ".spec.replicas.max",
                            "statusReplicasPath": ".status.currentReplicas",
                            "labelSelectorPath": ".status.selector",
                        },
                    },
                    "additionalPrinterColumns": copy.deepcopy(PRINTER_COLUMNS),
                    "schema": {"openAPIV3Schema": root},
                }
            ],
        },
    }


HEADER = "# Generated from operator/kubetrain/api/models.py by `make crds`. Do not edit.\n"


def render_crd() -> str:
    return HEADER + yaml.safe_dump(build_crd(), sort_keys=False, width=120)


CRD_FILE = "kubetrain.dev_trainingjobs.yaml"


def crd_targets(repo_root: Path) -> list[Path]:
    """Every checked-in copy of the CRD: crds/ and the chart's crds/."""
    return [repo_root / "crds" / CRD_FILE, repo_root / "charts" / "kubetrain" / "crds" / CRD_FILE]


def generated_files(repo_root: Path) -> dict[Path, str]:
    """Every checked-in file generated from the models, with its content now."""
    from kubetrain.api.reference import reference_path, render_reference

    text = render_crd()
    files = {target: text for target in crd_targets(repo_root)}
    files[reference_path(repo_root)] = render_reference()
    return files
