"""Pinned versions of the local control plane's components: one place to bump them."""

KUBERNETES = "v1.36.3"
ETCD = "v3.6.16"
KWOK = "v0.8.0"
HELM = "v3.21.4"
KUBECONFORM = "v0.7.0"
# The real node (devcluster/real_node.py): kubelet and kube-proxy are KUBERNETES.
COREDNS = "v1.15.0"
# Tag of our own sandbox ("pause") image, built from devcluster/node/pause.go: no registry to pull one from.
PAUSE = "3.10"
# The local base image of `make images`: debootstrapped Debian with python3.
DEBIAN_SUITE = "bookworm"
# Kueue (queues, quotas, preemption) beside the control plane: devcluster/kueue.py. The proxy
# serves v0.19.2 though `go list -m -versions` lists only v0.17.0: ask for the tag itself.
KUEUE = "v0.19.2"
# Kubeflow's PyTorchJob operator, the baseline of the control-plane benchmark
# (bench/control_plane.py). Not part of the cluster: built only when named.
TRAINING_OPERATOR = "v1.9.3"
# Prometheus 3.16.0 for the real-node scrape test: Debian's 2.42 has no Kubernetes discovery. The
# module github.com/prometheus/prometheus tags Prometheus 3.xx.y as v0.3xx.y.
PROMETHEUS = "v0.316.0"
