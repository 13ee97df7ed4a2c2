"""KWOK stage files (package data) that drive the simulated nodes and pods.

node-*.yaml and pod-ready/pod-delete copy the semantics of KWOK v0.8.0's
``kustomize/stage/node/fast``, ``node/heartbeat-with-lease`` and ``pod/fast``
stages; node-not-ready and pod-exit are ours (see docs/control-plane.md).
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path


def stage_texts() -> dict[str, str]:
    """{file name: YAML} of every stage, in a stable order."""
    root = resources.files(__name__)
    return {
        entry.name: entry.read_text()
        for entry in sorted(root.iterdir(), key=lambda e: e.name)
        if entry.name.endswith(".yaml")
    }


def write_stages(directory: Path) -> list[Path]:
    """Copy the stages to real files (``kwok -c`` wants paths); return them."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, text in stage_texts().items():
        path = directory / name
        path.write_text(text)
        paths.append(path)
    return paths
