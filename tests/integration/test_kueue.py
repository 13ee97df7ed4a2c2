"""Kueue for real: a running Kueue (devcluster/kueue.py: its CRDs, manager and webhooks) admits,
preempts and requeues TrainingJobs through the Workloads the operator creates (docs/kueue.md).

One Kueue and one operator (with kueue.enabled) for the module; each test makes its own
ClusterQueues and LocalQueues. The flavors carry KWOK's toleration and the jobs do not: a pod
lands on a simulated node only if the admitted flavor's tolerations reached it. The pods run
nothing: where a real trainer would checkpoint on SIGTERM, a test finalizer holds each stopped
pod until the test lets it go, as its checkpoint would.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from crd_helpers import REPO, Jobs, kubectl, wait_gone
from kubetrain.operator import kueue as kq
from kubetrain_dev.devcluster import build, gpu_pool
from kubetrain_dev.devcluster.kueue import LocalKueue
from kubetrain_dev.wait import wait_for
from support.variants import load_all
from test_operator import Operator, running_operator

GPU_FLAVOR, ANY_FLAVOR = "t-kwok-h100", "t-kwok-any"
POOL_LABEL = {"kubetrain.dev/node-pool": gpu_pool.NODE_POOL}
HOLD = "test.kubetrain.dev/checkpointing"  # stands for the SIGTERM checkpoint a real trainer writes
KWOK = gpu_pool.KWOK_TOLERATION


@pytest.fixture(scope="module")
def kueue(cluster) -> Iterator[LocalKueue]:
    failures = build.ensure(["kueue"])
    if failures:
        pytest.fail(f"kueue could not be built: {failures['kueue']}", pytrace=False)
    started = time.monotonic()
    with LocalKueue(cluster.local) as running:
        print(f"kueue Ready (CRDs, manager, webhooks) in {time.monotonic() - started:.1f}s")
        yield running


@pytest.fixture(scope="module")
def kueue_operator(cluster, kueue, tmp_path_factory) -> Iterator[Operator]:
    # A 10-minute timer: every reaction in these tests comes from an event (the job's, its pods', its
    # Workload's, a node's), none from the timer's next tick.
    with running_operator(cluster, tmp_path_factory, {"KUBETRAIN_KUEUE": "true", "KUBETRAIN_RECONCILE_INTERVAL": "600"}) as op:
        yield op


def _custom(cluster) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(cluster.api)


@pytest.fixture(scope="module")
def flavors(cluster, kueue) -> Iterator[None]:
    custom = _custom(cluster)
    specs = {GPU_FLAVOR: {"nodeLabels": POOL_LABEL, "tolerations": [KWOK]}, ANY_FLAVOR: {"tolerations": [KWOK]}}
    for name, spec in specs.items():
        custom.create_cluster_custom_object(kq.GROUP, kq.VERSION, "resourceflavors", {
            "apiVersion": kq.API_VERSION, "kind": "ResourceFlavor", "metadata": {"name": name}, "spec": spec})
    yield
    for name in specs:
        custom.delete_cluster_custom_object(kq.GROUP, kq.VERSION, "resourceflavors", name)


class Queues:
    """ClusterQueues (deleted after the test) and LocalQueues in the test's namespace."""

    def __init__(self, cluster, namespace: str):
        self.custom, self.ns = _custom(cluster), namespace
        self.cohort = f"c-{namespace}"
        self.created: list[str] = []

    def cluster_queue(self, team: str, gpus: int, borrow: int | None = None, local: str | None = "gpus") -> str:
        name = f"{self.ns}-{team}"
        gpu: dict[str, Any] = {"name": gpu_pool.GPU_RESOURCE, "nominalQuota": gpus}
        if borrow is not None:
            gpu["borrowingLimit"] = borrow
        self.custom.create_cluster_custom_object(kq.GROUP, kq.VERSION, "clusterqueues", {
            "apiVersion": kq.API_VERSION, "kind": "ClusterQueue", "metadata": {"name": name},
            "spec": {"cohortName": self.cohort, "namespaceSelector": {},
                     "preemption": {"reclaimWithinCohort": "Any", "withinClusterQueue": "LowerPriority"},
                     "resourceGroups": [
                         {"coveredResources": [gpu_pool.GPU_RESOURCE], "flavors": [{"name": GPU_FLAVOR, "resources": [gpu]}]},
                         {"coveredResources": ["cpu", "memory"], "flavors": [{"name": ANY_FLAVOR, "resources": [
                             {"name": "cpu", "nominalQuota": 100}, {"name": "memory", "nominalQuota": "1Ti"}]}]}]}})
        self.created.append(name)
        wait_for(lambda: self._active(name), timeout=30, what=f"ClusterQueue {name} Active")
        if local:
            self.local_queue(f"{local}-{team}", name)
        return name

    def local_queue(self, name: str, cluster_queue: str) -> None:
        self.custom.create_namespaced_custom_object(kq.GROUP, kq.VERSION, self.ns, "localqueues", {
            "apiVersion": kq.API_VERSION, "kind": "LocalQueue", "metadata": {"name": name},
            "spec": {"clusterQueue": cluster_queue}})

    def _active(self, name: str) -> bool:
        cq = self.custom.get_cluster_custom_object(kq.GROUP, kq.VERSION, "clusterqueues", name)
        return any(c["type"] == "Active" and c["status"] == "True" for c in (cq.get("status") or {}).get("conditions") or [])

    def usage(self, name: str) -> dict[str, Any]:
        """{"total": GPUs reserved, "borrowed": of them borrowed} of a ClusterQueue's GPU flavor."""
        status = self.custom.get_cluster_custom_object(kq.GROUP, kq.VERSION, "clusterqueues", name).get("status") or {}
        for flavor in status.get("flavorsReservation") or []:
            for r in flavor.get("resources") or []:
                if flavor["name"] == GPU_FLAVOR and r["name"] == gpu_pool.GPU_RESOURCE:
                    return {"total": str(r.get("total", "0")), "borrowed": str(r.get("borrowed", "0"))}
        return {"total": "0", "borrowed": "0"}

    def cleanup(self) -> None:
        for name in self.created:
            try:
                self.custom.delete_cluster_custom_object(kq.GROUP, kq.VERSION, "clusterqueues", name)
            except ApiException as exc:
                if exc.status != 404:
                    raise


