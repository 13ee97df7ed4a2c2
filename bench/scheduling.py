"""Benchmark: goodput-aware elastic scheduling (issue 14) against rigid FIFO and Tiresias-like LAS.

``python -m bench.scheduling [--quick] [--out DIR]``. Replays Pollux's published workloads
(bench/data/pollux-osdi21/, Apache-2.0 data) on 16 nodes x 4 GPUs through bench/scheduling_sim.py,
which runs the operator's own allocator (kubetrain.scheduling), and times one allocator round
at 1,000 jobs. Deterministic: no randomness in the simulator or the allocator, so one run per
configuration; the spread shown is across the 8 workloads.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path

from bench.common import Run, fmt, md_table, summary
from bench.scheduling_sim import (DATA, POLICIES, SimJob, Simulator, goodput_model, load_app, max_replicas_for,
                                  read_workload)
from kubetrain.scheduling.allocator import AllocatorConfig, JobInput, allocate

NAME = "scheduling"
QUESTION = ("How much lower is the average job completion time when the allocator moves GPUs to the jobs that "
            "gain most, against rigid FIFO and Tiresias-like scheduling, and how long does a round take?")
APPS = ("bert", "cifar10", "deepspeech2", "imagenet", "ncf", "yolov3")
# What a resize costs each model, as Sia (SOSP'23) measured it (ncf: not measured there, the 25 s default).
SIA_RESTART_SECONDS = {"deepspeech2": 25.0, "cifar10": 30.0, "yolov3": 45.0, "bert": 120.0, "imagenet": 250.0}
RESULTS_SCHEMA = {
    "type": "object",
    "required": ["headline", "runs", "interval", "load", "restart", "allocator_rounds", "fit_rms_log_error", "published"],
}


def published() -> dict:
    return json.loads((DATA / "published_jct.json").read_text())["policies"]


def run_one(workload: Path, policy: str, limit: int | None, interval: float = 60.0, restart: float = 30.0,
            learn: bool = False, min_gain: bool = True) -> dict:
    # min_gain=False: the allocator without its minimum-gain threshold (payback_seconds=0), as it was before it.
    sim = Simulator(read_workload(workload, limit), policy, interval=interval, restart=restart,
                    config=AllocatorConfig(interval_seconds=interval, payback_seconds=None if min_gain else 0.0),
                    learn=learn)
    r = sim.run()
    if learn:
        r["policy"] = "elastic_learned"
    if not min_gain:
        r["policy"] = "elastic_no_min_gain"
    r.update({"workload": workload.stem, "load": workload.parent.name, "interval": interval, "restart": restart})
    print(f"[scheduling] {workload.parent.name}/{workload.stem} {r['policy']:8s} interval {interval:.0f} s restart "
          f"{restart:.0f} s: avg JCT {r['avg_jct']:.0f} s", file=sys.stderr, flush=True)
    return r


def mean_of(runs: list[dict], key: str) -> float | None:
    xs = [r[key] for r in runs if r.get(key) is not None]
    return statistics.fmean(xs) if xs else None


def restart_learning(workloads: list[int], limit: int | None) -> dict:
    """Restart costs that differ by model (Sia's): the allocator charging every job the 25 s default, against
    charging each job what its own first resize cost (the operator's restart_cost.py), at 1.0x load."""
    out = {}
    for learn in (False, True):
        runs = []
        for k in workloads:
            sim = Simulator(read_workload(DATA / "workloads" / f"workload-{k}.csv", limit), "elastic", restart=25.0,
                            config=AllocatorConfig(interval_seconds=60.0), restart_by_app=SIA_RESTART_SECONDS,
                            learn_restart=learn)
            runs.append(sim.run())
            print(f"[scheduling] restart learning {learn} workload-{k}: avg JCT {runs[-1]['avg_jct']:.0f} s",
                  file=sys.stderr, flush=True)
        out["learned" if learn else "default"] = {k: mean_of(runs, k) for k in (
            "avg_jct", "p99_jct", "restarts_per_job", "lost_seconds_per_job")}
    return out


def allocator_rounds(n_jobs: int, reps: int) -> dict:
    """One round at ``n_jobs`` jobs from the trace's mix: first (all pending) and steady (fed back)."""
    rng = random.Random(14)
    rows = [row for k in range(1, 9) for row in read_workload(DATA / "workloads" / f"workload-{k}.csv")]
    gpn = 4
    capacity = 2 * n_jobs  # about Pollux's load: jobs outnumber half the GPUs
    jobs = []
    for k in range(n_jobs):
        name, t, app, r, bsz = rows[rng.randrange(len(rows))]
        a = load_app(app)
        j = SimJob(f"job-{k}", a, float(k), r, bsz, max_replicas_for(a, r, bsz / r, capacity))
        j.progress = rng.random() * a.total_progress
        jobs.append(j)
    out: dict = {"jobs": n_jobs, "capacity": capacity, "reps": reps, "first": [], "steady": [], "tables": []}
    for _ in range(reps):
        t = time.perf_counter()
        tables = [goodput_model(j, True, gpn).table(j.max_replicas) for j in jobs]
        out["tables"].append(time.perf_counter() - t)
        inputs = [JobInput(j.name, 1, j.max_replicas, 0, tables[k], arrival=j.arrival) for k, j in enumerate(jobs)]
        t = time.perf_counter()
        first = allocate(inputs, capacity, 0.0)
        out["first"].append(time.perf_counter() - t)
        fed = [JobInput(i.name, 1, i.max_replicas, first.replicas[i.name], i.goodput, arrival=i.arrival,
                        started=0.0, last_change=0.0) for i in inputs]
        t = time.perf_counter()
        allocate(fed, capacity, 600.0)
        out["steady"].append(time.perf_counter() - t)
    out["used_first"] = first.used
    for k in ("first", "steady", "tables"):
        out[k] = summary(out[k])
    return out


def main(argv: list[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(description=QUESTION)
    ap.add_argument("--quick", action="store_true", help="smoke run: one workload cut to 40 jobs, figures meaningless")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    quick = args.quick
    workloads = [1] if quick else list(range(1, 9))
    limit = 40 if quick else None
    p = {"nodes": 16, "gpus_per_node": 4, "workloads": workloads, "jobs_per_workload": limit or 160,
         "interval_seconds": 60, "restart_seconds": 30, "intervals": [60, 240], "loads": ["0.5", "1.0", "1.5", "2.0"],
         "restart_sweep": [0, 30, 120, 250], "allocator_jobs": 1000, "allocator_reps": 2 if quick else 5,
         "allocator_config": AllocatorConfig().__dict__}
    run = Run(NAME, quick=quick, params=p, question=QUESTION)
    res = run.results
    res["fit_rms_log_error"] = {a: load_app(a).fit_rms_log_error for a in APPS}
    res["published"] = {pol: {load: v["mean_avg_jct_seconds"] for load, v in by.items()} for pol, by in published().items()}

    def wl(load: str, k: int) -> Path:
        return DATA / ("workloads" if load == "1.0" else f"workloads-{load}") / f"workload-{k}.csv"

    runs: list[dict] = []
    # Headline and load sweep: every policy at 60 s and 30 s restarts (Pollux's settings).
    for load in p["loads"]:
        for k in workloads:
            for pol in POLICIES:
                runs.append(run_one(wl(load, k), pol, limit))
    # The allocator learning each job's throughput from its own reports only.
    for k in workloads:
        runs.append(run_one(wl("1.0", k), "elastic", limit, learn=True))
    # Before the minimum-gain threshold: restarts per job and JCT without it, at every restart cost and load.
    for restart in p["restart_sweep"]:
        for k in workloads:
            runs.append(run_one(wl("1.0", k), "elastic", limit, restart=restart, min_gain=False))
    for load in p["loads"]:
        if load != "1.0":
            for k in workloads:
                runs.append(run_one(wl(load, k), "elastic", limit, min_gain=False))
    # Interval: 4 minutes (1 minute is in the headline).
    for k in workloads:
        for pol in POLICIES:
            runs.append(run_one(wl("1.0", k), pol, limit, interval=240.0))
    # Restart cost: 30 s is in the headline.
    for restart in (0.0, 120.0, 250.0):
        for k in workloads:
            for pol in POLICIES:
                runs.append(run_one(wl("1.0", k), pol, limit, restart=restart))
    res["runs"] = runs

    def agg(load="workloads", interval=60.0, restart=30.0, policies=POLICIES) -> dict:
        out = {}
        for pol in policies:
            sel = [r for r in runs if r["policy"] == pol and r["load"] == load and r["interval"] == interval
                   and r["restart"] == restart]
            out[pol] = {k: mean_of(sel, k) for k in ("avg_jct", "p99_jct", "makespan", "gpu_utilisation",
                                                     "goodput_utilisation", "restarts_per_job", "restarts_per_job_hour",
                                                     "lost_seconds_per_job", "round_seconds_median", "round_seconds_max")}
            out[pol]["avg_jct_by_workload"] = {r["workload"]: r["avg_jct"] for r in sel}
            out[pol]["unfinished"] = sum(r["jobs"] - r["finished"] for r in sel)
        return out

    head = agg(policies=(*POLICIES, "elastic_learned", "elastic_no_min_gain"))
    res["headline"] = head
    res["headline"]["elastic_vs_fifo"] = head["elastic"]["avg_jct"] / head["fifo"]["avg_jct"] - 1
    res["headline"]["elastic_vs_tiresias_like"] = head["elastic"]["avg_jct"] / head["tiresias"]["avg_jct"] - 1
    res["headline"]["elastic_vs_fifo_backfill"] = head["elastic"]["avg_jct"] / head["fifo_backfill"]["avg_jct"] - 1
    res["headline"]["elastic_learned_vs_fifo"] = head["elastic_learned"]["avg_jct"] / head["fifo"]["avg_jct"] - 1
    res["headline"]["goal_met"] = res["headline"]["elastic_vs_fifo"] <= -0.30
    res["load"] = {load: agg("workloads" if load == "1.0" else f"workloads-{load}", policies=(*POLICIES, "elastic_no_min_gain"))
                   for load in p["loads"]}
    res["interval"] = {"60": head, "240": agg(interval=240.0)}
    res["interval"]["elastic_change"] = res["interval"]["240"]["elastic"]["avg_jct"] / head["elastic"]["avg_jct"] - 1
    res["restart"] = {str(int(r)): (head if r == 30 else agg(restart=r, policies=(*POLICIES, "elastic_no_min_gain")))
                      for r in p["restart_sweep"]}
    res["restart_learning"] = restart_learning(workloads, limit)
    res["allocator_rounds"] = allocator_rounds(p["allocator_jobs"], p["allocator_reps"])
    body = render(run.doc)
    return run.finish(body, args.out) if args.out else run.finish(body)


def _s(v: float | None) -> str:
    return "—" if v is None else f"{v:,.0f} s"


def _pct(v: float | None) -> str:
    return "—" if v is None else f"{v * 100:.0f}%"


def render(doc: dict) -> str:
    res, p = doc["results"], doc["params"]
    pub = res["published"]
    h = res["headline"]
    n_w = len(p["workloads"])
    label = {"elastic": "kubetrain goodput allocator (elastic)",
             "elastic_learned": "… the same, throughput learned online from each job's own step times",
             "elastic_no_min_gain": "… the same without the minimum-gain threshold (before it)",
             "fifo": "rigid FIFO (requested replicas)",
             "fifo_backfill": "rigid FIFO with backfill", "tiresias": "Tiresias-like LAS (rigid, preemptive)"}
    rows = []
    for pol in (POLICIES[0], "elastic_learned", "elastic_no_min_gain", *POLICIES[1:]):
        if pol not in h:
            continue
        a = h[pol]
        rows.append([label[pol], _s(a["avg_jct"]), _s(a["p99_jct"]), _s(a["makespan"]), _pct(a["gpu_utilisation"]),
                     _pct(a["goodput_utilisation"]), fmt(a["restarts_per_job"]), fmt(a.get("restarts_per_job_hour")),
                     _s(a["lost_seconds_per_job"])])
    rows.append(["Pollux, published (their simulator)", _s(pub["pollux"]["1.0"]), "—", "—", "—", "—", "—", "—", "—"])
    rows.append(["Tiresias, published (their simulator)", _s(pub["tiresias"]["1.0"]), "—", "—", "—", "—", "—", "—", "—"])
    rows.append(["Optimus+Oracle, published", _s(pub["optimus"]["1.0"]), "—", "—", "—", "—", "—", "—", "—"])
    ar = res["allocator_rounds"]
    lines = [
        f"Pollux's workloads at 1.0× load ({n_w} workload(s) × {p['jobs_per_workload']} jobs; figures are the mean over "
        f"the workloads), {p['nodes']} nodes × {p['gpus_per_node']} GPUs, a round every {p['interval_seconds']} s, "
        f"{p['restart_seconds']} s per start, resize or resume (Pollux's settings).",
        "",
        f"**Average JCT: elastic {fmt(h['elastic_vs_fifo'], '%')} vs rigid FIFO (goal ≤ −30%: "
        f"{'met' if h['goal_met'] else 'not met'}), {fmt(h['elastic_vs_fifo_backfill'], '%')} vs FIFO with backfill, "
        f"{fmt(h['elastic_vs_tiresias_like'], '%')} vs our Tiresias-like; {fmt(h.get('elastic_learned_vs_fifo'), '%')} "
        "vs rigid FIFO when the allocator learns each job's throughput from its own step times only.** "
        f"Allocator round at {ar['jobs']:,} jobs: {fmt(ar['first']['median'], ' s')} (first round, all pending), "
        f"{fmt(ar['steady']['median'], ' s')} (steady round), goal < 1 s.",
        "",
        md_table(["policy", "avg JCT", "p99 JCT", "makespan", "GPU utilisation", "goodput-weighted util.",
                  "restarts / job", "restarts / job-hour", "time lost to restarts / job"], rows),
        "",
        _min_gain_line(h),
        "",
        "Average JCT by workload (s):",
        "",
        md_table(["workload", *[label[pol] for pol in POLICIES], "Pollux published", "Tiresias published"],
                 [[w, *[_s(h[pol]["avg_jct_by_workload"].get(w)) for pol in POLICIES],
                   _s(_pub_workload("pollux", "1.0", w)), _s(_pub_workload("tiresias", "1.0", w))]
                  for w in sorted(h["elastic"]["avg_jct_by_workload"])]),
        "",
        "## Scheduling interval",
        "",
        md_table(["interval", *[label[pol] for pol in POLICIES]],
                 [[f"{int(k) // 60} min", *[_s(res["interval"][k][pol]["avg_jct"]) for pol in POLICIES]]
                  for k in ("60", "240")]),
        "",
        f"Elastic average JCT, 1 → 4 min: {fmt(res['interval']['elastic_change'], '%')} (goal < +10%; Pollux: +7.9%).",
        "",
        "## Load (relative job load, Pollux's workloads-0.5/1.5/2.0)",
        "",
        md_table(["load", *[label[pol] for pol in POLICIES], "elastic vs FIFO", "Pollux published", "Tiresias published",
                  "elastic restarts / job", "without the minimum gain: avg JCT", "… restarts / job"],
                 [[f"{load}×", *[_s(res["load"][load][pol]["avg_jct"]) for pol in POLICIES],
                   fmt(res["load"][load]["elastic"]["avg_jct"] / res["load"][load]["fifo"]["avg_jct"] - 1, "%"),
                   _s(pub["pollux"][load]), _s(pub["tiresias"][load]), fmt(res["load"][load]["elastic"]["restarts_per_job"]),
                   _s((res["load"][load].get("elastic_no_min_gain") or {}).get("avg_jct")),
                   fmt((res["load"][load].get("elastic_no_min_gain") or {}).get("restarts_per_job"))]
                  for load in p["loads"]]),
        "",
        "## Restart cost (charged in the simulator and known to the allocator)",
        "",
        md_table(["restart", *[label[pol] for pol in POLICIES], "elastic restarts / job", "elastic vs FIFO",
                  "without the minimum gain: avg JCT", "… restarts / job"],
                 [[f"{k} s", *[_s(res["restart"][k][pol]["avg_jct"]) for pol in POLICIES],
                   fmt(res["restart"][k]["elastic"]["restarts_per_job"]),
                   fmt(res["restart"][k]["elastic"]["avg_jct"] / res["restart"][k]["fifo"]["avg_jct"] - 1, "%"),
                   _s((res["restart"][k].get("elastic_no_min_gain") or {}).get("avg_jct")),
                   fmt((res["restart"][k].get("elastic_no_min_gain") or {}).get("restarts_per_job"))]
                  for k in sorted(res["restart"], key=int)]),
        "",
        "## Restart costs that differ by job",
        "",
        "Each resize costs the model what Sia (SOSP'23) measured (" + ", ".join(f"{a} {v:.0f} s" for a, v in
                                                                         SIA_RESTART_SECONDS.items())
        + ", ncf 25 s), 1.0× load, 60 s rounds. The allocator either charges every job the 25 s default, or, once a "
        "job has been resized, what that resize cost it (as the operator learns it, `restart_cost.py`).",
        "",
        md_table(["restart cost the allocator charges", "avg JCT", "p99 JCT", "restarts / job", "time lost to restarts / job"],
                 [[what, _s(res["restart_learning"][key]["avg_jct"]), _s(res["restart_learning"][key]["p99_jct"]),
                   fmt(res["restart_learning"][key]["restarts_per_job"]), _s(res["restart_learning"][key]["lost_seconds_per_job"])]
                  for key, what in (("default", "25 s for every job"), ("learned", "each job's own, after its first resize"))]
                 if "restart_learning" in res else []),
        "",
        "## Allocator round time",
        "",
        md_table(["what", "median", "min – max", "repetitions"],
                 [[f"allocate(), {ar['jobs']:,} jobs, {ar['capacity']:,} GPUs, all pending",
                   fmt(ar["first"]["median"], " s"), f"{fmt(ar['first']['min'], ' s')} – {fmt(ar['first']['max'], ' s')}",
                   ar["reps"]],
                  [f"allocate(), the same fed back (steady state)", fmt(ar["steady"]["median"], " s"),
                   f"{fmt(ar['steady']['min'], ' s')} – {fmt(ar['steady']['max'], ' s')}", ar["reps"]],
                  [f"goodput tables for the {ar['jobs']:,} jobs (the operator's part of a round)",
                   fmt(ar["tables"]["median"], " s"), f"{fmt(ar['tables']['min'], ' s')} – {fmt(ar['tables']['max'], ' s')}",
                   ar["reps"]],
                  ["allocate() in the 1.0× simulations, 64 GPUs (median / max of all rounds, mean over workloads)",
                   fmt(h["elastic"]["round_seconds_median"], " s"), f"max {fmt(h['elastic']['round_seconds_max'], ' s')}",
                   "every round"]]),
        "",
        "## Fidelity: where this simulator differs from Pollux's",
        "",
        "- **Throughput** comes from Pollux's model form *fitted* to each model's measured step times (RMS log error: "
        + ", ".join(f"{a} {v:.2f}" for a, v in res["fit_rms_log_error"].items())
        + "), not from interpolating the measurements. The headline allocator predicts with that same model (a job's "
        "throughput known from its first round); the 'learned online' row predicts with a model fitted only to the "
        "step times the job has reported so far (linear scaling before its first report), like Pollux's agent and "
        "like the operator will. Step times are reported without measurement noise.",
        "- **Batch size is not co-adapted.** Pollux tunes each job's batch size and learning rate to maximise goodput; "
        "kubetrain's trainer keeps the per-replica batch, so our elastic jobs run r × (requested batch / requested "
        "replicas), capped at the largest profiled batch, with accumulation above the largest profiled micro-batch. "
        "Rigid policies run the requested batch.",
        "- **Progress** is in steps at the model's smallest profiled batch; each step at batch M is worth E(M)·M/M0 of "
        "them, with the noise scale measured at M0 at the job's current epoch; a job ends at the last profiled "
        "epoch. Pollux's simulator also reads the statistics per batch size and ends jobs at target metrics, so absolute "
        "JCTs differ: compare policies within this page, and the published figures only as an anchor.",
        "- **No interference, no placement constraint** (Pollux forbids two distributed jobs on one node); packing is "
        "best-fit, and a job spanning nodes pays the fitted cross-node all-reduce.",
        "- **Baselines are ours**: Tiresias-like = discretised least-attained-service (queues at 1 and 10 GPU-hours), "
        "rigid at the requested replicas, preemptive, skips what does not fit; Pollux compared against Tiresias with its "
        "own implementation and against Optimus+Oracle. FIFO is strict (no backfill), what a plain queue does; "
        "FIFO with backfill is shown as a stronger rigid baseline.",
        "- Rounds happen only every interval (arrivals wait for the next round) for every policy, as in Pollux's "
        "simulator; the operator will also run a round on arrival and finish.",
        "- Every start, resize or resume costs the restart time (Pollux charges 30 s per reallocation as well), one "
        "constant per run that the allocator knows; the operator learns it per job from the job's own resizes.",
    ]
    return "\n".join(lines)


def _min_gain_line(h: dict) -> str:
    """Restarts and JCT with the minimum-gain threshold against without it (the same run)."""
    on, off = h["elastic"], h.get("elastic_no_min_gain")
    if not off or not off["restarts_per_job"]:
        return ""
    return (f"Minimum gain (a running job grows only if the new size repays its restart cost R within max(interval, 2R)): "
            f"restarts per job "
            f"{fmt(off['restarts_per_job'])} → {fmt(on['restarts_per_job'])} "
            f"({fmt(on['restarts_per_job'] / off['restarts_per_job'] - 1, '%')}), average JCT {_s(off['avg_jct'])} → "
            f"{_s(on['avg_jct'])} ({fmt(on['avg_jct'] / off['avg_jct'] - 1, '%')}).")


def _pub_workload(policy: str, load: str, workload: str) -> float | None:
    return published()[policy][load]["avg_jct_seconds_by_workload"].get(workload)


if __name__ == "__main__":
    main()
