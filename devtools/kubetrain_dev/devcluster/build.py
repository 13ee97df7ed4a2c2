"""Build the local control plane's binaries from the Go module proxy.

kind, k3d and setup-envtest need Docker or downloads this machine cannot make,
so every component is compiled from source with the local Go toolchain and
cached under ``~/.cache/kubetrain/<tool>-<version>/bin`` (override with
``KUBETRAIN_CACHE``). A warm cache does no build work at all.

k8s.io/kubernetes and etcd's server module point their sibling modules at
local paths with ``replace`` directives, which ``go install`` refuses. We build
them through a throw-away wrapper module that requires the real module and
replaces each sibling with its published tag (the scheduler-plugins recipe).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from kubetrain_dev.devcluster import versions

log = logging.getLogger("kubetrain_dev.devcluster.build")

KUBE_COMMANDS = ("kube-apiserver", "kube-scheduler", "kube-controller-manager")


def cache_root() -> Path:
    return Path(os.environ.get("KUBETRAIN_CACHE", Path.home() / ".cache" / "kubetrain"))


@dataclass(frozen=True)
class Component:
    name: str
    version: str
    binaries: tuple[str, ...]
    # Built by ``ensure()``/``build`` without arguments. Components only a
    # benchmark needs are built when named.
    default: bool = True

    @property
    def bin_dir(self) -> Path:
        return cache_root() / f"{self.name}-{self.version}" / "bin"

    def is_built(self) -> bool:
        return all((self.bin_dir / b).is_file() for b in self.binaries)


COMPONENTS = {
    "kubernetes": Component("kubernetes", versions.KUBERNETES, KUBE_COMMANDS),
    "etcd": Component("etcd", versions.ETCD, ("etcd",)),
    "kwok": Component("kwok", versions.KWOK, ("kwok",)),
    "helm": Component("helm", versions.HELM, ("helm",)),
    "kubeconform": Component("kubeconform", versions.KUBECONFORM, ("kubeconform",)),
    # The real node (real_node.py). Its own component, not more KUBE_COMMANDS: a machine whose
    # control plane is already cached builds only these two.
    "kubernetes-node": Component("kubernetes-node", versions.KUBERNETES, ("kubelet", "kube-proxy")),
    "coredns": Component("coredns", versions.COREDNS, ("coredns",)),
    "pause": Component("pause", versions.PAUSE, ("pause",)),
    "kueue": Component("kueue", versions.KUEUE, ("kueue",)),
    # Only the server (the API is enough; promtool stays Debian's), with Kubernetes discovery.
    "prometheus": Component("prometheus", versions.PROMETHEUS, ("prometheus",)),
    "training-operator": Component("training-operator", versions.TRAINING_OPERATOR, ("training-operator.v1",), default=False),
}

TRAINING_OPERATOR_MODULE = "github.com/kubeflow/training-operator"
# The CRDs the benchmark installs, copied from the module next to the binary.
TRAINING_OPERATOR_CRDS = ("kubeflow.org_pytorchjobs.yaml",)
KUEUE_MODULE = "sigs.k8s.io/kueue"
KUEUE_CRD_SOURCE = "config/components/crd/bases"
# Kueue's webhook configurations (services rewritten to a loopback URL by devcluster/kueue.py).
KUEUE_WEBHOOKS = "config/components/webhook/manifests.yaml"


def binary(tool: str) -> Path:
    """Path of a built binary, by binary name (``kube-apiserver``, ``etcd``, ...)."""
    for comp in COMPONENTS.values():
        if tool in comp.binaries:
            return comp.bin_dir / tool
    raise KeyError(tool)


def _go_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(GOTOOLCHAIN="local", CGO_ENABLED="0", GOFLAGS="-mod=mod")
    return env


def _go(args: list[str], cwd: Path, extra_env: dict[str, str] | None = None) -> str:
    env = _go_env()
    env.update(extra_env or {})
    log.info("go %s (in %s)", " ".join(args), cwd)
    proc = subprocess.run(["go", *args], cwd=cwd, env=env, text=True, capture_output=True)
    if proc.returncode != 0:
        raise RuntimeError(f"go {' '.join(args)} failed:\n{proc.stderr[-4000:]}")
    return proc.stdout


def _module_gomod(module: str, version: str, cwd: Path) -> str:
    info = json.loads(_go(["mod", "download", "-json", f"{module}@{version}"], cwd))
    return Path(info["GoMod"]).read_text()


# Sibling modules: k8s.io/kubernetes's ./staging/... and etcd's ../api etc. Not
# etcd's "=> ./FORBIDDEN_DEPENDENCY" guards, which only block bad imports.
_REPLACE_LOCAL = re.compile(r"^\s*(?:replace\s+)?(\S+)\s+=>\s+(?:\.\./|\./staging/)\S*\s*$", re.M)


def wrapper_gomod(module: str, version: str, upstream_gomod: str, sibling_version) -> str:
    """go.mod of a module that builds ``module@version`` with its local replaces pinned.

    ``sibling_version`` maps each locally replaced module path to the published
    tag that stands in for it.
    """
    go_line = re.search(r"^go\s+(\S+)", upstream_gomod, re.M)
    godebug = re.findall(r"^godebug\s+.*$", upstream_gomod, re.M)
    godebug_block = re.search(r"^godebug\s*\((.*?)^\)", upstream_gomod, re.M | re.S)
    lines = ["module kubetrain.dev/devcluster/build", "", f"go {go_line.group(1) if go_line else '1.26'}", ""]
    lines += godebug
    if godebug_block:
        lines += ["godebug (", godebug_block.group(1).rstrip(), ")"]
    lines += ["", f"require {module} {version}", ""]
    for sibling in sorted(set(_REPLACE_LOCAL.findall(upstream_gomod))):
        lines.append(f"replace {sibling} => {sibling} {sibling_version(sibling)}")
    return "\n".join(lines) + "\n"


def _build_wrapped(comp: Component, module: str, packages: dict[str, str], sibling_version, ldflags: str,
                   work_name: str | None = None) -> None:
    work = cache_root() / "build" / (work_name or f"{comp.name}-{comp.version}")
    work.mkdir(parents=True, exist_ok=True)
    upstream = _module_gomod(module, comp.version, work)
    (work / "go.mod").write_text(wrapper_gomod(module, comp.version, upstream, sibling_version))
    _go(["mod", "download", module], work)
    comp.bin_dir.mkdir(parents=True, exist_ok=True)
    for out, pkg in packages.items():
        _go(["build", "-trimpath", "-tags", "selinux,notest", "-ldflags", ldflags,
             "-o", str(comp.bin_dir / out), pkg], work)


def _version_ldflags(version: str) -> str:
    major, minor = version.lstrip("v").split(".")[:2]
    flags = ["-s", "-w"]
    for pkg in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
        flags += [f"-X {pkg}.gitVersion={version}", f"-X {pkg}.gitMajor={major}",
                  f"-X {pkg}.gitMinor={minor}", f"-X {pkg}.gitTreeState=clean"]
    return " ".join(flags)


def build_kubernetes(comp: Component) -> None:
    staging_tag = "v0." + comp.version.lstrip("v").split(".", 1)[1]
    _build_wrapped(
        comp,
        "k8s.io/kubernetes",
        {cmd: f"k8s.io/kubernetes/cmd/{cmd}" for cmd in comp.binaries},
        lambda sibling: staging_tag,
        _version_ldflags(comp.version),
        # kubelet and kube-proxy share the control plane's wrapper module (and so its Go build cache).
        work_name=f"kubernetes-{comp.version}",
    )


def build_etcd(comp: Component) -> None:
    _build_wrapped(
        comp,
        "go.etcd.io/etcd/server/v3",
        {"etcd": "go.etcd.io/etcd/server/v3"},
        lambda sibling: comp.version,
        "-s -w",
    )


def _go_install(comp: Component, pkg: str, ldflags: str = "-s -w", tags: tuple[str, ...] = ()) -> None:
    comp.bin_dir.mkdir(parents=True, exist_ok=True)
    _go(["install", "-trimpath", *(["-tags", ",".join(tags)] if tags else []), "-ldflags", ldflags,
         f"{pkg}@{comp.version}"], cache_root(), {"GOBIN": str(comp.bin_dir), "GOFLAGS": ""})


def build_helm(comp: Component) -> None:
    # Without these, helm believes the cluster is an old Kubernetes and
    # `helm template` renders against the wrong API versions.
    major, minor = versions.KUBERNETES.lstrip("v").split(".")[:2]
    ldflags = ("-s -w -X helm.sh/helm/v3/internal/version.version=" + comp.version +
               f" -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor={major}"
               f" -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor={minor}")
    _go_install(comp, "helm.sh/helm/v3/cmd/helm", ldflags)


def crd_dir(comp: Component) -> Path:
    return comp.bin_dir.parent / "crds"


def build_training_operator(comp: Component) -> None:
    # No replace directives in its go.mod (checked for v1.9.3), so a plain
    # `go install` works; its CRDs come from the same module download.
    _go_install(comp, f"{TRAINING_OPERATOR_MODULE}/cmd/training-operator.v1")
    copy_training_operator_crds(comp)


def copy_training_operator_crds(comp: Component) -> Path:
    """Copy the PyTorchJob CRD out of the Go module cache into the component's folder; return that folder."""
    return copy_module_files(comp, TRAINING_OPERATOR_MODULE, "manifests/base/crds", TRAINING_OPERATOR_CRDS, crd_dir(comp))


