"""Real elastic runs: a rendezvous-store process and torchrun agents on this machine (CPU, gloo).

Losing an agent (SIGKILL of torchrun and its workers, like a lost node),
adding one (scale-up), SIGTERM (pod deletion) and restarting, failures through
the real entrypoint, the user-workload example and `run_local`. Sample ids
logged by global rank 0 prove the data order across the real world-size
changes.
"""

from __future__ import annotations

import io
import re
import signal

import pytest

from conftest import HERE, REPO, assert_epochs_exact, child_env, kept_history, read_sample_log, tiny_contract, torchrun_standalone, wait_until
from kubetrain.contract.result import parse_result
from kubetrain_trainer import checkpoint as ck
from kubetrain_trainer.local import LocalJob, run_local

pytestmark = pytest.mark.torchrun


def _num_samples(contract) -> int:
    from kubetrain_trainer.builtin_gpt import TokenWindows, generate_corpus

    chars = int(contract.workload_kwargs()["corpus_chars"])
    return len(TokenWindows(generate_corpus(chars).encode(), contract.sequence_length))


def _running_at(job: LocalJob, world_size: int, min_step: int, timeout: float = 150):
    def ready():
        st = job.status()
        if st and st["world_size"] == world_size and st["step"] >= min_step and st.get("checkpoint_step"):
            return st
        assert any(a.returncode is None for a in job.agents), "all agents exited early:\n" + job.logs(0)[-3000:]
        return None

    return wait_until(ready, timeout, what=f"training at world size {world_size} past step {min_step}")


def _world_sizes(history):
    return [r["world_size"] for r in history]


def test_losing_an_agent_survivor_resumes_at_smaller_world_and_finishes(tmp_path):
    contract = tiny_contract(tmp_path, max_steps=600)
    with LocalJob(contract, replicas=2, workdir=tmp_path / "job", max_restarts=3) as job:
        before = _running_at(job, world_size=2, min_step=30)
        job.kill_agent(0, signal.SIGKILL)  # the agent and its workers vanish; agent 0 may well host rank 0
        codes = job.wait(timeout=240)
        assert codes == {0: -signal.SIGKILL, 1: 0}, job.logs(1)[-4000:]
        survivor_log = job.logs(1)
        final = job.status()
        messages = job.termination_messages()
    assert final["step"] == 600 and final["world_size"] == 1
    # The completed agent's termination message carries the job's last figures (what the operator's status shows).
    result = parse_result(messages.get(1))
    assert result is not None and result.step == 600, messages
    assert result.loss == pytest.approx(final["loss"], rel=1e-4) and result.tokens_per_second > 0
    resumed = re.findall(r"resumed from \S+ \(step (\d+), saved at world size 2, now 1\)", survivor_log)
    assert resumed and int(resumed[-1]) >= 20, survivor_log[-3000:]
    assert ck.latest_checkpoint(contract.checkpoint_dir)[1].step == 600
    # Data order: the kept history crosses 2 -> 1 and still sees every sample exactly once per epoch.
    history = kept_history(read_sample_log(tmp_path / "samples.jsonl"))
    sizes = _world_sizes(history)
    assert sizes[0] == 2 and sizes[-1] == 1 and sizes.index(1) > 0
    facts = assert_epochs_exact(history, _num_samples(contract))
    change_position = history[sizes.index(1)]["position"]
    assert change_position < facts["epochs"] * _num_samples(contract), "the world-size change lies outside the checked epochs"
    assert before["step"] >= 30


