"""Benchmark: hyperparameter search strategies at an equal trial budget, on the built-in GPT (CPU).

``python -m bench.sweeps [--quick] [--out DIR]``. Each strategy is a TrainingSweep run by
``kubetrain sweep``'s own code (kubetrain.local_sweep: the operator's study, real trials of
the built-in GPT as local jobs), repeated over sampler seeds. Compute is counted in
trial-steps (a pruned trial counts the steps it trained), so it does not depend on how busy
the machine was; wall time is shown beside it.
"""

from __future__ import annotations

import argparse
import json
import io
import statistics
import sys
import tempfile
import time
from pathlib import Path

from bench.common import Run, fmt, fmt_spread, md_table, summary
from kubetrain.api.manifests import parse_sweep
from kubetrain.local_sweep import run_sweep
from kubetrain.tuning import pbt

NAME = "sweeps"
QUESTION = ("At the same trial budget, how good a loss do random search, TPE, TPE with ASHA early stopping and "
            "population-based training find, and how much compute does each spend to find it?")

# (label, sampler, early stopping). PBT's population is the trial budget: each member trains the same steps
# as one trial of the others, in generations, so its compute equals a full random search's.
STRATEGIES = [("random", "random", "none"), ("tpe", "tpe", "none"), ("random + asha", "random", "asha"),
              ("tpe + asha", "tpe", "asha"), ("pbt", "pbt", "none")]
# PBT's generation: a quarter of the steps (4 generations, 3 exploit-and-explore rounds).
PBT_GENERATIONS = 4


