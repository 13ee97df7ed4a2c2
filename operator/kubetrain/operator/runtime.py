"""The operator's state: one runtime per process, one memo per job. No module globals.

``OperatorRuntime`` is built by the startup handler and put in Kopf's operator memo.
Kopf copies that memo into every object's memo, so each handler reaches it as
``OperatorRuntime.of(memo)``; the cleanup handler stops what ``start`` started.
A test builds its own runtime (with a fake Kube) and a memo that holds it.

``JobMemo`` is what the operator remembers about one job between reconciles. It
lives in the job's own Kopf memo, which Kopf drops when the job is gone.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import kopf
from prometheus_client import CollectorRegistry, start_http_server

from kubetrain.operator import capacity
from kubetrain.operator.allocation import GoodputAllocator
from kubetrain.operator.heap import HeapTrimmer
from kubetrain.operator.metrics import OperatorMetrics
from kubetrain.operator.sweep_metrics import SweepMetrics
from kubetrain.operator.nodes import DeletedNodes
from kubetrain.operator.settings import OperatorConfig
from kubetrain.operator.throughput import PodScrapeSource, PrometheusSource, ThroughputReader
from kubetrain.operator.wakes import Wakes
from kubetrain.scheduling.allocator import AllocatorConfig

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from kubetrain.operator.kube import Kube

RUNTIME_KEY = "runtime"
JOB_KEY = "job"


class OperatorRuntime:
    """Config, API client, metrics, the reservation ledger, the throughput reader, the wakes, the deleted nodes
    and the goodput allocator of one operator."""

    def __init__(self, config: OperatorConfig, kube: Kube, throughput: ThroughputReader | None = None):
        self.config = config
        self.kube = kube
        # Our own registry, not prometheus_client's global one: two runtimes (tests) never share series.
        self.registry = CollectorRegistry()
        self.metrics = OperatorMetrics(self.registry)
        self.sweep_metrics = SweepMetrics(self.registry)
        self.reservations = capacity.Reservations()
        if throughput is None:
            source = PrometheusSource(config.prometheus_url) if config.prometheus_url else PodScrapeSource()
            throughput = ThroughputReader(source, config.throughput_interval_seconds)
        self.throughput = throughput
        self.wakes = Wakes()
        self.throughput.on_change = self.wakes.wake_from_thread  # new figures reach the status without waiting for the timer
        self.deleted_nodes = DeletedNodes()
        # Goodput-aware scheduling across jobs: fed by every reconcile, rounds in its own thread.
        self.allocator = GoodputAllocator(
            AllocatorConfig(interval_seconds=config.goodput_interval_seconds, min_dwell_seconds=config.goodput_min_dwell_seconds,
                            payback_seconds=config.goodput_payback_seconds, payback_restarts=config.goodput_payback_restarts),
            self.metrics, default=config.goodput_default, restart_seconds=config.goodput_restart_seconds)
        self.heap = HeapTrimmer(config.heap_trim_interval_seconds)
        self._metrics_server: WSGIServer | None = None

    @classmethod
    def of(cls, memo: kopf.Memo) -> OperatorRuntime:
        runtime: OperatorRuntime = memo[RUNTIME_KEY]
        return runtime

    def start(self) -> None:
        """Serve /metrics (unless the port is 0), start reading throughput, the allocator's rounds and the heap trims."""
        if self.config.metrics_port:
            self._metrics_server, _ = start_http_server(self.config.metrics_port, registry=self.registry)
        self.throughput.start()
        self.allocator.start()
        self.heap.start()

    def stop(self) -> None:
        """Undo ``start`` and close the API client; safe to call more than once, or without ``start``."""
        self.throughput.stop()
        self.allocator.stop()
        self.heap.stop()
        if self._metrics_server is not None:
            self._metrics_server.shutdown()
            self._metrics_server.server_close()
            self._metrics_server = None
        self.kube.close()

    def forget(self, namespace: str, job: str) -> None:
        """Drop what the runtime keeps for a deleted job: its metric series, throughput targets, wake and allocation."""
        self.allocator.forget((namespace, job))
        self.metrics.forget(namespace, job)
        self.throughput.register_pods((namespace, job), [])
        self.wakes.forget((namespace, job))


@dataclass
class JobMemo:
    """One job's state between reconciles."""

    # Our last status write: the next body may not show it yet, and status never steps backwards.
    status: dict[str, Any] = field(default_factory=dict)
    # Pods we released whose release the pod index does not show yet: not counted twice.
    released: set[str] = field(default_factory=set)
    # Objects the pods need, seen to exist ("service", "Kind/name") -> time.monotonic() of the look.
    exists: dict[str, float] = field(default_factory=dict)
    # time.monotonic() of the previous reconcile: the GPU-seconds since then.
    last_reconcile: float | None = None
    # The job's first Running is recorded (the time-to-Running histogram observes it once).
    ran: bool = False
    # Kueue (workloads.py): the Workload this round read, the admitted flavors' placement per role
    # (read once per admission: placement_key is that admission's flavors), whether the last round saw it admitted.
    workload: dict[str, Any] | None = None
    placement: dict[str, Any] = field(default_factory=dict)
    placement_key: str | None = None
    admission_seen: bool = False
    # The job's spec as models, and the generation it was parsed at (reconcile.parse).
    parsed: tuple[int, Any] | None = None
    # The job's generation, labels and annotations its event handler last reconciled (None: not yet).
    seen: tuple[Any, ...] | None = None
    # The job's events, its timer and its wakes run in threads: one reconcile of a job at a time.
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    @staticmethod
    def _seen(body: Any) -> tuple[Any, ...]:
        meta = body["metadata"]
        return (meta.get("generation"), dict(meta.get("labels") or {}), dict(meta.get("annotations") or {}),
                bool(meta.get("deletionTimestamp")))

    def differs(self, body: Any) -> bool:
        """Whether the job's spec, labels or annotations changed since the event handler last saw them (noting nothing)."""
        return self._seen(body) != self.seen

    def changed(self, body: Any) -> bool:
        """Whether the job's spec, labels or annotations changed since the event handler last saw them (and note them)."""
        seen = self._seen(body)
        if seen == self.seen:
            return False
        self.seen = seen
        return True

    @classmethod
    def of(cls, memo: kopf.Memo) -> JobMemo:
        state: JobMemo | None = memo.get(JOB_KEY)
        if state is None:
            # setdefault is one atomic dict operation: two first reconciles racing get one memo, one lock.
            state = memo.setdefault(JOB_KEY, cls())
        return state
