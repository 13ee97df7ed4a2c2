"""Build recipes: the wrapper go.mod that builds k8s.io/kubernetes and etcd with their sibling modules
pinned, and Prometheus with Kubernetes discovery."""

import pytest

from kubetrain_dev.devcluster import build, versions
from kubetrain_dev.devcluster.build import wrapper_gomod

ETCD_GOMOD = """module go.etcd.io/etcd/server/v3

go 1.24

replace (
\tgo.etcd.io/etcd/api/v3 => ../api
\tgo.etcd.io/etcd/client/v3 => ../client/v3
)

// Bad imports are sometimes causing attempts to pull that code.
replace go.etcd.io/etcd => ./FORBIDDEN_DEPENDENCY
"""

KUBE_GOMOD = """module k8s.io/kubernetes

go 1.26.0

godebug default=go1.26

replace (
\tk8s.io/api => ./staging/src/k8s.io/api
\tk8s.io/client-go => ./staging/src/k8s.io/client-go
)
"""


def test_etcd_siblings_pinned_and_forbidden_guards_skipped():
    out = wrapper_gomod("go.etcd.io/etcd/server/v3", "v3.6.16", ETCD_GOMOD, lambda m: "v3.6.16")
    assert "replace go.etcd.io/etcd/api/v3 => go.etcd.io/etcd/api/v3 v3.6.16" in out
    assert "replace go.etcd.io/etcd/client/v3 => go.etcd.io/etcd/client/v3 v3.6.16" in out
    assert "go.etcd.io/etcd =>" not in out
    assert "require go.etcd.io/etcd/server/v3 v3.6.16" in out


def test_kubernetes_staging_replaced_by_published_tags_with_godebug():
    out = wrapper_gomod("k8s.io/kubernetes", "v1.36.3", KUBE_GOMOD, lambda m: "v0.36.3")
    assert "replace k8s.io/api => k8s.io/api v0.36.3" in out
    assert "replace k8s.io/client-go => k8s.io/client-go v0.36.3" in out
    assert "godebug default=go1.26" in out and "go 1.26.0" in out


def test_prometheus_module_tag_maps_to_its_release():
    assert build.prometheus_release("v0.316.0") == "3.16.0"
    assert build.prometheus_release("v0.310.12") == "3.10.12"
    with pytest.raises(ValueError):
        build.prometheus_release("v2.42.0")  # Prometheus' own tag, not the Go module's


def test_prometheus_builds_kubernetes_discovery_only_and_no_ui():
    comp = build.COMPONENTS["prometheus"]
    assert comp.default and comp.binaries == ("prometheus",)  # part of `make tools`
    assert comp.bin_dir == build.cache_root() / f"prometheus-{versions.PROMETHEUS}" / "bin"
    tags, ldflags = build.prometheus_build_flags(comp)
    # remove_all_sd drops every plugins/plugin_<name>.go; enable_<name>_sd brings one back.
    assert tags == ("remove_all_sd", "enable_kubernetes_sd")
    assert "builtinassets" not in tags  # the React UI is not compiled in
    assert f"version.Version={build.prometheus_release(versions.PROMETHEUS)}" in ldflags