@pytest.fixture
def queues(cluster, namespace, flavors) -> Iterator[Queues]:
    q = Queues(cluster, namespace)
    yield q
    q.cleanup()


@pytest.fixture
def jobs(cluster, kueue_operator, kueue, namespace) -> Iterator[Jobs]:
    j = Jobs(cluster.api, namespace)
    yield j
    print(f"--- operator log (tail) ---\n{kueue_operator.logs()}")
    print(f"--- kueue log (tail) ---\n{kueue.log.read_text()[-4000:]}")
    for item in j.custom.list_namespaced_custom_object("kubetrain.dev", "v1alpha1", namespace, "trainingjobs")["items"]:
        j.delete(item["metadata"]["name"])
    for p in j.core.list_namespaced_pod(namespace).items:
        if HOLD in (p.metadata.finalizers or []):
            _let_go(j, p.metadata.name)
    wait_gone(lambda: j.core.list_namespaced_pod(namespace).items, f"pods in {namespace}", timeout=90)


def queued_job(name: str, lo: int, hi: int, queue: str, **scheduling) -> dict:
    """A job for ``queue`` without KWOK's toleration: only the admitted flavor's lets it onto a node."""
    return {"apiVersion": "kubetrain.dev/v1alpha1", "kind": "TrainingJob", "metadata": {"name": name},
            "spec": {"replicas": {"min": lo, "max": hi}, "container": {"gpusPerReplica": 8},
                     "scheduling": {"queueName": queue, **scheduling}}}


def workloads(jobs: Jobs, name: str) -> list[dict[str, Any]]:
    return jobs.custom.list_namespaced_custom_object(kq.GROUP, kq.VERSION, jobs.ns, kq.PLURAL,
                                                     label_selector=f"kubetrain.dev/job-name={name}")["items"]


def workload(jobs: Jobs, name: str) -> dict[str, Any]:
    (wl,) = workloads(jobs, name)
    return wl


def _cond(obj: dict[str, Any], ctype: str) -> dict[str, Any]:
    return next((c for c in (obj.get("status") or obj).get("conditions") or [] if c["type"] == ctype), {})


def _running(jobs: Jobs, name: str, n: int, timeout: float = 90) -> dict[str, Any]:
    return jobs.wait(name, lambda s: s.get("phase") == "Running" and s.get("readyReplicas") == n, f"{name} running {n}", timeout)


