"""The Helm chart without a cluster: lint, values schema, Kubernetes schemas, what it renders.

Needs the helm and kubeconform binaries (built once into ~/.cache/kubetrain, like the control plane).
The chart on a real apiserver is tests/integration/test_chart.py.
"""

from __future__ import annotations

import json
import subprocess
import shutil
import tomllib

import pytest
import yaml

from kubetrain.operator.builders import BuildConfig
from support.chart import (CHART, DOCS, REPO, container_env, docs_with_table, documented_values, find, helm,
                           kubeconform, kubernetes_schemas, leaf_values, operator_container, render, set_args, template)

NAMESPACED = {"watchNamespaces": ["ns-a", "ns-b"]}
PEERING = {"replicaCount": 2}
MONITORING = {"monitoring.podMonitor.enabled": True, "monitoring.prometheusRule.enabled": True,
              "monitoring.dashboards.enabled": True}
CASES = {"default": {}, "namespaced": NAMESPACED, "peering": PEERING, "namespaced-peering": NAMESPACED | PEERING,
         "monitoring": MONITORING}


def rules(role: dict) -> set[tuple[str, str, str]]:
    return {(group, resource, verb) for rule in role["rules"] for group in rule["apiGroups"]
            for resource in rule["resources"] for verb in rule["verbs"]}


def expand(*entries: tuple[str, str, str]) -> set[tuple[str, str, str]]:
    """("", "pods", "get list") -> {("", "pods", "get"), ("", "pods", "list")}."""
    return {(group, resource, verb) for group, resource, verbs in entries for verb in verbs.split()}


# What the operator's code and Kopf call, and nothing more (see the comments in templates/_helpers.tpl).
IN_NAMESPACE = expand(
    ("kubetrain.dev", "trainingjobs", "get list watch patch delete create"),
    ("kubetrain.dev", "trainingjobs/status", "patch"),
    ("kubetrain.dev", "trainingsweeps", "get list watch patch delete"),
    ("kubetrain.dev", "trainingsweeps/status", "patch"),
    ("", "pods", "get list watch create delete patch"),
    ("", "services", "get create"),
    # What the pods refer to, looked up before they are created (never Secrets).
    ("", "persistentvolumeclaims", "get"),
    ("", "configmaps", "get"),
    ("", "serviceaccounts", "get"),
    ("", "events", "create"),
)
CLUSTER_READS = expand(("", "nodes", "list watch"), ("apiextensions.k8s.io", "customresourcedefinitions", "list watch"))


@pytest.fixture(scope="module")
def schemas(tmp_path_factory):
    return kubernetes_schemas(tmp_path_factory.mktemp("kubernetes-schemas"))


@pytest.mark.parametrize("values", CASES.values(), ids=CASES.keys())
def test_helm_lint_passes(values):
    out = helm("lint", "--strict", str(CHART), *set_args(values)).stdout
    assert "1 chart(s) linted, 0 chart(s) failed" in out


@pytest.mark.parametrize("values", CASES.values(), ids=CASES.keys())
def test_rendered_manifests_match_the_kubernetes_schemas(values, schemas):
    proc = kubeconform(template(values, crds=True), schemas)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Invalid: 0, Errors: 0" in proc.stdout, proc.stdout


def test_kubeconform_really_checks_the_schemas(schemas):
    broken = template().replace("revisionHistoryLimit: 3", "revisionHistoryLimit: 3\n  replica: 2")
    proc = kubeconform(broken, schemas)
    assert proc.returncode != 0 and "additional properties 'replica' not allowed" in proc.stdout, proc.stdout


