"""Container images for the real node, without a registry.

* The **base**: Debian (``versions.DEBIAN_SUITE``) from ``debootstrap --variant=minbase`` with
  python3, the stand-in for the Dockerfiles' CUDA / python bases (their build args
  ``CUDA_IMAGE`` and ``PYTHON_IMAGE``).
* **pause** and **CoreDNS**: one static binary each (built by build.py).
* The **trainer** and **operator** images: the repository's Dockerfiles, built with
  ``buildah bud`` over the base.

Every image ends as a docker-archive under ``~/.cache/kubetrain/images/`` next to a ``.key`` file:
a hash of everything it was built from. A build whose key is unchanged is skipped, and the
node's containerd imports an archive only when its key differs from the one it imported last
(real_node.py), so a warm ``make images`` does no work. The single-binary and base images are
written here directly (a layer tar, a config and a manifest: the docker-archive format) rather
than through buildah, which only the Dockerfiles need.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import shutil
import subprocess
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from kubetrain_dev.devcluster import build, versions

log = logging.getLogger("kubetrain_dev.devcluster.images")

REPO = Path(__file__).resolve().parents[3]
BASE_IMAGE = f"localhost/kubetrain-base:{versions.DEBIAN_SUITE}"
PAUSE_IMAGE = f"localhost/pause:{versions.PAUSE}"
COREDNS_IMAGE = f"localhost/coredns:{versions.COREDNS}"
TRAINER_IMAGE = "localhost/kubetrain-trainer:dev"
OPERATOR_IMAGE = "localhost/kubetrain-operator:dev"
# python-is-python3 and python3-venv: the operator's Dockerfile runs `python -m venv` (the
# python:*-slim base has both); the trainer's installs python3-venv itself but gets it for free.
BASE_PACKAGES = ("python3", "python3-venv", "python-is-python3")
DEBIAN_MIRROR = "http://deb.debian.org/debian"
# Dropped from the rootfs: nothing in an image reads them.
_TRIM = ("usr/share/doc", "usr/share/man", "usr/share/info", "var/cache/apt", "var/lib/apt/lists",
         "var/log/apt", "var/log/dpkg.log", "var/log/bootstrap.log")
# The host's trust store and pip's setting for it go into the base, so a `pip install` inside a
# build reaches the package index exactly as the host does (its egress may use its own CA).
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
_COMPLETE = ".kubetrain-complete"
_PIP_CONF = "[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n"


# buildah creates these even with --root/--runroot (its CNI lock file and blob-info cache).
BUILDAH_HOST_PATHS = (Path("/etc/cni"), Path("/var/lib/containers"))


class ImageError(RuntimeError):
    pass


def images_dir() -> Path:
    return build.cache_root() / "images"


def archive_path(image: str) -> Path:
    """Where the docker-archive of ``image`` (``localhost/name:tag``) lives."""
    name, _, tag = image.rpartition("/")[2].partition(":")
    return images_dir() / f"{name}-{tag}.tar"


def key_path(archive: Path) -> Path:
    return archive.with_suffix(".key")


def read_key(archive: Path) -> str | None:
    try:
        return key_path(archive).read_text().strip() if archive.is_file() else None
    except OSError:
        return None


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _run(argv: list[str], *, timeout: float = 3600, **kwargs) -> subprocess.CompletedProcess:
    log.info("%s", " ".join(argv))
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, **kwargs)
    if proc.returncode != 0:
        raise ImageError(f"{' '.join(argv[:3])} ... failed ({proc.returncode}):\n{(proc.stdout + proc.stderr)[-4000:]}")
    return proc


# -- docker-archive -------------------------------------------------------------

def write_docker_archive(out: Path, image: str, layer_tar: Path, *, entrypoint: list[str] | None = None,
                         cmd: list[str] | None = None, env: list[str] | None = None, key: str) -> Path:
    """A one-layer docker-archive (what `docker save` writes) of ``layer_tar``, tagged ``image``."""
    diff_id = _sha256_file(layer_tar)
    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {"Env": env or ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
                   "Entrypoint": entrypoint, "Cmd": cmd},
        "rootfs": {"type": "layers", "diff_ids": [f"sha256:{diff_id}"]},
        "history": [{"created_by": "kubetrain_dev.devcluster.images"}],
    }
    config_bytes = json.dumps(config, sort_keys=True).encode()
    config_name = hashlib.sha256(config_bytes).hexdigest() + ".json"
    manifest = json.dumps([{"Config": config_name, "RepoTags": [image], "Layers": [f"{diff_id}/layer.tar"]}]).encode()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    with tarfile.open(tmp, "w") as archive:
        for name, data in ((config_name, config_bytes), ("manifest.json", manifest)):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
        archive.add(layer_tar, arcname=f"{diff_id}/layer.tar")
    tmp.replace(out)
    key_path(out).write_text(key + "\n")
    return out


def _tar_dir(src: Path, out: Path, exclude: tuple[str, ...] = ()) -> Path:
    # GNU tar keeps owners, modes and hard links; /dev, /proc and /sys are the runtime's; --sort: reproducible.
    excludes = [f"--exclude=./{p}" for p in ("dev/*", "proc/*", "sys/*", *exclude)]
    _run(["tar", "--numeric-owner", "--sort=name", *excludes, "-C", str(src), "-cf", str(out), "."])
    return out


def binary_image(image: str, binary: Path, *, args: list[str] | None = None) -> Path:
    """An image holding only ``binary`` as ``/<name>`` and running it: pause and CoreDNS."""
    out = archive_path(image)
    key = hashlib.sha256(f"{image}\n{args}\n{_sha256_file(binary)}".encode()).hexdigest()
    if read_key(out) == key:
        return out
    images_dir().mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=images_dir()) as tmp:
        root = Path(tmp) / "root"
        root.mkdir()
        shutil.copy2(binary, root / binary.name)
        write_docker_archive(out, image, _tar_dir(root, Path(tmp) / "layer.tar"),
                             entrypoint=[f"/{binary.name}"], cmd=args, key=key)
    log.info("%s: %s", image, out)
    return out


def node_images() -> list[Path]:
    """The archives every real node needs: its sandbox image and CoreDNS."""
    return [binary_image(PAUSE_IMAGE, build.binary("pause")), binary_image(COREDNS_IMAGE, build.binary("coredns"))]


# -- the base -------------------------------------------------------------------

def _base_key() -> str:
    return hashlib.sha256(f"{versions.DEBIAN_SUITE}\n{BASE_PACKAGES}\n{_TRIM}\n{_PIP_CONF}".encode()).hexdigest()


def base_rootfs() -> Path:
    """The debootstrapped root filesystem (built once per machine: ~2-7 min, mostly downloads)."""
    rootfs = images_dir() / f"rootfs-{versions.DEBIAN_SUITE}-{_base_key()[:12]}"
    if (rootfs / _COMPLETE).is_file():
        return rootfs
    if shutil.which("debootstrap") is None:
        raise ImageError("debootstrap is not installed (make tools installs it)")
    partial = rootfs.with_name(rootfs.name + ".partial")
    if partial.exists():
        shutil.rmtree(partial)
    started = time.monotonic()
    _run(["debootstrap", "--variant=minbase", f"--include={','.join(BASE_PACKAGES)}", versions.DEBIAN_SUITE,
          str(partial), DEBIAN_MIRROR], timeout=3600)
    finish_rootfs(partial)
    (partial / _COMPLETE).write_text(f"{time.monotonic() - started:.0f}s\n")
    partial.rename(rootfs)
    log.info("base rootfs built in %.0fs: %s", time.monotonic() - started, rootfs)
    return rootfs


def finish_rootfs(partial: Path) -> None:
    """Trim a fresh debootstrap and give it the host's trust store for pip."""
    for rel in _TRIM:
        path = partial / rel
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
    (partial / "var/lib/apt/lists/partial").mkdir(parents=True, exist_ok=True)
    (partial / "var/cache/apt/archives/partial").mkdir(parents=True, exist_ok=True)
    if HOST_CA_BUNDLE.is_file():
        shutil.copyfile(HOST_CA_BUNDLE, partial / "etc/ssl/certs/ca-certificates.crt")
    (partial / "etc/pip.conf").write_text(_PIP_CONF)