def _waiting(jobs: Jobs, name: str, reason: str, timeout: float = 60) -> dict[str, Any]:
    return jobs.wait(name, lambda s: s.get("phase") == "Suspended" and _cond(s, "Suspended").get("reason") == reason,
                     f"{name} suspended: {reason}", timeout)


def _finish(cluster, jobs: Jobs, name: str) -> None:
    for p in jobs.pods(name):
        gpu_pool.finish_pod(cluster.api, jobs.ns, p.metadata.name, 0)
    jobs.wait_phase(name, "Succeeded", 60)


def _get_tj(jobs: Jobs) -> dict[str, dict[str, str]]:
    """`kubectl get tj` as {job: {column: value}}, cut at the header's column starts (a value may hold spaces)."""
    header, *rows = kubectl("get", "tj", "-n", jobs.ns).stdout.splitlines()
    names = header.split()
    starts = [header.index(n) for n in names] + [None]
    return {row.split()[0]: {n: row[starts[i]:starts[i + 1]].strip() for i, n in enumerate(names)} for row in rows}


def _usage(queues: Queues, name: str, expected: dict[str, str]) -> None:
    """Wait for a ClusterQueue's GPU reservation to read ``expected``: Kueue writes its status a moment after admitting."""
    wait_for(lambda: queues.usage(name) == expected, timeout=30, what=f"ClusterQueue {name} reserving {expected}")


def _let_go(jobs: Jobs, pod: str) -> None:
    try:
        p = jobs.core.read_namespaced_pod(pod, jobs.ns)
        rest = [f for f in p.metadata.finalizers or [] if f != HOLD]
        jobs.core.patch_namespaced_pod(pod, jobs.ns, [{"op": "replace", "path": "/metadata/finalizers", "value": rest}])
    except ApiException as exc:
        if exc.status != 404:
            raise


def test_quota_admits_one_job_the_next_waits_saying_why_and_runs_when_the_first_finishes(cluster, jobs, queues):
    queues.cluster_queue("a", gpus=16, local="gpus")
    jobs.create(queued_job("first", 2, 2, "gpus-a"))
    st = _running(jobs, "first", 2)
    assert st["desiredReplicas"] == 2
    wl = workload(jobs, "first")
    assert wl["metadata"]["ownerReferences"][0]["uid"] == jobs.get("first")["metadata"]["uid"]
    assert wl["spec"]["queueName"] == "gpus-a" and wl["status"]["admission"]["clusterQueue"] == f"{jobs.ns}-a"
    # The flavor's node labels and toleration are on the pods: the job itself has neither.
    for p in jobs.pods("first") + jobs.pods("first", role="rendezvous"):
        assert KWOK in [{k: v for k, v in t.to_dict().items() if v is not None} for t in p.spec.tolerations or []]
    assert all(p.spec.node_selector == POOL_LABEL for p in jobs.pods("first"))
    assert "Admitted" in {e.reason for e in jobs.events("first")}

    jobs.create(queued_job("second", 2, 2, "gpus-a"))
    st = _waiting(jobs, "second", kq.WAIT_QUEUED)
    assert "quota" in _cond(st, "Suspended")["message"] and jobs.pods("second") == []
    jobs.wait("second", lambda s: s.get("queue") == kq.WAIT_QUEUED, "status.queue says why", 30)
    shown = _get_tj(jobs)
    assert shown["first"]["PHASE"] == "Running" and shown["first"]["QUEUE"] == f"Admitted 2/2 ({jobs.ns}-a)"
    assert shown["second"]["PHASE"] == "Suspended" and shown["second"]["QUEUE"] == kq.WAIT_QUEUED
    _finish(cluster, jobs, "first")
    assert _cond(workload(jobs, "first"), "Finished")["reason"] == "Succeeded"
    _running(jobs, "second", 2)


def test_partial_admission_starts_at_the_admitted_count(jobs, queues):
    queues.cluster_queue("a", gpus=16)
    jobs.create(queued_job("partial", 2, 4, "gpus-a"))
    st = _running(jobs, "partial", 2)
    assert st["desiredReplicas"] == 2 and st["queue"] == f"Admitted 2/4 ({jobs.ns}-a)"
    assert _cond(st, "Schedulable")["reason"] == "KueueAdmission"
    (workers,) = [a for a in workload(jobs, "partial")["status"]["admission"]["podSetAssignments"] if a["name"] == "workers"]
    assert workers["count"] == 2
    assert len(jobs.pods("partial")) == 2  # the GPUs of two more sit free: growth waits for a new admission