WRONG_VALUES = [
    ({"replicaCount": "two"}, "/replicaCount"),
    ({"replicaCount": -1}, "/replicaCount"),
    ({"watchNamespaces": "ns-a"}, "/watchNamespaces"),
    ({"watchNamespaces": ["Not_A_Namespace"]}, "/watchNamespaces/0"),
    ({"image.pullPolicy": "Sometimes"}, "/image/pullPolicy"),
    ({"trainerImage.tag": "latest"}, "/trainerImage/tag"),
    ({"image.digest": "md5:abc"}, "/image/digest"),
    ({"metrics.port": 70000}, "/metrics/port"),
    ({"monitoring.podMonitor.enabled": "yes"}, "/monitoring/podMonitor/enabled"),
    ({"operator.reconcileIntervalSeconds": 0}, "/operator/reconcileIntervalSeconds"),
    ({"replicas": 2}, "additional properties 'replicas' not allowed"),
    # The operator pod must keep meeting the restricted Pod Security Standard.
    ({"securityContext.privileged": True}, "/securityContext/privileged"),
    ({"securityContext.allowPrivilegeEscalation": True}, "/securityContext/allowPrivilegeEscalation"),
    ({"securityContext.runAsNonRoot": False}, "/securityContext/runAsNonRoot"),
    ({"podSecurityContext.runAsNonRoot": False}, "/podSecurityContext/runAsNonRoot"),
]


@pytest.mark.parametrize("values,where", WRONG_VALUES, ids=[w for _, w in WRONG_VALUES])
def test_values_schema_rejects_wrong_values(values, where):
    proc = helm("lint", str(CHART), *set_args(values), check=False)
    assert proc.returncode != 0 and where in proc.stdout + proc.stderr, proc.stdout + proc.stderr
    proc = helm("template", "kt", str(CHART), *set_args(values), check=False)
    assert proc.returncode != 0 and where in proc.stderr, proc.stderr


def test_images_come_from_one_place_and_default_to_the_app_version():
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    assert chart["appVersion"] == version
    container = operator_container(render())
    assert container["image"] == f"ghcr.io/kubetrain/operator:{version}"
    # The operator's built-in fallback (make run) names the chart's default trainer image.
    assert container_env(container)["KUBETRAIN_TRAINER_IMAGE"] == BuildConfig.trainer_image == f"ghcr.io/kubetrain/trainer:{version}"
    digest = "sha256:" + "a" * 64
    container = operator_container(render({"trainerImage.tag": "0.2.0", "image.digest": digest}))
    assert container["image"] == f"ghcr.io/kubetrain/operator@{digest}"
    assert container_env(container)["KUBETRAIN_TRAINER_IMAGE"] == "ghcr.io/kubetrain/trainer:0.2.0"


def test_operator_pod_is_locked_down_and_probed():
    docs = render()
    (deployment,) = find(docs, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    sc = container["securityContext"]
    assert sc["readOnlyRootFilesystem"] and sc["runAsNonRoot"] and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]} and sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["securityContext"]["runAsUser"] == 1000 and pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    assert set(container["resources"]) == {"requests", "limits"}
    assert all(set(container["resources"][k]) == {"cpu", "memory"} for k in ("requests", "limits"))
    assert container["args"][0] == "--liveness=http://0.0.0.0:8080/healthz"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"health": 8080, "metrics": 8000}
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]
    assert {"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}} in pod["volumes"]
    (service,) = find(docs, "Service")
    assert service["spec"]["ports"] == [{"name": "metrics", "port": 8000, "targetPort": "metrics", "protocol": "TCP"}]
    moved = operator_container(render({"metrics.port": 9100, "probes.port": 8081}))
    assert {p["name"]: p["containerPort"] for p in moved["ports"]} == {"health": 8081, "metrics": 9100}
    assert container_env(moved)["KUBETRAIN_METRICS_PORT"] == "9100" and moved["args"][0].endswith(":8081/healthz")


def test_operator_pod_carries_scrape_annotations():
    def annotations(values=None):
        (deployment,) = find(render(values), "Deployment")
        return deployment["spec"]["template"]["metadata"]["annotations"]

    scrape = {"prometheus.io/scrape": "true", "prometheus.io/port": "8000", "prometheus.io/path": "/metrics"}
    assert annotations() == scrape
    assert annotations({"metrics.port": 9100})["prometheus.io/port"] == "9100"
    # Extra pod annotations are kept, and win over ours (e.g. to opt out of annotation scraping).
    assert annotations({"podAnnotations": {"team": "ml", "prometheus.io/scrape": "false"}}) == scrape | {"team": "ml", "prometheus.io/scrape": "false"}


def test_cluster_mode_rbac_is_exactly_what_the_operator_calls():
    docs = render()
    (role,) = find(docs, "ClusterRole")
    assert rules(role) == IN_NAMESPACE | CLUSTER_READS
    (binding,) = find(docs, "ClusterRoleBinding")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "kt-kubetrain", "namespace": "kubetrain-system"}]
    assert not find(docs, "Role") and not find(docs, "RoleBinding")
    env = container_env(operator_container(docs))
    assert env["KUBETRAIN_WATCH_NAMESPACES"] == "" and env["KUBETRAIN_STANDALONE"] == "true"
    assert env["MALLOC_ARENA_MAX"] == "2"  # bounds the memory the handler threads' malloc arenas keep


