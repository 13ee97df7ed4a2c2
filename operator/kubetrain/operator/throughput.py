"""Each job's live throughput, read from the trainer's metrics for the job's status.

Two sources, one aggregation (``promql``'s: tokens/s and samples/s summed over
the job's pods, the step as their maximum):

- ``PrometheusSource``: when the operator knows a Prometheus (``KUBETRAIN_PROMETHEUS_URL``),
  one query per figure covers every job at once; the pods are never touched.
- ``PodScrapeSource``: otherwise the operator reads each running job's worker
  endpoints itself, at the reader's interval (default 30 s): one small GET per
  pod, far below what Prometheus would do.

A background thread refreshes a snapshot; reconciles only read it.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import urllib.parse
import urllib.request
from collections.abc import Callable
import dataclasses
from dataclasses import dataclass
from datetime import datetime, timezone

from prometheus_client.parser import text_string_to_metric_families

from kubetrain.contract.metric_names import NAMESPACE, TRAININGJOB, TrainerMetric as M
from kubetrain.contract.result import parse_result
from kubetrain.observability import promql

log = logging.getLogger("kubetrain.operator.throughput")
JobKey = tuple[str, str]  # (namespace, job)


@dataclass(frozen=True)
class Throughput:
    tokens_per_second: float | None = None
    samples_per_second: float | None = None
    step: int | None = None
    observed: datetime | None = None
    # The training loss at ``step`` (the trainer's all-rank mean): a sweep's objective, read by step.
    loss: float | None = None
    # B_noise in samples (the same on every pod of a job; unknown at world size 1): the goodput allocator's efficiency input.
    gradient_noise_scale: float | None = None

    def status(self) -> dict:
        out = {"observedTime": (self.observed or datetime.now(timezone.utc)).strftime("%Y-%m-%dT%H:%M:%SZ")}
        if self.tokens_per_second is not None:
            out["tokensPerSecond"] = round(self.tokens_per_second, 1)
        if self.samples_per_second is not None:
            out["samplesPerSecond"] = round(self.samples_per_second, 2)
        if self.step is not None:
            out["step"] = int(self.step)
        if self.loss is not None and math.isfinite(self.loss):
            out["loss"] = round(self.loss, 5)
        if self.gradient_noise_scale is not None and math.isfinite(self.gradient_noise_scale):
            out["gradientNoiseScale"] = round(max(self.gradient_noise_scale, 0.0), 3)
        return out


def final_figures(statuses: list[dict]) -> Throughput | None:
    """The figures completed workers left in their termination messages (``kubetrain.contract.result``):
    ``statuses`` are pods' ``status`` objects. The latest step wins; None when no pod has any."""
    best = None
    for status in statuses:
        for container in status.get("containerStatuses") or []:
            done = (container.get("state") or {}).get("terminated") or {}
            figures = parse_result(done.get("message")) if done.get("exitCode") == 0 else None
            if figures is not None and (best is None or figures.step > best[0].step):
                best = (figures, done.get("finishedAt"))
    if best is None:
        return None
    figures, finished = best
    observed = _parse_time(finished) or datetime.now(timezone.utc)
    return Throughput(tokens_per_second=figures.tokens_per_second, step=figures.step, observed=observed, loss=figures.loss)


def _parse_time(value: object) -> datetime | None:
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00")) if value else None
    except ValueError:
        return None


class PrometheusSource:
    def __init__(self, url: str, timeout: float = 5.0):
        self.url = url.rstrip("/")
        self.timeout = timeout

    def _query(self, expr: str) -> dict[JobKey, float]:
        qs = urllib.parse.urlencode({"query": expr})
        with urllib.request.urlopen(f"{self.url}/api/v1/query?{qs}", timeout=self.timeout) as resp:
            body = json.load(resp)
        out = {}
        for sample in body.get("data", {}).get("result", []):
            labels = sample["metric"]
            if NAMESPACE in labels and TRAININGJOB in labels:
                out[(labels[NAMESPACE], labels[TRAININGJOB])] = float(sample["value"][1])
        return out

    def read(self) -> dict[JobKey, Throughput]:
        tokens = self._query(promql.tokens_per_second())
        samples = self._query(promql.samples_per_second())
        steps = self._query(promql.step())
        losses = self._query(promql.loss())
        noise = self._query(promql.gradient_noise_scale())
        now = datetime.now(timezone.utc)
        return {
            key: Throughput(tokens.get(key), samples.get(key), int(steps[key]) if key in steps else None, now, losses.get(key),
                            noise.get(key))
            for key in set(tokens) | set(samples) | set(steps)
        }


