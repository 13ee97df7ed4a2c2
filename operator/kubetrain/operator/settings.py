"""Operator-wide configuration, read once from the environment (the Helm chart sets it)."""

from __future__ import annotations

import os
import random
from dataclasses import dataclass, field

from kubetrain.operator.builders import BuildConfig


# The timer is the level-triggered safety net: the job's own events, its pods' and its nodes' drive status.
# At 5 s it reconciled every job six times as often, for as long as a burst of submissions lasted.
RECONCILE_INTERVAL_DEFAULT = 30.0
# A sweep has no event that wakes it when a trial ends or reports (its timer is all it has): it ticks
# more often than a job, and there are few sweeps.
SWEEP_INTERVAL_DEFAULT = 5.0


def reconcile_interval_from_env(env: dict[str, str] | None = None) -> float:
    """Seconds between a job's timer reconciles (KUBETRAIN_RECONCILE_INTERVAL, default 30)."""
    return float((os.environ if env is None else env).get("KUBETRAIN_RECONCILE_INTERVAL", RECONCILE_INTERVAL_DEFAULT))


def sweep_interval_from_env(env: dict[str, str] | None = None) -> float:
    """Seconds between a sweep's rounds (KUBETRAIN_SWEEP_INTERVAL; default 5, or the job timer's if shorter)."""
    env = os.environ if env is None else env
    if env.get("KUBETRAIN_SWEEP_INTERVAL"):
        return float(env["KUBETRAIN_SWEEP_INTERVAL"])
    return min(SWEEP_INTERVAL_DEFAULT, reconcile_interval_from_env(env))


def kueue_from_env(env: dict[str, str] | None = None) -> bool:
    """Whether a Kueue runs in the cluster (KUBETRAIN_KUEUE, the chart's kueue.enabled; default false)."""
    return (os.environ if env is None else env).get("KUBETRAIN_KUEUE", "false").lower() == "true"


def _namespaces(value: str) -> list[str]:
    return [n.strip() for n in value.split(",") if n.strip()]


@dataclass(frozen=True)
class OperatorConfig:
    build: BuildConfig = field(default_factory=BuildConfig)
    # Empty: every namespace (cluster mode). Otherwise only these.
    namespaces: list[str] = field(default_factory=list)
    reconcile_interval_seconds: float = RECONCILE_INTERVAL_DEFAULT
    # A pod whose node has been NotReady this long counts as lost and is replaced (operator/nodes.py).
    node_lost_grace_seconds: float = 10.0
    gpu_resource: str = "nvidia.com/gpu"
    # Kopf peering: with several replicas, only the one with the highest priority acts.
    peering_name: str = "kubetrain"
    standalone: bool = False
    # The operator's own /metrics (0 disables it).
    metrics_port: int = 8000
    # Where job throughput comes from: this Prometheus if set, else the pods' endpoints.
    prometheus_url: str = ""
    throughput_interval_seconds: float = 15.0
    # Peers of equal priority all pause (Kopf's rule), so each pod draws its own.
    peering_priority: int = 0
    # Goodput-aware scheduling (docs/scheduling.md): whether a job that leaves spec.scheduling.goodput.enabled
    # unset is managed, the seconds between allocator rounds, the dwell and the restart cost it charges.
    goodput_default: bool = False
    goodput_interval_seconds: float = 60.0
    goodput_min_dwell_seconds: float = 180.0
    goodput_restart_seconds: float = 25.0
    # The minimum gain (scheduling/allocator.py, pays_back): a grow must repay its restart within
    # max(payback seconds, payback restarts x the restart cost); None = one interval, 0 = no threshold.
    goodput_payback_seconds: float | None = None
    goodput_payback_restarts: float = 2.0
    # A Kueue runs in the cluster (Helm value kueue.enabled): a queued job gets a Workload and runs
    # only while Kueue admits it (docs/kueue.md). Off: it waits suspended until spec.suspend turns false.
    kueue: bool = False
    # Seconds between returns of the C heap's free pages to the system (operator/heap.py); 0 never.
    heap_trim_interval_seconds: float = 10.0

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> "OperatorConfig":
        env = dict(os.environ) if env is None else env
        build = BuildConfig(trainer_image=env.get("KUBETRAIN_TRAINER_IMAGE", BuildConfig.trainer_image))
        return cls(
            build=build,
            namespaces=_namespaces(env.get("KUBETRAIN_WATCH_NAMESPACES", "")),
            reconcile_interval_seconds=reconcile_interval_from_env(env),
            node_lost_grace_seconds=float(env.get("KUBETRAIN_NODE_LOST_GRACE", "10")),
            standalone=env.get("KUBETRAIN_STANDALONE", "false").lower() == "true",
            metrics_port=int(env.get("KUBETRAIN_METRICS_PORT", "8000")),
            prometheus_url=env.get("KUBETRAIN_PROMETHEUS_URL", ""),
            throughput_interval_seconds=float(env.get("KUBETRAIN_THROUGHPUT_INTERVAL", "15")),
            peering_priority=int(env.get("KUBETRAIN_PEERING_PRIORITY") or random.randint(1, 2**31 - 1)),
            goodput_default=env.get("KUBETRAIN_GOODPUT_DEFAULT", "false").lower() == "true",
            goodput_interval_seconds=float(env.get("KUBETRAIN_GOODPUT_INTERVAL", "60")),
            goodput_min_dwell_seconds=float(env.get("KUBETRAIN_GOODPUT_MIN_DWELL", "180")),
            goodput_restart_seconds=float(env.get("KUBETRAIN_GOODPUT_RESTART_SECONDS", "25")),
            goodput_payback_seconds=float(env["KUBETRAIN_GOODPUT_PAYBACK_SECONDS"]) if env.get("KUBETRAIN_GOODPUT_PAYBACK_SECONDS") else None,
            goodput_payback_restarts=float(env.get("KUBETRAIN_GOODPUT_PAYBACK_RESTARTS") or 2),
            kueue=kueue_from_env(env),
            heap_trim_interval_seconds=float(env.get("KUBETRAIN_HEAP_TRIM_INTERVAL") or 10),
        )
