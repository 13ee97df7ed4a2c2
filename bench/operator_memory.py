"""``python -m bench.operator_memory``: what holds the operator's memory at 1,000 jobs.

control_plane.md gives the operator's peak RSS; this says what it is made of. The operator runs as
``make run`` runs it (``kubetrain_dev.operator_process``, the chart's MALLOC_ARENA_MAX=2 and heap trims)
under ``bench/memory_census.py``, which answers SIGUSR1 with a census: resident memory, the C heap,
Python's small-object allocator, the objects the garbage collector tracks by type, the asyncio tasks.
One census before any job, one after ``jobs`` TrainingJobs of control_plane's shape are Running on the
KWOK pool (and the operator's heap trims have run). The difference, divided by the jobs, is what a job
costs; the types that grew say who holds it.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

from bench.common import REPO, RESULTS, Run, md_table

NAME = "operator_memory"
QUESTION = "What holds the operator's memory before the first job and at 1,000 Running jobs (KWOK pool, the chart's settings)?"
MIB = 2**20
GOAL_MIB = 150  # issue 13: peak operator RSS at 1,000 jobs


def _census(pid: int, path: Path, count: int, timeout: float = 120) -> dict:
    os.kill(pid, signal.SIGUSR1)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lines = path.read_text().splitlines() if path.exists() else []
        if len(lines) >= count:
            return json.loads(lines[count - 1])
        time.sleep(0.5)
    raise TimeoutError(f"no census {count} from the operator in {timeout:.0f} s")


def measure(p: dict, work: Path) -> dict:
    from kubernetes import client

    from bench.control_plane import GPUS_PER_NODE, NAMESPACE, create_namespace, install_crds, kubetrain_job, nodes_for
    from kubetrain_dev.devcluster import gpu_pool
    from kubetrain_dev.devcluster.cluster import LocalCluster, Settings
    from kubetrain_dev.operator_process import kubetrain_operator
    from kubetrain_dev.wait import wait_for

    jobs = p["jobs"]
    cluster = LocalCluster(work / "cluster", Settings())
    cluster.start()
    op = None
    try:
        api = cluster.api_client()
        gpu_pool.create_pool(api, nodes=nodes_for(jobs), gpus=GPUS_PER_NODE, timeout=180)
        install_crds(api, sorted((REPO / "crds").glob("*.yaml")))
        create_namespace(api, NAMESPACE)
        census_path = work / "census.jsonl"
        op = kubetrain_operator(cluster.client_kubeconfig("kubetrain-operator"), work / "operator.log",
                                {"KUBETRAIN_BENCH_CENSUS": str(census_path)})
        op.launch_env.pop("KUBETRAIN_RECONCILE_INTERVAL", None)  # the shipped default
        assert op.argv[1:3] == ["-m", "kubetrain.operator"], op.argv
        op.argv[1:3] = [str(REPO / "bench" / "memory_census.py")]
        op.start(timeout=120)
        time.sleep(p["settle_seconds"])  # initial lists and watches done
        idle = _census(op.pid, census_path, 1)
        custom = client.CustomObjectsApi(api)

        def submit(i: int) -> None:
            custom.create_namespaced_custom_object("kubetrain.dev", "v1alpha1", NAMESPACE, "trainingjobs", kubetrain_job(f"job-{i:04d}"))

        t0 = time.monotonic()
        with cf.ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(submit, range(jobs)))

        def all_running() -> bool:
            items = custom.list_namespaced_custom_object("kubetrain.dev", "v1alpha1", NAMESPACE, "trainingjobs")["items"]
            return sum(1 for j in items if j.get("status", {}).get("phase") == "Running") == jobs

        wait_for(all_running, timeout=p["timeout_seconds"], what=f"{jobs} jobs Running", interval=2, max_interval=5)
        running_after = time.monotonic() - t0
        time.sleep(p["after_seconds"])  # the heap trims (every 10 s) have run since the burst
        loaded = _census(op.pid, census_path, 2)
        return {"idle": idle, "loaded": loaded, "all_running_seconds": round(running_after, 1)}
    finally:
        if op is not None:
            op.stop()
        cluster.stop()


def per_job(results: dict, jobs: int) -> tuple[float, float]:
    """Bytes one job adds: resident memory, and live Python objects (pymalloc)."""
    a, b = results["idle"], results["loaded"]
    return ((b["rss_bytes"] - a["rss_bytes"]) / jobs,
            (b["pymalloc"]["live_bytes"] - a["pymalloc"]["live_bytes"]) / jobs)


def render(doc: dict) -> str:
    p, r = doc["params"], doc["results"]
    if "idle" not in r:
        return "No census: see the errors."
    n, a, b = p["jobs"], r["idle"], r["loaded"]

    def row(what: str, x: float, y: float, unit: str, note: str) -> list[str]:
        per = (y - x) / n
        if unit == "MiB":
            return [what, f"{x / MIB:.1f} MiB", f"{y / MIB:.1f} MiB", f"{per / 1024:.1f} kB", note]
        return [what, f"{x:,.0f}", f"{y:,.0f}", f"{per:.1f}", note]

    rows = [
        row("resident (RSS)", a["rss_bytes"], b["rss_bytes"], "MiB", "what control_plane.md's peak measures"),
        row("… of which anonymous", a["anonymous_bytes"], b["anonymous_bytes"], "MiB",
            "the rest is mapped files: the interpreter and its libraries' code"),
        row("Python small objects, live (pymalloc)", a["pymalloc"]["live_bytes"], b["pymalloc"]["live_bytes"], "MiB",
            "every object under 512 bytes: dicts, strings, frames, the models"),
        row("Python small objects, free in its pools", a["pymalloc"]["free_bytes"], b["pymalloc"]["free_bytes"], "MiB",
            "freed, but an arena returns to the system only when all of it is free"),
        row("C heap in use (glibc)", a["heap_in_use_bytes"], b["heap_in_use_bytes"], "MiB", "larger objects: response bodies, big dicts"),
        row("C heap free (glibc)", a["heap_free_bytes"], b["heap_free_bytes"], "MiB", "after the operator's heap trims"),
        row("RSS after one more malloc_trim", a["rss_after_trim_bytes"], b["rss_after_trim_bytes"], "MiB",
            "what trimming at that moment would give back"),
        row("objects the GC tracks", a["gc_objects"], b["gc_objects"], "n", "containers and instances; not strings or numbers"),
        row("asyncio tasks", a["tasks"], b["tasks"], "n", ", ".join(f"{k} {v}" for k, v in b["task_coroutines"].items())),
    ]
    grown = sorted(((k, v[0] - a["gc_types"].get(k, [0, 0])[0], v[1] - a["gc_types"].get(k, [0, 0])[1])
                    for k, v in b["gc_types"].items()), key=lambda t: -t[2])[:15]
    per = lambda key: (b[key] - a[key]) / n  # noqa: E731
    rss, live = per_job(r, n)
    pooled = (b["pymalloc"]["free_bytes"] - a["pymalloc"]["free_bytes"]) / n
    budget = (GOAL_MIB * MIB - a["rss_bytes"]) / n
    timers = {k: v for k, v in b["task_coroutines"].items() if v >= n}
    reading = [
        f"- A job costs {rss / 1024:.1f} kB of resident memory: {live / 1024:.1f} kB of live Python objects "
        f"({live / rss:.0%}), {pooled / 1024:.1f} kB freed but held in pymalloc's pools, "
        f"{per('heap_in_use_bytes') / 1024:.1f} kB in use and {per('heap_free_bytes') / 1024:.1f} kB free in the C heap.",
        f"- Tasks per job: {', '.join(f'`{k}` {v / n:.1f}' for k, v in timers.items()) or 'none'} "
        "(Kopf runs each object's timer, the level-triggered safety net, as its own task).",
        f"- For {GOAL_MIB} MiB at {n:,} jobs from {a['rss_bytes'] / MIB:.0f} MiB before the first, a job could cost "
        + (f"{budget / 1024:.1f} kB: {rss / budget:.1f}x less than now." if budget > 0 else "nothing: the idle operator is over it."),
    ]
    lines = [
        f"{n} TrainingJobs of control_plane.md's shape (1 replica x 1 GPU, 2 pods each) on {p['nodes']} KWOK 8-GPU nodes, all "
        f"Running after {r['all_running_seconds']} s; the census {p['after_seconds']} s later. The operator: "
        "`python -m kubetrain.operator` as `make run` starts it, standalone, MALLOC_ARENA_MAX=2 and heap trims every 10 s "
        "as the chart sets them, under `bench/memory_census.py`.",
        "",
        md_table(["", "before the first job", f"{n} jobs Running", "per job", "what it is"], rows),
        "",
        *reading,
        "",
        f"**Tracked objects that grew most** ({n} jobs; `sys.getsizeof` of the object itself, not what it refers to):",
        "",
        md_table(["type", "objects per job", "bytes per job"], [[f"`{k}`", f"{c / n:.1f}", f"{s / n:,.0f}"] for k, c, s in grown]),
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> Path:
    from bench.control_plane import nodes_for

    ap = argparse.ArgumentParser(prog="python -m bench.operator_memory", description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--jobs", type=int, default=1000)
    args = ap.parse_args(argv)
    jobs = 10 if args.quick else args.jobs
    p = {"jobs": jobs, "nodes": nodes_for(jobs), "settle_seconds": 5 if args.quick else 10,
         "after_seconds": 12 if args.quick else 20, "timeout_seconds": 900}
    run = Run(NAME, quick=args.quick, params=p, question=QUESTION)
    with tempfile.TemporaryDirectory(prefix="kubetrain-memory-") as tmp:
        try:
            run.results.update(measure(p, Path(tmp)))
        except Exception as exc:  # noqa: BLE001 - the page says what failed
            run.error("census", f"{type(exc).__name__}: {exc}")
    return run.finish(render(run.doc), args.out)


if __name__ == "__main__":
    path = main()
    print(path)
    sys.exit(1 if json.loads(path.read_text())["errors"] else 0)