def copy_module_files(comp: Component, module: str, src_dir: str, names: tuple[str, ...], out: Path) -> Path:
    """Copy ``names`` (every YAML file when empty) from ``src_dir`` of ``module@comp.version`` (the
    Go module cache downloads it once) into ``out``; return ``out``. Nothing is copied twice."""
    if any(out.glob("*.yaml")) if not names else all((out / Path(f).name).is_file() for f in names):
        return out
    info = json.loads(_go(["mod", "download", "-json", f"{module}@{comp.version}"], cache_root(), {"GOFLAGS": ""}))
    src = Path(info["Dir"]) / src_dir
    out.mkdir(parents=True, exist_ok=True)
    for name in names or tuple(sorted(p.name for p in src.glob("*.yaml"))):
        shutil.copyfile(src / name, out / Path(name).name)
    return out


def build_kueue(comp: Component) -> None:
    # No replace directives in its go.mod (v0.19.2), so a plain `go install` works. The CRDs and
    # the webhook configurations come from the same module download.
    _go_install(comp, f"{KUEUE_MODULE}/cmd/kueue")
    kueue_manifests(comp)


def kueue_manifests(comp: Component) -> tuple[Path, Path]:
    """Kueue's CRD folder and its webhook configurations file, copied from its module if missing."""
    crds = copy_module_files(comp, KUEUE_MODULE, KUEUE_CRD_SOURCE, (), crd_dir(comp))
    webhooks = copy_module_files(comp, KUEUE_MODULE, "", (KUEUE_WEBHOOKS,), comp.bin_dir.parent / "webhook")
    return crds, webhooks / Path(KUEUE_WEBHOOKS).name


