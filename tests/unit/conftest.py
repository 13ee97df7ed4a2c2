"""The unit suite stays fast: pure tests, no torch (seconds to import), no tool builds (those are in tests/chart)."""

from __future__ import annotations

import sys

import pytest


@pytest.fixture(autouse=True)
def _never_imports_torch(request):
    before = "torch" in sys.modules  # a trainer test run in the same session may have imported it
    yield
    # A unit test that needs torch belongs in tests/trainer; one that needs helm or kubeconform in tests/chart.
    assert before or "torch" not in sys.modules, f"{request.node.nodeid} imported torch: move it to tests/trainer"