def base_image() -> Path:
    out = archive_path(BASE_IMAGE)
    key = _base_key()
    if read_key(out) == key:
        return out
    rootfs = base_rootfs()
    images_dir().mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=images_dir()) as tmp:
        # The completion marker is ours, not the image's.
        layer = _tar_dir(rootfs, Path(tmp) / "layer.tar", exclude=(_COMPLETE,))
        write_docker_archive(out, BASE_IMAGE, layer, cmd=["python3"], key=key)
    return out


# -- the repository's Dockerfiles, with buildah -------------------------------------

@dataclass(frozen=True)
class DockerfileImage:
    image: str
    dockerfile: str  # relative to the repository root, which is the build context
    base_arg: str  # the build ARG that names the Dockerfile's base image

    def inputs(self) -> list[Path]:
        """The Dockerfile, its ignore file and every COPY source (not COPY --from): what the image is built from."""
        dockerfile = REPO / self.dockerfile
        paths = [dockerfile, dockerfile.with_name(dockerfile.name + ".dockerignore")]
        text = dockerfile.read_text().replace("\\\n", " ")
        for line in text.splitlines():
            words = line.split()
            if words[:1] and words[0].upper() == "COPY" and not any(w.startswith("--from") for w in words):
                paths += [REPO / w for w in words[1:-1] if not w.startswith("--")]
        return paths


