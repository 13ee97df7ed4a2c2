"""How long does a node loss cost me, and how fast does a job grow? Elastic recovery and scale-up, measured.

One elastic job (``kubetrain_trainer.local.LocalJob``: the stand-alone
rendezvous store and torchrun agents started with the operator's flags, one
process per agent, checkpoints to a shared directory), cycled:

1. two agents training at world size 2;
2. **node loss**: SIGKILL one agent and its workers (a lost node) → time until
   the survivor completes its first step at world size 1 (it restarts, waits
   for the dead agent's heartbeat to expire, re-forms the round, reloads the
   last checkpoint). The steps since that checkpoint are replayed: counted too;
3. **scale-up**: start a new agent (a new pod) → time until the first step at
   world size 2 (the running worker is stopped with SIGTERM, checkpoints at
   the step boundary, both resume there; no step is replayed).

"First step" = the moment global rank 0 rewrites its status file after a step
at the new world size (the file's mtime; polled every 50 ms). The cycle runs
with two rendezvous settings: the local launcher's (keep-alive 1 s × 5,
last call 3 s) and the operator's defaults for pods (keep-alive 2 s × 3, last
call 15 s), which is what a cluster sees, plus the pod's own start-up.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import sys
import tempfile
import time
from pathlib import Path

from bench.common import REPO, Run, fmt_spread, md_table, summary

NAME = "trainer_elastic"
QUESTION = "How long does losing a node cost (kill → first step at the smaller world size), and how long does scale-up take?"

FULL = dict(cycles=3, profiles=["local", "operator-defaults"], workload_args="layers=4,d_model=128,heads=4,corpus_chars=400000",
            batch=8, seq=128, checkpoint_interval=20, settle_steps=10)
QUICK = dict(cycles=1, profiles=["local"], workload_args="layers=1,d_model=32,heads=2,corpus_chars=20000",
             batch=4, seq=32, checkpoint_interval=10, settle_steps=5)


def _port_block(n: int = 32) -> int:
    for _ in range(100):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            base = s.getsockname()[1]
        if base + n < 65535 and all(_free(base + i) for i in range(n)):
            return base
    raise RuntimeError("no free block of ports")


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def _wait_status(job, pred, timeout: float, what: str) -> tuple[dict, float]:
    """Poll global rank 0's status file until ``pred(status)``; return it and the file's mtime."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        st = job.status()
        if st and pred(st):
            try:
                return st, job.status_path.stat().st_mtime
            except OSError:
                return st, time.time()
        if not job.running():
            break
        time.sleep(0.05)
    logs = "\n".join(job.logs(a.index)[-1500:] for a in job.agents if a.returncode is None)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}; last status {job.status()}\n{logs}")


def _gpus() -> int:
    try:
        import torch

        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    except ImportError:
        return 0


def device_plan() -> str:
    gpus = _gpus()
    if gpus >= 2:
        return f"cuda (nccl), one GPU per agent (CUDA_VISIBLE_DEVICES = agent index mod {gpus})"
    return "cpu (gloo)" + (" (one GPU cannot hold two NCCL ranks: run on CPU)" if gpus == 1 else "")


def run_profile(profile: str, p: dict, work: Path) -> list[dict]:
    from kubetrain.contract import TrainerContract
    from kubetrain.contract.torchrun import RendezvousTimeouts
    from kubetrain_trainer.local import LOCAL_TIMEOUTS, LocalJob

    gpus = _gpus()

    class Job(LocalJob):
        """A LocalJob whose agents each get their own GPU (two NCCL ranks cannot share one), or none."""

        def _env(self, index, metrics_port, termination, error_file):  # noqa: ANN001
            env = super()._env(index, metrics_port, termination, error_file)
            env["CUDA_VISIBLE_DEVICES"] = str(index % gpus) if gpus >= 2 else ""
            return env

    timeouts = LOCAL_TIMEOUTS if profile == "local" else RendezvousTimeouts()
    contract = TrainerContract(
        job_name=f"bench-{profile}", namespace="bench", workload="builtin:gpt", workload_args=p["workload_args"],
        max_steps=10**7, batch_size=p["batch"], sequence_length=p["seq"], learning_rate=3e-4,
        checkpoint_dir=str(work / profile / "ckpt"), checkpoint_interval_steps=p["checkpoint_interval"], checkpoint_keep=2,
        metrics_enabled=True, metrics_port=_port_block(), process_group_timeout_seconds=60,
    )
    events: list[dict] = []
    with Job(contract, replicas=2, min_replicas=1, max_replicas=2, max_restarts=1000,
                  workdir=work / profile / "job", timeouts=timeouts) as job:
        st, _ = _wait_status(job, lambda s: s["world_size"] == 2 and s.get("checkpoint_step"), 600, "world size 2 with a checkpoint")
        for cycle in range(p["cycles"]):
            # -- node loss
            alive = [a.index for a in job.agents if a.returncode is None]
            victim = alive[0]
            before = job.status() or st
            t_kill = time.time()
            job.kill_agent(victim, signal.SIGKILL)
            st, t_first = _wait_status(job, lambda s: s["world_size"] == 1, 300, "the first step at world size 1")
            events.append({"profile": profile, "cycle": cycle, "event": "node_loss", "seconds": t_first - t_kill,
                           "step_at_kill": before["step"], "resumed_from_step": st.get("start_step"),
                           "steps_replayed": max(0, before["step"] - (st.get("start_step") or 0))})
            print(f"[{NAME}] {profile} cycle {cycle}: node loss → world 1 in {t_first - t_kill:.1f}s "
                  f"(replayed ≥ {events[-1]['steps_replayed']} steps)", file=sys.stderr, flush=True)
            target = st["step"] + p["settle_steps"]
            _wait_status(job, lambda s: s["world_size"] == 1 and s["step"] >= target, 300, "steps at world size 1")
            # -- scale-up
            before = job.status()
            t_add = time.time()
            job.add_agent()
            st, t_first = _wait_status(job, lambda s: s["world_size"] == 2, 300, "the first step at world size 2")
            events.append({"profile": profile, "cycle": cycle, "event": "scale_up", "seconds": t_first - t_add,
                           "step_before": before["step"], "resumed_from_step": st.get("start_step"),
                           "steps_replayed": max(0, (before["step"] if before else 0) - (st.get("start_step") or 0))})
            print(f"[{NAME}] {profile} cycle {cycle}: scale-up → world 2 in {t_first - t_add:.1f}s", file=sys.stderr, flush=True)
            target = st["step"] + p["settle_steps"]
            _wait_status(job, lambda s: s["world_size"] == 2 and s["step"] >= target and s.get("checkpoint_step"), 300,
                         "steps at world size 2")
    return events


