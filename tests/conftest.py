"""Suite-wide reporting: whether the real-node tests run, in pytest's header and, when skipped, in its summary."""

from __future__ import annotations

import pytest

from support.real_node_setting import real_node_setting


def pytest_report_header(config: pytest.Config) -> str:
    on, why = real_node_setting()
    return f"real node: {'ON' if on else 'OFF, its tests are SKIPPED'} ({why})"


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    on, why = real_node_setting()
    skipped = [r for r in terminalreporter.stats.get("skipped", []) if "real-node tests not run" in str(r.longrepr)]
    if skipped and not on:
        terminalreporter.write_sep("!", f"{len(skipped)} REAL-NODE TESTS SKIPPED: {why}", red=True, bold=True)
