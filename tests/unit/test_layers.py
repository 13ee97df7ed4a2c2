"""The layers the tree promises, checked on every import statement in the source.

contract (stdlib only) <- operator and trainer (never each other) <- local launcher;
the dev tools (kubetrain_dev) sit outside everything that ships.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
KUBETRAIN = REPO / "operator" / "kubetrain"
TRAINER = REPO / "trainer-image" / "kubetrain_trainer"
CONTRACT = KUBETRAIN / "contract"
# The local launcher: the only kubetrain modules that run the trainer (as a library, on this machine).
LAUNCHER = {KUBETRAIN / "local_run.py", KUBETRAIN / "local_sweep.py"}
# The store program runs in the store pod, whose image has torch (docs/operator.md).
CONTRACT_THIRD_PARTY = {CONTRACT / "store.py": {"torch"}}


def imported_modules(path: Path) -> set[str]:
    """Every module ``path`` imports, at any depth of the file (function-level imports count too)."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.add(node.module)
    return out


def top(module: str) -> str:
    return module.partition(".")[0]


def sources(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*.py") if "__pycache__" not in p.parts)


def test_the_tree_has_the_layers():
    assert CONTRACT.is_dir() and (REPO / "devtools" / "kubetrain_dev").is_dir()
    assert sources(CONTRACT) and sources(TRAINER)


@pytest.mark.parametrize("path", sources(CONTRACT), ids=lambda p: p.name)
def test_the_contract_imports_only_the_standard_library(path):
    allowed = set(sys.stdlib_module_names) | {"__future__"} | CONTRACT_THIRD_PARTY.get(path, set())
    outside = {m for m in imported_modules(path) if top(m) not in allowed and not m.startswith("kubetrain.contract")}
    assert not outside, f"{path.relative_to(REPO)} imports {sorted(outside)} (the contract is stdlib only)"


@pytest.mark.parametrize("path", sources(TRAINER), ids=lambda p: p.name)
def test_the_trainer_uses_only_the_contract_of_kubetrain(path):
    bad = {m for m in imported_modules(path) if top(m) in ("kubetrain", "kubetrain_dev") and not m.startswith("kubetrain.contract")}
    assert not bad, f"{path.relative_to(REPO)} imports {sorted(bad)}: the trainer depends on the contract only"


@pytest.mark.parametrize("path", sources(KUBETRAIN), ids=lambda p: str(p.relative_to(KUBETRAIN)))
def test_kubetrain_never_imports_the_dev_tools_and_only_the_launcher_runs_the_trainer(path):
    mods = {top(m) for m in imported_modules(path)}
    assert "kubetrain_dev" not in mods, f"{path.relative_to(REPO)} imports the dev tools, which ship in no image"
    if path not in LAUNCHER:
        assert "kubetrain_trainer" not in mods, f"{path.relative_to(REPO)} imports the trainer; only the launcher may"


def test_the_checker_sees_imports_inside_functions(tmp_path):
    # The launcher imports the trainer inside functions: a checker blind to those would pass anything.
    src = tmp_path / "m.py"
    src.write_text("def f():\n    from kubetrain_trainer.local import run_local\n    import os.path\n")
    assert imported_modules(src) == {"kubetrain_trainer.local", "os.path"}


def test_the_operator_loads_optuna_only_with_its_first_sweep():
    """Optuna brings numpy, OpenBLAS and SQLAlchemy (~14 MiB resident at import): an operator that runs no sweep never loads them."""
    import subprocess

    code = ("import sys; from kubetrain.operator import handlers, sweeps; "
            "print(sorted({m.partition('.')[0] for m in sys.modules} & {'optuna', 'numpy', 'sqlalchemy'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", out
    # ...and the first sweep round does load it (the study is built lazily, not skipped).
    code = ("import sys, kubetrain.tuning.plan as p, kubetrain.tuning.space as s; "
            "s.distribution(__import__('kubetrain.api.sweep', fromlist=['x']).SearchParameter(name='lr', "
            "target='trainer.learningRate', type='float', min=1e-4, max=1e-2)); print('optuna' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip() == "True", out.stderr[-2000:]