APP_IMAGES = {
    "trainer": DockerfileImage(TRAINER_IMAGE, "trainer-image/Dockerfile", "CUDA_IMAGE"),
    "operator": DockerfileImage(OPERATOR_IMAGE, "operator/Dockerfile", "PYTHON_IMAGE"),
}


def _tree_digest(paths: list[Path]) -> str:
    digest = hashlib.sha256()
    for top in paths:
        files = sorted(p for p in top.rglob("*") if p.is_file()) if top.is_dir() else [top]
        for path in files:
            if "__pycache__" in path.parts or not path.is_file():
                continue
            digest.update(f"{path.relative_to(REPO)}\n{_sha256_file(path)}\n".encode())
    return digest.hexdigest()


def buildah_root() -> Path:
    return images_dir() / "buildah"


def _buildah(*args: str, timeout: float = 3600) -> subprocess.CompletedProcess:
    root = buildah_root()
    before = [p for p in BUILDAH_HOST_PATHS if p.exists()]
    try:
        return _run(["buildah", "--root", str(root / "storage"), "--runroot", str(root / "run"), *args],
                    timeout=timeout)
    finally:
        for path in BUILDAH_HOST_PATHS:
            if path not in before:
                shutil.rmtree(path, ignore_errors=True)


def _base_in_buildah() -> None:
    """Load the base archive into buildah's storage (again only when the base changed)."""
    archive = base_image()
    stamp = buildah_root() / "base.key"
    if stamp.is_file() and stamp.read_text().strip() == read_key(archive):
        return
    _buildah("pull", f"docker-archive:{archive}")
    stamp.parent.mkdir(parents=True, exist_ok=True)
    stamp.write_text(read_key(archive) + "\n")


