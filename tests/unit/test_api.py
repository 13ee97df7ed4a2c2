"""The API models, the invalid variants and the CRD generated from them."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import jsonschema
import pytest
from pydantic import Field, create_model

from kubetrain import generate
from kubetrain.api import crd, models
from kubetrain.api.manifests import ManifestError, load_trainingjobs, parse_trainingjob
from support.variants import EXAMPLES, REPO, invalid_variants, load_yaml

VARIANTS = invalid_variants()


def _schema() -> dict[str, Any]:
    return crd.build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_every_example_validates(path):
    (job,) = load_trainingjobs(path)
    assert job.metadata.name == load_yaml(path)["metadata"]["name"]


def test_examples_cover_the_features():
    jobs = [load_trainingjobs(p)[0].spec for p in EXAMPLES]
    assert {j.precision for j in jobs} >= {"fp32", "bf16", "fp16"}
    assert {j.strategy for j in jobs} == {"ddp", "fsdp"}
    assert {j.compression.type for j in jobs} == {"none", "fp16", "bf16", "powersgd"}
    assert any(j.checkpoint and j.checkpoint.persistent_volume_claim for j in jobs)
    assert any(j.checkpoint and j.checkpoint.empty_dir for j in jobs)
    assert any(j.container.command for j in jobs)


@pytest.mark.parametrize("name,manifest,field", VARIANTS, ids=[v[0] for v in VARIANTS])
def test_invalid_variant_is_refused_naming_the_field(name, manifest, field):
    with pytest.raises(ManifestError) as err:
        parse_trainingjob(manifest, name)
    assert any(field in problem for problem in err.value.problems), err.value.problems


def test_defaults_are_what_a_user_expects():
    job = parse_trainingjob({"apiVersion": "kubetrain.dev/v1alpha1", "kind": "TrainingJob", "metadata": {"name": "j"}})
    spec = job.spec
    assert (spec.replicas.min, spec.replicas.max) == (1, 1)
    assert (spec.precision, spec.strategy, spec.compression.type) == ("fp32", "ddp", "none")
    assert spec.metrics.enabled and spec.metrics.port == 9404
    assert spec.failure_policy.max_restarts == 3
    assert spec.container.nproc() == 1
    assert spec.model_copy(update={"container": spec.container.model_copy(update={"gpus_per_replica": 8})}).container.nproc() == 8


def test_manifest_uses_kubernetes_spelling():
    job = load_trainingjobs(REPO / "examples" / "full.yaml")[0]
    out = job.to_k8s()
    assert out["spec"]["compression"]["powerSGD"]["startFraction"] == 0.05
    assert out["spec"]["failurePolicy"]["maxRestarts"] == 10
    assert "status" not in out


def _walk(node: dict[str, Any], path: str):
    yield path, node
    for key, child in node.get("properties", {}).items():
        yield from _walk(child, f"{path}.{key}")
    if isinstance(node.get("items"), dict):
        yield from _walk(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from _walk(node["additionalProperties"], f"{path}{{}}")


def test_crd_schema_is_structural():
    for path, node in _walk(_schema(), ""):
        assert "$ref" not in node and "anyOf" not in node and "allOf" not in node, path
        typed = "type" in node or node.get("x-kubernetes-int-or-string") or node.get("x-kubernetes-preserve-unknown-fields")
        assert typed, f"{path} has no type"
        if node.get("type") == "object" and "properties" not in node and "additionalProperties" not in node:
            assert node.get("x-kubernetes-preserve-unknown-fields") or path == ".metadata", path


def test_every_field_is_described_for_kubectl_explain():
    undescribed = [
        path
        for path, node in _walk(_schema(), "")
        if path.startswith((".spec", ".status")) and "{}" not in path and not path.endswith("[]") and not node.get("description")
    ]
    assert undescribed == []


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_crd_schema_accepts_every_example(path):
    # models -> YAML -> schema: the generated schema (as YAML) accepts what the models accept.
    schema = crd.yaml.safe_load(crd.render_crd())["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    jsonschema.Draft4Validator(schema).validate(load_trainingjobs(path)[0].to_k8s())


@pytest.mark.parametrize(
    "name,manifest,field",
    [v for v in VARIANTS if v[0] in {"unknown-precision", "powersgd-rank-zero", "negative-metrics-port", "min-zero"}],
)
def test_crd_schema_refuses_schema_level_variants(name, manifest, field):
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft4Validator(_schema()).validate(manifest)


def test_every_cross_field_rule_is_in_the_crd():
    rendered = crd.render_crd()
    rules = [r for m in vars(models).values() if isinstance(m, type) for r in m.__dict__.get("cel_rules", ())]
    assert len(rules) >= 12
    for rule in rules:
        assert rule.message.split(":")[0].split(" ")[0] in rendered
    cel = [v["rule"] for _, n in _walk(_schema(), "") for v in n.get("x-kubernetes-validations", [])]
    assert {r.cel for r in rules} <= set(cel)


def test_printer_columns_show_what_a_user_wants():
    cols = {c["name"]: c["jsonPath"] for c in crd.build_crd()["spec"]["versions"][0]["additionalPrinterColumns"]}
    assert cols["Phase"] == ".status.phase"
    assert {"Ready", "Desired", "Min", "Max", "Precision", "Tokens/s", "Age"} <= set(cols)


def test_checked_in_generated_files_match_the_code():
    # CRD copies, API reference, dashboard, rules: all of them.
    assert generate.drifted(REPO) == [], "run `make generate` and commit the result"


def test_drift_is_detected_when_a_model_changes(monkeypatch):
    changed = create_model(
        "TrainingJobSpec",
        __base__=models.TrainingJobSpec,
        __doc__=models.TrainingJobSpec.__doc__,
        new_field=(int, Field(1, description="A field added without regenerating.")),
    )
    monkeypatch.setattr(crd, "KINDS", (replace(crd.TRAINING_JOB, spec=changed), crd.TRAINING_SWEEP))
    # The TrainingJob's CRD copies and the reference drift; the sweep's CRD does not.
    expected = {*crd.crd_targets(REPO, crd.TRAINING_JOB), REPO / "docs" / "api-reference.md"}
    assert set(generate.drifted(REPO)) == expected
