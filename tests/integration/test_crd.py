"""The generated CRD on a real apiserver: schema, CEL rules, printer columns, explain."""

from __future__ import annotations

import pytest
from kubernetes.client.exceptions import ApiException

from crd_helpers import Jobs, install_crd, kubectl
from support.variants import EXAMPLES, REPO, invalid_sweep_variants, invalid_variants, load_yaml, refusal_status

VARIANTS = invalid_variants()


@pytest.fixture(scope="module")
def crd(cluster):
    install_crd(cluster.api)


@pytest.fixture
def jobs(cluster, crd, namespace):
    return Jobs(cluster.api, namespace)


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_every_example_passes_a_server_side_dry_run(jobs, path):
    manifest = load_yaml(path)
    manifest["metadata"].pop("namespace", None)
    created = jobs.create(manifest, dry_run=True)
    # The apiserver applied the schema's defaults.
    assert created["spec"]["metrics"]["port"] == manifest["spec"].get("metrics", {}).get("port", 9404)
    assert created["spec"]["failurePolicy"]["maxRestarts"] >= 0


@pytest.mark.parametrize("name,manifest,field", VARIANTS, ids=[v[0] for v in VARIANTS])
def test_every_invalid_variant_is_refused_by_the_apiserver(jobs, name, manifest, field):
    with pytest.raises(ApiException) as err:
        jobs.create(manifest, dry_run=True)
    assert err.value.status == refusal_status(name), err.value.body
    assert field in err.value.body, err.value.body


def test_minimal_job_gets_every_default(jobs):
    created = jobs.create(load_yaml(EXAMPLES[[p.stem for p in EXAMPLES].index("minimal")]))
    spec = created["spec"]
    assert (spec["precision"], spec["strategy"], spec["compression"]["type"]) == ("fp32", "ddp", "none")
    assert spec["container"]["gpusPerReplica"] == 0 and spec["trainer"]["workload"] == "builtin:gpt"
    assert spec["failurePolicy"]["retryOn"] == ["NodeLost", "Evicted", "Preempted", "CommunicationTimeout", "Unknown"]


def test_fields_are_immutable_while_running_but_replicas_are_not(jobs):
    manifest = load_yaml(EXAMPLES[[p.stem for p in EXAMPLES].index("minimal")])
    jobs.create(manifest)
    jobs.patch_status("gpt-tiny", {"phase": "Running"})
    with pytest.raises(ApiException) as err:
        jobs.patch("gpt-tiny", {"spec": {"precision": "bf16"}})
    assert err.value.status == 422 and "spec.precision cannot change while the job is running" in err.value.body
    # What shapes the pods, their customisation included, follows the same rule.
    with pytest.raises(ApiException) as err:
        jobs.patch("gpt-tiny", {"spec": {"pod": {"serviceAccountName": "other"}}})
    assert err.value.status == 422 and "spec.pod cannot change while the job is running" in err.value.body
    resized = jobs.patch("gpt-tiny", {"spec": {"replicas": {"max": 3}}})
    assert resized["spec"]["replicas"]["max"] == 3
    jobs.patch_status("gpt-tiny", {"phase": "Suspended"})
    assert jobs.patch("gpt-tiny", {"spec": {"precision": "bf16"}})["spec"]["precision"] == "bf16"


def test_kubectl_get_shows_the_printer_columns(jobs):
    manifest = load_yaml(EXAMPLES[[p.stem for p in EXAMPLES].index("minimal")])
    jobs.create(manifest)
    jobs.patch_status("gpt-tiny", {"phase": "Running", "readyReplicas": 2, "desiredReplicas": 2,
                                   "throughput": {"tokensPerSecond": 1234.5, "step": 17}})
    out = kubectl("get", "tj", "-n", jobs.ns).stdout
    header, row = out.splitlines()[:2]
    assert header.split() == ["NAME", "PHASE", "READY", "DESIRED", "MIN", "MAX", "PRECISION", "TOKENS/S", "QUEUE", "AGE"]
    assert row.split()[:8] == ["gpt-tiny", "Running", "2", "2", "1", "2", "fp32", "1234.5"]
    wide = kubectl("get", "trainingjobs.kubetrain.dev", "-n", jobs.ns, "-o", "wide").stdout
    assert "STEP" in wide and "17" in wide


def test_kubectl_explain_shows_descriptions(crd):
    out = kubectl("explain", "trainingjob.spec").stdout
    assert "The desired state of an elastic PyTorch training job" in out
    assert "compression" in out and "Gradient compression" in out
    field = kubectl("explain", "tj.spec.compression.powerSGD.rank").stdout
    assert "Rank of the low-rank approximation" in field


def test_scale_subresource_resizes_max(jobs):
    manifest = load_yaml(EXAMPLES[[p.stem for p in EXAMPLES].index("minimal")])
    jobs.create(manifest)
    kubectl("scale", "tj", "gpt-tiny", "-n", jobs.ns, "--replicas=5")
    assert jobs.get("gpt-tiny")["spec"]["replicas"]["max"] == 5


# --- TrainingSweep: the second kind, generated the same way ---

SWEEP_VARIANTS = invalid_sweep_variants()


def _sweeps(cluster, namespace):
    from kubernetes import client

    custom = client.CustomObjectsApi(cluster.api)

    def create(manifest, dry_run=True):
        return custom.create_namespaced_custom_object("kubetrain.dev", "v1alpha1", namespace, "trainingsweeps", manifest,
                                                      field_validation="Strict", **({"dry_run": "All"} if dry_run else {}))
    return create


def test_the_example_sweep_is_accepted_with_its_defaults(cluster, crd, namespace):
    created = _sweeps(cluster, namespace)(load_yaml(REPO / "examples" / "sweep.yaml", kind="TrainingSweep"))
    assert created["spec"]["maxTrials"] == 8 and created["spec"]["earlyStopping"]["reductionFactor"] == 3
    # The template's defaults are applied as in a TrainingJob.
    assert created["spec"]["template"]["spec"]["precision"] == "fp32"


def test_the_pbt_example_sweep_is_accepted(cluster, crd, namespace):
    created = _sweeps(cluster, namespace)(load_yaml(REPO / "examples" / "sweep-pbt.yaml", kind="TrainingSweep"))
    assert created["spec"]["algorithm"]["pbt"]["intervalSteps"] == 100
    assert created["spec"]["template"]["spec"]["checkpoint"]["initFrom"] == ""  # the trials set it, not the template


@pytest.mark.parametrize("name,manifest,field", SWEEP_VARIANTS, ids=[v[0] for v in SWEEP_VARIANTS])
def test_every_invalid_sweep_is_refused_by_the_apiserver(cluster, crd, namespace, name, manifest, field):
    with pytest.raises(ApiException) as err:
        _sweeps(cluster, namespace)(manifest)
    assert err.value.status == 422, err.value.body
    assert field in err.value.body, err.value.body


def test_kubectl_explains_sweeps_by_their_short_name(crd):
    out = kubectl("explain", "tsw.spec.parameters.target").stdout
    assert "trainer.learningRate" in out and "container.env.<NAME>" in out
