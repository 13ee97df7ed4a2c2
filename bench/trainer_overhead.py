"""What does the trainer add to my step time? kubetrain's trainer against a plain torchrun DDP script.

Both sides are launched by the same command, ``torchrun --standalone
--nproc-per-node=P`` (P = 2 processes on a CPU, one per GPU on a GPU machine),
from this process, alternately (A B, B A, A B, ...) so each pair runs in the
same minute under the same load:

* **kubetrain**: ``bench/probe_kubetrain.py``, the real worker entrypoint
  (``kubetrain_trainer.main``) with a pod's contract: builtin:gpt, fp32, DDP
  with our comm hook (compression none), the per-step all-gather of job
  figures, the Prometheus exporter on local rank 0; no checkpoints.
* **plain**: ``bench/plain_ddp.py``, the script a user would otherwise write
  (same model, data, optimizer, clipping; PyTorch's own all-reduce; a loss
  print every 10 steps).

Step time = the mean interval between step starts after the warm-up steps
(throughput; right for asynchronous GPUs too); the median interval is kept as
well. Overhead = kubetrain / plain − 1 per pair; the table gives its median
and range over the pairs.

The trainer's per-step bookkeeping (the seams: ``StepStats`` row and gather
read-out, ``StepRecord``, the metrics processor with the exporter, the hook
dispatch) is also timed on its own, in this process (``seams_cost``): the
whole of it against the step time says what it can add at most.
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
from kubetrain.contract.ports import free_port

NAME = "trainer_overhead"
QUESTION = "What does kubetrain's trainer add to my step time, against a plain torchrun DDP script training the same model?"

FULL = dict(pairs=5, steps=70, warmup=10, layers=4, d_model=128, heads=4, seq=128, batch=8, corpus_chars=400_000,
            segment_pairs=10, segment_steps=24, segment_warmup=2)
QUICK = dict(pairs=1, steps=14, warmup=4, layers=1, d_model=32, heads=2, seq=32, batch=4, corpus_chars=20_000,
             segment_pairs=2, segment_steps=6, segment_warmup=1)


def _nproc() -> tuple[int, str]:
    try:
        import torch

        if torch.cuda.is_available():
            return torch.cuda.device_count(), "cuda"
    except ImportError:
        pass
    return 2, "cpu"


def _torchrun(nproc: int) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", "--max-restarts=0"]


def _env(nproc: int) -> dict[str, str]:
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // nproc))
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "trainer-image"), str(REPO / "operator"), str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def run_side(side: str, p: dict, nproc: int, workdir: Path, index: int) -> dict:
    stamps = workdir / f"{side}-{index}.json"
    log = workdir / f"{side}-{index}.log"
    env = _env(nproc)
    if side == "kubetrain":
        from kubetrain.contract import TrainerContract

        contract = TrainerContract(
            job_name="bench", namespace="bench", pod_name="bench-w0-0", workload="builtin:gpt",
            workload_args=f"layers={p['layers']},d_model={p['d_model']},heads={p['heads']},corpus_chars={p['corpus_chars']}",
            max_steps=p["steps"], batch_size=p["batch"], sequence_length=p["seq"], learning_rate=3e-4, seed=0,
            precision="fp32", strategy="ddp", compression="none", checkpoint_dir="", metrics_enabled=True,
            metrics_port=free_port(), termination_message_path=str(workdir / "termination-log"),
        )
        env.update(contract.to_env())
        env["BENCH_STAMPS"] = str(stamps)
        cmd = [*_torchrun(nproc), str(REPO / "bench" / "probe_kubetrain.py")]
    else:
        cmd = [*_torchrun(nproc), str(REPO / "bench" / "plain_ddp.py"), "--steps", str(p["steps"]),
               "--batch-size", str(p["batch"]), "--seq-len", str(p["seq"]), "--lr", "3e-4", "--layers", str(p["layers"]),
               "--d-model", str(p["d_model"]), "--heads", str(p["heads"]), "--corpus-chars", str(p["corpus_chars"]),
               "--seed", "0", "--stamps", str(stamps)]
    t0 = time.monotonic()
    with log.open("w") as fh:
        proc = subprocess.run(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT, cwd=workdir, timeout=1800)
    wall = time.monotonic() - t0
    if proc.returncode != 0 or not stamps.exists():
        raise RuntimeError(f"{side} run {index} failed (exit {proc.returncode}):\n" + log.read_text(errors="replace")[-3000:])
    s = json.loads(stamps.read_text())["stamps"]
    w = p["warmup"]
    intervals = [b - a for a, b in zip(s[w:], s[w + 1:])]
    mean = (s[-1] - s[w]) / (len(s) - 1 - w)
    return {"side": side, "index": index, "wall_seconds": round(wall, 2), "steps": len(s),
            "mean_step_seconds": mean, "median_step_seconds": statistics.median(intervals),
            "tokens_per_second": nproc * p["batch"] * p["seq"] / mean}


def seams_cost(repeats: int = 5, steps: int = 2000) -> dict | None:
    """Seconds per step of everything ``Trainer.fit`` does around ``train_step`` besides the collectives, the
    probes and the data: a 2-rank gather's read-out, the StepRecord, the metrics processor with its exporter
    (two processes per pod) and two step hooks. Median and range over ``repeats`` runs of ``steps`` steps."""
    import torch
    from prometheus_client import CollectorRegistry

    from kubetrain.contract import TrainerContract
    from kubetrain_trainer.hooks import StepHook, StepRecorder
    from kubetrain_trainer.metrics import TrainerMetrics
    from kubetrain_trainer.metrics_processor import MetricsProcessor
    from kubetrain_trainer.stats import StepRecord, StepStats
    from kubetrain_trainer.trainer import _Gathered

    per_step = []
    for _ in range(repeats):
        proc = MetricsProcessor(TrainerContract(max_steps=10**9), rank=0, world_size=2, restart_count=0, local_world_size=2,
                                exporter=TrainerMetrics(CollectorRegistry(), trainingjob="b", namespace="b", pod="b-0"),
                                flops_per_token=1e6, peak_flops=None)
        proc.start(step=0, checkpoint_saved_at=None)
        hooks = (StepHook(), StepRecorder())
        t0 = time.perf_counter()
        for step in range(1, steps + 1):
            for h in hooks:
                h.on_step_start(step)
            mine = StepStats(loss_sum=2.0 * 8, samples=8, tokens=1024, local_rank=0, communicated_bytes=step * 1e6,
                             data_loading_seconds=0.01 * step, cpu_seconds=0.1 * step, rss_bytes=1e9)
            row = torch.tensor(mine.row(), dtype=torch.float64)
            gathered = _Gathered(torch.stack([row, row]))
            totals = gathered.totals()
            rec = StepRecord(step=step, loss=totals.loss_sum / totals.samples, step_seconds=0.1, job_tokens=int(totals.tokens),
                             job_samples=int(totals.samples), comm_bytes=1000, compression_error=gathered.mean_where_set("compression_error"),
                             noise_scale=None, goodput=0.9, stopping=int(totals.stop), pod=gathered.of_pod(0))
            proc.observe(rec)
            for h in hooks:
                h.on_step_end(rec)
        per_step.append((time.perf_counter() - t0) / steps)
    return summary(per_step)


def run_segments(p: dict, nproc: int, workdir: Path) -> list[dict]:
    """The fine-grained A/B (bench/overhead_worker.py): both loops in the same processes, alternating segments."""
    spec = {"pairs": p["segment_pairs"], "steps": p["segment_steps"], "warmup": p["segment_warmup"],
            "contract": {"workload": "builtin:gpt", "max_steps": p["segment_steps"], "batch_size": p["batch"],
                         "sequence_length": p["seq"], "learning_rate": 3e-4, "seed": 0,
                         "workload_args": f"layers={p['layers']},d_model={p['d_model']},heads={p['heads']},corpus_chars={p['corpus_chars']}"}}
    spec_path, out, log = workdir / "segments.json", workdir / "segments-out.json", workdir / "segments.log"
    spec_path.write_text(json.dumps(spec))
    cmd = [*_torchrun(nproc), str(REPO / "bench" / "overhead_worker.py"), str(spec_path), str(out)]
    with log.open("w") as fh:
        proc = subprocess.run(cmd, env=_env(nproc), stdout=fh, stderr=subprocess.STDOUT, cwd=workdir, timeout=1800)
    if proc.returncode != 0 or not out.exists():
        raise RuntimeError(f"segments worker failed (exit {proc.returncode}):\n" + log.read_text(errors="replace")[-3000:])
    return json.loads(out.read_text())["segments"]


def main(argv: list[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(description=QUESTION)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--pairs", type=int)
    ap.add_argument("--steps", type=int)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    p = dict(QUICK if args.quick else FULL)
    if args.pairs:
        p["pairs"] = args.pairs
    if args.steps:
        p["steps"] = args.steps
    nproc, device = _nproc()
    p.update(nproc=nproc, device=device, launcher=f"torchrun --standalone --nproc-per-node={nproc}",
             omp_num_threads=max(1, (os.cpu_count() or 1) // nproc), precision="fp32", strategy="ddp")
    run = Run(NAME, quick=args.quick, params=p, question=QUESTION)
    runs: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="kubetrain-bench-overhead-") as tmp:
        work = Path(tmp)
        for i in range(p["pairs"]):
            order = ("kubetrain", "plain") if i % 2 == 0 else ("plain", "kubetrain")
            pair = {}
            for side in order:
                try:
                    pair[side] = run_side(side, p, nproc, work, i)
                    runs.append(pair[side])
                except Exception as exc:  # noqa: BLE001 - recorded; the other repetitions still run
                    run.error(f"{side} run {i}", str(exc))
            if len(pair) == 2:
                k, b = pair["kubetrain"], pair["plain"]
                runs.append({"side": "pair", "index": i, "order": list(order),
                             "overhead": k["mean_step_seconds"] / b["mean_step_seconds"] - 1,
                             "overhead_median_interval": k["median_step_seconds"] / b["median_step_seconds"] - 1})
            print(f"[{NAME}] pair {i + 1}/{p['pairs']}: " + ", ".join(
                f"{s} {pair[s]['mean_step_seconds'] * 1000:.1f} ms" for s in pair), file=sys.stderr, flush=True)

        print(f"[{NAME}] same-process segments: {p['segment_pairs']} pairs of {p['segment_steps']} steps ...",
              file=sys.stderr, flush=True)
        try:
            segments = run_segments(p, nproc, work)
        except Exception as exc:  # noqa: BLE001
            run.error("same-process segments", str(exc))
            segments = []

    def side(name: str, key: str) -> dict | None:
        return summary(r[key] for r in runs if r["side"] == name)

    pairs = [r for r in runs if r["side"] == "pair"]
    res = run.results
    res["runs"] = runs
    res["kubetrain_step_seconds"] = side("kubetrain", "mean_step_seconds")
    res["plain_step_seconds"] = side("plain", "mean_step_seconds")
    res["kubetrain_tokens_per_second"] = side("kubetrain", "tokens_per_second")
    res["plain_tokens_per_second"] = side("plain", "tokens_per_second")
    res["overhead"] = summary(r["overhead"] for r in pairs)
    res["overhead_by_median_interval"] = summary(r["overhead_median_interval"] for r in pairs)
    res["target_overhead"] = 0.01
    seg_pairs = []
    for i in sorted({sg["pair"] for sg in segments}):
        k = [sg for sg in segments if sg["pair"] == i and sg["side"] == "kubetrain"]
        b = [sg for sg in segments if sg["pair"] == i and sg["side"] == "plain"]
        if k and b:
            seg_pairs.append(k[0]["mean_step_seconds"] / b[0]["mean_step_seconds"] - 1)
    res["segments"] = segments
    res["segments_kubetrain_step_seconds"] = summary(sg["mean_step_seconds"] for sg in segments if sg["side"] == "kubetrain")
    res["segments_plain_step_seconds"] = summary(sg["mean_step_seconds"] for sg in segments if sg["side"] == "plain")
    res["segments_overhead"] = summary(seg_pairs)
    print(f"[{NAME}] timing the per-step bookkeeping in this process ...", file=sys.stderr, flush=True)
    res["seams_seconds_per_step"] = seams_cost(repeats=2 if args.quick else 5, steps=200 if args.quick else 2000)
    body = _markdown(res, p)
    return run.finish(body, args.out) if args.out else run.finish(body)


def _iqr(s: dict | None) -> str:
    return f", IQR {fmt(s['p25'], '%')} – {fmt(s['p75'], '%')}" if s and s["n"] >= 4 else ""


def _verdict(s: dict | None, target: float) -> str:
    """Met or missed, or not resolved when the pairs spread wider than the target on both sides (a loaded machine)."""
    if not s:
        return "—"
    if s["n"] >= 4 and s["p25"] < -target and s["p75"] > target:
        return (f"not resolved by this run: the middle half of the pairs spans {fmt(s['p25'], '%')} to "
                f"{fmt(s['p75'], '%')}, wider than the target on both sides (load noise)")
    if s["median"] < -target:
        return "within the target (kubetrain faster than the plain script by this much is load noise, not a speed-up)"
    return "within the target" if s["median"] <= target else f"**above** the target by {fmt(s['median'] - target, '%')}"


def _markdown(res: dict, p: dict) -> str:
    ms = lambda s: fmt_spread({**s, **{k: s[k] * 1000 for k in ("median", "min", "max")}}, " ms") if s else "—"  # noqa: E731
    rows = [
        ["kubetrain trainer (`kubetrain_trainer.main`)", ms(res["kubetrain_step_seconds"]), fmt_spread(res["kubetrain_tokens_per_second"])],
        ["plain torchrun DDP script (`bench/plain_ddp.py`)", ms(res["plain_step_seconds"]), fmt_spread(res["plain_tokens_per_second"])],
    ]
    ov = res["overhead"]
    return "\n".join([
        f"builtin:gpt ({p['layers']} layers, d_model {p['d_model']}, {p['heads']} heads, sequence {p['seq']}, batch {p['batch']} per process), "
        f"fp32, DDP, {p['nproc']} processes on {p['device']} (`{p['launcher']}`, OMP_NUM_THREADS={p['omp_num_threads']}); "
        f"{p['steps']} steps per run, the first {p['warmup']} not timed; {p['pairs']} A/B pairs, alternating which side runs first.",
        "",
        md_table(["program", "step time, median (min – max) over runs", "tokens/s (job)"], rows),
        "",
        f"**Overhead of kubetrain's trainer: {fmt_spread(ov, '%')}**{_iqr(ov)} (median and range of the per-pair ratio − 1, "
        f"mean step interval; by median interval: {fmt_spread(res['overhead_by_median_interval'], '%')}). "
        f"Target: at most {res['target_overhead']:.0%} — {_verdict(ov, res['target_overhead'])}.",
        "",
        "**Same processes, alternating segments** (`bench/overhead_worker.py`): one torchrun launch whose processes hold "
        "both kubetrain's `Trainer` (with the metrics registry local rank 0 has in a pod) and the plain loop, and run "
        f"{p['segment_pairs']} pairs of {p['segment_steps']}-step segments alternately (A B, B A, ...; the first "
        f"{p['segment_warmup']} step(s) of a segment not timed), so both sides see the same load within seconds:",
        "",
        md_table(["loop", "step time, median (min – max) over segments"], [
            ["kubetrain `Trainer.fit`", ms(res["segments_kubetrain_step_seconds"])],
            ["plain DDP loop", ms(res["segments_plain_step_seconds"])]]),
        "",
        f"**Overhead, same processes: {fmt_spread(res['segments_overhead'], '%')}**{_iqr(res['segments_overhead'])} "
        f"(median and range of the per-segment-pair ratio − 1); target at most {res['target_overhead']:.0%} — "
        f"{_verdict(res['segments_overhead'], res['target_overhead'])}.",
        "",
        "What the trainer does per step that the plain script does not: its comm hook (a Python DDP hook even for "
        "compression none), `loss.item()` every step, one all-gather of 18 float64 per rank (a `StepStats`: job loss, "
        "throughput, the SIGTERM decision, process figures, gradient norms), the metrics processor (throughput window, "
        "Prometheus updates, log line) and the step hooks (here one, the time stamps). Checkpoints are off on both sides.",
        *_seams_lines(res),
    ])


def _seams_lines(res: dict) -> list[str]:
    seams, step = res.get("seams_seconds_per_step"), res.get("segments_kubetrain_step_seconds") or res.get("kubetrain_step_seconds")
    if not seams:
        return []
    us = {**seams, **{k: seams[k] * 1e6 for k in ("median", "min", "max")}}
    share = f", {seams['median'] / step['median'] * 100:.2f}% of the median kubetrain step above" if step else ""
    return ["", f"**The per-step bookkeeping on its own** (`seams_cost`: gather read-out, `StepRecord`, metrics processor "
                f"with the exporter for 2 processes, two step hooks; no collective): {fmt_spread(us, ' µs')} per step "
                f"(median and range over runs){share}."]


def render(doc: dict) -> str:
    """The markdown body of a result document (``python -m bench --render``)."""
    return _markdown(doc["results"], doc["params"])


if __name__ == "__main__":
    main()
