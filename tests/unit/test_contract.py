"""The operator<->trainer contract and the spec -> contract mapping."""

from __future__ import annotations

import pytest

from kubetrain.api.manifests import load_trainingjobs
from kubetrain.contract import TrainerContract, env_names
from kubetrain.trainer_env import contract_for
from support.variants import REPO


def test_contract_round_trips_through_the_environment():
    original = TrainerContract(job_name="j", precision="bf16", powersgd_rank=4, metrics_enabled=False, learning_rate=1e-3)
    env = original.to_env()
    assert set(env) == set(env_names())
    assert all(name.startswith("KUBETRAIN_") for name in env)
    assert TrainerContract.from_env(env) == original


def test_contract_reports_the_bad_variable():
    with pytest.raises(ValueError, match="KUBETRAIN_MAX_STEPS"):
        TrainerContract.from_env({"KUBETRAIN_MAX_STEPS": "many"})


def test_full_example_maps_onto_the_contract():
    job = load_trainingjobs(REPO / "examples" / "full.yaml")[0]
    c = contract_for(job)
    assert (c.job_name, c.namespace) == ("gpt-full", "ml-team")
    assert (c.precision, c.strategy, c.compression) == ("bf16", "ddp", "powersgd")
    assert (c.powersgd_rank, c.powersgd_start_iteration, c.powersgd_start_fraction) == (16, 0, 0.05)
    assert c.powersgd_start() == 1000
    assert c.checkpoint_dir == "/checkpoints/gpt-full"
    assert (c.checkpoint_interval_steps, c.checkpoint_keep) == (500, 3)
    assert (c.max_steps, c.batch_size, c.sequence_length) == (20000, 16, 2048)


def test_no_checkpoint_means_no_checkpoint_dir_and_default_path_is_namespaced():
    minimal = load_trainingjobs(REPO / "examples" / "minimal.yaml")[0]
    assert contract_for(minimal).checkpoint_dir == ""
    scratch = load_trainingjobs(REPO / "examples" / "checkpoint-emptydir.yaml")[0]
    assert contract_for(scratch, "/tmp/x").checkpoint_dir == "/tmp/x/default/gpt-scratch"


def test_powersgd_start_scales_with_max_steps_unless_an_iteration_is_given():
    c = TrainerContract(compression="powersgd", max_steps=20000, powersgd_start_fraction=0.05)
    assert c.powersgd_start() == 1000
    assert c.replace(max_steps=300).powersgd_start() == 15
    assert c.replace(powersgd_start_iteration=7).powersgd_start() == 7
    # Error feedback and warm start need a plain step to fill their memories first; without both, one step will do.
    assert c.replace(max_steps=10).powersgd_start() == 2
    assert c.replace(max_steps=10, powersgd_error_feedback=False, powersgd_warm_start=False).powersgd_start() == 1


def test_powersgd_defaults_of_the_spec_and_the_contract_agree():
    """A job that says only `type: powersgd` trains with the spec's documented defaults."""
    from kubetrain.api.manifests import parse_trainingjob
    from kubetrain.api.models import PowerSGDSpec

    job = parse_trainingjob({"apiVersion": "kubetrain.dev/v1alpha1", "kind": "TrainingJob", "metadata": {"name": "j"},
                             "spec": {"compression": {"type": "powersgd"}, "trainer": {"maxSteps": 300}}})
    c = contract_for(job)
    d = PowerSGDSpec()
    assert (c.powersgd_rank, c.powersgd_start_fraction, c.powersgd_start_iteration) == (d.rank, d.start_fraction, 0)
    assert (c.powersgd_error_feedback, c.powersgd_warm_start, c.powersgd_min_compression_rate) == (
        d.error_feedback, d.warm_start, d.min_compression_rate)
    assert c.powersgd_start() == round(d.start_fraction * 300)
    base = TrainerContract()
    assert (base.powersgd_rank, base.powersgd_start_fraction) == (d.rank, d.start_fraction)
