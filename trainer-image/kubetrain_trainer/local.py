"""Run a job on this machine the way the operator runs it on a cluster. Torch-free.

One rendezvous-store process (:mod:`kubetrain.contract.store`) plus N torchrun agents, each
a subprocess started with the same flags the operator gives its pods
(:func:`kubetrain.contract.torchrun.torchrun_args`), ``TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1``
and its own metrics port — so killing any agent is survivable, exactly as
losing any pod is.

Nothing it starts outlives it. :meth:`LocalJob.stop` (and ``kubetrain run`` on
SIGTERM/SIGINT/SIGHUP) stops the agents as a pod deletion would: SIGTERM, the
trainers checkpoint, SIGKILL after :data:`STOP_GRACE_SECONDS`, then the store.
If the launcher dies without running any of that, the kernel ends the rest
(:mod:`.parent_death`: the store and the agents die with the launcher, each
worker with its agent).

Used by ``kubetrain run`` / ``make demo`` (:func:`run_local`, with a progress
bar and a summary) and by tests and benchmarks (:class:`LocalJob`:
``kill_agent``, ``add_agent``, ``wait``, ``status``).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from kubetrain.contract import TrainerContract
from kubetrain.contract.ports import free_port
from kubetrain.contract.torchrun import ELASTIC_ENV, RendezvousTimeouts, torchrun_args

from kubetrain_trainer.checkpoint_layout import latest_checkpoint
from kubetrain_trainer.parent_death import LAUNCH_MARK, die_with
from kubetrain_trainer.process_scan import descendants, marked
from kubetrain_trainer.status import read_status
from kubetrain_trainer.stop_flag import StopFlag

# Local agents share one host: short timeouts make a lost agent expire after
# keep_alive_interval × keep_alive_max_attempt = 5 s and a round close
# last_call seconds after that. Do not go below 3 attempts: an agent refreshes
# its heartbeat only when the last one is a full interval old, so heartbeats
# can be up to 2 intervals apart; with 1 s × 2 attempts we saw a busy but
# healthy agent declared dead, and a second agent formed its own world.
LOCAL_TIMEOUTS = RendezvousTimeouts(join=300, last_call=3, close=10, heartbeat=5, keep_alive_interval=1, keep_alive_max_attempt=5)

# From the stop (SIGTERM to the agents) to SIGKILL of whatever is left. A trainer
# stops at its next step boundary and writes a checkpoint: on a CPU that is one
# step plus well under a second for a model that trains here at all. torchrun
# gets less, so that its own SIGTERM -> SIGKILL of its workers fires first and
# every agent still exits by itself (as the operator's pods: grace - 20 s).
STOP_GRACE_SECONDS = 30
AGENT_SHUTDOWN_SECONDS = STOP_GRACE_SECONDS - 10
# kubetrain run's own stop signals: a user's kill, Ctrl-C, a closed terminal.
RUN_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)

_PKG_ROOT = Path(__file__).resolve().parent.parent  # .../trainer-image
# The directory that holds the top-level kubetrain package, however deep the contract's module sits in it.
_CONTRACT_ROOT = Path(sys.modules[TrainerContract.__module__.split(".")[0]].__file__).resolve().parent.parent  # .../operator


def build_torchrun_args(
    *,
    min_nodes: int,
    max_nodes: int,
    nproc_per_node: int,
    endpoint: str,
    rdzv_id: str,
    max_restarts: int,
    python: str = sys.executable,
    local_addr: str | None = "127.0.0.1",
    timeouts: RendezvousTimeouts = LOCAL_TIMEOUTS,
    monitor_interval: float = 0.5,
    program: tuple[str, ...] | None = None,
    shutdown_timeout: int = AGENT_SHUTDOWN_SECONDS,
) -> list[str]:
    """The argv of one local agent: the operator's torchrun flags, run by ``python``. Pure; no torch needed.

    Unlike a pod's, each worker starts through :mod:`.parent_death`: it dies with
    its agent (in a pod the container does that).
    """
    args = torchrun_args(
        min_nodes=min_nodes,
        max_nodes=max_nodes,
        nproc_per_node=nproc_per_node,
        endpoint=endpoint,
        rdzv_id=rdzv_id,
        max_restarts=max_restarts,
        program=(python, "-m", "kubetrain_trainer.parent_death", *(program or (python, "-m", "kubetrain_trainer"))),
        local_addr=local_addr,
        timeouts=timeouts,
        monitor_interval=monitor_interval,
        shutdown_timeout=shutdown_timeout,
    )
    return [python, *args[1:]]


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


@dataclass
class Agent:
    index: int
    process: subprocess.Popen
    metrics_port: int
    log_path: Path
    termination_path: Path
    error_file: Path
    started_at: float = field(default_factory=time.time)

    @property
    def returncode(self) -> int | None:
        return self.process.poll()


class LocalJob:
    """A rendezvous store and torchrun agents as local processes. Use as a context manager.

    Start it from a thread that outlives it (the main thread): the kernel ties
    its children's lives to the thread that started them (:mod:`.parent_death`).
    """

    def __init__(
        self,
        contract: TrainerContract,
        *,
        replicas: int = 2,
        nproc_per_node: int = 1,
        min_replicas: int = 1,
        max_replicas: int | None = None,
        max_restarts: int = 3,
        workdir: str | os.PathLike | None = None,
        timeouts: RendezvousTimeouts = LOCAL_TIMEOUTS,
        python: str = sys.executable,
        extra_env: dict[str, str] | None = None,
        omp_threads: int | None = None,
        program: tuple[str, ...] | None = None,
    ):
        self.replicas = replicas
        self.nproc_per_node = nproc_per_node
        self.min_replicas = min_replicas
        self.max_replicas = max_replicas or replicas
        self.max_restarts = max_restarts
        self.timeouts = timeouts
        self.python = python
        self.program = program
        self.extra_env = dict(extra_env or {})
        self._own_workdir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix=f"kubetrain-{contract.job_name}-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.status_path = self.workdir / "status.json"
        changes = {"status_path": str(self.status_path)}
        if not contract.pod_name:
            changes["pod_name"] = ""
        self.contract = contract.replace(**changes)
        self.rdzv_id = f"{contract.job_name}-{uuid.uuid4().hex[:8]}"
        # Every process of this job carries it (workers inherit it from their agent): a sweep
        # at stop finds what lost its parent, and a worker checks that its parent is its agent.
        self.mark = {LAUNCH_MARK: self.rdzv_id}
        self.rdzv_port = free_port()
        cpus = os.cpu_count() or 1
        self.omp_threads = omp_threads or max(1, cpus // max(1, self.max_replicas * nproc_per_node))
        self.store: subprocess.Popen | None = None
        self.agents: list[Agent] = []

    # -- lifecycle -------------------------------------------------------------
    def __enter__(self) -> "LocalJob":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def _env(self, index: int, metrics_port: int, termination: Path, error_file: Path) -> dict[str, str]:
        env = dict(os.environ)
        env.update(self.contract.to_env())
        env.update(ELASTIC_ENV)
        env.update(
            KUBETRAIN_POD_NAME=f"{self.contract.job_name}-local-{index}",
            KUBETRAIN_METRICS_PORT=str(metrics_port),
            KUBETRAIN_TERMINATION_MESSAGE_PATH=str(termination),
            TORCHELASTIC_ERROR_FILE=str(error_file),
            OMP_NUM_THREADS=str(self.omp_threads),
            PYTHONUNBUFFERED="1",
            **self.mark,
        )
        extra = dict(self.extra_env)
        paths = [extra.pop("PYTHONPATH", ""), str(_PKG_ROOT), str(_CONTRACT_ROOT), env.get("PYTHONPATH", "")]
        # Agents run in the workdir: make relative entries (PYTHONPATH=examples/...) absolute.
        entries = [str(Path(e).resolve()) for p in paths for e in p.split(os.pathsep) if e]
        env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(entries))
        env.update(extra)
        return env

    def start(self) -> None:
        store_log = open(self.workdir / "rdzv-store.log", "w")  # noqa: SIM115 - lives with the process
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys([str(_PKG_ROOT), str(_CONTRACT_ROOT), env.get("PYTHONPATH", "")])).rstrip(os.pathsep)
        env.update(self.mark)
        # Own sessions: a terminal's Ctrl-C reaches only the launcher, which stops the job in order.
        self.store = subprocess.Popen(
            [self.python, "-m", "kubetrain.contract.store", "--port", str(self.rdzv_port)],
            stdout=store_log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
            preexec_fn=die_with(os.getpid()),
        )
        deadline = time.monotonic() + 120
        while not _port_open(self.rdzv_port):
            if self.store.poll() is not None:
                raise RuntimeError(f"the rendezvous store exited with {self.store.returncode}; see {self.workdir / 'rdzv-store.log'}")
            if time.monotonic() > deadline:
                raise RuntimeError("the rendezvous store did not start listening within 120 s")
            time.sleep(0.1)
        for _ in range(self.replicas):
            self.add_agent()

    def add_agent(self) -> int:
        """Start one more torchrun agent (a new "pod"); returns its index."""
        index = len(self.agents)
        agent_dir = self.workdir / f"agent-{index}"
        agent_dir.mkdir(parents=True, exist_ok=True)
        metrics_port = self.contract.metrics_port + index
        termination = agent_dir / "termination-log"
        error_file = agent_dir / "error.json"
        argv = build_torchrun_args(
            min_nodes=self.min_replicas,
            max_nodes=self.max_replicas,
            nproc_per_node=self.nproc_per_node,
            endpoint=f"127.0.0.1:{self.rdzv_port}",
            rdzv_id=self.rdzv_id,
            max_restarts=self.max_restarts,
            python=self.python,
            timeouts=self.timeouts,
            program=self.program,
        )
        log_path = self.workdir / f"agent-{index}.log"
        log_fh = open(log_path, "w")  # noqa: SIM115 - lives with the process
        proc = subprocess.Popen(
            argv, stdout=log_fh, stderr=subprocess.STDOUT, env=self._env(index, metrics_port, termination, error_file),
            cwd=str(self.workdir), start_new_session=True, preexec_fn=die_with(os.getpid()),
        )
        self.agents.append(Agent(index, proc, metrics_port, log_path, termination, error_file))
        return index

    def kill_agent(self, index: int, sig: int = signal.SIGKILL) -> None:
        """Take an agent away. SIGKILL: the agent *and* its workers die at once, like a lost node.
        SIGTERM/SIGINT: only torchrun is signalled and it forwards to its workers, like a pod deletion."""
        agent = self.agents[index]
        pid = agent.process.pid
        if agent.process.poll() is not None:
            return
        if sig == signal.SIGKILL:
            victims = [pid, *descendants(pid)]
            for p in victims:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(p, signal.SIGKILL)
        else:
            os.kill(pid, sig)

    def poll(self) -> dict[int, int | None]:
        return {a.index: a.returncode for a in self.agents}

    def running(self) -> bool:
        return any(a.returncode is None for a in self.agents)

    def wait(self, timeout: float | None = None, agents: list[int] | None = None) -> dict[int, int | None]:
        """Wait until the given agents (default: all) have exited; returns their exit codes (None: still running at timeout)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        chosen = [self.agents[i] for i in (agents if agents is not None else range(len(self.agents)))]
        for a in chosen:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            with contextlib.suppress(subprocess.TimeoutExpired):
                a.process.wait(remaining)
        return {a.index: a.returncode for a in chosen}

    def status(self) -> dict | None:
        """Global rank 0's latest progress (step, loss, tokens/s, ETA, ...)."""
        return read_status(self.status_path)

    def termination_messages(self) -> dict[int, str]:
        out = {}
        for a in self.agents:
            with contextlib.suppress(OSError):
                text = a.termination_path.read_text().strip()
                if text:
                    out[a.index] = text
        return out

    def logs(self, index: int) -> str:
        with contextlib.suppress(OSError):
            return self.agents[index].log_path.read_text(errors="replace")
        return ""

    def stop(self, grace: float = STOP_GRACE_SECONDS, hurry=lambda: False) -> None:
        """SIGTERM running agents (they checkpoint and exit), SIGKILL what is left after ``grace``, stop the store.

        ``hurry()`` true (a second Ctrl-C) ends the grace early. Last, anything
        still carrying this job's mark is killed: a worker whose agent was
        SIGKILLed while it started can outlive it.
        """
        for a in self.agents:
            if a.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(a.process.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while self.running() and time.monotonic() < deadline and not hurry():
            time.sleep(0.1)
        for a in self.agents:
            if a.returncode is None:
                self.kill_agent(a.index, signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    a.process.wait(10)
        if self.store is not None and self.store.poll() is None:
            self.store.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.store.wait(15)
            if self.store.poll() is None:
                self.store.kill()
                self.store.wait(10)
        for pid in marked(LAUNCH_MARK, self.rdzv_id):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)

    def latest_checkpoint(self) -> tuple[int, Path] | None:
        """The newest complete checkpoint of this job: (step, directory)."""
        found = latest_checkpoint(self.contract.checkpoint_dir) if self.contract.checkpoint_dir else None
        return (found[1].step, found[0]) if found else None


# -- kubetrain run ------------------------------------------------------------------


@dataclass
class LocalRunResult:
    returncode: int
    workdir: Path
    status: dict | None
    first_loss: float | None
    agent_returncodes: dict[int, int | None]
    termination_messages: dict[int, str]
    metrics_urls: list[str]
    summary: str


def _bar(fraction: float, width: int = 24) -> str:
    filled = int(round(max(0.0, min(1.0, fraction)) * width))
    return "[" + "#" * filled + "-" * (width - filled) + "]"


def _fmt_seconds(s: float | None) -> str:
    if s is None:
        return "?"
    s = int(max(0, s))
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


def progress_line(st: dict) -> str:
    frac = st["step"] / max(st["max_steps"], 1)
    return (
        f"{_bar(frac)} step {st['step']}/{st['max_steps']}  loss {st['loss']:.4f}  "
        f"{st['tokens_per_second']:,.0f} tokens/s  world {st['world_size']}  ETA {_fmt_seconds(st.get('eta_seconds'))}"
    )


def run_local(
    contract: TrainerContract,
    *,
    replicas: int = 2,
    nproc_per_node: int = 1,
    min_replicas: int = 1,
    max_restarts: int = 3,
    workdir: str | os.PathLike | None = None,
    progress: bool = True,
    out: TextIO | None = None,
    timeout: float | None = None,
    extra_env: dict[str, str] | None = None,
    program: tuple[str, ...] | None = None,
) -> LocalRunResult:
    """Run ``contract`` locally on ``replicas`` agents × ``nproc_per_node`` CPU/GPU processes; show progress; summarise.

    Checkpoints go to ``contract.checkpoint_dir`` or, if empty, ``<workdir>/checkpoints``.
    ``extra_env`` is added to every agent's environment (e.g. a PYTHONPATH for user code).
    SIGTERM, SIGINT (Ctrl-C) or SIGHUP stops the job as a pod deletion does: the
    trainers write a checkpoint, whatever is left after :data:`STOP_GRACE_SECONDS`
    is killed, and the result's code is 128 + the signal's number (130 for Ctrl-C,
    143 for SIGTERM, 129 for SIGHUP). A second signal kills at once.
    """
    out = out or sys.stdout
    workdir = Path(workdir or tempfile.mkdtemp(prefix=f"kubetrain-{contract.job_name}-"))
    if not contract.checkpoint_dir:
        contract = contract.replace(checkpoint_dir=str(workdir / "checkpoints"))
    job = LocalJob(contract, replicas=replicas, nproc_per_node=nproc_per_node, min_replicas=min_replicas,
                   max_restarts=max_restarts, workdir=workdir, extra_env=extra_env, program=program)
    tty = hasattr(out, "isatty") and out.isatty()
    first_loss = None
    last_printed_decile = -1
    st = None
    stop = StopFlag(RUN_STOP_SIGNALS)
    # Signal handlers can only be set from the main thread; elsewhere the caller owns the signals.
    handling = stop.installed() if threading.current_thread() is threading.main_thread() else contextlib.nullcontext(stop)
    _say(out, f"kubetrain: running {contract.job_name!r} locally: {replicas} replica(s) × {nproc_per_node} process(es), "
              f"workdir {workdir}")
    started = time.monotonic()
    with handling:
        try:
            job.start()
            while job.running() and not stop.requested:
                if timeout is not None and time.monotonic() - started > timeout:
                    _say(out, "\nkubetrain: timeout; stopping the job")
                    break
                time.sleep(0.5)
                st = job.status() or st
                if st is None or not progress:
                    continue
                if first_loss is None and st.get("first_loss") is not None:
                    first_loss = st["first_loss"]
                line = progress_line(st)
                if tty:
                    _say(out, "\r" + line + " " * 4, end="")
                else:
                    decile = int(10 * st["step"] / max(st["max_steps"], 1))
                    if decile != last_printed_decile:
                        last_printed_decile = decile
                        _say(out, line)
            if stop.requested:
                _say(out, f"\nkubetrain: {signal.Signals(stop.signum).name}: asking the trainers to checkpoint and stop "
                          f"(up to {STOP_GRACE_SECONDS}s; signal again to stop at once)")
        finally:
            # Also on an exception of our own: the job never outlives this call.
            job.stop(hurry=lambda: stop.count > 1)
    st = job.status() or st
    if st and first_loss is None:
        first_loss = st.get("first_loss")
    if tty and progress:
        _say(out)
    codes = job.poll()
    messages = job.termination_messages()
    if program is not None:
        # The user's own program reports no steps: it completed when every agent exited 0.
        completed = not stop.requested and bool(codes) and all(c == 0 for c in codes.values())
    else:
        completed = bool(st and st["step"] >= st["max_steps"] and any(c == 0 for c in codes.values()))
    if completed:
        rc = 0
    elif stop.requested:
        rc = stop.exit_code
    else:
        rc = next((c for c in codes.values() if c), 1)
    urls = [f"http://127.0.0.1:{a.metrics_port}/metrics" for a in job.agents] if contract.metrics_enabled else []
    summary = _summary(contract, job, st, first_loss, completed, rc, codes, messages, urls, time.monotonic() - started, stop)
    _say(out, summary)
    return LocalRunResult(rc, workdir, st, first_loss, codes, messages, urls, summary)


def _say(out: TextIO, *parts: str, end: str = "\n") -> None:
    """Print, unless the terminal is gone (SIGHUP): the job must still be stopped in order."""
    with contextlib.suppress(OSError, ValueError):
        print(*parts, end=end, file=out, flush=True)


def _summary(contract, job, st, first_loss, completed, rc, codes, messages, urls, elapsed, stop) -> str:
    ended = "completed" if completed else (f"stopped by {signal.Signals(stop.signum).name}" if stop.requested else "did not complete")
    lines = [f"kubetrain: job {contract.job_name!r} {ended} (exit {rc}) in {_fmt_seconds(elapsed)}"]
    if st:
        lines.append(f"  steps       {st.get('start_step', 0)} -> {st['step']} of {st['max_steps']} (world size {st['world_size']})")
        if first_loss is not None:
            lines.append(f"  loss        {first_loss:.4f} -> {st['loss']:.4f}")
        lines.append(f"  throughput  {st['tokens_per_second']:,.0f} tokens/s (job, last steps)")
        if st.get("mfu") is not None:
            lines.append(f"  MFU         {st['mfu']:.1%}")
        lines.append(f"  goodput     {st.get('goodput', 0):.1%}")
    elif job.program is not None:
        lines.append(f"  program     {' '.join(job.program)} (your own: no steps or loss reported to kubetrain)")
        tail = job.logs(0).strip().splitlines()[-5:] if job.agents else []
        lines += [f"  | {line}" for line in tail]
    else:
        lines.append("  no step finished")
    saved = job.latest_checkpoint()  # what is on disk, not the last status: the stop's own save comes after it
    if saved:
        lines.append(f"  checkpoint  step {saved[0]} in {saved[1]}")
        if not completed:
            lines.append(f"  resume      run it again with the same workdir ({job.workdir}): it continues from step {saved[0]}")
    lines.append(f"  precision {contract.precision}, strategy {contract.strategy}, compression {contract.compression}")
    if urls:
        lines.append("  metrics     served while running at " + ", ".join(urls))
    for index, msg in sorted(messages.items()):
        lines.append(f"  agent {index}: {msg.splitlines()[0]}")
    lines.append(f"  logs        {job.workdir}/agent-*.log")
    return "\n".join(lines)


def read_json(path: str | os.PathLike) -> list[dict]:
    """Helper for tests/benchmarks: JSON lines of a sample log."""
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


__all__ = ["LocalJob", "LocalRunResult", "run_local", "build_torchrun_args", "LOCAL_TIMEOUTS", "STOP_GRACE_SECONDS", "free_port"]
