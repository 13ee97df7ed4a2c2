"""What do precision and gradient compression buy? Bytes per step and step time, relative, in one launch.

One ``torchrun --standalone --nproc-per-node=P bench/modes_worker.py`` runs
every precision (fp32, tf32, bf16, fp16, fp8) × strategy (ddp, fsdp) ×
compression (none, fp16, bf16, powersgd) mode through the real ``Trainer``,
in rounds, the order rotated each round. Reported:

* **bytes communicated per step and process**, counted by our DDP comm hooks
  and FSDP2 comms (all-reduce: tensor size; all-gather: gathered output;
  reduce-scatter: input). Deterministic. PowerSGD: its warm-up steps
  (plain all-reduce) and the steady compressed steps separately.
* **step time**: per mode and round, the median of the timed steps
  (``Trainer.fit``'s step time: data, forward, backward, optimizer, the
  per-step all-gather); per round, the ratio to the reference in the same round
  (compression: to ``none`` at the same precision and strategy; precision: to
  ``fp32`` at the same strategy and compression); median and range of the
  ratios over rounds.

On CPUs without bf16/fp16 instructions the low-precision modes are emulated
and slow: the CPU figures say what the code does here, not what a GPU gains.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import REPO, Run, fmt, fmt_spread, md_table, summary

NAME = "trainer_modes"
QUESTION = "What do precision and gradient compression buy: bytes communicated per step and step time relative to fp32 / no compression?"

PRECISIONS = ["fp32", "tf32", "bf16", "fp16", "fp8"]
COLUMNS = [("ddp", "none"), ("ddp", "fp16"), ("ddp", "bf16"), ("ddp", "powersgd"), ("fsdp", "none"), ("fsdp", "fp16"), ("fsdp", "bf16")]
ALL_MODES = [[p, s, c] for p in PRECISIONS for s, c in COLUMNS]

FULL = dict(rounds=3, steps=16, warmup=6, powersgd_start=4, workload_args="layers=4,d_model=128,heads=4,corpus_chars=400000",
            batch=8, seq=128, modes=ALL_MODES)
QUICK = dict(rounds=1, steps=8, warmup=4, powersgd_start=2, workload_args="layers=1,d_model=32,heads=2,corpus_chars=20000",
             batch=4, seq=32, modes=[["fp32", "ddp", "none"], ["fp32", "ddp", "fp16"], ["fp32", "ddp", "powersgd"],
                                     ["bf16", "ddp", "none"], ["fp32", "fsdp", "none"], ["fp8", "ddp", "none"]])


def _nproc() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 2


def launch_modes_worker(name: str, spec: dict, nproc: int, omp_num_threads: int) -> tuple[dict | None, str, float]:
    """One ``torchrun`` launch of modes_worker.py over ``spec``: (its output, or None and the log's tail; seconds).

    Shared by every benchmark that trains many configurations: one launch amortises the process
    start and the rendezvous over all of them. The worker's per-mode progress lines are echoed.
    """
    with tempfile.TemporaryDirectory(prefix=f"kubetrain-bench-{name}-") as tmp:
        spec_path, out_path, log_path = Path(tmp) / "spec.json", Path(tmp) / "out.json", Path(tmp) / "worker.log"
        spec_path.write_text(json.dumps(spec))
        env = dict(os.environ, OMP_NUM_THREADS=str(omp_num_threads), PYTHONUNBUFFERED="1")
        env["PYTHONPATH"] = os.pathsep.join([str(REPO / "trainer-image"), str(REPO / "operator"), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", "--max-restarts=0",
               str(REPO / "bench" / "modes_worker.py"), str(spec_path), str(out_path)]
        t0 = time.monotonic()
        with log_path.open("w") as fh:
            proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp)
            for line in proc.stdout:  # type: ignore[union-attr]
                fh.write(line)
                if line.startswith("round "):
                    print(f"[{name}] {line.rstrip()}", file=sys.stderr, flush=True)
            proc.wait()
        seconds = round(time.monotonic() - t0, 1)
        if proc.returncode != 0 or not out_path.exists():
            return None, f"exit {proc.returncode}:\n" + log_path.read_text(errors="replace")[-4000:], seconds
        return json.loads(out_path.read_text()), "", seconds


def main(argv: list[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(description=QUESTION)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--rounds", type=int)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    p = dict(QUICK if args.quick else FULL)
    if args.rounds:
        p["rounds"] = args.rounds
    nproc = _nproc()
    p["nproc"] = nproc
    p["omp_num_threads"] = max(1, (os.cpu_count() or 1) // nproc)
    run = Run(NAME, quick=args.quick, params=p, question=QUESTION)
    spec = {
        "rounds": p["rounds"],
        "modes": p["modes"],
        "contract": {"workload": "builtin:gpt", "workload_args": p["workload_args"], "max_steps": p["steps"],
                     "batch_size": p["batch"], "sequence_length": p["seq"], "learning_rate": 3e-4,
                     "powersgd_rank": 1, "powersgd_start_iteration": p["powersgd_start"]},
    }
    data, failure, p["worker_seconds"] = launch_modes_worker(NAME, spec, nproc, p["omp_num_threads"])
    if data is None:
        run.error("modes worker", failure)
        run.results.update(modes={}, refused={})
        return run.finish("The worker failed; no figures.", *( [args.out] if args.out else []))
    run.doc["machine"]["device_used"] = data["device_name"]
    run.doc["params"]["backend"] = data["backend"]
    res = analyse(data, p)
    run.results.update(res)
    for rec in data["records"]:
        if not rec.get("ok"):
            run.error(f"{rec['mode']} round {rec['round']}", rec.get("error", "?"))
    body = markdown(res, p, data)
    return run.finish(body, args.out) if args.out else run.finish(body)


def analyse(data: dict, p: dict) -> dict:
    w = p["warmup"]
    per: dict[str, dict[int, float]] = {}
    modes: dict[str, dict] = {}
    for rec in data["records"]:
        if not rec.get("ok"):
            continue
        timed = rec["step_seconds"][w:]
        per.setdefault(rec["mode"], {})[rec["round"]] = statistics.median(timed)
        m = modes.setdefault(rec["mode"], {"bytes_per_step": None})
        b = rec["comm_bytes"]
        m["bytes_first_step"] = b[0]
        m["bytes_per_step"] = statistics.median(b[w:])  # PowerSGD: compressed steps only (start < warmup)
        m["params"] = rec["params"]
        m.setdefault("loss", []).append([rec["first_loss"], rec["last_loss"]])
    for key, rounds in per.items():
        precision, strategy, compression = key.split("/")
        modes[key]["step_seconds"] = summary(rounds.values())

        def ratio(ref_key: str) -> dict | None:
            ref = per.get(ref_key, {})
            return summary(rounds[r] / ref[r] for r in rounds if r in ref)

        modes[key]["relative_to_no_compression"] = ratio(f"{precision}/{strategy}/none")
        modes[key]["relative_to_fp32"] = ratio(f"fp32/{strategy}/{compression}")
        modes[key]["relative_to_fp32_ddp_none"] = ratio("fp32/ddp/none")
        none_bytes = modes.get(f"{precision}/{strategy}/none", {}).get("bytes_per_step")
        if none_bytes:
            modes[key]["bytes_relative_to_no_compression"] = modes[key]["bytes_per_step"] / none_bytes
    return {"modes": modes, "refused": data["refused"], "device": data["device_name"], "world_size": data["world_size"]}


def markdown(res: dict, p: dict, data: dict) -> str:
    modes = res["modes"]
    cols = [c for c in COLUMNS if any(f"{pr}/{c[0]}/{c[1]}" in modes for pr in PRECISIONS)]
    precisions = [pr for pr in PRECISIONS if any(f"{pr}/{s}/{c}" in modes or f"{pr}/{s}/{c}" in res["refused"] for s, c in cols)]
    head = [f"{s} {c}" for s, c in cols]

    def cell(key: str, fn) -> str:
        if key in modes:
            return fn(modes[key])
        if key in res["refused"]:
            return "refused"
        return "—"

    def bytes_cell(m: dict) -> str:
        b = f"{m['bytes_per_step']:,.0f}"
        if m["bytes_first_step"] != m["bytes_per_step"]:
            b += f" (warm-up {m['bytes_first_step']:,.0f})"
        return b

    ms = lambda s: fmt_spread({**s, **{k: s[k] * 1000 for k in ("median", "min", "max")}}, " ms") if s else "—"  # noqa: E731
    t_bytes = md_table(["precision", *head], [[pr, *[cell(f"{pr}/{s}/{c}", bytes_cell) for s, c in cols]] for pr in precisions])
    t_comp = md_table(["precision", *head], [[pr, *[cell(f"{pr}/{s}/{c}", lambda m: fmt_spread(m["relative_to_no_compression"], "x"))
                                                    for s, c in cols]] for pr in precisions])
    t_prec = md_table(["precision", *head], [[pr, *[cell(f"{pr}/{s}/{c}", lambda m: fmt_spread(m["relative_to_fp32"], "x"))
                                                    for s, c in cols]] for pr in precisions])
    t_abs = md_table(["precision", *head], [[pr, *[cell(f"{pr}/{s}/{c}", lambda m: ms(m["step_seconds"])) for s, c in cols]]
                                           for pr in precisions])
    by_reason: dict[str, list[str]] = {}
    for k, v in sorted(res["refused"].items()):
        by_reason.setdefault(v, []).append(k)
    refused = "\n".join(f"- {', '.join(f'`{k}`' for k in keys)}: {reason}" for reason, keys in by_reason.items())
    params = next(iter(modes.values()))["params"] if modes else "?"
    return "\n".join([
        f"builtin:gpt (`{p['workload_args']}`, sequence {p['seq']}, batch {p['batch']} per process, "
        f"{params:,} parameters), {res['world_size']} processes on {res['device']} ({data['backend']}), "
        f"one torchrun launch; {p['rounds']} rounds × {p['steps']} steps per mode, the first {p['warmup']} steps of each not timed; "
        f"PowerSGD rank 1, compressing from step {p['powersgd_start']}. Cells with a spread: median (min – max) over rounds.",
        "",
        "### Bytes communicated per step and process",
        "",
        t_bytes,
        "",
        "### Step time relative to no compression (same precision and strategy)",
        "",
        t_comp,
        "",
        "### Step time relative to fp32 (same strategy and compression)",
        "",
        t_prec,
        "",
        "### Step time (absolute, this machine only)",
        "",
        t_abs,
        "",
        "Refused on this machine (the trainer's own checks, before any collective):" if refused else "",
        "",
        refused,
        "",
        "Bytes are what leaves each process per step: compression halves DDP's all-reduce (fp16/bf16) or cuts it "
        "~50× (PowerSGD rank 1 after its warm-up); FSDP all-gathers parameters in forward and backward, so it moves more "
        "than DDP at this size. On a CPU the communication is a loopback copy, so fewer bytes barely shorten a step, "
        "and bf16/fp16 compute is emulated: step-time ratios here are not what a GPU cluster sees.",
    ])


def render(doc: dict) -> str:
    """The markdown body of a result document (``python -m bench --render``)."""
    return markdown(doc["results"], doc["params"], {"backend": doc["params"].get("backend", "?")})


if __name__ == "__main__":
    main()
