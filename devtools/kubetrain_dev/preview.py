"""Render the dashboard's panels from a real Prometheus into a PNG (for docs; Grafana itself cannot be built here).

``python -m kubetrain_dev.preview --out docs/images/dashboard.png`` trains the built-in
model locally on two agents, kills one halfway and lets it rejoin, while Debian's Prometheus
scrapes the trainers; then it draws every panel whose data exists with the panel's own query.
Needs matplotlib (not a kubetrain dependency: ``pip install matplotlib``).
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

import yaml

from kubetrain.contract import TrainerContract
from kubetrain.contract.ports import free_port
from kubetrain.observability import dashboard
from kubetrain.observability.rules import rule_groups

JOB, NS = "gpt-preview", "demo"


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return json.load(resp)


def _start_prometheus(work: Path, targets: list[str]) -> tuple[subprocess.Popen, str]:
    port = free_port()
    (work / "rules.yaml").write_text(yaml.safe_dump(rule_groups()))
    config = {"global": {"scrape_interval": "2s", "evaluation_interval": "2s"}, "rule_files": [str(work / "rules.yaml")],
              "scrape_configs": [{"job_name": "kubetrain", "honor_labels": True, "static_configs": [{"targets": targets}]}]}
    (work / "prometheus.yml").write_text(yaml.safe_dump(config))
    proc = subprocess.Popen([shutil.which("prometheus") or "prometheus", f"--config.file={work / 'prometheus.yml'}",
                             f"--storage.tsdb.path={work / 'data'}", f"--web.listen-address=127.0.0.1:{port}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(120):
        try:
            if urllib.request.urlopen(f"{url}/-/ready", timeout=2).status == 200:
                return proc, url
        except OSError:
            time.sleep(0.5)
    raise RuntimeError("Prometheus did not become ready")


def _local_job(work: Path):
    from kubetrain_trainer.local import LocalJob

    base = free_port()
    contract = TrainerContract(job_name=JOB, namespace=NS, max_steps=10**6, checkpoint_dir=str(work / "ckpt"),
                               checkpoint_interval_steps=25, metrics_port=base)
    job = LocalJob(contract, replicas=2, nproc_per_node=1, min_replicas=1, max_replicas=2, max_restarts=5, workdir=work / "run")
    # Agents listen on base + index; the third is the one added after the kill.
    return job, [f"127.0.0.1:{base + i}" for i in range(3)]


def _series(url: str, expr: str, start: float, end: float) -> list[tuple[str, list[float], list[float]]]:
    qs = urllib.parse.urlencode({"query": expr, "start": start, "end": end, "step": 5})
    out = []
    for r in _get(f"{url}/api/v1/query_range?{qs}")["data"]["result"]:
        out.append((r["metric"].get("trainingjob", ""), [float(t) - start for t, _ in r["values"]], [float(v) for _, v in r["values"]]))
    return out


def render(out: Path, minutes: float = 4.0) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    work = Path(tempfile.mkdtemp(prefix="kubetrain-preview-"))
    job, targets = _local_job(work)
    prom, url = _start_prometheus(work, targets)
    start = time.time()
    job.start()
    try:
        time.sleep(minutes * 60 * 0.45)
        job.kill_agent(1, signal.SIGKILL)  # a lost node: the survivor goes on at world size 1
        time.sleep(minutes * 60 * 0.25)
        job.add_agent()  # capacity returns: scale back up
        time.sleep(minutes * 60 * 0.30)
        end = time.time()
        panels = [p for p in dashboard.panels() if p.source == "trainer"]
        fig, axes = plt.subplots((len(panels) + 2) // 3, 3, figsize=(16, 2.6 * ((len(panels) + 2) // 3)))
        for ax, panel in zip(axes.flat, panels):
            for expr, legend in panel.queries:
                concrete = expr.replace("$namespace", NS).replace("$trainingjob", JOB).replace("$__range", "5m")
                for _job, xs, ys in _series(url, concrete, start, end):
                    ax.plot(xs, ys, label=legend.replace("{{job}}", JOB))
            ax.set_title(f"{panel.title} ({panel.unit})", fontsize=10)
            ax.axvline(minutes * 60 * 0.45, color="red", lw=0.8, ls="--")
            ax.axvline(minutes * 60 * 0.70, color="green", lw=0.8, ls="--")
            ax.tick_params(labelsize=8)
            ax.set_xlabel("seconds", fontsize=8)
        for ax in list(axes.flat)[len(panels):]:
            ax.axis("off")
        fig.suptitle("kubetrain dashboard panels (trainer rows), rendered from a real Prometheus: "
                     "gpt on 2 local agents; red: one agent killed, green: agent added", fontsize=11)
        fig.tight_layout()
        out.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out, dpi=80)
        return out
    finally:
        job.stop()
        prom.terminate()
        prom.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="docs/images/dashboard.png")
    parser.add_argument("--minutes", type=float, default=4.0)
    args = parser.parse_args()
    print(render(Path(args.out), args.minutes))


if __name__ == "__main__":
    main()