def test_sigterm_of_one_agent_survivor_resumes_from_its_checkpoint_at_smaller_world(tmp_path):
    # Deleting one pod of two: only its torchrun gets SIGTERM and forwards it to its worker. Only the
    # SIGTERM checkpoint and the final one are written, so "resumed from step N" can only mean that one.
    contract = tiny_contract(tmp_path, max_steps=600, checkpoint_interval_steps=10_000)
    with LocalJob(contract, replicas=2, workdir=tmp_path / "job", max_restarts=3) as job:
        wait_until(lambda: (st := job.status()) and st["world_size"] == 2 and st["step"] >= 30, 150, what="step 30 at world size 2")
        job.kill_agent(0, signal.SIGTERM)
        codes = job.wait(timeout=240)
        survivor_log, stopped_log = job.logs(1), job.logs(0)
        messages = job.termination_messages()
        final = job.status()
    assert codes[1] == 0, survivor_log[-4000:]
    assert "terminate called" not in survivor_log + stopped_log  # the gloo exit race (process_exit)
    # The terminated pod's worker checkpointed (with its peer) and reported a preemption, not a failure.
    stopped = re.match(r"Preempted: stopped by signal at step (\d+); checkpoint written", messages.get(0, ""))
    assert stopped, messages
    step = int(stopped.group(1))
    assert 30 <= step < 600
    saved = {s: meta for s, _, meta in ck.list_checkpoints(contract.checkpoint_dir)}
    assert saved[step].reason == "sigterm" and saved[step].world_size == 2
    # The survivor took the peer-preempted exit (code 75, one agent restart), not a communication error.
    assert f"a peer was preempted; checkpoint written at step {step}" in survivor_log, survivor_log[-4000:]
    assert "CommunicationTimeout" not in survivor_log, survivor_log[-4000:]
    assert re.search(rf"resumed from \S+ \(step {step}, saved at world size 2, now 1\)", survivor_log), survivor_log[-4000:]
    assert final["step"] == 600 and final["world_size"] == 1 and final["start_step"] == step
    assert ck.latest_checkpoint(contract.checkpoint_dir)[1].step == 600
    # Nothing replayed or skipped: the smaller world continued exactly where the checkpoint was taken.
    records = read_sample_log(tmp_path / "samples.jsonl")
    assert [r["step"] for r in records] == list(range(1, 601))
    sizes = _world_sizes(records)
    assert set(sizes[:step]) == {2} and set(sizes[step:]) == {1}
    assert_epochs_exact(kept_history(records), _num_samples(contract))


def test_adding_an_agent_scales_up_without_losing_steps(tmp_path):
    # A 25 ms pause per step keeps the world-size-1 phase longer than the new agent's start-up.
    contract = tiny_contract(tmp_path, max_steps=600, checkpoint_interval_steps=50, workload="slow_workload:workload",
                             workload_args="layers=2,d_model=64,heads=2,corpus_chars=20000,slow_ms=25")
    with LocalJob(contract, replicas=1, max_replicas=2, workdir=tmp_path / "job", max_restarts=3,
                  extra_env={"PYTHONPATH": str(HERE)}) as job:
        _running_at(job, world_size=1, min_step=60)
        job.add_agent()
        codes = job.wait(timeout=240)
        logs = job.logs(0) + job.logs(1)
        final = job.status()
    assert codes == {0: 0, 1: 0}, logs[-4000:]
    assert final["step"] == 600 and final["world_size"] == 2
    # The running worker was told to stop (SIGTERM from its agent), checkpointed, and the bigger world resumed there.
    stop = re.search(r"got SIGTERM: checkpointing at step (\d+)", logs)
    assert stop, logs[-4000:]
    assert re.search(rf"resumed from \S+ \(step {stop.group(1)}, saved at world size 1, now 2\)", logs), logs[-4000:]
    records = read_sample_log(tmp_path / "samples.jsonl")
    steps = [r["step"] for r in records]
    assert steps == list(range(1, 601)), "a step was replayed or skipped: the scale-up lost progress"
    assert _world_sizes(records)[0] == 1 and _world_sizes(records)[-1] == 2
    assert_epochs_exact(kept_history(records), _num_samples(contract))


def test_sigterm_writes_a_checkpoint_and_the_next_start_resumes(tmp_path):
    contract = tiny_contract(tmp_path, max_steps=500, checkpoint_interval_steps=10_000)  # only SIGTERM and final saves
    with LocalJob(contract, replicas=2, workdir=tmp_path / "first", max_restarts=0) as job:
        wait_until(lambda: (st := job.status()) and st["world_size"] == 2 and st["step"] >= 30, 150, what="step 30 at world size 2")
        for index in (0, 1):
            job.kill_agent(index, signal.SIGTERM)  # the pods are deleted: torchrun forwards SIGTERM to the workers
        job.wait(timeout=120)
        messages = job.termination_messages()
    found = ck.list_checkpoints(contract.checkpoint_dir)
    assert len(found) == 1
    step, _, meta = found[0]
    assert meta.reason == "sigterm" and 30 <= step < 500
    assert any(m.startswith(f"Preempted: stopped by signal at step {step}") for m in messages.values()), messages

    with LocalJob(contract, replicas=1, workdir=tmp_path / "second", max_restarts=0) as job:
        assert job.wait(timeout=180) == {0: 0}, job.logs(0)[-4000:]
        log = job.logs(0)
        final = job.status()
    assert re.search(rf"resumed from \S+ \(step {step}, saved at world size 2, now 1\)", log), log[-3000:]
    assert final["start_step"] == step and final["step"] == 500
    records = read_sample_log(tmp_path / "samples.jsonl")
    second = [r["step"] for r in records if r["world_size"] == 1]
    assert second == list(range(step + 1, 501)), "the step counter did not continue from the checkpoint"
    assert_epochs_exact(kept_history(records), _num_samples(contract))