PROMETHEUS_MODULE = "github.com/prometheus/prometheus"
# Prometheus' plugins/plugin_<name>.go files each register one service discovery unless
# remove_all_sd is set, then only those enable_<name>_sd names. file and http (plugins/minimum.go)
# and static_configs are always in. No builtinassets tag: the React UI stays out (it needs a
# node/npm build the module does not ship); the HTTP API is all the tests use.
PROMETHEUS_DISCOVERY = ("kubernetes",)


def prometheus_release(module_version: str) -> str:
    """Prometheus' own version for its module tag: v0.316.0 is Prometheus 3.16.0."""
    zero, minor, patch = module_version.lstrip("v").split(".")
    if zero != "0" or len(minor) < 3:
        raise ValueError(f"{module_version} is not a Prometheus 3.x module tag (v0.3xx.y)")
    return f"{minor[0]}.{int(minor[1:])}.{patch}"


def prometheus_build_flags(comp: Component) -> tuple[tuple[str, ...], str]:
    """Build tags and ldflags of ``build_prometheus`` (what ``prometheus --version`` reports)."""
    tags = ("remove_all_sd", *(f"enable_{name}_sd" for name in PROMETHEUS_DISCOVERY))
    ldflags = f"-s -w -X github.com/prometheus/common/version.Version={prometheus_release(comp.version)}"
    return tags, ldflags


