"""The Helm chart on the real control plane: install, RBAC, peering, upgrade, uninstall.

The chart's own operator pod cannot run here (no image, and the only nodes are KWOK's, tainted),
so it stays Pending: it acts on nothing. What the tests run instead is the operator from the
source tree, as a subprocess, with exactly what the chart gives the pod: a token of the chart's
ServiceAccount (so the chart's RBAC and nothing more) and the Deployment's environment.
Namespaces carry the "restricted" Pod Security label, so admission proves the operator pod
and the training pods meet it.
"""

from __future__ import annotations

import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from prometheus_client.parser import text_string_to_metric_families

from crd_helpers import Jobs, kubectl, wait_gone
from kubetrain.contract.metric_names import OperatorMetric
from kubetrain_dev.wait import wait_for
from support.chart import CHART, helm, set_args, template
from support.variants import load_yaml
from test_operator import Operator

RESTRICTED = {"pod-security.kubernetes.io/enforce": "restricted", "pod-security.kubernetes.io/enforce-version": "latest"}
# What the operator's log must never say when its RBAC is right.
DENIED = ("Forbidden", "forbidden", "Not enough permissions", "Failed to post an event", "Traceback")
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "local-cluster.yaml"


@dataclass
class Release:
    name: str
    namespace: str
    install_output: str

    @property
    def sa(self) -> str:
        """The release's full name: its ServiceAccount's, Deployment's and (Cluster)Roles'."""
        return f"{self.name}-kubetrain"

    @property
    def user(self) -> str:
        return f"system:serviceaccount:{self.namespace}:{self.sa}"

    def env(self, apps: client.AppsV1Api) -> dict[str, str]:
        """The operator container's environment as the installed Deployment sets it (literal values)."""
        container = apps.read_namespaced_deployment(self.sa, self.namespace).spec.template.spec.containers[0]
        return {e.name: e.value for e in container.env if e.value is not None}


@pytest.fixture(scope="module")
def make_namespace(cluster) -> Iterator[Callable[[], str]]:
    core = client.CoreV1Api(cluster.api)
    made: list[str] = []

    def make() -> str:
        name = f"c-{uuid.uuid4().hex[:8]}"
        core.create_namespace({"metadata": {"name": name, "labels": RESTRICTED}})
        wait_for(lambda: core.list_namespaced_service_account(name, field_selector="metadata.name=default").items,
                 timeout=30, what=f"default ServiceAccount in {name}")
        made.append(name)
        return name

    yield make
    for name in made:
        core.delete_namespace(name, propagation_policy="Background")


def install(name: str, namespace: str, values: dict) -> Release:
    out = helm("install", name, str(CHART), "--namespace", namespace, *set_args(values)).stdout
    # Helm creates the CRDs first; the apiserver serves them a moment after Established.
    wait_for(lambda: kubectl("get", "tj", "-A", check=False).returncode == 0, timeout=30, what="tj served")
    return Release(name, namespace, out)


def uninstall(release: Release) -> None:
    helm("uninstall", release.name, "--namespace", release.namespace, "--wait", check=False)


def sa_kubeconfig(cluster, release: Release, dest: Path) -> Path:
    """A kubeconfig that authenticates as the chart's ServiceAccount (a TokenRequest token)."""
    token = kubectl("create", "token", release.sa, "-n", release.namespace, "--duration", "1h").stdout.strip()
    admin = yaml.safe_load(cluster.kubeconfig.read_text())
    server = admin["clusters"][0]
    dest.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": release.sa,
        "clusters": [server],
        "users": [{"name": release.sa, "user": {"token": token}}],
        "contexts": [{"name": release.sa, "context": {"cluster": server["name"], "user": release.sa}}],
    }))
    return dest


def chart_operator(cluster, release: Release, tmp: Path, pod: str = "operator-0", **env: str) -> Operator:
    """The operator from source, with the chart's ServiceAccount and the Deployment's environment."""
    chart_env = release.env(client.AppsV1Api(cluster.api)) | {"POD_ID": pod} | env
    # The chart's fixed metrics port would collide between operators on one machine: Operator picks a free one.
    assert chart_env.pop("KUBETRAIN_METRICS_PORT") == "8000"
    return Operator(sa_kubeconfig(cluster, release, tmp / f"{pod}.kubeconfig"), tmp / f"{pod}.log", chart_env)


