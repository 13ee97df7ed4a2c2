"""``python -m bench.node_loss``: the operator's node-loss path on the KWOK GPU pool (node deleted, node NotReady).

The real node cannot show it (it also hosts the operator and the store), so this runs on the local
control plane's simulated GPU pool, with no real node: one elastic job (2-3 replicas x 8 GPUs) on a
pool of five 8-GPU nodes, the operator as a subprocess (``kubetrain_dev.operator_process``) with the
shipped defaults. Each cycle loses the node of one worker (never the store's), alternately

- **deleted**: the Node object deleted, as a cloud provider removes a machine;
- **NotReady**: the node reports Ready=False (our KWOK stage, ``gpu_pool.set_node_ready``), its
  Lease still renewed, as a kubelet reports a failed node;

and times, from the call, what watches on the job, its pods and the node see: the job's status
showing the loss (readyReplicas down), the replacement worker pod in the API, that pod Running on
another node, and the status back at full size. The cluster runs with Kubernetes' default pod
tolerations of a NotReady / unreachable node (300 s), so the taint manager's eviction (10 s in the
test cluster) does not race the operator. The pods run nothing (KWOK): on real nodes the trainer's
rendezvous time (bench.real_node, trainer_elastic) comes on top.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench.common import REPO, RESULTS, Run, fmt_spread, md_table, summary

NAME = "node_loss"
QUESTION = ("When a node under an elastic job is deleted or goes NotReady, how long until the job's status shows "
            "the loss, its replacement pod exists, and runs on another node (operator defaults, KWOK GPU pool)?")
NS, JOB = "bench-node-loss", "gpt-nodes"
POOL_NODES, MIN_REPLICAS, MAX_REPLICAS = 5, 2, 3
# Kubernetes' default --default-not-ready-toleration-seconds / unreachable (the test cluster uses 10).
K8S_DEFAULT_TOLERATION_S = 300
MODES = ("deleted", "not_ready")
# The parent of eed39a4, the commit that made the operator act on node events.
BEFORE_REV = "eed39a4^"
FIGURES = ("status_shows_loss_s", "replacement_created_s", "replacement_running_s", "status_full_again_s")


class Recorder:
    """Watches on the job, its pods and the nodes; every event stamped with this process's monotonic clock."""

    def __init__(self, api):
        from kubernetes import client

        self.api, self.events, self._lock = api, [], threading.Lock()
        self._stop = threading.Event()
        core, custom = client.CoreV1Api(api), client.CustomObjectsApi(api)
        self._threads = [
            threading.Thread(target=self._loop, args=("pod", core.list_namespaced_pod, (NS,)), daemon=True),
            threading.Thread(target=self._loop, args=("job", custom.list_namespaced_custom_object,
                                                      ("kubetrain.dev", "v1alpha1", NS, "trainingjobs")), daemon=True),
            threading.Thread(target=self._loop, args=("node", core.list_node, ()), daemon=True),
        ]

    def start(self) -> None:
        for t in self._threads:
            t.start()

    def stop(self) -> None:
        self._stop.set()

    def _loop(self, kind: str, fn, args: tuple) -> None:
        from kubernetes import watch

        while not self._stop.is_set():
            try:
                for ev in watch.Watch().stream(fn, *args, timeout_seconds=20):
                    obj = ev["object"]
                    with self._lock:
                        self.events.append((time.monotonic(), kind, ev["type"], obj if isinstance(obj, dict) else obj.to_dict()))
                    if self._stop.is_set():
                        return
            except Exception:  # noqa: BLE001 - the apiserver stops at the end; a re-list resumes otherwise
                time.sleep(0.5)

    def since(self, t0: float, kind: str) -> list[tuple[float, str, dict]]:
        with self._lock:
            return [(t, typ, o) for t, k, typ, o in self.events if t >= t0 and k == kind]


def _worker_label(key: str) -> str:
    from kubetrain.operator import naming

    return {"job": naming.LABEL_JOB, "role": naming.LABEL_ROLE, "worker": naming.ROLE_WORKER,
            "store": naming.ROLE_STORE}[key]


def _pods(core, role: str) -> list:
    sel = f"{_worker_label('job')}={JOB},{_worker_label('role')}={_worker_label(role)}"
    return [p for p in core.list_namespaced_pod(NS, label_selector=sel).items if not p.metadata.deletion_timestamp]


