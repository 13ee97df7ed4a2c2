# kubetrain's front door (kubebuilder conventions). Every target installs what
# it needs first, so each one works on a fresh machine.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.kubetrain-installed
KUBECONFIG_DEV ?= $(HOME)/.cache/kubetrain/cluster/kubeconfig
PYTEST_ARGS ?=

.PHONY: help
help: ## Show the targets
	@grep -E '^[a-z-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN{FS=":.*?## "}{printf "  %-14s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml operator/constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	# pip keeps its cache (~/.cache/pip): the multi-GB torch wheel downloads once per machine.
	# The operator's dependencies at the versions its image pins (operator/constraints.txt).
	$(VENV)/bin/pip install --quiet -c operator/constraints.txt -e '.[dev]'
	touch $@

.PHONY: install
install: $(STAMP) ## Create .venv with kubetrain and every extra (operator, trainer, test)

SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

# Debian's packages: Prometheus and promtool for the metrics and alert tests (Debian's lacks Kubernetes
# discovery: the real-node scrape test uses the Prometheus 3 that build.py makes); the real node's
# runtime (containerd, runc, CNI plugins, iptables, conntrack) and image tools (buildah, debootstrap).
# APT_CHECK: one file or command per package, so a machine that has them all skips apt.
APT_PACKAGES := prometheus containerd runc containernetworking-plugins buildah debootstrap iptables conntrack
APT_CHECK := promtool containerd runc /usr/lib/cni/bridge buildah debootstrap iptables conntrack

.PHONY: tools
tools: $(STAMP) ## Build the control plane, KWOK, Kueue, helm and the real node (kubelet, kube-proxy, CoreDNS, pause) and Prometheus 3 from the Go module proxy (cached in ~/.cache/kubetrain); install Debian's packages
	( for c in $(APT_CHECK); do command -v $$c >/dev/null || [ -x $$c ] || exit 1; done ) \
	  || { $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $(APT_PACKAGES); }
	$(PY) -m kubetrain_dev.devcluster build

.PHONY: crds generate
crds generate: $(STAMP) ## Regenerate the CRD (crds/, chart), docs/api-reference.md, the dashboard and the rules
	$(PY) -m kubetrain.cli generate

.PHONY: test
test: tools ## Run every test: unit, trainer (real torchrun on CPU), integration (real control plane, real pods on a local kubelet where the machine can)
	# KUBETRAIN_REAL_NODE=auto: the real-node tests run as root with `make tools`' packages (building the
	# images they need) and skip loudly elsewhere; =1 makes a missing prerequisite a failure, =0 opts out.
	KUBETRAIN_REAL_NODE=$${KUBETRAIN_REAL_NODE:-auto} $(PY) -m pytest $(PYTEST_ARGS)

.PHONY: test-unit
test-unit: $(STAMP) ## Run only the fast unit tests
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

.PHONY: demo
demo: $(STAMP) ## Train the built-in GPT locally: examples/minimal.yaml on two CPU replicas
	$(PY) -m kubetrain.cli run examples/minimal.yaml

.PHONY: cluster
cluster: tools ## Start a local control plane with 4 simulated 8-GPU nodes, Kueue and one real CPU node (prints the KUBECONFIG line)
	$(PY) -m kubetrain_dev.devcluster up --real-node

.PHONY: cluster-down
cluster-down: $(STAMP) ## Stop the local control plane and the real node; restore the host (bridge, iptables, sysctls)
	$(PY) -m kubetrain_dev.devcluster down

.PHONY: images
images: tools ## Build the trainer and operator images over a local Debian base (buildah, no registry); load them into the real node
	$(PY) -m kubetrain_dev.devcluster images

.PHONY: deploy
deploy: $(STAMP) ## Install the chart with the images of `make images` into KUBECONFIG (default: the make cluster one)
	export KUBECONFIG="$${KUBECONFIG:-$(KUBECONFIG_DEV)}"; \
	$(PY) -m kubetrain_dev.devcluster deploy $(DEPLOY_ARGS)

.PHONY: run
run: $(STAMP) ## Run the operator from source against KUBECONFIG (default: the make cluster one); installs the CRD if missing
	export KUBECONFIG="$${KUBECONFIG:-$(KUBECONFIG_DEV)}"; \
	kubectl get crd trainingjobs.kubetrain.dev >/dev/null 2>&1 || kubectl apply --server-side -f crds/; \
	KUBETRAIN_STANDALONE=$${KUBETRAIN_STANDALONE:-true} $(PY) -m kubetrain.operator

.PHONY: chart-lint
chart-lint: $(STAMP) ## Lint the Helm chart and the Dockerfiles offline (helm lint, values schema, kubeconform, hadolint)
	$(PY) -m kubetrain_dev.devcluster build helm kubeconform
	$(PY) -m pytest tests/chart/test_chart_offline.py tests/unit/test_dockerfiles.py $(PYTEST_ARGS)

.PHONY: chart-docs
chart-docs: $(STAMP) ## Regenerate the values table in docs/helm.md from charts/kubetrain/values.yaml
	$(PY) tests/support/chart.py

.PHONY: bench
bench: tools ## Run every benchmark (~1.5 h on 2 cores) into bench/results/; BENCH_ARGS=--quick for a smoke run
	$(PY) -m bench $(BENCH_ARGS)