def app_image(name: str) -> Path:
    """Build one of APP_IMAGES with buildah over the base; skipped when none of its inputs changed."""
    spec = APP_IMAGES[name]
    out = archive_path(spec.image)
    key = hashlib.sha256(f"{_base_key()}\n{spec}\n{_tree_digest(spec.inputs())}".encode()).hexdigest()
    if read_key(out) == key:
        log.info("%s: unchanged (%s)", spec.image, out)
        return out
    if shutil.which("buildah") is None:
        raise ImageError("buildah is not installed (make tools installs it)")
    _base_in_buildah()
    previous = _image_id(spec.image)
    started = time.monotonic()
    # --isolation oci: chroot isolation refuses any network but the host's. --network host: the
    # Dockerfiles' apt-get and pip reach Debian and the package index as the host does (the only
    # outside hosts this machine reaches); the built images run with pod networking only.
    # --layers: a change to the sources reuses the cached dependency layers.
    _buildah("bud", "--isolation", "oci", "--network", "host", "--layers", "--pull-never",
             "--build-arg", f"{spec.base_arg}={BASE_IMAGE}",
             "--ignorefile", str(REPO / (spec.dockerfile + ".dockerignore")),
             "-f", str(REPO / spec.dockerfile), "-t", spec.image, str(REPO))
    built = time.monotonic()
    tmp = out.with_suffix(".tmp")
    tmp.unlink(missing_ok=True)
    _buildah("push", spec.image, f"docker-archive:{tmp}:{spec.image}")
    tmp.replace(out)
    key_path(out).write_text(key + "\n")
    _drop_previous(previous, spec.image)
    log.info("%s: built in %.0fs, exported in %.0fs (%.0f MB)", spec.image, built - started,
             time.monotonic() - built, out.stat().st_size / 1e6)
    return out


def _image_id(image: str) -> str | None:
    """The id of the image buildah's storage holds under this name, if any."""
    try:
        found = _buildah("images", "--noheading", "--no-trunc", "--format", "{{.ID}}", image)
    except ImageError:  # not there
        return None
    return found.stdout.split()[0] if found.stdout.strip() else None


def _drop_previous(previous: str | None, image: str) -> None:
    """Remove the build this one replaced: buildah keeps every generation (a trainer's is ~5 GB of
    layers), so storage grew by that much per change. Its layers shared with the new build, and the
    cached dependency layers the next build starts from, stay."""
    if previous and previous != _image_id(image):
        try:
            _buildah("rmi", previous)
            log.info("%s: removed the previous build %s from buildah's storage", image, previous[:12])
        except ImageError as exc:  # still a parent of another image: kept, and said
            log.warning("%s: kept the previous build %s: %s", image, previous[:12], exc)


def image_of(archive: Path) -> str:
    """The image an archive of ours holds."""
    known = [BASE_IMAGE, PAUSE_IMAGE, COREDNS_IMAGE, *(spec.image for spec in APP_IMAGES.values())]
    return {archive_path(image).name: image for image in known}[archive.name]


def built_app_images() -> list[Path]:
    """The Dockerfile images built so far (a node imports them at start)."""
    return [p for p in (archive_path(s.image) for s in APP_IMAGES.values()) if read_key(p)]


def _repo_tag(image: str) -> tuple[str, str]:
    repository, _, tag = image.rpartition(":")
    return repository, tag


def helm_install_argv(release: str, namespace: str, extra_values: list[str] = ()) -> list[str]:
    """``helm upgrade --install`` of the chart with the locally built operator and trainer images.

    pullPolicy Never: the images exist only in the node's containerd, and a pull would go to a
    registry called "localhost". The trainer's tag is not ``latest``, so its pods use IfNotPresent.
    """
    operator_repo, operator_tag = _repo_tag(OPERATOR_IMAGE)
    trainer_repo, trainer_tag = _repo_tag(TRAINER_IMAGE)
    values = [f"image.repository={operator_repo}", f"image.tag={operator_tag}", "image.pullPolicy=Never",
              f"trainerImage.repository={trainer_repo}", f"trainerImage.tag={trainer_tag}", *extra_values]
    return [str(build.binary("helm")), "upgrade", "--install", release, str(REPO / "charts" / "kubetrain"),
            "--namespace", namespace, "--create-namespace", "--wait", "--timeout", "5m",
            *[arg for value in values for arg in ("--set", value)]]