def main(argv: list[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(description=QUESTION)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--cycles", type=int)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    p = dict(QUICK if args.quick else FULL)
    if args.cycles:
        p["cycles"] = args.cycles
    from kubetrain.contract.torchrun import RendezvousTimeouts
    from kubetrain_trainer.local import LOCAL_TIMEOUTS

    p["rendezvous"] = {"local": LOCAL_TIMEOUTS.conf(), "operator-defaults": RendezvousTimeouts().conf()}
    p["device"] = device_plan()
    run = Run(NAME, quick=args.quick, params=p, question=QUESTION)
    events: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="kubetrain-bench-elastic-") as tmp:
        for profile in p["profiles"]:
            try:
                events += run_profile(profile, p, Path(tmp))
            except Exception as exc:  # noqa: BLE001 - recorded; the other profile still runs
                run.error(f"profile {profile}", f"{type(exc).__name__}: {exc}")
    run.results["events"] = events
    agg = {}
    for profile in p["profiles"]:
        for ev in ("node_loss", "scale_up"):
            xs = [e for e in events if e["profile"] == profile and e["event"] == ev]
            agg[f"{profile}/{ev}"] = {"seconds": summary(e["seconds"] for e in xs),
                                      "steps_replayed": summary(e["steps_replayed"] for e in xs)}
    run.results["summary"] = agg
    body = body_of(run.results, p)
    return run.finish(body, args.out) if args.out else run.finish(body)


PROFILE_LABEL = {"local": "local launcher (keep-alive 1 s × 5, last call 3 s)",
                 "operator-defaults": "operator defaults for pods (keep-alive 2 s × 3, last call 15 s)"}


def body_of(results: dict, p: dict) -> str:
    rows = []
    label = {"node_loss": "node loss: SIGKILL of an agent → first step at world size 1",
             "scale_up": "scale-up: a new agent starts → first step at world size 2"}
    for key, a in results["summary"].items():
        profile, ev = key.split("/")
        rows.append([label[ev], PROFILE_LABEL.get(profile, profile), fmt_spread(a["seconds"], " s"),
                     a["seconds"]["n"] if a["seconds"] else 0, fmt_spread(a["steps_replayed"], "", 3)])
    return "\n".join([
        f"builtin:gpt (`{p['workload_args']}`, sequence {p['seq']}, batch {p['batch']}), two agents × one process on "
        f"{p['device']}, checkpoint every {p['checkpoint_interval']} steps; {p['cycles']} loss + scale-up cycles per "
        "rendezvous setting, in one job. Cells: median (min – max) over cycles.",
        "",
        md_table(["event", "rendezvous settings", "time", "n", "steps replayed (at least)"], rows),
        "",
        "Rendezvous settings (`--rdzv-conf`): " + "; ".join(f"{k}: `{v}`" for k, v in p["rendezvous"].items()) + ".",
        "",
        "Node loss = detection (peers' collectives fail at once on a SIGKILLed process; the dead agent's heartbeat must "
        "expire: keep-alive interval × attempts) + the round's last call + worker restart (Python, torch import, "
        "process group, model, checkpoint load). Scale-up = the new agent's own start-up (a pod would add container "
        "start) + SIGTERM checkpoint of the running worker + restart of both. Agents here watch their workers every "
        "0.5 s (pods: 1 s).",
    ])


def render(doc: dict) -> str:
    """The markdown body of a result document (``python -m bench --render``)."""
    return body_of(doc["results"], doc["params"])


if __name__ == "__main__":
    main()
