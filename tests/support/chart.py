"""The Helm chart under test: helm and kubeconform (built into ~/.cache/kubetrain), renders, schemas.

Shared by tests/chart/test_chart_offline.py (no cluster) and tests/integration/test_chart.py.
A tool that cannot be built fails the test with the build error; it never skips.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from kubetrain_dev.devcluster import build

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "kubetrain"
KUBE_VERSION = "1.36.3"  # the local control plane's (kubetrain_dev.devcluster.versions.KUBERNETES)
# Kinds of CRDs that are not Kubernetes' own: kubeconform has no schema for them.
CUSTOM_KINDS = ("KopfPeering", "ClusterKopfPeering", "PodMonitor", "PrometheusRule")


@functools.cache
def tool(name: str) -> Path:
    failures = build.ensure([name])
    if failures:
        pytest.fail(f"{name} could not be built: {failures[name]}", pytrace=False)
    return build.binary(name)


def set_args(values: dict[str, Any]) -> list[str]:
    """``--set-json`` flags for a flat {dotted.key: value} dict (JSON keeps types exact)."""
    return [arg for key, value in values.items() for arg in ("--set-json", f"{key}={json.dumps(value)}")]


def helm(*args: str, check: bool = True, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(tool("helm")), *args], text=True, capture_output=True, timeout=180,
                          env=os.environ | (env or {}))
    if check and proc.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def template(values: dict[str, Any] | None = None, release: str = "kt", namespace: str = "kubetrain-system",
             crds: bool = False) -> str:
    """``helm template`` output for these values, as the given Kubernetes version would get it."""
    args = ["template", release, str(CHART), "--namespace", namespace, "--kube-version", KUBE_VERSION]
    return helm(*args, *(["--include-crds"] if crds else []), *set_args(values or {})).stdout


def render(values: dict[str, Any] | None = None, **kwargs: Any) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(template(values, **kwargs)) if doc]


def find(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]


def operator_container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    (deployment,) = find(docs, "Deployment")
    return deployment["spec"]["template"]["spec"]["containers"][0]


def container_env(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


def kubernetes_schemas(dest: Path) -> Path:
    """Kubernetes' JSON schemas (from the kubernetes-validate wheel) laid out for kubeconform.

    The wheel's schemas point at their shared definitions with an absolute
    ``/api/_definitions.json`` reference that only kubernetes-validate resolves;
    kubeconform needs a real URL, so each file is copied with that reference rewritten.
    """
    import kubernetes_validate

    major_minor = ".".join(KUBE_VERSION.split(".")[:2])
    src = Path(kubernetes_validate.__file__).parent / "kubernetes-json-schema" / f"v{major_minor}.0-local-strict"
    dest.mkdir(parents=True, exist_ok=True)
    definitions = (dest / "_definitions.json").as_uri()
    for schema in src.glob("*.json"):
        (dest / schema.name).write_text(schema.read_text().replace('"/api/_definitions.json', f'"{definitions}'))
    return dest


def kubeconform(manifests: str, schemas: Path) -> subprocess.CompletedProcess:
    """Validate manifests offline, strictly (unknown fields are errors), skipping non-Kubernetes kinds."""
    location = str(schemas / "{{ .ResourceKind }}{{ .KindSuffix }}.json")
    return subprocess.run([str(tool("kubeconform")), "-strict", "-summary", "-skip", ",".join(CUSTOM_KINDS),
                           "-schema-location", location, "-"],
                          input=manifests, text=True, capture_output=True, timeout=120)


# --- the values table in docs/helm.md, generated from values.yaml's "# --" comments ---

DOCS = REPO / "docs" / "helm.md"
TABLE_START, TABLE_END = "<!-- values:start (generated: python tests/support/chart.py) -->", "<!-- values:end -->"


def documented_values() -> list[tuple[str, Any, str]]:
    """(dotted key, default, description) for every key preceded by a ``# --`` comment, in file order."""
    text = (CHART / "values.yaml").read_text()
    values = yaml.safe_load(text)
    rows, stack, pending = [], [], None
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("# --"):
            pending = stripped[4:].strip()
        elif stripped.startswith("#") and pending is not None:
            pending += " " + stripped[1:].strip()
        elif stripped and not stripped.startswith("-") and ":" in stripped:
            indent = len(line) - len(line.lstrip())
            stack = [(i, k) for i, k in stack if i < indent] + [(indent, stripped.split(":", 1)[0])]
            if pending is not None:
                path = [k for _, k in stack]
                default = functools.reduce(lambda d, k: d[k], path, values)
                rows.append((".".join(path), default, pending))
            pending = None
        elif not stripped:
            pending = None
    return rows


def leaf_values(values: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted keys of values.yaml down to its leaves (a non-empty mapping is not a leaf)."""
    out = []
    for key, value in values.items():
        path = f"{prefix}{key}"
        out += leaf_values(value, path + ".") if isinstance(value, dict) and value else [path]
    return out


def values_table() -> str:
    def cell(value: Any) -> str:
        if value == "":
            return '`""`'
        text = yaml.safe_dump(value, default_flow_style=True, sort_keys=False, width=10_000)
        return f"`{text.strip().removesuffix('...').strip()}`"

    lines = ["| Value | Default | Description |", "| --- | --- | --- |"]
    lines += [f"| `{key}` | {cell(default)} | {text.replace('|', '/')} |" for key, default, text in documented_values()]
    return "\n".join(lines)


def docs_with_table(docs: str) -> str:
    head, rest = docs.split(TABLE_START, 1)
    _, tail = rest.split(TABLE_END, 1)
    return f"{head}{TABLE_START}\n{values_table()}\n{TABLE_END}{tail}"


if __name__ == "__main__":
    DOCS.write_text(docs_with_table(DOCS.read_text()))
    print(f"wrote the values table in {DOCS}")
