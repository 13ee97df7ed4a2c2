"""What the operator's metrics record, fed the way reconcile.record_metrics feeds them (OperatorMetrics.observe)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from kubetrain.operator.metrics import OperatorMetrics
from kubetrain.operator.planner import Plan

JOB = {"namespace": "ml", "trainingjob": "gpt"}


def _metrics() -> tuple[CollectorRegistry, OperatorMetrics]:
    r = CollectorRegistry()
    return r, OperatorMetrics(r)


def _observe(m: OperatorMetrics, status: dict, first_running_after: float | None = None, namespace: str = "ml") -> None:
    m.observe(namespace, "gpt", Plan(), status, 8, 5.0, first_running_after, trainer_metrics=True)


def test_time_to_running_is_recorded_once_per_job_by_namespace():
    r, m = _metrics()
    _observe(m, {"phase": "Pending"})
    assert r.get_sample_value("kubetrain_operator_time_to_running_seconds_count", {"namespace": "ml"}) is None
    _observe(m, {"phase": "Running"}, first_running_after=42.0)
    _observe(m, {"phase": "Running"})  # later reconciles pass None: no second observation
    sample = lambda name, le=None: r.get_sample_value(  # noqa: E731
        f"kubetrain_operator_time_to_running_seconds_{name}", {"namespace": "ml", **({"le": le} if le else {})})
    assert sample("count") == 1 and sample("sum") == 42.0
    assert sample("bucket", "30.0") == 0 and sample("bucket", "60.0") == 1
    _observe(m, {"phase": "Running"}, first_running_after=3.0, namespace="other")
    assert r.get_sample_value("kubetrain_operator_time_to_running_seconds_count", {"namespace": "other"}) == 1
    assert sample("count") == 1


def test_pods_per_job_counts_workers_not_the_rendezvous_store():
    r, m = _metrics()
    # currentReplicas: the planner's count of the job's unfinished workers, those it creates this round included.
    _observe(m, {"phase": "Scaling", "currentReplicas": 3, "readyReplicas": 2, "desiredReplicas": 3})
    assert r.get_sample_value("kubetrain_operator_job_pods", JOB | {"role": "worker"}) == 3
    # The store pod (one per job, whatever its size) is not a series: see the metric's help.
    assert [s.labels["role"] for f in r.collect() if f.name == "kubetrain_operator_job_pods" for s in f.samples] == ["worker"]
    assert r.get_sample_value("kubetrain_operator_job_replicas", JOB | {"state": "ready"}) == 2
    assert r.get_sample_value("kubetrain_operator_job_gpus", JOB) == 16
    _observe(m, {"phase": "Suspended", "currentReplicas": 0, "readyReplicas": 0, "desiredReplicas": 0})
    assert r.get_sample_value("kubetrain_operator_job_pods", JOB | {"role": "worker"}) == 0


def test_reconcile_errors_start_at_zero_and_count_each_failure():
    r, m = _metrics()
    # Exported before any error: "no errors" is a 0 on the dashboard, not missing data.
    assert r.get_sample_value("kubetrain_operator_reconcile_errors_total") == 0
    m.reconcile_errors.inc()  # what reconcile.reconcile_job does when a round raises
    m.reconcile_errors.inc()
    assert r.get_sample_value("kubetrain_operator_reconcile_errors_total") == 2
    # Not per job: a failing API server would otherwise multiply series by jobs.
    assert {s.labels.get("trainingjob") for f in r.collect() if f.name == "kubetrain_operator_reconcile_errors" for s in f.samples} == {None}


def test_a_jobs_series_start_at_zero_count_and_go_with_the_job():
    r, m = _metrics()
    _observe(m, {"phase": "Pending"})
    # Every reason and phase is a series from the first reconcile: "none" is a 0, not missing data.
    assert r.get_sample_value("kubetrain_operator_restarts_total", JOB | {"reason": "NodeLost"}) == 0
    assert r.get_sample_value("kubetrain_operator_job_phase", JOB | {"phase": "Pending"}) == 1
    assert r.get_sample_value("kubetrain_operator_job_phase", JOB | {"phase": "Running"}) == 0
    m.observe("ml", "gpt", Plan(restart_reasons=["NodeLost", "NodeLost"], scaling_reason="PartialCapacity"),
              {"phase": "Running", "readyReplicas": 2}, 8, 5.0, None, trainer_metrics=True)
    assert r.get_sample_value("kubetrain_operator_restarts_total", JOB | {"reason": "NodeLost"}) == 2
    assert r.get_sample_value("kubetrain_operator_scaling_events_total", JOB | {"reason": "PartialCapacity"}) == 1
    assert r.get_sample_value("kubetrain_operator_job_gpu_seconds_total", JOB) == 2 * 8 * 5.0
    m.allocated.labels("ml", "gpt").set(2)
    m.forget("ml", "gpt")
    assert [s for f in r.collect() for s in f.samples if s.labels.get("trainingjob") == "gpt"] == []


def test_scrapes_while_reconciles_add_and_forget_jobs():
    """Reconciles run in Kopf's executor threads and the scrape in the HTTP server's: neither may break the other."""
    import threading

    r, m = _metrics()
    stop, errors = threading.Event(), []

    def churn(k: int) -> None:
        i = 0
        while not stop.is_set():
            name = f"j{k}-{i % 50}"
            m.observe("ml", name, Plan(restart_reasons=["NodeLost"]), {"phase": "Running", "readyReplicas": 1}, 1, 1.0, None,
                      trainer_metrics=True)
            if i % 3 == 0:
                m.forget("ml", name)
            i += 1

    threads = [threading.Thread(target=churn, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
    try:
        for _ in range(200):
            try:
                families = {f.name: f for f in r.collect()}
            except Exception as exc:  # noqa: BLE001 - what the test looks for
                errors.append(exc)
                break
            # A job's families are read under one lock: every job with a phase series has its restart series too.
            phase_jobs = {s.labels["trainingjob"] for s in families["kubetrain_operator_job_phase"].samples}
            restart_jobs = {s.labels["trainingjob"] for s in families["kubetrain_operator_restarts"].samples}
            assert phase_jobs == restart_jobs
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert errors == []