def _steady(core, custom) -> bool:
    """The job at full size: status Running with max ready, every worker Running, every pool node Ready."""
    from kubetrain_dev.devcluster import gpu_pool

    st = custom.get_namespaced_custom_object("kubetrain.dev", "v1alpha1", NS, "trainingjobs", JOB).get("status") or {}
    workers = _pods(core, "worker")
    nodes = core.list_node().items
    return (st.get("phase") == "Running" and st.get("readyReplicas") == MAX_REPLICAS
            and len(workers) == MAX_REPLICAS and all(p.status.phase == "Running" for p in workers)
            and len(nodes) == POOL_NODES and all(gpu_pool.node_is_ready(n) for n in nodes))


def one_cycle(api, rec: Recorder, mode: str, timeout: float) -> dict:
    from kubernetes import client

    from kubetrain_dev.devcluster import gpu_pool
    from kubetrain_dev.wait import wait_for

    core, custom = client.CoreV1Api(api), client.CustomObjectsApi(api)
    wait_for(lambda: _steady(core, custom), timeout=timeout, what="the job at full size on a full pool")
    time.sleep(2)  # let the last wake's reconcile and status write settle
    store_node = _pods(core, "store")[0].spec.node_name
    workers = _pods(core, "worker")
    before = {p.metadata.uid for p in workers}
    victim = next(p for p in workers if p.spec.node_name != store_node)
    node = victim.spec.node_name
    t0 = time.monotonic()
    if mode == "deleted":
        gpu_pool.delete_node(api, node)
    else:
        gpu_pool.set_node_ready(api, node, False)
    out: dict = {"mode": mode, "node": node, "victim": victim.metadata.name}

    def figures() -> bool:
        for t, _typ, o in rec.since(t0, "job"):
            ready = (o.get("status") or {}).get("readyReplicas")
            if ready is not None and ready < MAX_REPLICAS:
                out.setdefault("status_shows_loss_s", t - t0)
            elif ready == MAX_REPLICAS and "replacement_running_s" in out and t - t0 >= out["replacement_running_s"]:
                out.setdefault("status_full_again_s", t - t0)
        for t, _typ, o in rec.since(t0, "pod"):
            meta, spec, status = o["metadata"], o["spec"], o["status"]
            labels = meta.get("labels") or {}
            if labels.get(_worker_label("role")) != _worker_label("worker") or meta["uid"] in before:
                continue
            out.setdefault("replacement_created_s", t - t0)
            out.setdefault("replacement", meta["name"])
            if status.get("phase") == "Running" and spec.get("node_name") not in (None, node):
                out.setdefault("replacement_running_s", t - t0)
                out.setdefault("replacement_node", spec["node_name"])
        for t, _typ, o in rec.since(t0, "node"):
            if o["metadata"]["name"] == node and not any(
                    c["type"] == "Ready" and c["status"] == "True" for c in (o.get("status") or {}).get("conditions") or []):
                out.setdefault("node_not_ready_seen_s", t - t0)
        return all(k in out for k in FIGURES)

    try:
        wait_for(figures, timeout=timeout, what=f"the loss of node {node} ({mode}) handled", interval=0.5, max_interval=0.5)
    finally:
        if mode == "deleted":
            gpu_pool.add_nodes(api, 1, timeout=timeout)  # the deleted name is free again: the pool of five
        else:
            gpu_pool.set_node_ready(api, node, True)
            gpu_pool.wait_nodes_ready(api, [node], timeout=timeout)
    return {k: round(v, 2) if isinstance(v, float) else v for k, v in out.items()}


def _commit(rev: str) -> str:
    import subprocess

    return subprocess.run(["git", "rev-parse", rev], cwd=REPO, check=True, capture_output=True, text=True).stdout.strip()


def _operator_tree(rev: str, into: Path) -> Path:
    """The ``kubetrain`` package (operator/kubetrain) as of commit ``rev``, extracted under ``into``."""
    import io
    import subprocess
    import tarfile

    tar = subprocess.run(["git", "archive", rev, "operator/kubetrain"], cwd=REPO, check=True, capture_output=True).stdout
    with tarfile.open(fileobj=io.BytesIO(tar)) as t:
        t.extractall(into, filter="data")
    return into / "operator"


