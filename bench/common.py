"""What every benchmark shares: the stamp (machine, versions, date, load), statistics, result files.

Each benchmark writes ``bench/results/<name>.json`` (machine-readable, schema
``kubetrain-bench/1``) and ``bench/results/<name>.md`` (its tables); ``python -m
bench`` also rewrites ``bench/results/README.md`` from every JSON it finds.
Figures are ratios measured within one run wherever a ratio is the question:
the machines are noisy, so absolute times are only context.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
SCHEMA = "kubetrain-bench/1"


# -- statistics ----------------------------------------------------------------------


def quantile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated quantile (numpy's default), q in [0, 1]."""
    xs = sorted(values)
    if not xs:
        raise ValueError("quantile of nothing")
    pos = (len(xs) - 1) * q
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def summary(values: Iterable[float]) -> dict[str, float | int] | None:
    """n, median, min, max, p25, p75 (and p99 when there are enough values); None for no values."""
    xs = [float(v) for v in values]
    if not xs:
        return None
    out: dict[str, float | int] = {
        "n": len(xs),
        "median": statistics.median(xs),
        "min": min(xs),
        "max": max(xs),
        "p25": quantile(xs, 0.25),
        "p75": quantile(xs, 0.75),
        "mean": statistics.fmean(xs),
    }
    if len(xs) >= 10:
        out["p99"] = quantile(xs, 0.99)
    return out


def fmt(value: float | None, unit: str = "", digits: int = 3) -> str:
    if value is None:
        return "—"
    if unit == "%":
        return f"{value * 100:+.{max(digits - 2, 1)}f}%"
    if unit == "x":
        return f"{value:.2f}×" if abs(value) < 100 else f"{value:.0f}×"
    if abs(value) >= 1000:
        return f"{value:,.0f}{unit}"
    return f"{value:.{digits}g}{unit}"


def fmt_spread(s: dict | None, unit: str = "", digits: int = 3) -> str:
    """``median (min–max)`` of a summary."""
    if not s:
        return "—"
    if s["n"] == 1:
        return fmt(s["median"], unit, digits)
    return f"{fmt(s['median'], unit, digits)} ({fmt(s['min'], unit, digits)} – {fmt(s['max'], unit, digits)})"


def md_table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


# -- the stamp -------------------------------------------------------------------------


def _run(cmd: list[str], timeout: float = 20) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _mem_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def _pkg_version(name: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def load_average() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def gpu_info() -> dict[str, Any]:
    """CUDA devices as torch sees them (imports torch only if it is installed)."""
    try:
        import torch
    except ImportError:
        return {"cuda": False, "devices": []}
    if not torch.cuda.is_available():
        return {"cuda": False, "devices": []}
    return {"cuda": True, "devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
            "cuda_version": torch.version.cuda, "nccl": ".".join(map(str, torch.cuda.nccl.version()))}


def machine() -> dict[str, Any]:
    return {
        "cpu_model": _cpu_model(),
        "cpus": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "memory_gib": _mem_gib(),
        "kernel": platform.release(),
        "os": platform.platform(),
        "gpu": gpu_info(),
    }


def versions(extra: dict[str, str | None] | None = None) -> dict[str, Any]:
    commit = _run(["git", "rev-parse", "HEAD"])
    dirty = bool(_run(["git", "status", "--porcelain", "--untracked-files=no"]))
    out = {
        "kubetrain": _pkg_version("kubetrain"),
        "git_commit": commit or None,
        "git_dirty": dirty,
        "python": platform.python_version(),
        "torch": _pkg_version("torch"),
        "kopf": _pkg_version("kopf"),
        "kubernetes_client": _pkg_version("kubernetes"),
    }
    out.update(extra or {})
    return out


def now_utc() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


class Run:
    """One benchmark's result document: stamp at start, figures in between, stamp at the end."""

    def __init__(self, name: str, *, quick: bool, params: dict[str, Any], question: str):
        self.name = name
        self.started = time.time()
        self.doc: dict[str, Any] = {
            "schema": SCHEMA,
            "benchmark": name,
            "question": question,
            "quick": quick,
            "date": now_utc(),
            "command": " ".join([Path(sys.executable).name, *getattr(sys, "orig_argv", sys.argv)[1:]]),
            "machine": machine(),
            "versions": versions(),
            "load_average_before": load_average(),
            "params": params,
            "results": {},
            "errors": [],
        }

    @property
    def results(self) -> dict[str, Any]:
        return self.doc["results"]

    def error(self, where: str, message: str) -> None:
        self.doc["errors"].append({"where": where, "message": message})

    def finish(self, markdown_body: str, out_dir: Path = RESULTS) -> Path:
        self.doc["load_average_after"] = load_average()
        self.doc["duration_seconds"] = round(time.time() - self.started, 1)
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / f"{self.name}.json"
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.doc, indent=2, sort_keys=False) + "\n")
        tmp.replace(path)
        (out_dir / f"{self.name}.md").write_text(render_markdown(self.doc, markdown_body))
        return path


def stamp_lines(doc: dict[str, Any]) -> list[str]:
    m, v = doc["machine"], doc["versions"]
    gpu = ", ".join(m["gpu"]["devices"]) if m["gpu"].get("cuda") else "none"
    vers = ", ".join(f"{k} {val}" for k, val in v.items() if val not in (None, "") and k not in ("git_commit", "git_dirty"))
    commit = (v.get("git_commit") or "?")[:12] + (" (uncommitted changes)" if v.get("git_dirty") else "")
    return [
        f"- Date: {doc['date']} · duration {doc.get('duration_seconds', '?')} s · {'**quick smoke run**' if doc['quick'] else 'full run'}",
        f"- Machine: {m['cpu_model']}, {m['cpus_usable']} usable CPUs, {m['memory_gib']} GiB, GPU: {gpu}",
        f"- Load average (1/5/15 min) before: {doc['load_average_before']}, after: {doc.get('load_average_after')}",
        f"- Versions: {vers}; commit {commit}",
        f"- Command: `{doc['command']}`",
    ]


def render_markdown(doc: dict[str, Any], body: str) -> str:
    lines = [f"# {doc['benchmark']}", "", f"*{doc['question']}*", "", *stamp_lines(doc), "", body.strip(), ""]
    if doc["errors"]:
        lines += ["", "## Errors", ""]
        lines += [f"- **{e['where']}**: `{e['message'][:2000]}`" for e in doc["errors"]]
        lines.append("")
    return "\n".join(lines)


def which(name: str) -> str | None:
    return shutil.which(name)
