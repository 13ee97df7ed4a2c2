"""Valid settings likely to hurt the model are warned about, naming the field: kubetrain validate, kubetrain run's
preamble, and the job's SpecWarning condition."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import pytest

from kubetrain import cli
from kubetrain.api.advice import spec_warnings
from kubetrain.api.manifests import load_trainingjobs, parse_trainingjob
from kubetrain.operator.planner import Observed, plan

REPO = Path(__file__).resolve().parents[2]
NOW = datetime(2026, 11, 30, 12, 0, tzinfo=timezone.utc)


def _job(compression: dict | None = None, max_steps: int = 20000):
    spec = {"replicas": {"min": 1, "max": 2}, "trainer": {"maxSteps": max_steps}}
    if compression is not None:
        spec["compression"] = compression
    return parse_trainingjob({"apiVersion": "kubetrain.dev/v1alpha1", "kind": "TrainingJob",
                              "metadata": {"name": "j", "namespace": "ns"}, "spec": spec})


def _fields(job) -> set[str]:
    return {w.field for w in spec_warnings(job)}


def test_no_compression_and_the_powersgd_defaults_draw_no_warning():
    assert spec_warnings(_job()) == []
    assert spec_warnings(_job({"type": "fp16"})) == []
    assert spec_warnings(_job({"type": "powersgd"})) == []
    assert spec_warnings(_job({"type": "powersgd", "powerSGD": {}}, max_steps=300)) == []


def test_a_start_iteration_of_a_few_steps_out_of_tens_of_thousands_is_named():
    (w,) = spec_warnings(_job({"type": "powersgd", "powerSGD": {"startIteration": 10}}, max_steps=20000))
    assert w.field == "spec.compression.powerSGD.startIteration"
    assert "step 10 of 20000" in w.message and "startFraction" in w.message
    # The same count is a reasonable share of a short job.
    assert spec_warnings(_job({"type": "powersgd", "powerSGD": {"startIteration": 10}}, max_steps=300)) == []


def test_a_tiny_start_fraction_and_a_start_after_the_last_step_are_named():
    assert _fields(_job({"type": "powersgd", "powerSGD": {"startFraction": 0.001}})) == {"spec.compression.powerSGD.startFraction"}
    (w,) = spec_warnings(_job({"type": "powersgd", "powerSGD": {"startIteration": 500}}, max_steps=500))
    assert w.field == "spec.compression.powerSGD.startIteration" and "never compresses" in w.message


def test_rank_one_and_no_error_feedback_or_warm_start_are_named_with_their_measured_cost():
    ws = spec_warnings(_job({"type": "powersgd", "powerSGD": {"rank": 1, "errorFeedback": False, "warmStart": False}}))
    assert {w.field for w in ws} == {"spec.compression.powerSGD.rank", "spec.compression.powerSGD.errorFeedback",
                                     "spec.compression.powerSGD.warmStart"}
    assert all("compression_loss.md" in w.message and "%" in w.message for w in ws)


def test_low_ranks_quote_the_nearest_measured_rank_and_rank_eight_up_is_quiet():
    (w,) = spec_warnings(_job({"type": "powersgd", "powerSGD": {"rank": 3}}))
    assert w.field == "spec.compression.powerSGD.rank" and "rank 2 cost +20%" in w.message
    assert "rank 4 cost" in str(spec_warnings(_job({"type": "powersgd", "powerSGD": {"rank": 4}}))[0])
    assert spec_warnings(_job({"type": "powersgd", "powerSGD": {"rank": 8}})) == []


def test_every_shipped_example_is_free_of_warnings():
    for path in sorted((REPO / "examples").glob("*.yaml")):
        try:
            jobs = load_trainingjobs(path)
        except Exception:  # noqa: BLE001 - not a TrainingJob (a sweep, a ConfigMap): nothing to advise
            continue
        for job in jobs:
            assert spec_warnings(job) == [], (path.name, spec_warnings(job))


def test_kubetrain_validate_prints_the_warning_and_still_succeeds(tmp_path, capsys):
    manifest = tmp_path / "j.yaml"
    manifest.write_text("apiVersion: kubetrain.dev/v1alpha1\nkind: TrainingJob\nmetadata: {name: j}\n"
                        "spec:\n  trainer: {maxSteps: 20000}\n  compression: {type: powersgd, powerSGD: {startIteration: 10}}\n")
    assert cli.main(["validate", str(manifest)]) == 0
    out = capsys.readouterr()
    assert "is valid" in out.out
    assert "warning: spec.compression.powerSGD.startIteration" in out.err


def _body(status=None):
    return {"metadata": {"name": "j", "namespace": "ns", "uid": "u", "generation": 1}, "status": status or {}}


def test_the_planner_sets_the_spec_warning_condition_and_warns_once():
    job = _job({"type": "powersgd", "powerSGD": {"startIteration": 10}})
    first = plan(job, _body(), Observed(pods=[], now=NOW, service_exists=False, placeable=1))
    cond = next(c for c in first.status["conditions"] if c["type"] == "SpecWarning")
    assert cond["status"] == "True" and "spec.compression.powerSGD.startIteration" in cond["message"]
    assert [e for e in first.events if e[1] == "SpecWarning"][0][0] == "Warning"
    again = plan(job, _body(first.status), Observed(pods=[], now=NOW, service_exists=True, placeable=1))
    assert not [e for e in again.events if e[1] == "SpecWarning"]
    fixed = plan(_job({"type": "powersgd"}), _body(again.status), Observed(pods=[], now=NOW, service_exists=True, placeable=1))
    assert next(c for c in fixed.status["conditions"] if c["type"] == "SpecWarning")["status"] == "False"


def test_a_job_without_warnings_gets_no_spec_warning_condition():
    p = plan(_job(), _body(), Observed(pods=[], now=NOW, service_exists=False, placeable=1))
    assert "SpecWarning" not in {c["type"] for c in p.status["conditions"]}


@pytest.mark.parametrize("start,steps", [(3, 300), (15, 300), (1000, 20000)])
def test_reasonable_explicit_starts_are_quiet(start, steps):
    assert spec_warnings(_job({"type": "powersgd", "powerSGD": {"startIteration": start}}, max_steps=steps)) == []
