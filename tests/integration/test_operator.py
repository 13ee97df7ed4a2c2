"""The operator against the real control plane; KWOK simulates the GPU nodes and the pods' lives.

The operator runs as a subprocess (``python -m kubetrain.operator``), exactly as
``make run`` starts it, so a test can SIGKILL it mid-reconcile and start it again.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from kubernetes import client

from crd_helpers import Jobs, install_crd, kubectl, wait_gone
from kubetrain_dev.devcluster import gpu_pool
from kubetrain.contract.ports import free_port
from kubetrain_dev.operator_process import OperatorProcess, kubetrain_operator
from kubetrain_dev.wait import wait_for
from support.variants import REPO, load_all, load_yaml


class Operator(OperatorProcess):
    """``python -m kubetrain.operator`` with the tests' defaults (a 1 s timer) and ``env`` on top
    (tests/integration/test_chart.py: the chart's env); free metrics and liveness ports on every start."""

    def __init__(self, kubeconfig: Path, log: Path, env: dict[str, str] | None = None):
        super().__init__([], {}, log, "")
        self.kubeconfig = kubeconfig
        self.env = env or {}
        self.metrics_port = 0

    def start(self, timeout: float = 60) -> None:
        self.metrics_port = free_port()
        launch = kubetrain_operator(self.kubeconfig, self.log, {"KUBETRAIN_RECONCILE_INTERVAL": "1",
                                                                "KUBETRAIN_METRICS_PORT": str(self.metrics_port)} | self.env)
        self.argv, self.launch_env, self.ready_url = launch.argv, launch.launch_env, launch.ready_url
        super().start(timeout)


@contextmanager
def running_operator(cluster, tmp_path_factory, env: dict[str, str] | None = None) -> Iterator[Operator]:
    """The CRD installed and an operator started; on exit, stopped and its log checked."""
    install_crd(cluster.api)
    op = Operator(cluster.kubeconfig, tmp_path_factory.mktemp("operator") / "operator.log", env)
    op.start()
    yield op
    op.stop()
    # The operator must never crash: its log has no traceback from a handler.
    assert "Traceback" not in op.log.read_text(), op.logs()
    # SIGTERM ran the cleanup handler: what startup started is stopped.
    assert "kubetrain operator stopped" in op.log.read_text(), op.logs()


@pytest.fixture(scope="module")
def operator(cluster, tmp_path_factory) -> Iterator[Operator]:
    with running_operator(cluster, tmp_path_factory) as op:
        yield op


@pytest.fixture
def jobs(cluster, operator, namespace) -> Iterator[Jobs]:
    j = Jobs(cluster.api, namespace)
    yield j
    # Shown by pytest only when the test failed.
    print(f"--- operator log (tail) ---\n{operator.logs()}")
    print(f"--- pods, nodes and events ---\n{_cluster_picture(j)}")
    # Leave the GPU pool empty for the next test: delete every job and wait for its pods.
    for item in j.custom.list_namespaced_custom_object("kubetrain.dev", "v1alpha1", namespace, "trainingjobs")["items"]:
        j.delete(item["metadata"]["name"])
    wait_gone(lambda: j.core.list_namespaced_pod(namespace).items, f"pods in {namespace}", timeout=90)


def _cluster_picture(j: Jobs) -> str:
    """Where every pod is and why, for a failed test's output."""
    lines = []
    for p in j.core.list_pod_for_all_namespaces().items:
        conds = ",".join(f"{c.type}={c.status}{'/' + c.reason if c.reason else ''}" for c in p.status.conditions or [])
        lines.append(f"pod {p.metadata.namespace}/{p.metadata.name} {p.status.phase} node={p.spec.node_name} "
                     f"deleting={bool(p.metadata.deletion_timestamp)} {conds}")
    for n in j.core.list_node().items:
        ready = next((c.status for c in n.status.conditions or [] if c.type == "Ready"), "?")
        lines.append(f"node {n.metadata.name} Ready={ready} gpus={(n.status.allocatable or {}).get('nvidia.com/gpu')} "
                     f"taints={[t.key for t in n.spec.taints or []]} unschedulable={n.spec.unschedulable}")
    for e in j.core.list_namespaced_event(j.ns).items[-30:]:
        lines.append(f"event {e.involved_object.kind}/{e.involved_object.name} {e.reason}: {e.message}")
    return "\n".join(lines)


def gpu_job(name: str, lo: int, hi: int, **spec) -> dict:
    body = {
        "replicas": {"min": lo, "max": hi},
        "container": {"gpusPerReplica": 8},
        "scheduling": {"tolerations": [gpu_pool.KWOK_TOLERATION]},
    }
    body.update(spec)
    return {"apiVersion": "kubetrain.dev/v1alpha1", "kind": "TrainingJob", "metadata": {"name": name}, "spec": body}


def ready_workers(jobs: Jobs, name: str) -> list[client.V1Pod]:
    return [p for p in jobs.pods(name) if p.status.phase == "Running" and not p.metadata.deletion_timestamp]


def test_happy_path_runs_at_max_then_succeeds(cluster, jobs):
    jobs.create(gpu_job("happy", 2, 4))
    st = jobs.wait(name := "happy", lambda s: s.get("phase") == "Running" and s.get("readyReplicas") == 4, "4 ready", 90)
    assert st["desiredReplicas"] == 4 and st["worldSize"] == 32 and st["startTime"]
    pods = jobs.pods(name)
    assert sorted(p.metadata.name for p in pods) == ["happy-w0-0", "happy-w1-0", "happy-w2-0", "happy-w3-0"]
    assert len({p.spec.node_name for p in pods}) == 4  # 8 GPUs each: one per node
    assert len(jobs.pods(name, role="rendezvous")) == 1
    row = kubectl("get", "tj", name, "-n", jobs.ns, "--no-headers").stdout.split()
    assert row[1:6] == ["Running", "4", "4", "2", "4"]
    for p in pods:
        gpu_pool.finish_pod(cluster.api, jobs.ns, p.metadata.name, 0)
    st = jobs.wait_phase(name, "Succeeded", 60)
    assert st["completionTime"]
    cond = {c["type"]: c for c in st["conditions"]}
    assert cond["Succeeded"]["status"] == "True" and cond["Succeeded"]["reason"] == "TrainingFinished"
    wait_gone(lambda: jobs.pods(name) + jobs.pods(name, role="rendezvous"), "finished pods cleaned up")


def test_node_loss_keeps_training_above_min_and_grows_back(cluster, jobs):
    jobs.create(gpu_job("nodeloss", 2, 4))
    jobs.wait("nodeloss", lambda s: s.get("readyReplicas") == 4, "4 ready", 90)
    store_node = jobs.pods("nodeloss", role="rendezvous")[0].spec.node_name
    # Lose a worker's node, not the store's (a 4-node pool cannot keep them apart).
    node = next(p.spec.node_name for p in jobs.pods("nodeloss") if p.spec.node_name != store_node)
    gpu_pool.delete_node(cluster.api, node)
    try:
        st = jobs.wait("nodeloss", lambda s: s.get("readyReplicas") == 3 and s.get("restarts") == 1,
                       "shrunk to 3 after node loss", 180)
        assert st["phase"] == "Running" and st["desiredReplicas"] == 3 and st["worldSize"] == 24
        assert st["lastScaling"]["toReplicas"] == 3
        # Events are posted after the status patch (now within a second of the node's deletion): wait for them.
        wait_for(lambda: {"NodeLost", "Scaling"} <= {e.reason for e in jobs.events("nodeloss")}, timeout=30,
                 what="NodeLost and Scaling events")
    finally:
        gpu_pool.add_nodes(cluster.api, 1)
    st = jobs.wait("nodeloss", lambda s: s.get("readyReplicas") == 4, "grown back to 4", 90)
    assert st["desiredReplicas"] == 4 and st["lastScaling"]["toReplicas"] == 4


def test_capacity_below_min_waits_then_runs_when_a_node_is_added(cluster, jobs):
    jobs.create(gpu_job("big", 5, 5))
    st = jobs.wait("big", lambda s: any(c["type"] == "Schedulable" and c["reason"] == "InsufficientCapacity"
                                        and "4 of min 5" in c["message"] for c in s.get("conditions", [])),
                   "waiting for capacity, 4 of 5 replicas placeable", 60)
    assert st["phase"] == "Pending" and jobs.pods("big") == []
    added = gpu_pool.add_nodes(cluster.api, 1)
    try:
        jobs.wait("big", lambda s: s.get("phase") == "Running" and s.get("readyReplicas") == 5, "5 running", 90)
    finally:
        jobs.delete("big")
        wait_gone(lambda: jobs.pods("big"), "big's pods gone", 90)
        for name in added:
            gpu_pool.delete_node(cluster.api, name)


def test_failures_beyond_the_restart_cap_fail_the_job_with_the_reason(cluster, jobs):
    jobs.create(gpu_job("flaky", 1, 1, failurePolicy={"maxRestarts": 1}))
    jobs.wait("flaky", lambda s: s.get("readyReplicas") == 1, "1 ready", 60)
    gpu_pool.finish_pod(cluster.api, jobs.ns, "flaky-w0-0", 1, "CommunicationTimeout: gloo allreduce timed out")
    st = jobs.wait("flaky", lambda s: s.get("restarts") == 1 and s.get("readyReplicas") == 1, "replaced once", 60)
    assert {p.metadata.name for p in ready_workers(jobs, "flaky")} == {"flaky-w0-1"}
    gpu_pool.finish_pod(cluster.api, jobs.ns, "flaky-w0-1", 1, "CommunicationTimeout: NCCL watchdog timeout")
    st = jobs.wait_phase("flaky", "Failed", 60)
    failed = next(c for c in st["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "RestartLimitExceeded" and "CommunicationTimeout" in failed["message"]
    # keepPods: Failed keeps the failed pods for their logs; the store is gone.
    wait_gone(lambda: jobs.pods("flaky", role="rendezvous"), "store removed")
    assert {p.metadata.name for p in jobs.pods("flaky")} == {"flaky-w0-0", "flaky-w0-1"}


def test_user_error_is_not_retried(cluster, jobs):
    jobs.create(gpu_job("buggy", 1, 2))
    jobs.wait("buggy", lambda s: s.get("readyReplicas") == 2, "2 ready", 60)
    gpu_pool.finish_pod(cluster.api, jobs.ns, "buggy-w1-0", 1, "UserError: ValueError: shapes (4,) and (5,) not aligned")
    st = jobs.wait_phase("buggy", "Failed", 60)
    failed = next(c for c in st["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "UserError" and "shapes" in failed["message"]
    wait_gone(lambda: [p for p in jobs.pods("buggy") if p.metadata.name == "buggy-w0-0"], "survivor stopped")


def test_suspend_deletes_pods_and_resume_recreates_them(jobs):
    jobs.create(gpu_job("pausable", 1, 2))
    jobs.wait("pausable", lambda s: s.get("readyReplicas") == 2, "2 ready", 60)
    jobs.patch("pausable", {"spec": {"suspend": True}})
    jobs.wait_phase("pausable", "Suspended", 60)
    wait_gone(lambda: jobs.pods("pausable") + jobs.pods("pausable", role="rendezvous"), "suspended pods gone")
    jobs.patch("pausable", {"spec": {"suspend": False}})
    st = jobs.wait("pausable", lambda s: s.get("phase") == "Running" and s.get("readyReplicas") == 2, "resumed", 60)
    assert st["restarts"] == 0  # suspending is not a failure


def test_active_deadline_fails_the_job_cleanly(jobs):
    jobs.create(gpu_job("slow", 1, 1, activeDeadlineSeconds=3))
    st = jobs.wait_phase("slow", "Failed", 60)
    assert next(c for c in st["conditions"] if c["type"] == "Failed")["reason"] == "DeadlineExceeded"
    wait_gone(lambda: jobs.pods("slow") + jobs.pods("slow", role="rendezvous"), "pods stopped at the deadline")


def test_ttl_deletes_the_finished_job(cluster, jobs):
    jobs.create(gpu_job("shortlived", 1, 1, ttlSecondsAfterFinished=2))
    jobs.wait("shortlived", lambda s: s.get("readyReplicas") == 1, "ready", 60)
    gpu_pool.finish_pod(cluster.api, jobs.ns, "shortlived-w0-0", 0)
    jobs.wait_phase("shortlived", "Succeeded", 60)
    try:
        wait_for(lambda: not jobs.exists("shortlived"), timeout=60, what="TTL deletion")
    except Exception:
        left = jobs.get("shortlived")["metadata"]
        raise AssertionError(f"still there: finalizers={left.get('finalizers')} deletionTimestamp={left.get('deletionTimestamp')}"
                             f" annotations={left.get('annotations')}") from None


def test_deleting_a_job_leaves_nothing_behind(jobs):
    jobs.create(gpu_job("doomed", 2, 2))
    jobs.wait("doomed", lambda s: s.get("readyReplicas") == 2, "2 ready", 60)
    assert jobs.core.list_namespaced_service(jobs.ns).items
    jobs.delete("doomed")
    wait_for(lambda: not jobs.exists("doomed"), timeout=60, what="job gone (finalizer released)")
    wait_gone(lambda: jobs.core.list_namespaced_pod(jobs.ns).items, "pods gone", 90)
    wait_gone(lambda: jobs.core.list_namespaced_service(jobs.ns).items, "services gone", 60)


def _condition(status: dict, ctype: str) -> dict:
    return next((c for c in status.get("conditions", []) if c["type"] == ctype), {})


def test_operator_killed_mid_create_ends_with_exactly_the_right_pods(operator, jobs):
    # A pod quota stops the operator part-way through creating the job (the store and two of
    # four workers), deterministically; the refusal is reported, then the operator is killed there.
    jobs.core.create_namespaced_resource_quota(jobs.ns, {"metadata": {"name": "pods"}, "spec": {"hard": {"pods": "3"}}})
    wait_for(lambda: (jobs.core.read_namespaced_resource_quota("pods", jobs.ns).status.hard or {}).get("pods") == "3",
             timeout=30, what="quota status computed by the controller manager")
    jobs.create(gpu_job("resilient", 2, 4))
    st = jobs.wait("resilient", lambda s: _condition(s, "ReplicaFailure").get("status") == "True", "create refused by the quota", 60)
    refused = _condition(st, "ReplicaFailure")
    assert refused["reason"] == "FailedCreate" and "exceeded quota" in refused["message"], refused
    assert "FailedCreate" in {e.reason for e in jobs.events("resilient")}
    assert sorted(p.metadata.name for p in jobs.pods("resilient")) == ["resilient-w0-0", "resilient-w1-0"]
    operator.kill()
    try:
        jobs.core.patch_namespaced_resource_quota("pods", jobs.ns, {"spec": {"hard": {"pods": "20"}}})
    finally:
        operator.start()
    st = jobs.wait("resilient", lambda s: s.get("readyReplicas") == 4, "4 ready after restart", 90)
    time.sleep(3)  # a few more reconciles: nothing more may be created
    pods = jobs.pods("resilient")
    assert sorted(p.metadata.name for p in pods) == [f"resilient-w{s}-0" for s in range(4)]
    assert len(jobs.pods("resilient", role="rendezvous")) == 1
    st = jobs.status("resilient")
    assert st["restarts"] == 0 and _condition(st, "ReplicaFailure")["status"] == "False"


def test_two_jobs_submitted_together_never_split_the_gpus(cluster, jobs):
    # Both want 3-4 of the pool's four 8-GPU nodes; their first reconciles run at the same moment.
    jobs.create(gpu_job("first", 3, 4))
    jobs.create(gpu_job("second", 3, 4))
    st = {}

    def one_runs():
        st.update({n: jobs.status(n) for n in ("first", "second")})
        return any(s.get("phase") == "Running" and s.get("readyReplicas", 0) >= 3 for s in st.values())

    wait_for(one_runs, timeout=60, what="one job running")
    winner = "first" if st["first"].get("phase") == "Running" else "second"
    loser = "second" if winner == "first" else "first"
    # The other waits honestly: below min it holds no GPU, and no gang had to be broken up.
    loser_st = jobs.wait(loser, lambda s: _condition(s, "Schedulable").get("reason") == "InsufficientCapacity", "loser waits", 30)
    assert loser_st["phase"] == "Pending" and [p for p in jobs.pods(loser) if p.spec.node_name] == []
    assert "ReleasedPartialGang" not in {e.reason for n in (winner, loser) for e in jobs.events(n)}
    for p in jobs.pods(winner):
        gpu_pool.finish_pod(cluster.api, jobs.ns, p.metadata.name, 0)
    jobs.wait_phase(winner, "Succeeded", 60)
    jobs.wait(loser, lambda s: s.get("phase") == "Running" and s.get("readyReplicas") == 4, "the other runs", 90)


def test_two_jobs_competing_for_gpus_never_deadlock(cluster, jobs):
    jobs.create(gpu_job("first", 3, 4))
    jobs.wait("first", lambda s: s.get("readyReplicas") == 4, "first at 4", 60)
    jobs.create(gpu_job("second", 3, 4))
    st = jobs.wait("second", lambda s: s.get("phase") == "Pending" and any(
        c["type"] == "Schedulable" and c["status"] == "False" for c in s.get("conditions", [])), "second waits", 60)
    # Waiting honestly: it holds no GPUs while below min.
    assert [p for p in jobs.pods("second") if p.spec.node_name] == []
    for p in jobs.pods("first"):
        gpu_pool.finish_pod(cluster.api, jobs.ns, p.metadata.name, 0)
    jobs.wait_phase("first", "Succeeded", 60)
    jobs.wait("second", lambda s: s.get("phase") == "Running" and s.get("readyReplicas") == 4, "second runs", 90)


def test_losing_the_rendezvous_store_costs_one_restart_not_one_per_agent(cluster, jobs):
    jobs.create(gpu_job("storeloss", 2, 3, failurePolicy={"maxRestarts": 1}))
    jobs.wait("storeloss", lambda s: s.get("readyReplicas") == 3 and _condition(s, "StoreReady").get("status") == "True",
              "3 ready, store serving", 90)
    jobs.core.delete_namespaced_pod("storeloss-rdzv", jobs.ns, grace_period_seconds=0)
    st = jobs.wait("storeloss", lambda s: _condition(s, "StoreReady").get("reason") in ("StoreLost", "Recovered"), "store loss seen", 60)
    assert st["restarts"] == 1
    # What real agents do then: their rendezvous is gone, they stop their workers (SIGTERM checkpoint) and exit.
    for p in jobs.pods("storeloss"):
        gpu_pool.finish_pod(cluster.api, jobs.ns, p.metadata.name, 1, "Preempted: stopped by signal at step 40; checkpoint written")
    st = jobs.wait("storeloss", lambda s: s.get("readyReplicas") == 3 and s.get("phase") == "Running", "running again", 90)
    assert st["restarts"] == 1 and _condition(st, "StoreReady")["reason"] == "Recovered"  # maxRestarts 1 would fail at 2
    # KWOK ends the old agents one by one: one may still run while its replacements already do.
    wait_for(lambda: sorted(p.metadata.name for p in ready_workers(jobs, "storeloss")) == [f"storeloss-w{s}-1" for s in range(3)],
             timeout=60, what="every agent replaced once")
    assert jobs.status("storeloss")["restarts"] == 1
    assert {"StoreLost", "EndedWithTheStore"} <= {e.reason for e in jobs.events("storeloss")}


def test_kueue_queued_job_waits_suspended_until_admitted(jobs):
    manifest = gpu_job("queued", 1, 1)
    manifest["metadata"]["labels"] = {"kueue.x-k8s.io/queue-name": "research"}
    jobs.create(manifest)
    jobs.wait_phase("queued", "Suspended", 60)
    assert jobs.get("queued")["spec"]["suspend"] is True and jobs.pods("queued") == []
    # Kueue admits by unsuspending.
    jobs.patch("queued", {"spec": {"suspend": False}})
    jobs.wait("queued", lambda s: s.get("readyReplicas") == 1, "admitted and running", 60)


def test_missing_checkpoint_claim_is_reported_not_crashed_on(jobs):
    jobs.create(gpu_job("nopvc", 1, 1, checkpoint={"persistentVolumeClaim": {"claimName": "absent"}}))
    st = jobs.wait("nopvc", lambda s: any(c["reason"] == "CheckpointVolumeMissing" for c in s.get("conditions", [])),
                   "missing claim reported", 60)
    assert st["phase"] == "Pending" and jobs.pods("nopvc") == []


# --- Pod customisation (spec.pod): every example's pods are valid pods, and what they refer to is checked ---

CUSTOMISED = ["full", "dataset-pvc", "private-registry", "plain-torchrun-script"]


@pytest.mark.parametrize("example", CUSTOMISED)
def test_the_apiserver_accepts_every_customised_examples_pods(cluster, jobs, example):
    """The builders' merge of each example is a pod the real apiserver admits (dry run): volumes of every
    kind, sidecars, security contexts, device resources and metadata included."""
    from kubetrain.api.manifests import parse_trainingjob
    from kubetrain.operator import builders

    jobs.core.create_namespaced_service_account(jobs.ns, {"metadata": {"name": "trainer"}})  # admission looks it up
    if job_uses_priority := example == "full":  # so does Priority admission, for full.yaml's PriorityClass
        try:
            client.SchedulingV1Api(cluster.api).create_priority_class({"metadata": {"name": "training-high"}, "value": 1000})
        except client.exceptions.ApiException as exc:
            assert exc.status == 409, exc.body
    job = parse_trainingjob(load_yaml(REPO / "examples" / f"{example}.yaml"))
    body = {"metadata": {"name": job.metadata.name, "namespace": jobs.ns, "uid": "00000000-0000-0000-0000-000000000001"}}
    cfg = builders.BuildConfig()
    for pod in (builders.worker_pod(job, body, 0, 0, cfg), builders.store_pod(job, body, cfg)):
        pod["metadata"]["namespace"] = jobs.ns
        created = jobs.core.create_namespaced_pod(jobs.ns, pod, dry_run="All")
        assert created.metadata.name == pod["metadata"]["name"]
        assert len(created.spec.volumes or []) == len(pod["spec"].get("volumes", []))
        assert [c.name for c in created.spec.init_containers or []] == [c["name"] for c in pod["spec"].get("initContainers", [])]
        assert (created.spec.priority_class_name == "training-high") == job_uses_priority


def _on_kwok(manifest: dict) -> dict:
    """An example as it runs on the simulated nodes: they are tainted, and their pods run no containers."""
    manifest["spec"].setdefault("scheduling", {})["tolerations"] = [gpu_pool.KWOK_TOLERATION]
    manifest["spec"]["replicas"] = {"min": 1, "max": 2}
    manifest["spec"].pop("checkpoint", None)
    return manifest


def test_example_pods_are_created_with_their_customisation(cluster, jobs):
    for obj in load_all(REPO / "examples" / "plain-torchrun-script.yaml")[:-1]:
        kubectl("apply", "-n", jobs.ns, "-f", "-", input=json.dumps(obj))
    jobs.core.create_namespaced_service_account(jobs.ns, {"metadata": {"name": "trainer"}})
    for example in ("plain-torchrun-script", "private-registry"):
        jobs.create(_on_kwok(load_yaml(REPO / "examples" / f"{example}.yaml")))
    jobs.wait("my-script", lambda s: s.get("readyReplicas") == 2, "plain script running", 90)
    jobs.wait("gpt-private", lambda s: s.get("readyReplicas") == 2, "private-registry job running", 90)

    script = jobs.pods("my-script")[0]
    assert any(v.name == "script" and v.config_map.name == "train-script" for v in script.spec.volumes)
    mount = next(m for m in script.spec.containers[0].volume_mounts if m.name == "script")
    assert (mount.mount_path, mount.read_only) == ("/app", True)

    for pod in jobs.pods("gpt-private") + jobs.pods("gpt-private", role="rendezvous"):
        assert pod.spec.service_account_name == "trainer"
        assert [s.name for s in pod.spec.image_pull_secrets] == ["regcred"]
        assert pod.metadata.labels["cost-center"] == "ml-research"
        assert pod.metadata.annotations["sidecar.istio.io/inject"] == "false"
        assert pod.spec.automount_service_account_token is False


def test_missing_configmap_is_reported_and_pods_wait_for_it(cluster, jobs):
    jobs.create(_on_kwok(load_yaml(REPO / "examples" / "plain-torchrun-script.yaml")))
    st = jobs.wait("my-script", lambda s: any(c.get("reason") == "ReferencedObjectMissing" for c in s.get("conditions", [])),
                   "missing ConfigMap reported", 60)
    cond = next(c for c in st["conditions"] if c["type"] == "Schedulable")
    assert cond["status"] == "False" and "spec.pod.volumes[script].configMap.name" in cond["message"]
    assert "'train-script'" in cond["message"]
    # No pod is created to wait in ContainerCreating, and nothing is retried hot: no refused creates.
    time.sleep(3)
    assert jobs.pods("my-script") == [] and jobs.pods("my-script", role="rendezvous") == []
    assert not [e for e in jobs.events("my-script") if e.reason == "FailedCreate"]
    # The ConfigMap arrives: the job starts without being touched.
    kubectl("apply", "-n", jobs.ns, "-f", "-", input=json.dumps(load_all(REPO / "examples" / "plain-torchrun-script.yaml")[0]))
    jobs.wait("my-script", lambda s: s.get("readyReplicas") == 2, "running once the ConfigMap exists", 120)
