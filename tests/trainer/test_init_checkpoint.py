"""A job that starts from another job's checkpoint (init_checkpoint_dir): what a population-based-training
trial does when it continues a better trial's model with its own, perturbed, learning rate."""

from __future__ import annotations

import re

import pytest
import torch

from conftest import child_env, tiny_contract, torchrun_standalone
from kubetrain_trainer import checkpoint as ck
from kubetrain_trainer.builtin_gpt import GPT, GPTConfig
from kubetrain_trainer.failure import ConfigError


def _state(seed: int, lr: float):
    torch.manual_seed(seed)
    model = GPT(GPTConfig(seq_len=16, d_model=32, n_layers=1, n_heads=2))
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    return model, ck.TrainState(model, opt)


def _save(directory, state, step: int) -> None:
    mgr = ck.CheckpointManager(str(directory), keep=2, rank=0, world_size=1)
    mgr.prepare()
    mgr.claim()
    mgr.save(state, ck.CheckpointMeta(step=step, sample_position=8 * step, world_size=1))


def test_borrowed_checkpoint_brings_the_weights_and_step_but_not_the_learning_rate(tmp_path):
    parent, parent_state = _state(1, lr=1e-2)
    _save(tmp_path / "parent", parent_state, 20)

    child, child_state = _state(2, lr=5e-4)
    mgr = ck.CheckpointManager(str(tmp_path / "child"), keep=2, rank=0, world_size=1, init_dir=str(tmp_path / "parent"))
    mgr.prepare()
    meta = mgr.load_latest(child_state)
    assert (meta.step, meta.sample_position) == (20, 160)
    for name, tensor in child.state_dict().items():
        assert torch.equal(tensor, parent.state_dict()[name]), name
    assert [g["lr"] for g in child_state.optimizer.param_groups] == [5e-4]

    # Once the child has a checkpoint of its own, a restart resumes that one, not the parent's.
    mgr.claim()
    mgr.save(child_state, ck.CheckpointMeta(step=25, sample_position=200, world_size=1))
    _, again = _state(3, lr=5e-4)
    meta = ck.CheckpointManager(str(tmp_path / "child"), keep=2, rank=0, world_size=1,
                                init_dir=str(tmp_path / "parent")).load_latest(again)
    assert meta.step == 25
    # And a plain resume of the parent keeps the parent's own learning rate from its checkpoint.
    _, resumed = _state(4, lr=1e-2)
    assert ck.CheckpointManager(str(tmp_path / "parent"), keep=2, rank=0, world_size=1).load_latest(resumed).step == 20


def test_an_empty_init_dir_is_a_configuration_error(tmp_path):
    (tmp_path / "parent").mkdir()
    _, state = _state(1, lr=1e-3)
    mgr = ck.CheckpointManager(str(tmp_path / "child"), keep=2, rank=0, world_size=1, init_dir=str(tmp_path / "parent"))
    mgr.prepare()
    with pytest.raises(ConfigError, match="holds no complete checkpoint"):
        mgr.load_latest(state)


def test_a_job_trains_on_from_another_jobs_checkpoint(tmp_path):
    from kubetrain_trainer.status import read_status

    first = tiny_contract(tmp_path, max_steps=30, checkpoint_interval_steps=10, sample_log_path="",
                          status_path=str(tmp_path / "first.json"))
    run = torchrun_standalone(["-m", "kubetrain_trainer"], nproc=1, env=child_env(**first.to_env()), timeout=180)
    assert run.returncode == 0, run.stderr[-4000:]
    trained = read_status(tmp_path / "first.json")
    parent_steps = [s for s, _, _ in ck.list_checkpoints(first.checkpoint_dir)]
    assert parent_steps[-1] == 30

    second = first.replace(job_name="t2", checkpoint_dir=str(tmp_path / "ckpt2"), init_checkpoint_dir=first.checkpoint_dir,
                           max_steps=40, learning_rate=1e-3, status_path=str(tmp_path / "second.json"))
    run = torchrun_standalone(["-m", "kubetrain_trainer"], nproc=1, env=child_env(**second.to_env()), timeout=180)
    assert run.returncode == 0, run.stderr[-4000:]
    assert re.search(r"resumed from \S+step-00000030 \(another job's\) \(step 30", run.stderr), run.stderr[-3000:]
    after = read_status(tmp_path / "second.json")
    # It went on from the other job's model (near its last loss, far below a fresh start's) ...
    assert after["start_step"] == 30 and after["step"] == 40
    assert after["first_loss"] < trained["loss"] + 0.5 < trained["first_loss"]
    # ... wrote its own checkpoints, and left the other job's as they were.
    assert [s for s, _, _ in ck.list_checkpoints(second.checkpoint_dir)][-1] == 40
    assert [s for s, _, _ in ck.list_checkpoints(first.checkpoint_dir)] == parent_steps
