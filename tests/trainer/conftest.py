"""Shared helpers of the trainer suite: tiny contracts, torchrun launches, sample-log checks.

Tests that start real torchrun processes are marked ``torchrun``; they run on
CPU with gloo and need no GPU. Every wait is bounded by a generous timeout,
and assertions are about outcomes (steps, checkpoints, sample ids, messages),
never about how long something took.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
for sub in ("operator", "trainer-image"):
    p = str(REPO / sub)
    if p not in sys.path:
        sys.path.insert(0, p)

from kubetrain.contract import TrainerContract  # noqa: E402
from support.process_leaks import no_leaked_processes  # noqa: E402

HERE = Path(__file__).resolve().parent


@pytest.fixture(autouse=True)
def _no_leaked_processes(monkeypatch):
    """Every trainer test starts real processes: a test that leaves one running fails (see support.process_leaks)."""
    with no_leaked_processes(monkeypatch) as mark:
        yield mark


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.timeout(300))


def child_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "operator"), str(REPO / "trainer-image"), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.setdefault("OMP_NUM_THREADS", "1")
    env.update(extra)
    return env


def torchrun_standalone(script_or_module: list[str], nproc: int, env: dict[str, str], timeout: float = 240) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc-per-node=nproc ...`` (no restarts), output captured."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", "--max-restarts=0", *script_or_module]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)


def tiny_contract(tmp_path: Path, **changes) -> TrainerContract:
    """builtin:gpt small enough for a few ms per step on a CPU, with a small dataset (~78 steps per epoch at W=2)."""
    base = TrainerContract(
        job_name="t",
        namespace="test",
        workload="builtin:gpt",
        workload_args="layers=2,d_model=64,heads=2,corpus_chars=20000",
        max_steps=400,
        batch_size=4,
        sequence_length=32,
        learning_rate=3e-3,
        checkpoint_dir=str(tmp_path / "ckpt"),
        checkpoint_interval_steps=20,
        checkpoint_keep=2,
        metrics_port=free_port_block(),
        sample_log_path=str(tmp_path / "samples.jsonl"),
        process_group_timeout_seconds=60,
    )
    return base.replace(**changes)


def tiny_manifest(tmp_path: Path, **spec_changes) -> str:
    """examples/minimal.yaml, shrunk to finish in seconds on a 2-core CPU (the tiny GPT of tiny_contract)."""
    doc = yaml.safe_load((REPO / "examples" / "minimal.yaml").read_text())
    doc["spec"]["trainer"].update(
        maxSteps=100, batchSize=4, sequenceLength=32, learningRate=3e-3,
        args={"layers": "2", "d_model": "64", "heads": "2", "corpus_chars": "20000"},
    )
    doc["spec"]["metrics"] = {"port": free_port_block()}  # the agents use port and port + 1
    doc["spec"].update(spec_changes)
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(doc))
    return str(path)


def kubetrain_cli(*args: str) -> list[str]:
    """The argv of ``kubetrain ARGS...`` in this interpreter."""
    return [sys.executable, "-m", "kubetrain.cli", *args]


def free_port_block(n: int = 4) -> int:
    """A base port with ``n`` free ports after it (metrics ports of local agents)."""
    import socket

    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            base = s.getsockname()[1]
        if base + n >= 65535:
            continue
        ok = True
        for port in range(base, base + n):
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    ok = False
                    break
        if ok:
            return base
    raise RuntimeError("no free port block")


def wait_until(predicate, timeout: float, interval: float = 0.1, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def read_sample_log(path: Path) -> list[dict]:
    """JSON lines written by global rank 0 (a line cut short by a SIGKILL is skipped)."""
    out = []
    if not path.exists():
        return out
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


def kept_history(records: list[dict]) -> list[dict]:
    """The steps that count: a record for step k replaces every record for steps >= k (replayed after a restart)."""
    history: list[dict] = []
    for rec in records:
        while history and history[-1]["step"] >= rec["step"]:
            history.pop()
        history.append(rec)
    return history


def assert_epochs_exact(history: list[dict], num_samples: int) -> dict:
    """Every complete epoch of the kept stream holds every sample id exactly once; returns facts for further checks."""
    assert [r["step"] for r in history] == list(range(history[0]["step"], history[0]["step"] + len(history))), "steps not contiguous"
    assert history[0]["position"] == 0 and history[0]["step"] == 1
    stream: list[int] = []
    for rec in history:
        assert rec["position"] == len(stream), f"step {rec['step']}: position {rec['position']} != samples so far {len(stream)}"
        for ids in rec["ids"]:
            stream.extend(ids)
    full = len(stream) // num_samples
    assert full >= 1, "the run did not finish one epoch"
    for e in range(full):
        block = stream[e * num_samples : (e + 1) * num_samples]
        assert sorted(block) == list(range(num_samples)), f"epoch {e}: ids repeated or missing"
    # The partial epoch at the end has no repeats either.
    tail = stream[full * num_samples :]
    assert len(set(tail)) == len(tail)
    return {"stream": stream, "epochs": full}
