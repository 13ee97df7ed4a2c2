"""Checkpoints: an interrupted write never corrupts the last good one; listing ignores incomplete ones."""

from __future__ import annotations

import json
import signal
import subprocess
import sys

import pytest
import torch

from conftest import HERE, child_env, wait_until
from kubetrain_trainer import checkpoint as ck
from kubetrain_trainer.builtin_gpt import GPT, GPTConfig


def _fresh_state():
    torch.manual_seed(123)  # different initial weights than the writer's
    model = GPT(GPTConfig(seq_len=16, d_model=32, n_layers=1, n_heads=2))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    return model, ck.TrainState(model, opt)


@pytest.mark.parametrize("mode", ["during-dcp", "before-rename"])
def test_interrupted_write_keeps_the_last_good_checkpoint(tmp_path, mode):
    proc = subprocess.Popen([sys.executable, str(HERE / "ckpt_writer.py"), str(tmp_path), mode], env=child_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_until(lambda: (tmp_path / "READY").exists() or proc.poll() is not None, 120, what="the writer to reach the hang")
        assert proc.poll() is None, proc.stdout.read()
        proc.send_signal(signal.SIGKILL)  # the pod dies mid-write
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    root = tmp_path / "ckpt"
    leftovers = [p.name for p in root.iterdir() if p.name.startswith(".tmp-")]
    assert leftovers == [".tmp-step-00000020"]  # the interrupted attempt is there...
    found = ck.list_checkpoints(root)
    assert [step for step, _, _ in found] == [10]  # ...but only step 10 counts

    model, state = _fresh_state()
    mgr = ck.CheckpointManager(str(root), keep=2, rank=0, world_size=1)
    meta = mgr.load_latest(state)
    assert (meta.step, meta.sample_position) == (10, 80)
    good = torch.load(tmp_path / "good_weights.pt")
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, good[name]), name

    # The next save cleans the interrupted attempt up.
    mgr.claim()
    mgr.save(state, ck.CheckpointMeta(step=30, sample_position=240, world_size=1))
    assert sorted(p.name for p in root.iterdir() if not p.name.startswith(".owner")) == ["step-00000010", "step-00000030"]


def test_listing_ignores_unmarked_unreadable_and_foreign_dirs(tmp_path):
    model, state = _fresh_state()
    mgr = ck.CheckpointManager(str(tmp_path), keep=5, rank=0, world_size=1)
    mgr.prepare()
    mgr.claim()
    mgr.save(state, ck.CheckpointMeta(step=5, sample_position=5, world_size=1))
    good = tmp_path / "step-00000005"
    # A complete-looking directory without a marker, one with a broken marker, and unrelated names.
    import shutil

    shutil.copytree(good, tmp_path / "step-00000007")
    (tmp_path / "step-00000007" / ck.MARKER).unlink()
    shutil.copytree(good, tmp_path / "step-00000009")
    (tmp_path / "step-00000009" / ck.MARKER).write_text("{not json")
    (tmp_path / "step-latest").mkdir()
    (tmp_path / "notes.txt").write_text("x")
    assert [s for s, _, _ in ck.list_checkpoints(tmp_path)] == [5]
    assert ck.latest_checkpoint(tmp_path)[1].step == 5
    assert json.loads((good / ck.MARKER).read_text())["step"] == 5


def test_keep_last_k_and_stale_world_fencing(tmp_path):
    model, state = _fresh_state()
    mgr = ck.CheckpointManager(str(tmp_path), keep=2, rank=0, world_size=1)
    mgr.prepare()
    mgr.claim()
    for step in (1, 2, 3, 4):
        mgr.save(state, ck.CheckpointMeta(step=step, sample_position=step, world_size=1))
    assert [s for s, _, _ in ck.list_checkpoints(tmp_path)] == [3, 4]
    # Another world (a newer rendezvous round) claims the directory: this one must stop saving.
    other = ck.CheckpointManager(str(tmp_path), keep=2, rank=0, world_size=1)
    other.claim()
    with pytest.raises(ck.StaleWorldError):
        mgr.save(state, ck.CheckpointMeta(step=5, sample_position=5, world_size=1))
    assert [s for s, _, _ in ck.list_checkpoints(tmp_path)] == [3, 4]


def test_saving_a_step_that_is_saved_already_keeps_it(tmp_path, monkeypatch):
    model, state = _fresh_state()
    mgr = ck.CheckpointManager(str(tmp_path), keep=2, rank=0, world_size=1)
    mgr.prepare()
    mgr.claim()
    first = mgr.save(state, ck.CheckpointMeta(step=7, sample_position=56, world_size=1, reason="interval"))
    marker = (first / ck.MARKER).read_text()
    # SIGTERM right after: the same step again. The complete checkpoint is never removed, not even for a moment.
    removed = []
    monkeypatch.setattr(ck.shutil, "rmtree", lambda path, *a, **kw: removed.append(str(path)))
    again = mgr.save(state, ck.CheckpointMeta(step=7, sample_position=56, world_size=1, reason="sigterm"))
    assert again == first and removed == [] and (first / ck.MARKER).read_text() == marker
    assert [s for s, _, _ in ck.list_checkpoints(tmp_path)] == [7]
