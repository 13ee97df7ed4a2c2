"""The wrapper go.mod that builds k8s.io/kubernetes and etcd with their sibling modules pinned."""

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
