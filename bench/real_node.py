"""``python -m bench.real_node``: elastic recovery in real pods on the local real node, next to the local figures.

One 1-2 replica job of the built-in GPT (checkpoints on a hostPath claim) runs in pods from the
images built here, installed by the chart. Each cycle force-deletes worker 1 (grace 0) after a
checkpoint and times, from this machine's clock, polling rank 0's /metrics (pod IP, every 0.2 s):

- pod deleted -> the survivor's first step after its worker's restart (at world 1, or at once at world 2
  when the replacement joins that same rendezvous round);
- replacement pod seen in the API -> the first step at world size 2.

Needs root and `make tools` (the real node changes the host network; restored at the end).
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from bench.common import RESULTS, Run, fmt_spread, md_table, summary
from kubetrain.contract.torchrun import RendezvousTimeouts

NAME = "real_node"
QUESTION = ("On a real kubelet, how long from losing a worker pod to training again at the smaller world, "
            "and from its replacement to the grown world (next to the local launcher's figures)?")
SAMPLE = re.compile(r"^(kubetrain_trainer_(?:step|world_size))(?:\{[^}]*\})? ([0-9.eE+-]+)$", re.M)
NS, JOB = "bench-real-node", "gpt-recovery"


def _figures(ip: str) -> dict[str, float] | None:
    try:
        with urllib.request.urlopen(f"http://{ip}:9404/metrics", timeout=2) as resp:
            text = resp.read().decode()
    except OSError:
        return None  # the worker restarts: its endpoint is down meanwhile
    found = {name: float(v) for name, v in SAMPLE.findall(text)}
    return found if len(found) == 2 else None


def _after_kill(ip: str, before: float, core, victim: str, deadline: float) -> dict:
    """Poll rank 0 from the kill on: when its worker trained again (after the restart: endpoint down or step
    counter back at a checkpoint), at which world size, when the replacement pod appeared, and when it first
    trained at world size 2."""
    restarted, base, out = False, None, {}
    last = before
    while time.monotonic() < deadline and "world_2" not in out:
        if "replacement_seen" not in out:
            new = [p.metadata.name for p in core.list_namespaced_pod(NS).items
                   if p.metadata.name.startswith(f"{JOB}-w1") and p.metadata.name != victim]
            if new:
                out["replacement_seen"], out["replacement"] = time.monotonic(), new[0]
        f = _figures(ip)
        if f is None or f["kubetrain_trainer_step"] < last:
            restarted, base = True, None
        elif restarted:
            step, world = f["kubetrain_trainer_step"], int(f["kubetrain_trainer_world_size"])
            if base is None or base[1] != world:
                base = (step, world)
            elif step > base[0]:
                out.setdefault("first_step", (time.monotonic(), world))
                if world == 2 and "replacement_seen" in out:
                    out["world_2"] = time.monotonic()
        if f is not None:
            last = f["kubetrain_trainer_step"]
        time.sleep(0.2)
    if "world_2" not in out:
        raise TimeoutError(f"no step at world size 2 after the kill: {out}")
    return out


def run_cycles(core, cycles: int, first_step: int, timeout: float) -> list[dict]:
    events = []
    for cycle in range(cycles):
        pods = {p.metadata.name: p for p in core.list_namespaced_pod(NS).items if not p.metadata.deletion_timestamp}
        rank0 = next(p for n, p in pods.items() if n.startswith(f"{JOB}-w0"))
        victim = next(n for n in pods if n.startswith(f"{JOB}-w1"))
        deadline = time.monotonic() + timeout
        while True:  # training at world 2, past a checkpoint
            f = _figures(rank0.status.pod_ip)
            if f and f["kubetrain_trainer_world_size"] == 2 and f["kubetrain_trainer_step"] >= first_step * (cycle + 1):
                break
            if time.monotonic() > deadline:
                raise TimeoutError("the job never trained at world size 2")
            time.sleep(0.5)
        killed = time.monotonic()
        core.delete_namespaced_pod(victim, NS, grace_period_seconds=0)
        seen = _after_kill(rank0.status.pod_ip, f["kubetrain_trainer_step"], core, victim, killed + timeout)
        first_at, first_world = seen["first_step"]
        events.append({"cycle": cycle, "pod_deleted_to_first_step_s": round(first_at - killed, 2), "first_step_world": first_world,
                       "deleted_to_replacement_seen_s": round(seen["replacement_seen"] - killed, 2),
                       "replacement_to_world_2_s": round(seen["world_2"] - seen["replacement_seen"], 2),
                       "replacement": seen["replacement"]})
        print(f"[real_node] cycle {cycle}: {events[-1]}", file=sys.stderr, flush=True)
    return events


def measure(p: dict, run: Run) -> list[dict]:
    from kubernetes import client

    from kubetrain_dev.devcluster import images, real_node
    from kubetrain_dev.devcluster.cluster import LocalCluster

    with tempfile.TemporaryDirectory(prefix="kubetrain-bench-real-node-") as tmp:
        (Path(tmp) / "cluster").mkdir()
        cluster = LocalCluster(Path(tmp) / "cluster", real_node.cluster_settings())
        cluster.start()
        node = None
        try:
            api = cluster.api_client()
            node = real_node.RealNode.for_cluster(cluster)
            node.up(api)
            node.wait_dns(api)
            node.import_images([images.app_image("trainer"), images.app_image("operator")])
            env = {"KUBECONFIG": str(cluster.kubeconfig), "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
            subprocess.run(images.helm_install_argv("kubetrain", "kubetrain-system"), check=True, timeout=600, env=env,
                           capture_output=True)
            core = client.CoreV1Api(api)
            core.create_namespace({"metadata": {"name": NS}})
            time.sleep(3)  # the namespace's default ServiceAccount
            path = node.state_dir / "volumes" / "bench"
            path.mkdir(parents=True)
            path.chmod(0o777)  # the trainer runs as uid 1000
            core.create_persistent_volume({"metadata": {"name": "bench-ckpt"}, "spec": {
                "capacity": {"storage": "5Gi"}, "accessModes": ["ReadWriteMany"], "storageClassName": "real-node-hostpath",
                "hostPath": {"path": str(path), "type": "Directory"}}})
            core.create_namespaced_persistent_volume_claim(NS, {"metadata": {"name": "ckpt"}, "spec": {
                "accessModes": ["ReadWriteMany"], "storageClassName": "real-node-hostpath", "volumeName": "bench-ckpt",
                "resources": {"requests": {"storage": "5Gi"}}}})
            client.CustomObjectsApi(api).create_namespaced_custom_object("kubetrain.dev", "v1alpha1", NS, "trainingjobs", {
                "apiVersion": "kubetrain.dev/v1alpha1", "kind": "TrainingJob", "metadata": {"name": JOB},
                "spec": {"replicas": {"min": 1, "max": 2}, "trainer": {"maxSteps": p["max_steps"]},
                         "checkpoint": {"persistentVolumeClaim": {"claimName": "ckpt"}, "intervalSteps": p["checkpoint_steps"]}}})
            deadline = time.monotonic() + p["timeout_s"]
            while len([x for x in core.list_namespaced_pod(NS).items if x.status.phase == "Running"]) < 3:
                if time.monotonic() > deadline:
                    raise TimeoutError("the job's pods never ran")
                time.sleep(1)
            return run_cycles(core, p["cycles"], p["checkpoint_steps"] + 2, p["timeout_s"])
        finally:
            if node is not None:
                node.down()
            cluster.stop()


def main(argv: list[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(prog="python -m bench.real_node", description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--cycles", type=int, default=3)
    args = ap.parse_args(argv)
    p = {"cycles": 1 if args.quick else args.cycles, "max_steps": 2000, "checkpoint_steps": 20, "timeout_s": 300,
         "rendezvous": RendezvousTimeouts().conf()}
    run = Run(NAME, quick=args.quick, params=p, question=QUESTION)
    events: list[dict] = []
    try:
        events = measure(p, run)
    except Exception as exc:  # noqa: BLE001 - recorded in the page
        run.error("measure", f"{type(exc).__name__}: {exc}")
    run.results["events"] = events
    run.results["summary"] = {k: summary(e[k] for e in events) for k in
                              ("pod_deleted_to_first_step_s", "deleted_to_replacement_seen_s", "replacement_to_world_2_s")}
    return run.finish(body_of(run.results, p, args.out), args.out)


def body_of(results: dict, p: dict, out: Path) -> str:
    local = {}
    local_path = out / "trainer_elastic.json"
    if local_path.exists():
        local = json.loads(local_path.read_text())["results"].get("summary", {})
    s = results["summary"]
    loc = lambda key: fmt_spread((local.get(key) or {}).get("seconds"), " s")  # noqa: E731
    rows = [
        ["pod deleted (grace 0) → first step again (at the world size in the note)", fmt_spread(s["pod_deleted_to_first_step_s"], " s"),
         loc("operator-defaults/node_loss"), loc("local/node_loss"),
         "the survivor's collective fails at once (gloo, reset connection) and its agent opens a new round; the "
         "operator's replacement (row 2) joins it, so the round closes at max without its 15 s last_call_timeout; "
         "then container start, torch import, checkpoint load. Without a replacement (no capacity) the last call "
         f"bounds it, as in the local column ({loc('operator-defaults/node_loss')}: no replacement there)"],
        ["pod deleted → replacement pod in the API", fmt_spread(s["deleted_to_replacement_seen_s"], " s"), "—", "—",
         "the operator's wake (pod event, 0.2 s debounce); no timeout"],
        ["replacement pod → first step at world size 2", fmt_spread(s["replacement_to_world_2_s"], " s"),
         loc("operator-defaults/scale_up"), loc("local/scale_up"),
         "container start and torchrun's join; the running agent sees a waiting node at its next monitor tick (1 s), "
         "stops its worker (SIGTERM checkpoint); the round closes at once at max (no last call); then both workers start"],
    ]
    return "\n".join([
        f"builtin:gpt on 1-2 CPU replicas in pods of the real node (chart-installed operator, images built here), "
        f"checkpoint every {p['checkpoint_steps']} steps on a hostPath claim; {p['cycles']} cycles in one job. "
        "Real pods: this machine's clock, rank 0's /metrics polled every 0.2 s. Local: `trainer_elastic` "
        "(torchrun processes, no pods), same rendezvous settings for the operator-defaults column.",
        "",
        md_table(["event", "real pods", "local, operator defaults", "local launcher", "what bounds it"], rows),
        "",
        f"World size of the survivor's first step after each kill: {[e['first_step_world'] for e in results['events']]} "
        "(2: the operator's replacement joined the survivor's new round within its last call, so the job never "
        "trained at world 1).",
        "",
        f"Rendezvous (`--rdzv-conf` of the pods): `{p['rendezvous']}`.",
        "",
        "Not measured here: the node-loss paths (node deleted, node NotReady) on the real node: the one real node "
        "hosts the operator and the store too, so losing it is not a recovery this machine can show. They are "
        "measured on the KWOK GPU pool below.",
        *node_loss_section(out, s),
    ])


def node_loss_section(out: Path, s: dict) -> list[str]:
    """bench.node_loss's rows (the operator's node-loss path, KWOK pods), next to the pod-loss rows above."""
    from bench import node_loss

    path = out / f"{node_loss.NAME}.json"
    if not path.exists():
        return ["", "## Node loss (KWOK GPU pool)", "", "Not run yet: `python -m bench node_loss`."]
    doc = json.loads(path.read_text())
    return ["", "## Node loss (KWOK GPU pool)", "",
            f"From [node_loss.md](node_loss.md) ({doc['date']}, load {doc['load_average_before']} before, "
            f"{doc['load_average_after']} after, {doc['params']['cycles']} cycles): the operator's reaction to a lost node, "
            "on the local control plane's simulated GPU nodes with the shipped defaults. Those pods run nothing, so "
            "\"training again\" on real nodes adds the trainer's rendezvous after the replacement runs: the "
            "replacement pod → first step row above (~10 s).", "",
            md_table(["event", "KWOK pods, now", "before node events", "what bounds it"],
                     node_loss.rows_of(doc["results"]["summary"], doc["params"])), "",
            *_node_loss_estimate(doc["results"]["summary"], s)]


def _node_loss_estimate(nodes: dict, pods: dict) -> list[str]:
    """Node lost -> training again on real nodes, as a sum of medians measured apart: an estimate, said to be one."""
    grown = (pods.get("replacement_to_world_2_s") or {}).get("median")
    running = {m: ((nodes.get(m) or {}).get("replacement_running_s") or {}).get("median") for m in ("deleted", "not_ready")}
    if grown is None or None in running.values():
        return []
    rdzv = RendezvousTimeouts()
    return [f"Estimate, not measured: node lost → training again at full size on real nodes ≈ replacement Running "
            f"(KWOK) + replacement → first step at world size 2 (real pods, {grown:.3g} s): deleted "
            f"≈ {running['deleted'] + grown:.3g} s, NotReady ≈ {running['not_ready'] + grown:.3g} s. It assumes the "
            "survivors have left their collective by then: a vanished machine sends no TCP reset, as a deleted pod "
            f"does, so the agents' keep-alive ({rdzv.keep_alive_interval} s × {rdzv.keep_alive_max_attempt} attempts) or "
            "the collective's timeout has to notice it, and "
            "a real kubelet's image pull and container start come on top of KWOK's instant Running."]


def render(doc: dict) -> str:
    return body_of(doc["results"], doc["params"], RESULTS)


if __name__ == "__main__":
    main()