def aggregate_expositions(texts: list[str]) -> Throughput:
    """The job's figures from its pods' /metrics texts (the same aggregation as ``promql``)."""
    tokens = samples = 0.0
    step: float | None = None
    losses: list[float] = []
    noise: float | None = None
    seen = False
    for text in texts:
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                if s.name == M.TOKENS_PER_SECOND:
                    tokens += s.value
                    seen = True
                elif s.name == M.SAMPLES_PER_SECOND:
                    samples += s.value
                elif s.name == M.STEP:
                    step = s.value if step is None else max(step, s.value)
                elif s.name == M.LOSS:
                    losses.append(s.value)
                elif s.name == M.GRADIENT_NOISE_SCALE:
                    # Every pod exports the job's one estimate: the maximum is promql.gradient_noise_scale()'s aggregation.
                    noise = s.value if noise is None else max(noise, s.value)
    if not seen and step is None:
        return Throughput()
    # Every pod exports the same all-rank loss; the mean is promql.loss()'s aggregation.
    loss = sum(losses) / len(losses) if losses else None
    return Throughput(tokens, samples, int(step) if step is not None else None, datetime.now(timezone.utc), loss, noise)


class PodScrapeSource:
    def __init__(self, timeout: float = 3.0):
        self.timeout = timeout
        self._targets: dict[JobKey, list[str]] = {}
        self._lock = threading.Lock()

    def register(self, key: JobKey, urls: list[str]) -> None:
        with self._lock:
            if urls:
                self._targets[key] = urls
            else:
                self._targets.pop(key, None)

    def _get(self, url: str) -> str | None:
        try:
            with urllib.request.urlopen(url, timeout=self.timeout) as resp:
                return resp.read().decode()
        except OSError:
            return None  # a pod between restarts: try again next round

    def read(self) -> dict[JobKey, Throughput]:
        with self._lock:
            targets = dict(self._targets)
        out = {}
        for key, urls in targets.items():
            texts = [t for t in (self._get(u) for u in urls) if t]
            if texts and (tp := aggregate_expositions(texts)).observed is not None:
                out[key] = tp
        return out


class ThroughputReader:
    """Refreshes a snapshot of every job's throughput in a background thread."""

    def __init__(self, source: PrometheusSource | PodScrapeSource, interval: float,
                 on_change: Callable[[set[JobKey]], None] | None = None):
        self.source = source
        self.interval = interval
        # Called from the reader's thread with the jobs whose figures changed: their status should show them
        # now, not at the job's next timer round (runtime.py wakes them).
        self.on_change = on_change
        self._snapshot: dict[JobKey, Throughput] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="kubetrain-throughput", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """End the thread: at once when it waits, after the read in flight otherwise (at most ``timeout``)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def get(self, key: JobKey) -> Throughput | None:
        return self._snapshot.get(key)

    def register_pods(self, key: JobKey, urls: list[str]) -> None:
        if isinstance(self.source, PodScrapeSource):
            self.source.register(key, urls)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                before, self._snapshot = self._snapshot, self.source.read()
                changed = {key for key, tp in self._snapshot.items() if _figures(before.get(key)) != _figures(tp)}
                if changed and self.on_change is not None:
                    self.on_change(changed)
            except Exception as exc:  # noqa: BLE001 - a down Prometheus must not stop the operator
                log.warning("reading throughput failed: %s", exc)
            self._stop.wait(self.interval)


def _figures(tp: Throughput | None) -> Throughput | None:
    """A reading without the time it was taken: what tells whether the figures changed."""
    return None if tp is None else dataclasses.replace(tp, observed=None)