def test_namespaced_mode_has_a_role_per_namespace_and_only_cluster_reads_cluster_wide():
    docs = render(NAMESPACED)
    roles = find(docs, "Role")
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["ns-a", "ns-b"]
    assert all(rules(r) == IN_NAMESPACE for r in roles)
    assert sorted(b["metadata"]["namespace"] for b in find(docs, "RoleBinding")) == ["ns-a", "ns-b"]
    (cluster_role,) = find(docs, "ClusterRole")
    # Kopf lists and watches namespaces only when it serves a list of them.
    assert rules(cluster_role) == CLUSTER_READS | expand(("", "namespaces", "list watch"))
    assert container_env(operator_container(docs))["KUBETRAIN_WATCH_NAMESPACES"] == "ns-a,ns-b"


@pytest.mark.parametrize("values", CASES.values(), ids=CASES.keys())
def test_no_wildcards_secrets_or_escalation_anywhere(values):
    for role in find(render(values), "ClusterRole") + find(render(values), "Role"):
        for group, resource, verb in rules(role):
            assert "*" not in (group, resource, verb)
            assert resource not in ("secrets", "roles", "clusterroles", "rolebindings", "clusterrolebindings")
            # ConfigMaps and ServiceAccounts are only looked up by name (a job's pods refer to them).
            assert resource not in ("configmaps", "serviceaccounts") or verb == "get"
            assert verb not in ("escalate", "bind", "impersonate", "deletecollection")


def test_one_replica_is_standalone_and_never_overlaps_on_rollout():
    docs = render()
    (deployment,) = find(docs, "Deployment")
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    assert not find(docs, "ClusterKopfPeering") and not find(docs, "KopfPeering")


