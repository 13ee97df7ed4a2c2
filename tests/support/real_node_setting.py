"""Whether a test session starts the real node, and why: read by tests/conftest.py (pytest's header and
summary) and tests/integration/conftest.py (the ``node`` fixture)."""

from __future__ import annotations

import os

from kubetrain_dev.devcluster import real_node


def real_node_setting(setting: str | None = None) -> tuple[bool, str]:
    """KUBETRAIN_REAL_NODE=1: always (a missing prerequisite fails the tests); 0 or unset: never (a plain
    ``pytest`` on a shared machine changes no host network); ``auto`` (what ``make test`` and CI set):
    wherever the machine can, i.e. as root with the real node's tools. The node needs root, Debian's
    containerd/runc/buildah and changes the host's network (restored at the end of the session).
    """
    setting = os.environ.get("KUBETRAIN_REAL_NODE", "") if setting is None else setting
    if setting == "1":
        return True, "KUBETRAIN_REAL_NODE=1"
    if setting != "auto":
        said = f"KUBETRAIN_REAL_NODE={setting}" if setting else "KUBETRAIN_REAL_NODE is not set"
        return False, f"{said}: off (make test sets auto, 1 forces it on, 0 turns it off)"
    if os.geteuid() != 0:
        return False, "KUBETRAIN_REAL_NODE=auto, but not root: the real node needs root"
    missing = real_node.missing_prerequisites()
    if missing:
        return False, f"KUBETRAIN_REAL_NODE=auto, but missing {', '.join(missing)} (`make tools` installs them)"
    return True, "KUBETRAIN_REAL_NODE=auto: root and every prerequisite present"
