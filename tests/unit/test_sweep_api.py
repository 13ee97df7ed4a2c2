"""The TrainingSweep API: its models, invalid variants and generated CRD."""

from __future__ import annotations

import jsonschema
import pytest

from kubetrain.api import crd, sweep
from kubetrain.api.manifests import ManifestError, load_sweeps, parse_sweep
from support.variants import REPO, SWEEP_EXAMPLES, invalid_sweep_variants, load_yaml

VARIANTS = invalid_sweep_variants()


def _schema():
    return crd.build_crd(crd.TRAINING_SWEEP)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def test_the_example_sweep_validates_with_its_defaults():
    (s,) = load_sweeps(REPO / "examples" / "sweep.yaml")
    assert s.metadata.name == "gpt-lr" and [p.name for p in s.spec.parameters] == ["lr", "batch"]
    assert s.spec.template.spec.trainer.max_steps == 300
    assert (s.spec.objective.metric, s.spec.objective.goal) == ("loss", "minimize")
    assert s.spec.early_stopping.type == "asha" and s.spec.parallelism == 2
    assert SWEEP_EXAMPLES == [REPO / "examples" / "sweep-pbt.yaml", REPO / "examples" / "sweep.yaml"]


def test_the_pbt_example_validates_with_its_population_and_generations():
    (s,) = load_sweeps(REPO / "examples" / "sweep-pbt.yaml")
    assert s.spec.algorithm.type == "pbt" and s.spec.algorithm.pbt.interval_steps == 100
    assert sweep.pbt_generations(s.spec) == 3 and s.spec.max_trials == 4


@pytest.mark.parametrize("name,manifest,field", VARIANTS, ids=[v[0] for v in VARIANTS])
def test_invalid_sweep_is_refused_naming_the_field(name, manifest, field):
    with pytest.raises(ManifestError) as err:
        parse_sweep(manifest, name)
    assert any(field in problem for problem in err.value.problems), err.value.problems


def test_duplicate_parameter_names_and_targets_are_refused():
    manifest = load_yaml(REPO / "examples" / "sweep.yaml", kind="TrainingSweep")
    lr = manifest["spec"]["parameters"][0]
    with pytest.raises(ManifestError, match="spec.parameters.name: duplicate"):
        parse_sweep({**manifest, "spec": {**manifest["spec"], "parameters": [lr, lr]}})
    with pytest.raises(ManifestError, match="spec.parameters.target: two parameters"):
        parse_sweep({**manifest, "spec": {**manifest["spec"], "parameters": [lr, {**lr, "name": "lr2"}]}})


def test_trial_names_fit_the_trainingjob_name_limit():
    assert sweep.MAX_SWEEP_NAME_LENGTH + len(f"-t{sweep.MAX_TRIALS}") <= crd.models.MAX_JOB_NAME_LENGTH


def test_sweep_crd_is_structural_described_and_carries_every_rule():
    from test_api import _walk

    schema = _schema()
    for path, node in _walk(schema, ""):
        typed = "type" in node or node.get("x-kubernetes-int-or-string") or node.get("x-kubernetes-preserve-unknown-fields")
        assert typed, f"{path} has no type"
    undescribed = [p for p, n in _walk(schema, "") if p.startswith((".spec", ".status")) and "{}" not in p
                   and not p.endswith("[]") and not n.get("description")]
    assert undescribed == []
    cel = {v["rule"] for _, n in _walk(schema, "") for v in n.get("x-kubernetes-validations", [])}
    rules = [r for m in vars(sweep).values() if isinstance(m, type) for r in m.__dict__.get("cel_rules", ())]
    assert len(rules) >= 10 and {r.cel for r in rules} <= cel
    jsonschema.Draft4Validator(schema).validate(load_sweeps(REPO / "examples" / "sweep.yaml")[0].to_k8s())
    names = crd.build_crd(crd.TRAINING_SWEEP)["spec"]["names"]
    assert (names["kind"], names["shortNames"]) == ("TrainingSweep", ["tsw"])