def test_several_replicas_use_kopf_peering():
    docs = render(PEERING)
    (deployment,) = find(docs, "Deployment")
    assert deployment["spec"]["replicas"] == 2 and deployment["spec"]["strategy"] == {"type": "RollingUpdate"}
    env = container_env(operator_container(docs))
    assert env["KUBETRAIN_STANDALONE"] == "false" and env["POD_ID"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert [p["metadata"]["name"] for p in find(docs, "ClusterKopfPeering")] == ["kubetrain"]
    (role,) = find(docs, "ClusterRole")
    assert rules(role) - IN_NAMESPACE - CLUSTER_READS == expand(("kopf.dev", "clusterkopfpeerings", "list watch patch"))
    docs = render(NAMESPACED | PEERING)
    assert sorted(p["metadata"]["namespace"] for p in find(docs, "KopfPeering")) == ["ns-a", "ns-b"]
    assert all(rules(r) - IN_NAMESPACE == expand(("kopf.dev", "kopfpeerings", "list watch patch")) for r in find(docs, "Role"))
    assert not find(docs, "ClusterKopfPeering")


def test_peering_crds_ship_with_the_chart():
    crds = {d["metadata"]["name"]: d for d in yaml.safe_load_all((CHART / "crds" / "kopf.dev_peerings.yaml").read_text())}
    assert {n: d["spec"]["scope"] for n, d in crds.items()} == {"clusterkopfpeerings.kopf.dev": "Cluster",
                                                                "kopfpeerings.kopf.dev": "Namespaced"}


def test_monitoring_is_off_by_default_and_complete_when_on(tmp_path):
    from kubetrain.observability.dashboard import render_dashboard
    from kubetrain.observability.rules import rule_groups

    kinds = {d["kind"] for d in render()}
    assert not kinds & {"PodMonitor", "PrometheusRule", "ConfigMap"}
    docs = render(MONITORING | {"monitoring.podMonitor.labels": {"release": "prom"}, "monitoring.dashboards.namespace": "grafana",
                                "prometheusUrl": "http://prom.monitoring:9090"})
    monitors = {m["metadata"]["name"]: m for m in find(docs, "PodMonitor")}
    operator_monitor, trainers = monitors["kt-kubetrain"], monitors["kt-kubetrain-trainers"]
    assert operator_monitor["metadata"]["labels"]["release"] == "prom"
    assert operator_monitor["spec"]["selector"]["matchLabels"] == find(docs, "Deployment")[0]["spec"]["selector"]["matchLabels"]
    assert trainers["spec"]["selector"]["matchLabels"] == {"app.kubernetes.io/name": "kubetrain", "kubetrain.dev/role": "worker"}
    assert trainers["spec"]["namespaceSelector"] == {"any": True}
    # The trainer's job/namespace labels name the TrainingJob: they must win over the scrape target's.
    assert all(ep["honorLabels"] and ep["port"] == "metrics" for m in monitors.values() for ep in m["spec"]["podMetricsEndpoints"])
    (rule,) = find(docs, "PrometheusRule")
    groups = rule["spec"]["groups"]
    # The chart's default thresholds are the code's: the rendered rules equal the generated ones.
    assert groups[:2] == rule_groups()["groups"]
    assert groups[2]["rules"][0]["alert"] == "KubetrainOperatorDown"
    if shutil.which("promtool"):
        path = tmp_path / "rules.yaml"
        path.write_text(yaml.safe_dump({"groups": groups}))
        proc = subprocess.run(["promtool", "check", "rules", str(path)], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stdout + proc.stderr
    (dashboards,) = find(docs, "ConfigMap")
    assert dashboards["metadata"]["namespace"] == "grafana" and dashboards["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(dashboards["data"]["kubetrain-training.json"]) == json.loads(render_dashboard())
    assert container_env(operator_container(docs))["KUBETRAIN_PROMETHEUS_URL"] == "http://prom.monitoring:9090"


def test_alert_thresholds_are_chart_values():
    docs = render(MONITORING | {"monitoring.alerts.stalledWindow": "45m", "monitoring.alerts.checkpointMaxAgeSeconds": "600"})
    rules = {r.get("alert"): r for g in find(docs, "PrometheusRule")[0]["spec"]["groups"] for r in g["rules"]}
    assert "[45m]" in rules["KubetrainJobStalled"]["expr"] and "> 600" in rules["KubetrainCheckpointStale"]["expr"]
    assert "@@" not in template(MONITORING)


def test_kueue_enabled_grants_workloads_and_flavor_reads_and_tells_the_operator():
    off = render({})
    assert container_env(operator_container(off))["KUBETRAIN_KUEUE"] == "false"
    docs = render({"kueue.enabled": True})
    assert container_env(operator_container(docs))["KUBETRAIN_KUEUE"] == "true"
    (role,) = find(docs, "ClusterRole")
    assert rules(role) - rules(find(off, "ClusterRole")[0]) == expand(
        ("kueue.x-k8s.io", "workloads", "get list watch create patch delete"), ("kueue.x-k8s.io", "workloads/status", "update"),
        ("kueue.x-k8s.io", "resourceflavors", "get"), ("scheduling.k8s.io", "priorityclasses", "get"))
    namespaced = render(NAMESPACED | {"kueue.enabled": True})
    assert all(("kueue.x-k8s.io", "workloads/status", "update") in rules(r) for r in find(namespaced, "Role"))
    assert ("kueue.x-k8s.io", "resourceflavors", "get") in rules(find(namespaced, "ClusterRole")[0])


def test_every_value_is_documented_in_values_yaml_and_docs():
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    documented = [key for key, _, _ in documented_values()]
    undocumented = [leaf for leaf in leaf_values(values)
                    if not any(leaf == key or leaf.startswith(key + ".") for key in documented)]
    assert undocumented == []
    docs = DOCS.read_text()
    assert docs == docs_with_table(docs), "docs/helm.md's values table is stale: run python tests/support/chart.py"