def sweep_manifest(sampler: str, early_stopping: str, seed: int, trials: int, steps: int) -> dict:
    doc = {
        "apiVersion": "kubetrain.dev/v1alpha1", "kind": "TrainingSweep", "metadata": {"name": "bench"},
        "spec": {
            "template": {"spec": {"trainer": {"maxSteps": steps, "batchSize": 8, "sequenceLength": 32, "seed": 0,
                                              "args": {"layers": "1", "d_model": "64", "heads": "2", "corpus_chars": "60000"}}}},
            "parameters": [
                {"name": "lr", "target": "trainer.learningRate", "type": "float", "min": 1e-5, "max": 3e-2, "log": True},
                {"name": "batch", "target": "trainer.batchSize", "type": "int", "min": 4, "max": 16, "step": 4},
            ],
            "algorithm": {"type": sampler, "seed": seed},
            "earlyStopping": {"type": early_stopping, "minSteps": max(steps // 9, 2), "reductionFactor": 3},
            "maxTrials": trials, "parallelism": 2,
        },
    }
    if sampler == "pbt":
        # Trials start from each other's checkpoints: one volume (locally, one directory under the workdir).
        doc["spec"]["template"]["spec"]["checkpoint"] = {"persistentVolumeClaim": {"claimName": "bench"},
                                                         "intervalSteps": max(1, steps // PBT_GENERATIONS)}
        doc["spec"]["algorithm"]["pbt"] = {"intervalSteps": max(1, steps // PBT_GENERATIONS)}
    return doc


def trained_steps(sweep, record) -> int:
    """The steps a trial trained: from where it started (a PBT trial, at its generation's start) to where it ended."""
    spec = sweep.spec
    start, end = 0, spec.template.spec.trainer.max_steps
    if spec.algorithm.type == "pbt":
        generation, _ = pbt.generation_of(spec, record.number)
        start, end = generation * (spec.algorithm.pbt.interval_steps), pbt.generation_end(spec, generation)
    if record.state == "Succeeded":
        return end - start
    return max(0, (record.last[0] if record.last else start) - start)


def run_one(label: str, sampler: str, early_stopping: str, seed: int, trials: int, steps: int, work: Path) -> dict:
    started = time.monotonic()
    sweep = parse_sweep(sweep_manifest(sampler, early_stopping, seed, trials, steps))
    result = run_sweep(sweep, workdir=work / f"{label.replace(' + ', '-')}-{seed}", out=io.StringIO())
    trials = [{"number": r.number, "state": r.state, "steps": trained_steps(sweep, r),
               "loss": r.last[1] if r.last else None} for r in result.trials]
    trained = sum(t["steps"] for t in trials)
    best = result.best.last[1] if result.best and result.best.last else None
    row = {"strategy": label, "seed": seed, "best_loss": best, "trial_steps": trained,
           "wall_seconds": round(time.monotonic() - started, 1),
           "states": {s: sum(r.state == s for r in result.trials) for s in ("Succeeded", "Pruned", "Failed")},
           "trials": trials,
           "best_params": result.best.params if result.best else None}
    print(f"[sweeps] {label} seed {seed}: best loss {best}, {trained} trial-steps, {row['wall_seconds']} s, {row['states']}",
          file=sys.stderr, flush=True)
    return row


def main(argv: list[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(description=QUESTION)
    ap.add_argument("--quick", action="store_true", help="smoke run: 2 trials of 12 steps, one seed; figures meaningless")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--seeds", type=int, default=3, help="sampler seeds 1..N (a full run)")
    ap.add_argument("--budget-seconds", type=float, default=None,
                    help="start no further seed when the time so far plus the slowest seed's would pass this; "
                    "the page says how many seeds ran")
    ap.add_argument("--seed-list", help="comma-separated sampler seeds to run, instead of 1..--seeds")
    ap.add_argument("--merge", type=Path, help="sweeps.json of an earlier run of the same sizes: its runs join this "
                    "one's (the page names the run they came from)")
    args = ap.parse_args(argv)
    earlier = json.loads(args.merge.read_text()) if args.merge else None
    p = {"trials": 2 if args.quick else 8, "steps": 12 if args.quick else 60,
         "seeds": [1] if args.quick else list(range(1, args.seeds + 1)),
         "parallelism": 2, "model": "builtin:gpt, 1 layer, d_model 64, 2 heads, sequence 32, 60k-character corpus",
         "space": "lr in [1e-5, 3e-2] (log), batch in {4, 8, 12, 16}", "asha": "minSteps = steps / 9, reduction factor 3",
         "pbt": f"population = the trial budget, {PBT_GENERATIONS} generations of steps / {PBT_GENERATIONS}, bottom quarter "
                "exploits a top quarter's checkpoint, factors 0.8 / 1.2, resample 0.25"}
    if args.seed_list:
        p["seeds"] = [int(x) for x in args.seed_list.split(",")]
    runs = []
    if earlier is not None:
        old = earlier["params"]
        if (old["trials"], old["steps"], old["parallelism"]) != (p["trials"], p["steps"], p["parallelism"]):
            raise SystemExit(f"--merge {args.merge}: another size ({old['trials']} trials x {old['steps']} steps)")
        runs = [r for r in earlier["results"]["runs"] if r["seed"] not in p["seeds"]]
        p["merged"] = {"seeds": sorted({r["seed"] for r in runs}), "date": earlier["date"],
                       "commit": ((earlier.get("versions") or {}).get("git_commit") or "")[:12],
                       "load_average": [earlier.get("load_average_before"), earlier.get("load_average_after")]}
    run = Run(NAME, quick=args.quick, params=p, question=QUESTION)
    ran_here = len(runs)
    started, slowest = time.monotonic(), 0.0
    with tempfile.TemporaryDirectory(prefix="kubetrain-bench-sweeps-") as tmp:
        for seed in list(p["seeds"]):
            elapsed = time.monotonic() - started
            if args.budget_seconds is not None and len(runs) > ran_here and elapsed + slowest > args.budget_seconds:
                p["seeds_planned"], p["seeds"] = list(p["seeds"]), p["seeds"][: p["seeds"].index(seed)]
                break
            seed_started = time.monotonic()
            for label, sampler, es in STRATEGIES:
                try:
                    runs.append(run_one(label, sampler, es, seed, p["trials"], p["steps"], Path(tmp)))
                except Exception as exc:  # noqa: BLE001 - one failed run is recorded, the others go on
                    run.error(f"{label} seed {seed}", repr(exc))
            slowest = max(slowest, time.monotonic() - seed_started)
    if earlier is not None:
        p["seeds"] = sorted(set(p["merged"]["seeds"]) | set(p["seeds"]))
    res = run.results
    res["runs"] = runs
    res["strategies"] = {}
    for label, *_ in STRATEGIES:
        sel = [r for r in runs if r["strategy"] == label and r["best_loss"] is not None]
        res["strategies"][label] = {"best_loss": summary(r["best_loss"] for r in sel),
                                    "trial_steps": summary(r["trial_steps"] for r in sel),
                                    "wall_seconds": summary(r["wall_seconds"] for r in sel)}
    s = res["strategies"]

    def median(label: str, key: str) -> float | None:
        return (s[label][key] or {}).get("median")

    full_random = median("random", "trial_steps")
    res["headline"] = {
        "tpe_asha_compute_vs_random": (median("tpe + asha", "trial_steps") / full_random) if full_random else None,
        "asha_saved_vs_tpe": (1 - median("tpe + asha", "trial_steps") / median("tpe", "trial_steps"))
        if median("tpe", "trial_steps") else None,
        # Per seed: does TPE + ASHA reach random search's best loss (within 2%, this CPU's seed-to-seed noise)?
        "tpe_asha_reaches_random_best": [
            a["best_loss"] <= r["best_loss"] * 1.02
            for a in runs if a["strategy"] == "tpe + asha"
            for r in runs if r["strategy"] == "random" and r["seed"] == a["seed"]
            and a["best_loss"] is not None and r["best_loss"] is not None
        ],
    }
    h = res["headline"]
    # The measure: the compute a strategy spent until a trial of its own first matched random search's
    # best (trials in the order they were started), against all of random search's compute; per strategy.
    res["compute_to_reach"] = {label: summary(compute_to_reach(runs, label)) for label, *_ in STRATEGIES}
    h["tpe_asha_compute_to_reach_random_best"] = res["compute_to_reach"]["tpe + asha"]
    to_reach = (h["tpe_asha_compute_to_reach_random_best"] or {}).get("median")
    h["goal_met"] = bool(to_reach is not None and to_reach <= 0.40 and all(h["tpe_asha_reaches_random_best"]))
    body = render(run.doc)
    return run.finish(body, args.out) if args.out else run.finish(body)


def compute_to_reach(runs: list[dict], label: str) -> list[float]:
    """Per seed: the fraction of random search's compute ``label`` spent until one of its trials ended within 2%
    of random search's best loss (a seed where it never did has no figure)."""
    reach = []
    for a in (r for r in runs if r["strategy"] == label and r.get("trials")):
        rnd = next((r for r in runs if r["strategy"] == "random" and r["seed"] == a["seed"]), None)
        if rnd is None or rnd["best_loss"] is None:
            continue
        spent = 0
        for t in sorted(a["trials"], key=lambda t: t["number"]):
            spent += t["steps"]
            if t["state"] == "Succeeded" and t["loss"] is not None and t["loss"] <= rnd["best_loss"] * 1.02:
                reach.append(spent / rnd["trial_steps"])
                break
    return reach


def render(doc: dict) -> str:
    res, p = doc["results"], doc["params"]
    s, h = res["strategies"], res["headline"]
    reach_by = res.get("compute_to_reach") or {}
    seeds = len(p["seeds"])
    rows = [[label, fmt_spread(v["best_loss"]), fmt_spread(v["trial_steps"], digits=4),
             fmt((v["trial_steps"] or {}).get("median", 0) / max((s["random"]["trial_steps"] or {}).get("median", 1), 1), "×"),
             (f"{fmt_spread(reach_by[label], '×')} ({(reach_by[label] or {}).get('n', 0)} of {seeds} seeds)"
              if reach_by.get(label) else f"— (0 of {seeds} seeds)"),
             fmt_spread(v["wall_seconds"], " s")] for label, v in s.items()]
    reach = h["tpe_asha_reaches_random_best"]
    return "\n".join([
        f"{p['trials']} trials per sweep, {p['steps']} steps each, {p['parallelism']} at a time; {p['model']}; "
        f"search space {p['space']}; ASHA {p['asha']}; PBT {p.get('pbt', '—')}. Sampler seeds {p['seeds']}: figures are the median (min – max) "
        "over them" + (f" (the run planned seeds {p['seeds_planned']} and stopped at its time budget)"
                      if p.get("seeds_planned") else "")
        + (f"; seeds {p['merged']['seeds']} come from the run of {p['merged']['date']} (commit "
           f"{p['merged']['commit']}, load average before/after {p['merged']['load_average']}), merged into this one"
           if p.get("merged") else "") + ". Compute is trial-steps: a pruned trial counts the steps "
        "it trained, a PBT trial the steps of its generation.",
        "",
        f"**TPE + ASHA reached random search's best loss (within 2%) in {sum(reach)} of {len(reach)} seeds, after "
        f"{fmt_spread(h.get('tpe_asha_compute_to_reach_random_best'), '×')} of random search's compute (goal ≤ 0.40×); "
        f"its whole sweep used {fmt(h['tpe_asha_compute_vs_random'], '×')}: "
        f"goal {'met' if h['goal_met'] else 'not met'}. ASHA saved {fmt(h['asha_saved_vs_tpe'], '%') if h['asha_saved_vs_tpe'] is not None else '—'} "
        "of TPE's compute.**",
        "",
        f"Population-based training (same compute as random search: every member trains the same steps): best loss "
        f"{fmt_spread(s.get('pbt', {}).get('best_loss'))} against random search's {fmt_spread(s['random']['best_loss'])}.",
        "",
        md_table(["strategy", "best loss", "compute (trial-steps)", "compute vs random",
                  "compute to reach random's best (vs random's)", "wall time"], rows),
        "",
        "Every run, by seed:",
        "",
        md_table(["strategy", "seed", "best loss", "trial-steps", "succeeded / pruned / failed", "wall", "best parameters"],
                 [[r["strategy"], r["seed"], fmt(r["best_loss"]), r["trial_steps"],
                   f"{r['states']['Succeeded']} / {r['states']['Pruned']} / {r['states']['Failed']}", f"{r['wall_seconds']} s",
                   ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in (r["best_params"] or {}).items())]
                  for r in res["runs"]]),
    ])


if __name__ == "__main__":
    main()
