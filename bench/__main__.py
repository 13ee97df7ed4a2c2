"""``python -m bench [--quick] [NAME ...]``: run the benchmarks, then rewrite bench/results/README.md.

Each benchmark runs as its own process (``python -m bench.<name>``) and writes
``bench/results/<name>.json`` and ``.md``; one that fails does not stop the
others, and the summary is rebuilt from whatever JSON files exist. ``--quick``
is a smoke run (tiny sizes, seconds each): its figures mean nothing.
``--summary-only`` just rebuilds the summary; ``--render`` also rebuilds every
page from its JSON (after a change to how tables are drawn).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from bench.common import REPO, RESULTS, fmt, fmt_spread, load_average, md_table, now_utc, stamp_lines

# In the order they run: the trainer figures first (they need only torch), then the control plane.
BENCHMARKS = ["trainer_overhead", "trainer_modes", "compression_loss", "trainer_elastic", "sweeps", "scheduling", "control_plane", "operator_memory", "node_loss", "real_node"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    ap.add_argument("names", nargs="*", choices=[*BENCHMARKS, []], help="default: all")
    ap.add_argument("--quick", action="store_true", help="smoke run: tiny sizes, meaningless figures")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--summary-only", action="store_true")
    ap.add_argument("--render", action="store_true", help="rebuild every <name>.md (and the summary) from its JSON")
    args = ap.parse_args(argv)
    failed = []
    if args.render:
        render_all(args.out)
    elif not args.summary_only:
        t_all = time.monotonic()
        print(f"[bench] {now_utc()} load average {load_average()}", file=sys.stderr, flush=True)
        for name in args.names or BENCHMARKS:
            t = time.monotonic()
            cmd = [sys.executable, "-m", f"bench.{name}", "--out", str(args.out), *(["--quick"] if args.quick else [])]
            print(f"[bench] {' '.join(cmd[1:])}", file=sys.stderr, flush=True)
            rc = subprocess.call(cmd, cwd=REPO)
            print(f"[bench] {name}: exit {rc} after {time.monotonic() - t:.0f} s", file=sys.stderr, flush=True)
            if rc != 0:
                failed.append(name)
        print(f"[bench] all done in {time.monotonic() - t_all:.0f} s; load average {load_average()}", file=sys.stderr, flush=True)
    write_summary(args.out)
    if failed:
        print(f"[bench] failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


def _load(out: Path, name: str) -> dict | None:
    path = out / f"{name}.json"
    if not path.exists():
        return None
    return json.loads(path.read_text())


def _headlines(docs: dict[str, dict]) -> list[list[str]]:
    rows: list[list[str]] = []
    d = docs.get("trainer_overhead")
    if d and d["results"].get("overhead"):
        r = d["results"]
        rows.append(["What the trainer adds to a step, vs a plain torchrun DDP script (same model), separate launches",
                     f"{fmt_spread(r['overhead'], '%')} (target ≤ {r['target_overhead']:.0%})", f"{r['overhead']['n']} A/B pairs", "trainer_overhead.md"])
        if r.get("segments_overhead"):
            s = r["segments_overhead"]
            rows.append(["… the same, both loops in the same processes, alternating segments (low-noise figure)",
                         f"{fmt_spread(s, '%')}, IQR {fmt(s['p25'], '%')} – {fmt(s['p75'], '%')}",
                         f"{s['n']} segment pairs", "trainer_overhead.md"])
    d = docs.get("trainer_modes")
    if d and d["results"].get("modes"):
        m = d["results"]["modes"]
        for key, label in (("fp32/ddp/fp16", "DDP fp16 compression"), ("fp32/ddp/powersgd", "DDP PowerSGD rank 1")):
            if key in m and m[key].get("bytes_relative_to_no_compression"):
                rows.append([f"{label}: bytes per step / step time vs none (fp32)",
                             f"{1 / m[key]['bytes_relative_to_no_compression']:.1f}× fewer bytes; step "
                             f"{fmt_spread(m[key]['relative_to_no_compression'], 'x')}",
                             f"{d['params']['rounds']} rounds", "trainer_modes.md"])
        for key, label in (("bf16/ddp/none", "bf16"), ("fp16/ddp/none", "fp16")):
            if key in m:
                rows.append([f"{label} precision: step time vs fp32 (DDP, {d['results']['device']})",
                             fmt_spread(m[key]["relative_to_fp32"], "x"), f"{d['params']['rounds']} rounds", "trainer_modes.md"])
    d = docs.get("compression_loss")
    if d and d["results"].get("modes"):
        m, p = d["results"]["modes"], d["params"]
        keys = _compression_headline_keys(d["results"])
        defaults = [k for k in keys if _is_default_powersgd(m[k])]
        for key in keys:
            default = " (the default)" if key.startswith("powersgd/") and key in defaults else ""
            rows.append([f"Gradient compression {m[key]['label']}{default}: loss cost vs none after {p['steps']} steps "
                         "(builtin:gpt, 2 replicas); bytes saved over the job",
                         f"{fmt_spread(m[key]['loss_cost'], '%')}; {m[key]['saving']:.1f}× fewer bytes",
                         f"{m[key]['loss_cost']['n']} seeds", "compression_loss.md"])
    d = docs.get("trainer_elastic")
    if d and d["results"].get("summary"):
        for key, a in d["results"]["summary"].items():
            if a["seconds"]:
                profile, ev = key.split("/")
                what = "Node loss → first step at the smaller world" if ev == "node_loss" else "Scale-up → first step at the larger world"
                rows.append([f"{what} ({profile} rendezvous settings)", fmt_spread(a["seconds"], " s"),
                             f"{a['seconds']['n']} cycles", "trainer_elastic.md"])
    d = docs.get("node_loss")
    if d and d["results"].get("summary"):
        s = d["results"]["summary"]
        got = lambda mode: (s.get(mode) or {}).get("replacement_running_s")  # noqa: E731
        if got("deleted") or got("not_ready"):
            rows.append(["Node deleted / NotReady under an elastic job → replacement pod Running on another node "
                         f"(KWOK pool, operator defaults: {d['params']['node_lost_grace_s']:g} s node-lost grace); node deleted "
                         "before node events",
                         f"{fmt_spread(got('deleted'), ' s')} / {fmt_spread(got('not_ready'), ' s')}; "
                         f"{fmt_spread(got('before/deleted'), ' s')}",
                         f"{d['params']['cycles']} cycles", "node_loss.md"])
    d = docs.get("scheduling")
    if d and d["results"].get("headline"):
        h, ar = d["results"]["headline"], d["results"]["allocator_rounds"]
        rows.append(["Goodput-aware elastic scheduling: average JCT vs rigid FIFO / Tiresias-like, Pollux's 8 workloads "
                     f"(simulated, 64 GPUs); allocator round at {ar['jobs']:,} jobs",
                     f"{fmt(h['elastic_vs_fifo'], '%')} / {fmt(h['elastic_vs_tiresias_like'], '%')}; "
                     f"{fmt(ar['steady']['median'], ' s')}",
                     f"{len(d['params']['workloads'])} workloads", "scheduling.md"])
    d = docs.get("control_plane")
    if d and d["results"].get("by_size"):
        by = d["results"]["by_size"]
        for key, a in by.items():
            kind, jobs = key.split("/")
            label = "kubetrain" if kind == "kubetrain" else "PyTorchJob"
            if a["p50_running"]:
                def med(name: str, unit: str = "") -> str:
                    return fmt(a[name]["median"] if a.get(name) else None, unit)

                rows.append([f"{jobs} jobs at once, {label}: submission → all pods Running p50 / p99; job status "
                             "Running p50; operator CPU s; operator API requests per job",
                             f"{med('p50_running', ' s')} / {med('p99_running', ' s')}; {med('p50_status_running', ' s')}; "
                             f"{med('cpu_burst', ' s')}; {med('requests_per_job')}",
                             f"{a['repetitions']} reps (median)", "control_plane.md"])
    d = docs.get("operator_memory")
    if d and d["results"].get("loaded"):
        from bench.operator_memory import per_job

        idle, loaded, n = d["results"]["idle"], d["results"]["loaded"], d["params"]["jobs"]
        rss, live = per_job(d["results"], n)
        rows.append([f"Operator memory: RSS before the first job / at {n:,} Running jobs; per job (RSS, live Python objects)",
                     f"{idle['rss_bytes'] / 2**20:.0f} MiB / {loaded['rss_bytes'] / 2**20:.0f} MiB; "
                     f"{rss / 1024:.0f} kB, {live / 1024:.0f} kB",
                     "1 run", "operator_memory.md"])
    return rows


def _compression_headline_keys(res: dict) -> list[str]:
    """fp16 and bf16, the PowerSGD defaults' row if this run has it, and the best trade-off at >= 10x fewer bytes."""
    m = res["modes"]
    keys = [k for k in ("fp16", "bf16") if k in m]
    default = [k for k, v in m.items() if _is_default_powersgd(v)]
    to = res.get("trade_off", {})
    others = [to.get("best_cost_at_saving"), to.get("best_saving_at_cost")]
    return keys + list(dict.fromkeys(k for k in [*default, *others] if k))


