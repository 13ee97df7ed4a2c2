"""Host networking of the real node: the pod bridge, sysctls, and the guard chains that keep
the cluster's traffic on this machine.

Every change here is made so it can be undone exactly: sysctls are read before they are
written (the caller keeps the old values), iptables rules live in our own chains
(``KUBETRAIN-GUARD-*``) so removing the chains and their jumps removes everything we added,
and the KUBE-* chains the kubelet and kube-proxy create are found by name on teardown.
"""

from __future__ import annotations

import logging
import shlex
import shutil
import subprocess
from pathlib import Path

log = logging.getLogger("kubetrain_dev.devcluster.hostnet")

GUARD_IN = "KUBETRAIN-GUARD-IN"
GUARD_FWD = "KUBETRAIN-GUARD-FWD"
# The kubelet creates KUBE-FIREWALL and KUBE-KUBELET-CANARY (also in ip6tables); kube-proxy the rest.
KUBE_CHAIN_PREFIX = "KUBE-"
IPTABLES_TABLES = ("filter", "nat", "mangle")


class HostNetError(RuntimeError):
    pass


def run(argv: list[str], *, check: bool = True, timeout: float = 60.0) -> subprocess.CompletedProcess:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise HostNetError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


# -- sysctls ------------------------------------------------------------------

def _sysctl_path(name: str) -> Path:
    return Path("/proc/sys") / name.replace(".", "/")


def read_sysctls(names: tuple[str, ...]) -> dict[str, str]:
    """Current values of the ``names`` that exist on this kernel (a missing one is left out)."""
    values = {}
    for name in names:
        try:
            values[name] = _sysctl_path(name).read_text().strip()
        except OSError:
            pass
    return values


def write_sysctls(values: dict[str, str]) -> None:
    for name, value in values.items():
        try:
            _sysctl_path(name).write_text(value)
        except OSError as exc:
            log.warning("could not set %s=%s: %s", name, value, exc)


# -- bridge -------------------------------------------------------------------

def link_exists(name: str) -> bool:
    return run(["ip", "link", "show", "dev", name], check=False).returncode == 0


def add_bridge(name: str, address_cidr: str) -> None:
    """Create bridge ``name`` with ``address_cidr`` (e.g. 10.244.0.1/24) and bring it up."""
    if not link_exists(name):
        run(["ip", "link", "add", name, "type", "bridge"])
    if address_cidr.split("/")[0] not in run(["ip", "-4", "-o", "addr", "show", "dev", name]).stdout:
        run(["ip", "addr", "add", address_cidr, "dev", name])
    run(["ip", "link", "set", name, "up"])


def delete_link(name: str) -> None:
    if link_exists(name):
        run(["ip", "link", "delete", name])


# -- iptables -----------------------------------------------------------------

def _iptables_commands() -> list[str]:
    """The iptables front ends whose tables the node may have touched (kube-proxy probes legacy too)."""
    return [c for c in ("iptables", "ip6tables", "iptables-legacy", "ip6tables-legacy") if shutil.which(c)]


def _ipt(args: list[str], *, cmd: str = "iptables", check: bool = True) -> subprocess.CompletedProcess:
    return run([cmd, "-w", "5", *args], check=check)


def _chain_exists(chain: str, table: str = "filter", cmd: str = "iptables") -> bool:
    return _ipt(["-t", table, "-S", chain], cmd=cmd, check=False).returncode == 0


def _ensure_rule(chain: str, rule: list[str], *, table: str = "filter", insert: bool = False) -> None:
    if _ipt(["-t", table, "-C", chain, *rule], check=False).returncode != 0:
        _ipt(["-t", table, "-I" if insert else "-A", chain, *rule])


def _ensure_chain(chain: str, parent: str, exempt_interfaces: tuple[str, ...], exempt_flag: str) -> None:
    """Chain ``chain`` jumped to first from ``parent``; traffic through ``exempt_interfaces`` returns at once."""
    if not _chain_exists(chain):
        _ipt(["-N", chain])
        for iface in exempt_interfaces:
            _ipt(["-A", chain, exempt_flag, iface, "-j", "RETURN"])
    _ensure_rule(parent, ["-j", chain], insert=True)