def test_borrowed_gpus_are_reclaimed_by_preemption_the_victim_stops_with_a_checkpoint_and_resumes(cluster, jobs, queues):
    high = f"t-high-{uuid.uuid4().hex[:6]}"
    sched = client.SchedulingV1Api(cluster.api)
    sched.create_priority_class({"metadata": {"name": high}, "value": 1000})
    try:
        team_a = queues.cluster_queue("a", gpus=16, borrow=0)
        team_b = queues.cluster_queue("b", gpus=0, borrow=16)
        # Team B has no GPUs of its own: it runs on team A's idle ones.
        jobs.create(queued_job("lender", 2, 2, "gpus-b"))
        _running(jobs, "lender", 2)
        _usage(queues, team_b, {"total": "16", "borrowed": "16"})
        victims = [p.metadata.name for p in jobs.pods("lender")]
        for pod in victims:
            jobs.core.patch_namespaced_pod(pod, jobs.ns, {"metadata": {"finalizers": [HOLD]}})

        jobs.create(queued_job("owner", 2, 2, "gpus-a", priorityClassName=high))
        st = _waiting(jobs, "lender", kq.WAIT_PREEMPTED)
        assert "Preempted" in _cond(st, "Suspended")["message"]
        # Stopped through SIGTERM with the grace to write a checkpoint, never killed outright.
        wait_for(lambda: all(jobs.core.read_namespaced_pod(p, jobs.ns).metadata.deletion_timestamp for p in victims),
                 timeout=30, what="the victim's workers stopping")
        assert {jobs.core.read_namespaced_pod(p, jobs.ns).metadata.deletion_grace_period_seconds for p in victims} == {120}
        # While its pods still stop, the victim holds the quota: the preemptor waits.
        assert workload(jobs, "lender")["status"].get("admission")
        assert not _cond(workload(jobs, "owner"), "QuotaReserved").get("status") == "True"
        assert workload(jobs, "owner")["spec"]["priority"] == 1000

        for pod in victims:  # the checkpoints are written: the pods exit
            _let_go(jobs, pod)
        _running(jobs, "owner", 2)
        wl = workload(jobs, "lender")
        assert "admission" not in wl["status"] and _cond(wl, "Requeued")["reason"] == "Preempted"
        _usage(queues, team_a, {"total": "16", "borrowed": "0"})
        st = _waiting(jobs, "lender", kq.WAIT_QUEUED)
        assert "requeued after preempted" in _cond(st, "Suspended")["message"]
        assert {"Preempted", "QuotaReleased"} <= {e.reason for e in jobs.events("lender")}

        _finish(cluster, jobs, "owner")
        st = _running(jobs, "lender", 2)
        assert st["restarts"] == 0  # a preemption is not a failure
        assert "Resumed" in {e.reason for e in jobs.events("lender")}
        assert {p.metadata.annotations["kubetrain.dev/rendezvous-id"] for p in jobs.pods("lender")} == {jobs.get("lender")["metadata"]["uid"]}
    finally:
        sched.delete_priority_class(high)


def test_a_job_that_shrinks_gives_the_freed_workers_back_and_grows_only_through_a_new_admission(cluster, jobs, queues):
    team = queues.cluster_queue("a", gpus=32)
    jobs.create(queued_job("shrinking", 2, 4, "gpus-a"))
    _running(jobs, "shrinking", 4)
    _usage(queues, team, {"total": "32", "borrowed": "0"})
    store_node = jobs.pods("shrinking", role="rendezvous")[0].spec.node_name
    node = next(p.spec.node_name for p in jobs.pods("shrinking") if p.spec.node_name != store_node)
    gpu_pool.delete_node(cluster.api, node)
    try:
        jobs.wait("shrinking", lambda s: s.get("readyReplicas") == 3 and s.get("desiredReplicas") == 3, "shrunk to 3", 120)
        wait_for(lambda: workload(jobs, "shrinking")["status"].get("reclaimablePods") == [{"name": "workers", "count": 1}],
                 timeout=30, what="one worker reported reclaimable")
        _usage(queues, team, {"total": "24", "borrowed": "0"})  # Kueue counts 3 workers' GPUs
        assert "ReclaimablePods" in {e.reason for e in jobs.events("shrinking")}
    finally:
        gpu_pool.add_nodes(cluster.api, 1)
    # The node is back and its GPUs are free, yet the job stays at 3: growth waits for a new admission.
    st = jobs.wait("shrinking", lambda s: _cond(s, "Schedulable").get("reason") == "KueueAdmission", "capped by the admission", 30)
    assert st["desiredReplicas"] == 3 and len([p for p in jobs.pods("shrinking") if not p.metadata.deletion_timestamp]) == 3


