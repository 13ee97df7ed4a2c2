"""Render the field reference of every kind (docs/api-reference.md) from the CRD schemas."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from kubetrain.api import crd


def _type_of(node: dict[str, Any]) -> str:
    if node.get("x-kubernetes-int-or-string"):
        return "int or string"
    if "enum" in node:
        return " \\| ".join(f"`{v}`" if v != "" else '`""`' for v in node["enum"])
    if node.get("type") == "array":
        return f"[]{_type_of(node['items'])}"
    if node.get("type") == "object" and isinstance(node.get("additionalProperties"), dict):
        return f"map[string]{_type_of(node['additionalProperties'])}"
    return node.get("type", "object")


def _rows(node: dict[str, Any], path: str, required: set[str]):
    for key, child in node.get("properties", {}).items():
        field = f"{path}.{key}"
        default = child.get("default")
        default_txt = "" if default is None or default == {} else f"`{json.dumps(default)}`"
        req = " (required)" if key in required else ""
        desc = " ".join(child.get("description", "").split()).replace("|", "\\|")
        yield f"| `{field}`{req} | {_type_of(child)} | {default_txt} | {desc} |"
        target = child.get("items", child) if child.get("type") == "array" else child
        yield from _rows(target, field + ("[]" if target is not child else ""), set(target.get("required", [])))


def _render_kind(kind: crd.Kind) -> list[str]:
    schema = crd.build_crd(kind)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    lines = [
        f"# {kind.kind} reference ({crd.models.API_VERSION})",
        "",
        schema["description"],
        "",
        f"`kubectl explain {kind.kind.lower()}.spec.<field>` shows the same descriptions on a cluster.",
    ]
    for section in ("spec", "status"):
        lines += ["", f"## {section}", "", "| Field | Type | Default | Description |", "| --- | --- | --- | --- |"]
        lines += _rows(schema["properties"][section], section, set(schema["properties"][section].get("required", [])))
    lines += ["", "## Validation rules (CEL, enforced by the apiserver at admission)", ""]
    for path, node in _walk_rules(schema, ""):
        for rule in node.get("x-kubernetes-validations", []):
            lines.append(f"- `{path or '.'}`: {rule['message']}")
    return lines


def render_reference() -> str:
    lines = ["<!-- Generated from operator/kubetrain/api/ by `make crds`. Do not edit. -->"]
    for i, kind in enumerate(crd.KINDS):
        lines += ([""] if i else []) + _render_kind(kind)
    return "\n".join(lines) + "\n"


def _walk_rules(node: dict[str, Any], path: str):
    yield path, node
    for key, child in node.get("properties", {}).items():
        yield from _walk_rules(child, f"{path}.{key}" if path else key)
    if isinstance(node.get("items"), dict):
        yield from _walk_rules(node["items"], path + "[]")


def reference_path(repo_root: Path) -> Path:
    return repo_root / "docs" / "api-reference.md"