def _is_default_powersgd(mode: dict) -> bool:
    from kubetrain.contract import TrainerContract

    return (mode.get("rank") == TrainerContract.powersgd_rank and bool(mode.get("error_feedback"))
            and bool(mode.get("warm_start")) and mode.get("start_fraction") == TrainerContract.powersgd_start_fraction)


def render_all(out: Path) -> None:
    import importlib

    from bench.common import render_markdown

    for name in BENCHMARKS:
        doc = _load(out, name)
        if doc:
            body = importlib.import_module(f"bench.{name}").render(doc)
            (out / f"{name}.md").write_text(render_markdown(doc, body))


def write_summary(out: Path) -> Path:
    docs = {n: d for n in BENCHMARKS if (d := _load(out, n))}
    lines = [
        "# kubetrain benchmarks: results",
        "",
        "Reproduce every figure with `make bench` (= `.venv/bin/python -m bench`); `python -m bench --quick` is a smoke "
        "run. What each benchmark measures, how, and the caveats: [../README.md](../README.md). Each benchmark's own "
        "page has its machine, versions, date, load, repetitions and spread; the JSON next to it has every raw figure.",
        "",
    ]
    if any(d.get("quick") for d in docs.values()):
        lines += ["> **Some results below come from a `--quick` smoke run: their figures mean nothing.**", ""]
    lines += ["## Headline figures", "",
              md_table(["question", "figure: median (min – max)", "repetitions", "details"],
                       [[q, f, n, f"[{link}]({link})"] for q, f, n, link in _headlines(docs)]), ""]
    for name in BENCHMARKS:
        d = docs.get(name)
        if not d:
            lines += [f"## {name}", "", "Not run yet.", ""]
            continue
        lines += [f"## [{name}]({name}.md)", "", f"*{d['question']}*", "", *stamp_lines(d), ""]
        if d["errors"]:
            lines += [f"- **{len(d['errors'])} error(s)**, see [{name}.md]({name}.md#errors): "
                      + "; ".join(e["where"] for e in d["errors"][:5]), ""]
    path = out / "README.md"
    out.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))
    return path


if __name__ == "__main__":
    sys.exit(main())
