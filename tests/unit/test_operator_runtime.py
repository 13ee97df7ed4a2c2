"""The operator's runtime: built from its config, held in Kopf's memo, stopped by the cleanup handler."""

from __future__ import annotations

import copy
import json
import logging
import urllib.error
import urllib.request

import kopf
import pytest

from kubetrain.contract.ports import free_port
from kubetrain.operator import handlers, naming
from kubetrain.operator.runtime import JobMemo, OperatorRuntime
from kubetrain.operator.settings import OperatorConfig, reconcile_interval_from_env
from kubetrain.operator.throughput import PodScrapeSource, PrometheusSource


class FakeKube:
    closed = False

    def close(self) -> None:
        self.closed = True


def test_the_config_chooses_the_throughput_source_and_each_runtime_has_its_own_registry():
    scrape = OperatorRuntime(OperatorConfig(metrics_port=0), FakeKube())
    prom = OperatorRuntime(OperatorConfig(metrics_port=0, prometheus_url="http://prometheus:9090/"), FakeKube())
    assert isinstance(scrape.throughput.source, PodScrapeSource)
    assert isinstance(prom.throughput.source, PrometheusSource) and prom.throughput.source.url == "http://prometheus:9090"
    scrape.metrics.reconcile_errors.inc()
    assert scrape.registry.get_sample_value("kubetrain_operator_reconcile_errors_total") == 1
    assert prom.registry.get_sample_value("kubetrain_operator_reconcile_errors_total") == 0
    assert scrape.reservations is not prom.reservations


def test_cleanup_stops_the_reader_the_metrics_server_the_heap_trims_and_the_api_client():
    port = free_port()
    kube = FakeKube()
    runtime = OperatorRuntime(OperatorConfig(metrics_port=port, throughput_interval_seconds=3600, heap_trim_interval_seconds=3600), kube)
    runtime.start()
    try:
        assert runtime.throughput.running
        assert runtime.heap._thread is not None and runtime.heap._thread.is_alive()  # noqa: SLF001
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            assert b"kubetrain_operator_reconcile_errors_total" in resp.read()
    finally:
        handlers.stop(memo=kopf.Memo(runtime=runtime), logger=logging.getLogger("test"))
    # The reader waits an hour between reads: stop must wake it, not wait it out.
    assert not runtime.throughput.running and kube.closed
    assert runtime.heap._thread is None  # noqa: SLF001 - an hour's wait, yet stop returned: it woke the thread
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2)
    runtime.stop()  # twice is harmless


def test_cleanup_after_a_failed_startup_has_nothing_to_stop():
    handlers.stop(memo=kopf.Memo(), logger=logging.getLogger("test"))


def test_every_job_sees_the_operator_runtime_but_keeps_its_own_state():
    runtime = OperatorRuntime(OperatorConfig(metrics_port=0), FakeKube())
    operator_memo = kopf.Memo(runtime=runtime)
    # What Kopf does for each object it meets: a shallow copy of the operator memo.
    a, b = copy.copy(operator_memo), copy.copy(operator_memo)
    assert OperatorRuntime.of(a) is OperatorRuntime.of(b) is runtime
    assert JobMemo.of(a) is JobMemo.of(a) and JobMemo.of(a) is not JobMemo.of(b)
    JobMemo.of(a).released.add("j-w0-0")
    assert JobMemo.of(b).released == set() and "job" not in operator_memo


def test_the_timer_interval_is_the_configs():
    env = {"KUBETRAIN_RECONCILE_INTERVAL": "1.5"}
    assert reconcile_interval_from_env(env) == OperatorConfig.from_env(env).reconcile_interval_seconds == 1.5
    assert reconcile_interval_from_env({}) == OperatorConfig().reconcile_interval_seconds


def test_a_job_s_event_reconciles_only_when_its_spec_labels_or_annotations_changed():
    state = JobMemo()
    body = {"metadata": {"generation": 1, "labels": {"a": "1"}, "annotations": {}}, "status": {"phase": "Pending"}}
    assert state.changed(body)
    # Our own status write comes back as an event: nothing the event handler must act on.
    assert not state.changed(body | {"status": {"phase": "Running"}})
    assert state.changed({"metadata": {**body["metadata"], "generation": 2}})
    assert state.changed({"metadata": {**body["metadata"], "generation": 2, "labels": {"a": "2"}}})
    assert not state.changed({"metadata": {**body["metadata"], "generation": 2, "labels": {"a": "2"}}})


def test_kopf_keeps_no_diff_base_on_the_jobs_but_keeps_the_sweeps_one():
    """No last-handled-configuration annotation on a job: one patch per job less, and no copy of every spec.
    A sweep keeps its own: without it, each change of a sweep would read as a new creation, in a loop."""
    storage = handlers.JobsWithoutDiffBase(prefix="kubetrain.dev", key="last-handled-configuration")
    job = {"apiVersion": "kubetrain.dev/v1alpha1", "kind": "TrainingJob", "metadata": {}, "spec": {"a": 1}}
    patch = kopf.Patch()
    storage.store(body=kopf.Body(job), patch=patch, essence={"spec": {"a": 1}})
    assert dict(patch) == {} and storage.fetch(body=kopf.Body(job | {"metadata": {"annotations": {}}})) is None
    sweep = job | {"kind": "TrainingSweep"}
    patch = kopf.Patch()
    storage.store(body=kopf.Body(sweep), patch=patch, essence={"spec": {"a": 1}})
    stored = patch["metadata"]["annotations"]["kubetrain.dev/last-handled-configuration"]
    assert json.loads(stored) == {"spec": {"a": 1}}
    read = storage.fetch(body=kopf.Body(sweep | {"metadata": {"annotations": {"kubetrain.dev/last-handled-configuration": stored}}}))
    assert read == {"spec": {"a": 1}}
    # An essence (a deep copy) is built for the sweeps alone: not for jobs, pods or nodes, that no handler compares.
    assert storage.build(body=kopf.Body(sweep)) == {"spec": {"a": 1}}
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": {"containers": []}}
    assert storage.build(body=kopf.Body(job)) is None and storage.build(body=kopf.Body(pod)) is None

def test_a_job_s_event_takes_a_thread_only_once_kopf_s_finalizer_is_on_and_something_changed():
    """Checked in Kopf's loop (the handler's ``when``): a new job waits for the event of Kopf's finalizer patch
    (our status write would make that patch fail with 422), our own status writes coming back take no thread."""
    memo = kopf.Memo()
    meta = {"generation": 1, "labels": {}, "annotations": {}}
    new = {"metadata": meta}
    assert not handlers._job_changed(type="ADDED", body=new, memo=memo)
    assert JobMemo.of(memo).seen is None  # nothing noted: the finalizer's event reconciles
    finalized = {"metadata": {**meta, "finalizers": [naming.FINALIZER]}}
    assert handlers._job_changed(type="MODIFIED", body=finalized, memo=memo)
    assert JobMemo.of(memo).changed(finalized)  # what the handler then does
    assert not handlers._job_changed(type="MODIFIED", body=finalized | {"status": {"phase": "Running"}}, memo=memo)
    assert not handlers._job_changed(type="DELETED", body={"metadata": {**meta, "generation": 2}}, memo=memo)
    # Being deleted with the finalizer already gone: still the job's last say.
    assert handlers._job_changed(type="MODIFIED", body={"metadata": {**meta, "deletionTimestamp": "2026-01-01T00:00:00Z"}},
                                 memo=memo)