def build_prometheus(comp: Component) -> None:
    # No replace or exclude directives in its go.mod (v0.316.0), so a plain `go install` works.
    tags, ldflags = prometheus_build_flags(comp)
    _go_install(comp, f"{PROMETHEUS_MODULE}/cmd/prometheus", ldflags, tags)


NODE_SOURCES = Path(__file__).parent / "node"

# CoreDNS's plugins in the order of its plugin.cfg (the order they handle a query). No `forward`:
# a name outside the cluster gets no answer instead of a query off this machine.
COREDNS_PLUGINS = ("reload", "bind", "ready", "health", "errors", "log", "loadbalance", "cache", "hosts",
                   "kubernetes", "loop")


def coredns_main() -> str:
    """CoreDNS's main with only ``COREDNS_PLUGINS`` compiled in (upstream's main imports ~60)."""
    imports = "\n".join(f'\t_ "github.com/coredns/coredns/plugin/{p}"' for p in COREDNS_PLUGINS)
    directives = ", ".join(f'"{p}"' for p in COREDNS_PLUGINS)
    return (NODE_SOURCES / "coredns_main.go.tmpl").read_text().replace("$IMPORTS", imports).replace(
        "$DIRECTIVES", directives)


def _build_own_module(comp: Component, module: str, main_go: str, requires: tuple[str, ...] = ()) -> None:
    """``go build`` a one-file main module in the build dir (``go mod tidy`` resolves ``requires``)."""
    work = cache_root() / "build" / f"{comp.name}-{comp.version}"
    work.mkdir(parents=True, exist_ok=True)
    (work / "main.go").write_text(main_go)
    (work / "go.mod").write_text(f"module {module}\n\ngo 1.24\n")
    for req in requires:
        _go(["get", req], work)
    _go(["mod", "tidy"], work)
    comp.bin_dir.mkdir(parents=True, exist_ok=True)
    _go(["build", "-trimpath", "-ldflags", "-s -w", "-o", str(comp.bin_dir / comp.binaries[0]), "."], work)


def build_coredns(comp: Component) -> None:
    _build_own_module(comp, "kubetrain.dev/devcluster/coredns", coredns_main(),
                      (f"github.com/coredns/coredns@{comp.version}",))


def build_pause(comp: Component) -> None:
    _build_own_module(comp, "kubetrain.dev/devcluster/pause", (NODE_SOURCES / "pause.go").read_text())


BUILDERS = {
    "kubernetes": build_kubernetes,
    "kubernetes-node": build_kubernetes,
    "coredns": build_coredns,
    "pause": build_pause,
    "etcd": build_etcd,
    "kwok": lambda c: _go_install(c, "sigs.k8s.io/kwok/cmd/kwok"),
    "helm": build_helm,
    "kubeconform": lambda c: _go_install(c, "github.com/yannh/kubeconform/cmd/kubeconform"),
    "kueue": build_kueue,
    "prometheus": build_prometheus,
    "training-operator": build_training_operator,
}


def ensure(names: list[str] | None = None) -> dict[str, str]:
    """Build whatever is missing; return {component: error} for those that failed.

    A component that cannot be built does not stop the others: the caller
    decides which tests can still run.
    """
    failures: dict[str, str] = {}
    for name in names or [n for n, c in COMPONENTS.items() if c.default]:
        comp = COMPONENTS[name]
        if comp.is_built():
            log.info("%s %s: cached in %s", name, comp.version, comp.bin_dir)
            continue
        if shutil.which("go") is None:
            failures[name] = "the Go toolchain is not on PATH"
            continue
        log.info("%s %s: building", name, comp.version)
        try:
            BUILDERS[name](comp)
        except Exception as exc:  # noqa: BLE001 - reported per component, never fatal for the rest
            failures[name] = str(exc)
            log.error("%s %s: build failed: %s", name, comp.version, exc)
    return failures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("components", nargs="*", choices=[*COMPONENTS, []],
                        help="default: all but the benchmark-only ones (training-operator)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    failures = ensure(args.components or None)
    for name, err in failures.items():
        print(f"FAILED {name}: {err}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
