"""The operator's environment (what the Helm chart's Deployment sets)."""

from kubetrain.operator.settings import OperatorConfig


def test_chart_environment_is_read():
    cfg = OperatorConfig.from_env({"KUBETRAIN_TRAINER_IMAGE": "registry/trainer:1.2", "KUBETRAIN_WATCH_NAMESPACES": "a, b,",
                                   "KUBETRAIN_STANDALONE": "true", "KUBETRAIN_RECONCILE_INTERVAL": "1",
                                   "KUBETRAIN_PEERING_PRIORITY": "7"})
    assert cfg.build.trainer_image == "registry/trainer:1.2" and cfg.namespaces == ["a", "b"]
    assert cfg.standalone and cfg.reconcile_interval_seconds == 1.0 and cfg.peering_priority == 7


def test_a_sweep_ticks_every_5_s_or_at_the_job_timer_if_shorter_and_the_chart_ships_5():
    """No event wakes a sweep, so its timer is shorter than a job's safety net (30 s)."""
    from pathlib import Path

    import yaml

    from kubetrain.operator.settings import sweep_interval_from_env

    assert sweep_interval_from_env({}) == 5.0
    assert sweep_interval_from_env({"KUBETRAIN_RECONCILE_INTERVAL": "1"}) == 1.0  # tests that speed jobs up speed sweeps too
    assert sweep_interval_from_env({"KUBETRAIN_RECONCILE_INTERVAL": "1", "KUBETRAIN_SWEEP_INTERVAL": "2"}) == 2.0
    values = yaml.safe_load((Path(__file__).parents[2] / "charts" / "kubetrain" / "values.yaml").read_text())
    assert values["operator"]["sweepIntervalSeconds"] == 5


def test_each_replica_draws_its_own_peering_priority():
    # Kopf pauses every peer when two share a priority: replicas must not.
    priorities = {OperatorConfig.from_env({}).peering_priority for _ in range(5)}
    assert len(priorities) > 1 and all(p > 0 for p in priorities)
    assert OperatorConfig.from_env({}).namespaces == [] and not OperatorConfig.from_env({}).standalone


def test_the_timer_is_a_safety_net_and_the_chart_ships_the_operator_s_default():
    """Events drive status; the timer's default is long (30 s), and the chart gives a deployed operator the same."""
    from pathlib import Path

    import yaml

    from kubetrain.operator.settings import RECONCILE_INTERVAL_DEFAULT

    values = yaml.safe_load((Path(__file__).parents[2] / "charts" / "kubetrain" / "values.yaml").read_text())
    assert OperatorConfig.from_env({}).reconcile_interval_seconds == RECONCILE_INTERVAL_DEFAULT == 30.0
    assert values["operator"]["reconcileIntervalSeconds"] == RECONCILE_INTERVAL_DEFAULT


def test_heap_trims_default_to_every_10_s_as_the_chart_ships_them_and_0_turns_them_off():
    from pathlib import Path

    import yaml

    values = yaml.safe_load((Path(__file__).parents[2] / "charts" / "kubetrain" / "values.yaml").read_text())
    assert OperatorConfig.from_env({}).heap_trim_interval_seconds == values["operator"]["heapTrimIntervalSeconds"] == 10
    assert OperatorConfig.from_env({"KUBETRAIN_HEAP_TRIM_INTERVAL": "0"}).heap_trim_interval_seconds == 0