def test_suspending_an_admitted_job_gives_its_quota_back_and_resuming_requeues_it(jobs, queues):
    team = queues.cluster_queue("a", gpus=16)
    jobs.create(queued_job("pausable", 1, 1, "gpus-a"))
    _running(jobs, "pausable", 1)
    jobs.patch("pausable", {"spec": {"suspend": True}})
    st = _waiting(jobs, "pausable", "Suspended")
    assert workload(jobs, "pausable")["spec"]["active"] is False
    wait_gone(lambda: jobs.pods("pausable"), "the suspended job's pods")
    _usage(queues, team, {"total": "0", "borrowed": "0"})  # the quota released
    jobs.patch("pausable", {"spec": {"suspend": False}})
    st = _running(jobs, "pausable", 1)
    assert st["restarts"] == 0 and workload(jobs, "pausable")["spec"]["active"] is True


def test_deleting_a_job_finishes_and_removes_its_workload(jobs, queues):
    team = queues.cluster_queue("a", gpus=16)
    jobs.create(queued_job("doomed", 1, 1, "gpus-a"))
    _running(jobs, "doomed", 1)
    _usage(queues, team, {"total": "8", "borrowed": "0"})
    jobs.delete("doomed")
    wait_gone(lambda: workloads(jobs, "doomed"), "the Workload removed")
    _usage(queues, team, {"total": "0", "borrowed": "0"})  # the quota released


def test_operator_restart_mid_admission_duplicates_nothing(cluster, jobs, queues, kueue_operator):
    team = queues.cluster_queue("a", gpus=32, local=None)
    jobs.create(queued_job("restart", 2, 4, "later"))
    st = _waiting(jobs, "restart", kq.WAIT_INADMISSIBLE)  # no such LocalQueue yet
    assert "later" in _cond(st, "Suspended")["message"]
    kueue_operator.kill()
    try:
        queues.local_queue("later", team)  # Kueue admits while the operator is down
        wait_for(lambda: _cond(workload(jobs, "restart"), "Admitted").get("status") == "True", timeout=60,
                 what="admitted while the operator is down")
    finally:
        kueue_operator.start()
    _running(jobs, "restart", 4)
    assert len(workloads(jobs, "restart")) == 1
    assert sorted(p.metadata.name for p in jobs.pods("restart")) == [f"restart-w{s}-0" for s in range(4)]
    assert len(jobs.pods("restart", role="rendezvous")) == 1


def test_a_job_without_a_queue_runs_as_before_with_no_workload(jobs):
    manifest = queued_job("plain", 1, 2, "unused")
    manifest["spec"]["scheduling"] = {"tolerations": [KWOK]}
    jobs.create(manifest)
    _running(jobs, "plain", 2)
    assert workloads(jobs, "plain") == [] and jobs.get("plain")["spec"].get("suspend") is not True


def test_the_documented_queue_setup_and_example_work_with_kubectl_apply(cluster, kueue, kueue_operator):
    queues_yaml, example = REPO / "examples" / "kueue-queues.yaml", REPO / "examples" / "kueue.yaml"
    kubectl("apply", "--server-side", "-f", str(queues_yaml))
    jobs = Jobs(cluster.api, "team-a")
    try:
        kubectl("apply", "-f", str(example))
        name = load_all(example)[0]["metadata"]["name"]
        # Team B is idle: team A borrows its 16 GPUs and the job runs at max.
        _running(jobs, name, 4)
        assert _cond(workload(jobs, name), "Admitted")["status"] == "True"
    finally:
        kubectl("delete", "-f", str(example), "--ignore-not-found", "--wait=false")
        wait_gone(lambda: jobs.core.list_namespaced_pod("team-a").items, "the example's pods", 90)
        kubectl("delete", "-f", str(queues_yaml), "--ignore-not-found", "--wait=false")