def measure(p: dict, run: Run, *, rev: str | None, modes: tuple[str, ...], cycles: int) -> list[dict]:
    """One fresh cluster and operator; ``cycles`` x ``modes``. ``rev``: the operator from that commit instead of
    the working tree (the behaviour before node events), else the working tree's."""
    from kubernetes import client

    from bench.control_plane import install_crds
    from kubetrain_dev.devcluster import build, gpu_pool
    from kubetrain_dev.devcluster.cluster import LocalCluster, Settings
    from kubetrain_dev.operator_process import kubetrain_operator
    from kubetrain_dev.wait import wait_for

    failures = build.ensure(["kubernetes", "etcd", "kwok"])
    if failures:
        raise RuntimeError(f"control plane binaries could not be built: {failures}")
    events: list[dict] = []
    label = rev or "current"
    with tempfile.TemporaryDirectory(prefix="kubetrain-bench-node-loss-") as tmp:
        settings = Settings(not_ready_toleration_s=K8S_DEFAULT_TOLERATION_S, unreachable_toleration_s=K8S_DEFAULT_TOLERATION_S)
        cluster = LocalCluster(Path(tmp) / "cluster", settings)
        cluster.start()
        op = rec = None
        try:
            api = cluster.api_client()
            gpu_pool.create_pool(api, nodes=POOL_NODES)
            install_crds(api, sorted((REPO / "crds").glob("*.yaml")))
            core = client.CoreV1Api(api)
            core.create_namespace({"metadata": {"name": NS}})
            wait_for(lambda: core.list_namespaced_service_account(NS, field_selector="metadata.name=default").items,
                     timeout=60, what="the namespace's default ServiceAccount")
            op = kubetrain_operator(cluster.kubeconfig, Path(tmp) / "operator.log")  # shipped defaults: no env on top
            if rev:
                # python -m puts its cwd first on sys.path, ahead of the editable install's finder.
                op.cwd = _operator_tree(rev, Path(tmp) / "src")
            op.start()
            rec = Recorder(api)
            rec.start()
            client.CustomObjectsApi(api).create_namespaced_custom_object("kubetrain.dev", "v1alpha1", NS, "trainingjobs", {
                "apiVersion": "kubetrain.dev/v1alpha1", "kind": "TrainingJob", "metadata": {"name": JOB},
                "spec": {"replicas": {"min": MIN_REPLICAS, "max": MAX_REPLICAS}, "container": {"gpusPerReplica": 8},
                         "failurePolicy": {"maxRestarts": 100},
                         "scheduling": {"tolerations": [gpu_pool.KWOK_TOLERATION]}}})
            for cycle in range(cycles):
                for mode in (modes if cycle % 2 == 0 else modes[::-1]):  # alternate which goes first
                    ev = one_cycle(api, rec, mode, p["timeout_s"])
                    ev.update(cycle=cycle, operator=label)
                    events.append(ev)
                    print(f"[node_loss] {ev}", file=sys.stderr, flush=True)
        except Exception as exc:  # noqa: BLE001 - recorded in the page, with the figures measured so far
            log = op.logs(3000) if op else ""
            run.error(f"measure ({label})", f"{type(exc).__name__}: {exc}\noperator log tail:\n{log}")
        finally:
            if rec is not None:
                rec.stop()
            if op is not None:
                op.stop()
            cluster.stop()
    return events


