"""LocalJob's processes never outlive what started them, and the leak check catches a test that leaves one.

Real processes: a LocalJob owned by a separate Python process that is then
SIGKILLed (no cleanup runs), an agent SIGKILLed alone (its trainers must
follow it), and pytest run on tests that leak on purpose.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import uuid

import pytest

from conftest import HERE, REPO, child_env, tiny_contract, wait_until
from kubetrain_trainer.local import LocalJob
from kubetrain_trainer.parent_death import LAUNCH_MARK
from kubetrain_trainer.process_scan import descendants, environ_of, marked
from support.process_leaks import TEST_MARK

pytestmark = pytest.mark.torchrun


def _alive(pids: list[int]) -> list[int]:
    return [p for p in pids if environ_of(p) is not None]


def test_trainers_die_with_their_agent(tmp_path):
    """SIGKILL of the agent alone (not kill_agent, which kills the tree): the kernel ends its trainer."""
    contract = tiny_contract(tmp_path, max_steps=100_000)
    with LocalJob(contract, replicas=2, workdir=tmp_path / "job", max_restarts=3) as job:
        wait_until(lambda: (st := job.status()) and st["step"] >= 1 and st["world_size"] == 2, 150, what="training")
        agent = job.agents[0].process
        workers = descendants(agent.pid)
        assert workers, "the agent has no trainer"
        os.kill(agent.pid, signal.SIGKILL)
        agent.wait(10)
        wait_until(lambda: not _alive(workers), 10, what=f"the trainers {workers} of the SIGKILLed agent to die")


OWNER = textwrap.dedent("""
    import sys, time
    sys.path[:0] = [sys.argv[1]]
    from conftest import tiny_contract
    from kubetrain_trainer.local import LocalJob
    from pathlib import Path
    job = LocalJob(tiny_contract(Path(sys.argv[2]), max_steps=100_000), replicas=2, workdir=Path(sys.argv[2]) / "job")
    job.start()
    print(job.rdzv_id, flush=True)
    time.sleep(3600)
""")


def test_nothing_outlives_a_sigkilled_local_job_owner(tmp_path):
    """The process holding a LocalJob dies without cleanup: store, agents and trainers go with it."""
    env = child_env(PYTHONPATH=os.pathsep.join([str(HERE), str(REPO / "tests"), child_env()["PYTHONPATH"]]))
    owner = subprocess.Popen([sys.executable, "-c", OWNER, str(HERE), str(tmp_path)], env=env,
                             stdout=subprocess.PIPE, text=True)
    job_id = owner.stdout.readline().strip()
    assert job_id, "the owner did not start its LocalJob"
    status = tmp_path / "job" / "status.json"
    wait_until(status.exists, 150, what="training")
    started = marked(LAUNCH_MARK, job_id)
    assert len(started) >= 5, started  # store, 2 agents, 2 trainers
    owner.kill()
    owner.wait(10)
    wait_until(lambda: not marked(LAUNCH_MARK, job_id), 15, what="every process of the killed owner's job to die")


LEAKY = textwrap.dedent('''
    import subprocess

    def test_leaves_a_child():
        subprocess.Popen(["sleep", "300"])

    def test_leaves_an_orphan():
        subprocess.run(["sh", "-c", "sleep 300 &"], check=True)  # re-parented to init: only the mark finds it

    def test_cleans_up():
        subprocess.run(["true"], check=True)
''')


def test_leak_check_fails_a_test_that_leaves_a_process(tmp_path):
    (tmp_path / "conftest.py").write_text(textwrap.dedent('''
        import pytest
        from support.process_leaks import no_leaked_processes

        @pytest.fixture(autouse=True)
        def _leaks(monkeypatch):
            with no_leaked_processes(monkeypatch, settle=1):
                yield
    '''))
    (tmp_path / "test_leaky.py").write_text(LEAKY)
    mark = uuid.uuid4().hex  # the inner session's sleeps inherit it: a way to check they were all killed
    env = child_env(PYTHONPATH=os.pathsep.join([str(REPO / "tests"), child_env()["PYTHONPATH"]]), OUTER_MARK=mark)
    env.pop(TEST_MARK, None)
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    assert "3 passed, 2 errors" in out, out  # the tests pass; their teardown fails
    # Each leaky test's teardown fails on its own process (pytest repeats the message in its summary,
    # untruncated when CI is set: count the teardown errors, not the message).
    assert "ERROR at teardown of test_leaves_a_child" in out and "ERROR at teardown of test_leaves_an_orphan" in out, out
    assert "left 1 process(es) running" in out and "left 2 process" not in out and "sleep 300" in out, out
    assert not marked("OUTER_MARK", mark), "the leak check did not kill what it found"