def guard_ports(ports: list[int], bridge: str) -> None:
    """Drop TCP to ``ports`` arriving on any interface but loopback and the pod bridge."""
    _ensure_chain(GUARD_IN, "INPUT", ("lo", bridge), "-i")
    for port in ports:
        _ensure_rule(GUARD_IN, ["-p", "tcp", "--dport", str(port), "-j", "DROP"])


def unguard_ports(ports: list[int]) -> None:
    if not _chain_exists(GUARD_IN):
        return
    for port in ports:
        while _ipt(["-D", GUARD_IN, "-p", "tcp", "--dport", str(port), "-j", "DROP"], check=False).returncode == 0:
            pass
    # Only the RETURN rules left: nobody guards anything, the chain goes.
    if all("-j RETURN" in r for r in _ipt(["-S", GUARD_IN]).stdout.splitlines()[1:]):
        remove_chain(GUARD_IN)


def guard_pod_egress(pod_cidr: str, bridge: str) -> None:
    """Drop traffic from ``pod_cidr`` that would leave through anything but the pod bridge."""
    _ensure_chain(GUARD_FWD, "FORWARD", (), "-o")
    _ensure_rule(GUARD_FWD, ["-s", pod_cidr, "-o", bridge, "-j", "RETURN"])
    _ensure_rule(GUARD_FWD, ["-s", pod_cidr, "-j", "DROP"])


def _jump_target(words: list[str]) -> str | None:
    for flag in ("-j", "-g"):
        if flag in words[:-1]:
            return words[words.index(flag) + 1]
    return None


def remove_chain(chain: str, table: str = "filter", cmd: str = "iptables") -> None:
    """Delete every rule that jumps to ``chain``, then the chain. Absent is fine."""
    if not _chain_exists(chain, table, cmd):
        return
    for line in _ipt(["-t", table, "-S"], cmd=cmd).stdout.splitlines():
        words = shlex.split(line)
        if words[:1] == ["-A"] and words[1] != chain and _jump_target(words) == chain:
            _ipt(["-t", table, "-D", *words[1:]], cmd=cmd, check=False)
    _ipt(["-t", table, "-F", chain], cmd=cmd, check=False)
    _ipt(["-t", table, "-X", chain], cmd=cmd, check=False)


def remove_kube_chains() -> list[str]:
    """Remove every KUBE-* chain (kube-proxy's and the kubelet's) from every table and front end.

    Rules of KUBE-* chains jump to each other, so all of them are flushed before any is deleted.
    Returns what was removed, as ``cmd/table/chain``.
    """
    removed = []
    for cmd in _iptables_commands():
        for table in IPTABLES_TABLES:
            listing = _ipt(["-t", table, "-S"], cmd=cmd, check=False)
            if listing.returncode != 0:
                continue
            chains = [l.split()[1] for l in listing.stdout.splitlines()
                      if l.startswith("-N " + KUBE_CHAIN_PREFIX)]
            if not chains:
                continue
            # Jumps into KUBE-* from the built-in chains first, then the chains themselves.
            for line in listing.stdout.splitlines():
                words = shlex.split(line)
                if words[:1] == ["-A"] and not words[1].startswith(KUBE_CHAIN_PREFIX) and any(
                        w.startswith(KUBE_CHAIN_PREFIX) for w in words[2:]):
                    _ipt(["-t", table, "-D", *words[1:]], cmd=cmd, check=False)
            for chain in chains:
                _ipt(["-t", table, "-F", chain], cmd=cmd, check=False)
            for chain in chains:
                _ipt(["-t", table, "-X", chain], cmd=cmd, check=False)
                removed.append(f"{cmd}/{table}/{chain}")
    return removed


def leftover_chains() -> list[str]:
    """Our guard chains and KUBE-* chains still present anywhere (empty after a clean teardown)."""
    found = []
    for cmd in _iptables_commands():
        for table in IPTABLES_TABLES:
            listing = _ipt(["-t", table, "-S"], cmd=cmd, check=False)
            for line in listing.stdout.splitlines() if listing.returncode == 0 else []:
                if line.startswith(("-N " + KUBE_CHAIN_PREFIX, "-N KUBETRAIN-")):
                    found.append(f"{cmd}/{table}/{line.split()[1]}")
    return found
