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