def main(argv: list[str] | None = None) -> Path:
    from kubetrain.operator.nodes import NODE_LOST_GRACE_SECONDS
    from kubetrain.operator.wakes import DEBOUNCE_SECONDS

    ap = argparse.ArgumentParser(prog="python -m bench.node_loss", description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--cycles", type=int, default=5, help="cycles, each losing one node per mode")
    ap.add_argument("--before", default=BEFORE_REV, help="the operator before node events, for the comparison ('' skips it)")
    ap.add_argument("--before-cycles", type=int, default=3, help="node-deleted cycles with that operator")
    args = ap.parse_args(argv)
    p = {"cycles": 1 if args.quick else args.cycles, "timeout_s": 180, "before": args.before or None, "pool_nodes": POOL_NODES,
         "replicas": {"min": MIN_REPLICAS, "max": MAX_REPLICAS}, "gpus_per_replica": 8,
         "node_lost_grace_s": NODE_LOST_GRACE_SECONDS, "wake_debounce_s": DEBOUNCE_SECONDS,
         "pod_not_ready_toleration_s": K8S_DEFAULT_TOLERATION_S,
         "before_commit": _commit(args.before) if args.before else None}
    run = Run(NAME, quick=args.quick, params=p, question=QUESTION)
    events = measure(p, run, rev=None, modes=MODES, cycles=p["cycles"])
    if args.before:
        # Only a deleted node: before node events, a NotReady node's pods waited out their 300 s toleration.
        events += measure(p, run, rev=args.before, modes=("deleted",), cycles=1 if args.quick else args.before_cycles)
    run.results["events"] = events
    run.results["summary"] = {mode: {k: summary(e[k] for e in events if e["mode"] == mode and e["operator"] == "current" and k in e)
                                     for k in (*FIGURES, "node_not_ready_seen_s")} for mode in MODES}
    run.results["summary"]["before/deleted"] = {k: summary(e[k] for e in events if e["operator"] != "current" and k in e)
                                                for k in FIGURES}
    return run.finish(render_body(run.doc), args.out)


def rows_of(s: dict, p: dict) -> list[list[str]]:
    """Rows: event, now, before node events, what bounds it; shared with the real_node page."""
    grace, debounce, tol = p["node_lost_grace_s"], p["wake_debounce_s"], p["pod_not_ready_toleration_s"]
    d, n, b = s.get("deleted") or {}, s.get("not_ready") or {}, s.get("before/deleted") or {}
    f = lambda x, k: fmt_spread(x.get(k), " s")  # noqa: E731
    before_nr = f"≥ {tol} s"
    why_nr = f"not run: ≥ {tol} s (the pods' not-ready toleration, then the taint manager's eviction)"
    return [
        ["node deleted → job status shows the loss (readyReplicas down)", f(d, "status_shows_loss_s"), f(b, "status_shows_loss_s"),
         f"the node watch wakes the job's reconcile after the {debounce:g} s debounce; no timeout. Before: PodGC "
         "deletes a deleted node's pods after its 40 s quarantine, checked every 20 s (40-60 s), then the pod event"],
        ["node deleted → replacement worker pod in the API", f(d, "replacement_created_s"), f(b, "replacement_created_s"),
         "the same reconcile: the lost pod is deleted (grace 0) and replaced in that round"],
        ["node deleted → replacement Running on another node", f(d, "replacement_running_s"), f(b, "replacement_running_s"),
         "kube-scheduler's binding, then KWOK marks it Running at once (a real kubelet adds image pull and container start)"],
        ["node deleted → job status back at full size", f(d, "status_full_again_s"), f(b, "status_full_again_s"),
         "the replacement's pod event, the debounce"],
        ["node NotReady → job status shows the loss", f(n, "status_shows_loss_s"), why_nr,
         f"KUBETRAIN_NODE_LOST_GRACE ({grace:g} s) from the node's Ready=False (its lastTransitionTime, whole seconds: "
         "up to 1 s less), the operator woken at its end; the debounce"],
        ["node NotReady → replacement worker pod in the API", f(n, "replacement_created_s"), before_nr, "the same reconcile"],
        ["node NotReady → replacement Running on another node", f(n, "replacement_running_s"), before_nr, "the scheduler, KWOK"],
        ["node NotReady → job status back at full size", f(n, "status_full_again_s"), before_nr, "the replacement's pod event, the debounce"],
    ]


def render_body(doc: dict) -> str:
    p, res = doc["params"], doc["results"]
    s = res["summary"]
    seen = fmt_spread((s.get("not_ready") or {}).get("node_not_ready_seen_s"), " s")
    return "\n".join([
        f"One elastic job ({p['replicas']['min']}-{p['replicas']['max']} replicas × {p['gpus_per_replica']} simulated "
        f"GPUs, rendezvous store pod) on {p['pool_nodes']} KWOK 8-GPU nodes of the local control plane (no real node), "
        "the operator as a subprocess with the shipped defaults "
        f"(node-lost grace {p['node_lost_grace_s']:g} s, wake debounce {p['wake_debounce_s']:g} s, reconcile timer 5 s). "
        f"{p['cycles']} cycles, each losing one worker's node (never the store's) once per mode, the two modes "
        "alternating which goes first; the pool is restored after each. Times from the delete or NotReady call to "
        "what watches on the job, its pods and the nodes deliver to the benchmark (the same clock). Pod tolerations of "
        f"a NotReady node are Kubernetes' default {p['pod_not_ready_toleration_s']} s, so the taint manager does not "
        "evict first.",
        "",
        md_table(["event", "now: median (min – max)", f"before node events ({(p.get('before_commit') or '—')[:7]})",
                  "what bounds it"], rows_of(s, p)),
        "",
        f"The node's Ready=False reached the watch {seen} after the call (KWOK's stage); the NotReady rows include it. "
        "On a real cluster a node that stops heart-beating is marked NotReady only after the controller manager's "
        "node-monitor grace period (40 s by default) of silence, which comes before everything here.",
        "",
        "The pods run nothing (KWOK): on real nodes, training again adds the trainer's rendezvous and restart, "
        "measured in real pods after a pod loss on [real_node.md](real_node.md) (replacement pod → first step at the "
        "grown world ~10 s).",
        "",
        "Raw per cycle (loss in status / replacement created / Running / status full): " + "; ".join(
            f"{e['mode']}{'' if e['operator'] == 'current' else ' (before)'} {e.get('status_shows_loss_s')} / "
            f"{e.get('replacement_created_s')} / {e.get('replacement_running_s')} / {e.get('status_full_again_s')} s"
            for e in res["events"]) + ".",
    ])


def render(doc: dict) -> str:
    return render_body(doc)


if __name__ == "__main__":
    main()