def reconciles(op: Operator) -> float:
    """How many reconciles ``op`` has run, read from its /metrics endpoint (served while it stands by too)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{op.metrics_port}/metrics", timeout=5) as resp:
        families = text_string_to_metric_families(resp.read().decode())
        return sum(s.value for f in families for s in f.samples if s.name == f"{OperatorMetric.RECONCILE_DURATION}_count")


def stop(*ops: Operator) -> None:
    """Stop the operators and print their logs (pytest shows them when the test failed)."""
    for op in ops:
        op.stop()
        print(f"--- {op.log.name} ---\n{op.logs() if op.log.exists() else '(never started)'}")


def assert_never_denied(op: Operator) -> None:
    log = op.log.read_text()
    assert not [word for word in DENIED if word in log], op.logs()


def local_job(name: str, lo: int = 2, hi: int = 2) -> dict:
    """examples/local-cluster.yaml (8 simulated H100s a replica, KWOK toleration) at a fixed size."""
    job = load_yaml(EXAMPLE)
    job["metadata"]["name"] = name
    job["spec"]["replicas"] = {"min": lo, "max": hi}
    return job


def cleanup_job(jobs: Jobs, name: str) -> None:
    """Delete a job while its operator still runs, so the GPU pool is empty for the next test."""
    jobs.delete(name)
    wait_for(lambda: not jobs.exists(name), timeout=60, what=f"{name} deleted")
    wait_gone(lambda: jobs.pods(name) + jobs.pods(name, role="rendezvous"), f"{name}'s pods gone", 90)


def sa_api(cluster, release: Release, tmp: Path) -> client.ApiClient:
    return config.new_client_from_config(config_file=str(sa_kubeconfig(cluster, release, tmp / "sa-api.kubeconfig")))


def status_of(call: Callable[[], object]) -> int:
    try:
        call()
        return 200
    except ApiException as exc:
        return exc.status


def can_i(release: Release, *args: str) -> bool:
    return kubectl("auth", "can-i", *args, f"--as={release.user}", check=False).stdout.strip() == "yes"


@pytest.fixture(scope="module")
def release(cluster, make_namespace) -> Iterator[Release]:
    """The chart in cluster mode with its defaults (a faster reconcile interval only)."""
    rel = install("kt", make_namespace(), {"operator.reconcileIntervalSeconds": 1})
    yield rel
    uninstall(rel)


def test_install_creates_the_operator_and_a_pod_that_passes_restricted_admission(cluster, release):
    assert "kubectl get tj -w" in release.install_output and "pod-security.kubernetes.io/enforce=restricted" in release.install_output
    core, apps = client.CoreV1Api(cluster.api), client.AppsV1Api(cluster.api)
    ns, name = release.namespace, release.sa
    deployment = apps.read_namespaced_deployment(name, ns)
    assert deployment.spec.template.spec.containers[0].image == "ghcr.io/kubetrain/operator:0.1.0"
    core.read_namespaced_service_account(name, ns)
    assert core.read_namespaced_service(f"{name}-metrics", ns).spec.ports[0].port == 8000
    rbac = client.RbacAuthorizationV1Api(cluster.api)
    assert rbac.read_cluster_role_binding(name).subjects[0].name == name
    # The ReplicaSet's pod got through admission in a namespace enforcing "restricted";
    # nothing can schedule it (KWOK's nodes are tainted), so it never runs next to the test's operator.
    selector = "app.kubernetes.io/instance=kt,app.kubernetes.io/component=operator"
    pods = wait_for(lambda: core.list_namespaced_pod(ns, label_selector=selector).items, timeout=60,
                    what="the operator Deployment's pod (a FailedCreate event on its ReplicaSet says why not)")
    assert pods[0].status.phase == "Pending"


def test_rendered_manifests_pass_a_server_side_dry_run(release, make_namespace):
    served = [make_namespace(), make_namespace()]
    for values in ({"replicaCount": 2}, {"replicaCount": 2, "watchNamespaces": served}):
        manifests = template(values, release="kt-dry", namespace=release.namespace, crds=True)
        out = kubectl("apply", "--dry-run=server", "-f", "-", input=manifests).stdout
        assert "deployment.apps/kt-dry-kubetrain created (server dry run)" in out, out


def test_operator_with_exactly_the_chart_rbac_runs_a_job(cluster, release, make_namespace, tmp_path):
    op = chart_operator(cluster, release, tmp_path)
    assert op.env["KUBETRAIN_TRAINER_IMAGE"] == "ghcr.io/kubetrain/trainer:0.1.0" and op.env["KUBETRAIN_STANDALONE"] == "true"
    jobs = Jobs(cluster.api, make_namespace())
    try:
        op.start()
        jobs.create(local_job("gpt-local"))
        st = jobs.wait("gpt-local", lambda s: s.get("phase") == "Running" and s.get("readyReplicas") == 2, "2 ready", 90)
        assert st["worldSize"] == 16
        # The training pods were admitted under "restricted" and carry the chart's trainer image.
        assert {p.spec.containers[0].image for p in jobs.pods("gpt-local")} == {"ghcr.io/kubetrain/trainer:0.1.0"}
        assert any(e.reason == "Starting" for e in jobs.events("gpt-local"))  # posted with the chart's RBAC
        cleanup_job(jobs, "gpt-local")
    finally:
        stop(op)
    assert_never_denied(op)


def test_the_service_account_cannot_do_what_the_operator_does_not_need(cluster, release, tmp_path):
    ns = release.namespace
    assert not can_i(release, "delete", "nodes")
    assert not can_i(release, "get", "secrets", "-n", ns)
    assert not can_i(release, "create", "deployments", "-n", ns)
    assert not can_i(release, "create", "clusterrolebindings")
    assert can_i(release, "create", "pods", "-n", "default") and can_i(release, "watch", "nodes")
    # Real requests with the ServiceAccount's token (dry runs: were they allowed, they would change nothing).
    api = sa_api(cluster, release, tmp_path)
    core, apps = client.CoreV1Api(api), client.AppsV1Api(api)
    node = cluster.nodes[0]
    assert status_of(lambda: core.delete_node(node, dry_run="All")) == 403
    assert status_of(lambda: core.patch_node(node, {"metadata": {"labels": {"x": "y"}}}, dry_run="All")) == 403
    assert status_of(lambda: core.list_namespaced_secret(ns)) == 403
    assert status_of(lambda: core.read_namespaced_secret("anything", "kube-system")) == 403
    deployment = {"metadata": {"name": "x"}, "spec": {"selector": {"matchLabels": {"a": "b"}},
                  "template": {"metadata": {"labels": {"a": "b"}}, "spec": {"containers": [{"name": "c", "image": "i"}]}}}}
    assert status_of(lambda: apps.create_namespaced_deployment(ns, deployment, dry_run="All")) == 403
    assert status_of(lambda: core.list_node()) == 200


def test_namespaced_mode_serves_its_namespace_and_cannot_see_the_others(cluster, make_namespace, tmp_path):
    ns_a, ns_b = make_namespace(), make_namespace()
    rel = install("kt-ns", make_namespace(), {"watchNamespaces": [ns_a], "operator.reconcileIntervalSeconds": 1})
    try:
        assert f"kubectl get tj -n {ns_a} -w" in rel.install_output
        assert not can_i(rel, "list", "pods", "-n", ns_b) and can_i(rel, "list", "pods", "-n", ns_a)
        assert not can_i(rel, "list", "pods", "--all-namespaces")
        core = client.CoreV1Api(sa_api(cluster, rel, tmp_path))
        assert status_of(lambda: core.list_namespaced_pod(ns_b)) == 403
        assert status_of(lambda: core.list_namespaced_pod(ns_a)) == 200
        op = chart_operator(cluster, rel, tmp_path)
        assert op.env["KUBETRAIN_WATCH_NAMESPACES"] == ns_a
        served, ignored = Jobs(cluster.api, ns_a), Jobs(cluster.api, ns_b)
        try:
            op.start()
            ignored.create(local_job("elsewhere", 1, 1))
            served.create(local_job("here"))
            served.wait("here", lambda s: s.get("phase") == "Running" and s.get("readyReplicas") == 2, "2 ready", 90)
            job = ignored.get("elsewhere")
            assert "status" not in job and not job["metadata"].get("finalizers")
            assert ignored.core.list_namespaced_pod(ns_b).items == []
            cleanup_job(served, "here")
            ignored.delete("elsewhere")  # no finalizer: gone at once, and no later operator sees it
        finally:
            stop(op)
        assert_never_denied(op)
    finally:
        uninstall(rel)


def test_two_replicas_peer_and_only_one_acts(cluster, make_namespace, tmp_path):
    rel = install("kt-ha", make_namespace(), {"replicaCount": 2, "operator.reconcileIntervalSeconds": 1})
    custom = client.CustomObjectsApi(cluster.api)
    jobs = Jobs(cluster.api, make_namespace())
    active = chart_operator(cluster, rel, tmp_path, "operator-b", KUBETRAIN_PEERING_PRIORITY="200")
    standby = chart_operator(cluster, rel, tmp_path, "operator-a", KUBETRAIN_PEERING_PRIORITY="100")
    assert standby.env["KUBETRAIN_STANDALONE"] == "false"

    def peers() -> dict:
        return custom.get_cluster_custom_object("kopf.dev", "v1", "clusterkopfpeerings", "kubetrain").get("status") or {}

    # Kopf starts every peer paused and resumes it when the peering object shows no one above it.
    resumed = "Resuming operations after the pause"
    try:
        active.start()
        wait_for(lambda: resumed in active.log.read_text(), timeout=60, what="the first operator resumes")
        standby.start()
        wait_for(lambda: {"operator-a", "operator-b"} <= set(peers()), timeout=60, what="both peers announced")
        assert peers()["operator-a"]["priority"] == 100 and peers()["operator-b"]["priority"] == 200
        jobs.create(local_job("ha"))
        jobs.wait("ha", lambda s: s.get("phase") == "Running" and s.get("readyReplicas") == 2, "2 ready", 90)
        # Acting is reconciling: the operators' own counts, from their /metrics.
        assert reconciles(active) > 0
        assert reconciles(standby) == 0 and resumed not in standby.log.read_text()
        # The active pod stops cleanly and leaves the peering: the standby takes over at once.
        active.stop()
        wait_for(lambda: resumed in standby.log.read_text(), timeout=30, what="the standby resumes")
        assert "operator-b" not in peers()
        cleanup_job(jobs, "ha")  # the job's deletion handler now runs in the former standby
        assert "Deletion is processed" in standby.log.read_text()
    finally:
        stop(active, standby)
        uninstall(rel)
    assert_never_denied(active)
    assert_never_denied(standby)


def test_upgrade_follows_the_values_and_uninstall_leaves_nothing(cluster, make_namespace):
    rbac, apps = client.RbacAuthorizationV1Api(cluster.api), client.AppsV1Api(cluster.api)
    custom, ext = client.CustomObjectsApi(cluster.api), client.ApiextensionsV1Api(cluster.api)
    served = make_namespace()
    rel = install("kt-up", make_namespace(), {})
    ns, name = rel.namespace, rel.sa
    assert rel.env(apps)["KUBETRAIN_TRAINER_IMAGE"] == "ghcr.io/kubetrain/trainer:0.1.0"
    rbac.read_cluster_role(name)

    helm("upgrade", "kt-up", str(CHART), "-n", ns, "--reuse-values",
         *set_args({"trainerImage.tag": "0.2.0", "watchNamespaces": [served], "replicaCount": 2}))
    env = rel.env(apps)
    assert env["KUBETRAIN_TRAINER_IMAGE"] == "ghcr.io/kubetrain/trainer:0.2.0"
    assert env["KUBETRAIN_WATCH_NAMESPACES"] == served and env["KUBETRAIN_STANDALONE"] == "false"
    assert status_of(lambda: rbac.read_cluster_role(name)) == 404  # cluster-wide grants withdrawn
    assert status_of(lambda: rbac.read_cluster_role_binding(name)) == 404
    rbac.read_cluster_role(f"{name}-cluster")
    rbac.read_namespaced_role(name, served)
    rbac.read_namespaced_role_binding(name, served)
    custom.get_namespaced_custom_object("kopf.dev", "v1", served, "kopfpeerings", "kubetrain")

    helm("uninstall", "kt-up", "-n", ns, "--wait")
    selector = "app.kubernetes.io/instance=kt-up"
    leftovers = {
        "serviceaccounts": client.CoreV1Api(cluster.api).list_service_account_for_all_namespaces(label_selector=selector).items,
        "services": client.CoreV1Api(cluster.api).list_service_for_all_namespaces(label_selector=selector).items,
        "deployments": apps.list_deployment_for_all_namespaces(label_selector=selector).items,
        "clusterroles": rbac.list_cluster_role(label_selector=selector).items,
        "clusterrolebindings": rbac.list_cluster_role_binding(label_selector=selector).items,
        "roles": rbac.list_role_for_all_namespaces(label_selector=selector).items,
        "rolebindings": rbac.list_role_binding_for_all_namespaces(label_selector=selector).items,
        "kopfpeerings": custom.list_cluster_custom_object("kopf.dev", "v1", "kopfpeerings", label_selector=selector)["items"],
    }
    assert {kind: items for kind, items in leftovers.items() if items} == {}
    assert "kt-up" not in helm("list", "--all-namespaces", "--short").stdout.split()
    # Helm never deletes what it installed from crds/: the jobs survive an uninstall.
    for crd in ("trainingjobs.kubetrain.dev", "kopfpeerings.kopf.dev", "clusterkopfpeerings.kopf.dev"):
        ext.read_custom_resource_definition(crd)