def test_refused_configuration_reports_config_error_through_the_entrypoint(tmp_path):
    term = tmp_path / "termination-log"
    contract = tiny_contract(tmp_path, precision="fp8", termination_message_path=str(term))
    proc = torchrun_standalone(["-m", "kubetrain_trainer"], nproc=1, env=child_env(**contract.to_env()), timeout=120)
    assert proc.returncode != 0
    assert term.read_text().startswith("ConfigError: precision fp8 needs an NVIDIA GPU")
    assert re.search(r"exitcode\s*:\s*2\b", proc.stderr), proc.stderr[-3000:]


def test_user_code_failure_reports_user_error(tmp_path):
    term = tmp_path / "termination-log"
    contract = tiny_contract(tmp_path, workload="failing_workload:workload", termination_message_path=str(term), checkpoint_dir="")
    env = child_env(**contract.to_env())
    env["PYTHONPATH"] = f"{REPO / 'tests' / 'trainer'}:{env['PYTHONPATH']}"
    proc = torchrun_standalone(["-m", "kubetrain_trainer"], nproc=2, env=env, timeout=120)
    assert proc.returncode != 0
    text = term.read_text()
    assert text.splitlines()[0] == "UserError: ZeroDivisionError: the user's loss divided by zero", text
    assert re.search(r"exitcode\s*:\s*5\b", proc.stderr), proc.stderr[-3000:]
    # A missing user module is a configuration error, never retried.
    term.unlink()
    env.update(KUBETRAIN_WORKLOAD="no_such_module:workload")
    proc = torchrun_standalone(["-m", "kubetrain_trainer"], nproc=1, env=env, timeout=120)
    assert term.read_text().startswith("ConfigError: workload module 'no_such_module' cannot be imported")


def test_user_workload_example_trains_with_run_local(tmp_path):
    contract = tiny_contract(
        tmp_path, workload="mypkg.train:workload", workload_args="hidden=64,samples=4000", batch_size=32, max_steps=150,
        learning_rate=1e-2, precision="bf16", compression="fp16", checkpoint_interval_steps=50,
    )
    out = io.StringIO()
    result = run_local(contract, replicas=2, workdir=tmp_path / "run", out=out, timeout=240,
                       extra_env={"PYTHONPATH": str(REPO / "examples" / "user-workload")})
    text = out.getvalue()
    assert result.returncode == 0, text + "\n" + (tmp_path / "run" / "agent-0.log").read_text()[-3000:]
    assert result.status["step"] == 150
    assert result.status["loss"] < 0.7 * result.first_loss, text
    assert "completed (exit 0)" in text and "tokens/s" in text and "/metrics" in text
    assert ck.latest_checkpoint(contract.checkpoint_dir)[1].step == 150


def test_fsdp_checkpoint_reshards_from_two_processes_to_one(tmp_path):
    contract = tiny_contract(tmp_path, strategy="fsdp", precision="bf16", compression="bf16", max_steps=30, checkpoint_interval_steps=10,
                             status_path=str(tmp_path / "status.json"))
    first = torchrun_standalone(["-m", "kubetrain_trainer"], nproc=2, env=child_env(**contract.to_env()), timeout=180)
    assert first.returncode == 0, first.stderr[-4000:]
    trained = json_status(tmp_path)
    assert trained["step"] == 30 and trained["loss"] < trained["first_loss"] - 1.0
    resumed_contract = contract.replace(max_steps=40)
    second = torchrun_standalone(["-m", "kubetrain_trainer"], nproc=1, env=child_env(**resumed_contract.to_env()), timeout=180)
    assert second.returncode == 0, second.stderr[-4000:]
    assert re.search(r"resumed from \S+ \(step 30, saved at world size 2, now 1\)", second.stderr), second.stderr[-3000:]
    after = json_status(tmp_path)
    # Sharded parameters and optimizer state came back: training continues near the old loss, not from scratch.
    assert after["start_step"] == 30 and after["step"] == 40
    assert after["first_loss"] < trained["loss"] + 0.5 < trained["first_loss"]


def json_status(tmp_path):
    from kubetrain_trainer.status import read_status

    return read_status(tmp_path / "status.json")
