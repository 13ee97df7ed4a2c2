"""The kubetrain Grafana dashboard, built as code with grafana-foundation-sdk.

``PANELS`` lists every panel with its queries and where its data comes from;
``build_dashboard`` turns them into Grafana JSON; the chart ships that JSON in
a ConfigMap the Grafana sidecar picks up. Tests run every query of a panel whose
source is present against a real Prometheus and fail if one returns nothing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from grafana_foundation_sdk.builders import dashboard as gd
from grafana_foundation_sdk.builders import prometheus as gp
from grafana_foundation_sdk.builders import stat, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import dashboard as dm

from kubetrain.observability import promql as q

UID = "kubetrain-training"
# Prometheus owns the label `job` (the scrape job): TrainingJobs are `trainingjob` (metric_names.TRAININGJOB).
SEL = 'namespace=~"$namespace", trainingjob=~"$trainingjob"'
DS = dm.DataSourceRef(type_val="prometheus", uid="${datasource}")

# Where a panel's series come from. "gpu" needs GPU nodes (NVML readings, and MFU,
# which needs a GPU's peak FLOPs); "dcgm" needs the DCGM exporter; "powersgd" a job
# compressing with PowerSGD (the trainer exports its error only then); "sweep" a TrainingSweep.
SOURCES = ("trainer", "operator", "gpu", "dcgm", "powersgd", "sweep")
# A sweep row shows every sweep of the chosen namespaces (its trials are the jobs above).
SWEEP_SEL = 'namespace=~"$namespace"'


@dataclass(frozen=True)
class PanelSpec:
    title: str
    unit: str
    queries: tuple[tuple[str, str], ...]  # (expr, legend)
    source: str
    description: str
    kind: str = "timeseries"  # or "stat"
    width: int = 8


def _dcgm(record: str) -> str:
    return f"{record}{{{SEL}}}"


ROWS: dict[str, list[PanelSpec]] = {
    "Throughput": [
        PanelSpec("Tokens per second", "short", ((q.tokens_per_second(SEL), "{{trainingjob}}"),), "trainer",
                  "Job-wide tokens/s: the sum over the job's pods."),
        PanelSpec("Samples per second", "short", ((q.samples_per_second(SEL), "{{trainingjob}}"),), "trainer",
                  "Job-wide samples/s."),
        PanelSpec("MFU", "percentunit", ((q.mfu(SEL), "{{trainingjob}}"),), "gpu",
                  "Model FLOPs utilisation (torchtitan formula; needs a known GPU's peak FLOPs)."),
        PanelSpec("Step time", "s", ((q.step_time_quantile(0.5, SEL), "p50 {{trainingjob}}"), (q.step_time_quantile(0.9, SEL), "p90 {{trainingjob}}")),
                  "trainer", "Wall time per optimizer step, data loading included."),
        PanelSpec("Loss", "short", ((q.loss(SEL), "{{trainingjob}}"),), "trainer", "Mean training loss over all ranks."),
        PanelSpec("Goodput", "percentunit", ((q.goodput(SEL), "{{trainingjob}}"),), "trainer",
                  "Kept productive training time over wall time since the job started."),
        PanelSpec("Gradient noise scale", "short", ((q.gradient_noise_scale(SEL), "{{trainingjob}}"),), "trainer",
                  "Gradient noise scale in samples (McCandlish et al. 2018), from local against all-reduced DDP "
                  "gradient norms, smoothed: batches well below it use samples efficiently, batches above it "
                  "waste them. Absent at world size 1 and under FSDP; under PowerSGD, from its warm-up steps."),
    ],
    "Elasticity and faults": [
        PanelSpec("World size", "short", ((q.world_size(SEL), "{{trainingjob}}"),), "trainer", "Training processes in the current rendezvous."),
        PanelSpec("Replicas", "short", ((q.replicas(SEL), "{{state}} {{trainingjob}}"),), "operator", "Worker replicas the operator wants and has ready."),
        PanelSpec("Restarts", "short", ((q.restarts(SEL), "{{reason}} {{trainingjob}}"),), "operator", "Restarts used, by failure reason (5 m increase)."),
        PanelSpec("Checkpoint age", "s", ((q.checkpoint_age_seconds(SEL), "{{trainingjob}}"),), "trainer",
                  "Time since the newest complete checkpoint: what a failure now would cost."),
        PanelSpec("Data loading share", "percentunit", ((q.data_loading_ratio(SEL), "{{trainingjob}}"),), "trainer",
                  "Share of time processes wait for their next batch."),
        PanelSpec("Gradient traffic", "Bps", ((q.communicated_bytes_per_second(SEL), "{{trainingjob}}"),), "trainer",
                  "Bytes per second of gradient collectives: what compression saves."),
        PanelSpec("PowerSGD compression error", "percentunit", ((q.compression_error(SEL), "{{trainingjob}}"),), "powersgd",
                  "Norm of the error PowerSGD carries to the next step over the norm of what it had to send, worst "
                  "process (error feedback on). Near 1: the rank captures little of the gradient, and the loss pays "
                  "(bench/results/compression_loss.md); raise spec.compression.powerSGD.rank."),
    ],
    "GPUs (NVML, from the trainer)": [
        PanelSpec("GPU utilisation", "percentunit", ((q.gpu_utilization(SEL), "{{trainingjob}}"),), "gpu", "Mean over the job's GPUs."),
        PanelSpec("GPU memory used", "bytes", ((q.gpu_memory(SEL), "{{trainingjob}}"),), "gpu", "Sum over the job's GPUs."),
        PanelSpec("GPU power", "watt", ((q.gpu_power(SEL), "{{trainingjob}}"),), "gpu", "Sum over the job's GPUs."),
        PanelSpec("GPU energy (range)", "joule", ((q.gpu_energy_joules(SEL), "{{trainingjob}}"),), "gpu",
                  "Energy used by the job's GPUs over the dashboard's time range.", kind="stat"),
    ],
    "GPUs (DCGM exporter, joined by pod)": [
        PanelSpec("DCGM GPU utilisation", "percentunit", ((_dcgm("kubetrain:job_dcgm_gpu_utilization:ratio"), "{{trainingjob}}"),), "dcgm",
                  "DCGM_FI_DEV_GPU_UTIL of the job's pods (needs the DCGM exporter)."),
        PanelSpec("DCGM framebuffer used", "bytes", ((_dcgm("kubetrain:job_dcgm_framebuffer_used:bytes"), "{{trainingjob}}"),), "dcgm",
                  "DCGM_FI_DEV_FB_USED of the job's pods."),
        PanelSpec("DCGM power", "watt", ((_dcgm("kubetrain:job_dcgm_power:watts"), "{{trainingjob}}"),), "dcgm", "DCGM_FI_DEV_POWER_USAGE of the job's pods."),
        PanelSpec("DCGM energy", "joule", ((_dcgm("kubetrain:job_dcgm_energy:joules"), "{{trainingjob}}"),), "dcgm",
                  "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION of the job's pods (since the exporter started)."),
    ],
    "Cost and processes": [
        PanelSpec("GPU-hours (range)", "short", ((q.gpu_hours(SEL), "{{trainingjob}}"),), "operator",
                  "GPU-hours held by the job's ready workers over the dashboard's time range.", kind="stat"),
        PanelSpec("Trainer CPU", "short", ((q.process_cpu(SEL), "{{trainingjob}}"),), "trainer", "CPU cores used by the job's trainer processes."),
        PanelSpec("Trainer memory", "bytes", ((q.process_rss(SEL), "{{trainingjob}}"),), "trainer", "Resident memory of the job's trainer processes."),
    ],
    "Sweeps": [
        PanelSpec("Trials by state", "short", ((q.sweep_trials(SWEEP_SEL), "{{state}} {{trainingsweep}}"),), "sweep",
                  "Each sweep's trials: Pending, Running, Succeeded, Pruned (stopped early, checkpoint kept), Failed.",
                  width=6),
        PanelSpec("Best value", "short", ((q.sweep_best_value(SWEEP_SEL), "{{trainingsweep}}"),), "sweep",
                  "The objective of each sweep's best trial so far (its spec.objective.metric): how the search improves "
                  "over time.", width=6),
        PanelSpec("GPU-hours saved by early stopping", "short", ((q.sweep_saved_gpu_hours(SWEEP_SEL), "{{trainingsweep}}"),),
                  "sweep", "Each pruned trial's remaining steps at the GPU time per step it had spent, summed per sweep.",
                  width=6),
        PanelSpec("Trial-steps saved by early stopping", "short",
                  ((q.sweep_saved_trial_steps(SWEEP_SEL), "{{trainingsweep}}"),), "sweep",
                  "For each pruned trial, maxSteps minus the step it stopped at (CPU trials save steps, not GPU-hours).",
                  width=6),
    ],
    "Operator": [
        PanelSpec("Jobs by phase", "short", ((q.jobs_by_phase(), "{{phase}}"),), "operator", "TrainingJobs in each phase, all namespaces."),
        PanelSpec("Reconcile p99", "s", ((q.reconcile_p99(), "p99"),), "operator", "99th percentile of one reconcile."),
    ],
}


def panels() -> list[PanelSpec]:
    return [p for row in ROWS.values() for p in row]


def _panel(spec: PanelSpec):
    builder = (stat.Panel() if spec.kind == "stat" else timeseries.Panel())
    builder = builder.title(spec.title).description(spec.description).unit(spec.unit).datasource(DS).span(spec.width).height(8)
    for i, (expr, legend) in enumerate(spec.queries):
        builder = builder.with_target(gp.Dataquery().expr(expr).legend_format(legend).ref_id(chr(ord("A") + i)).datasource(DS))
    return builder


def _variable(name: str, query: str) -> gd.QueryVariable:
    return (gd.QueryVariable(name).label(name).datasource(DS).query(query).multi(True).include_all(True)
            .refresh(dm.VariableRefresh.ON_TIME_RANGE_CHANGED).sort(dm.VariableSort.ALPHABETICAL_ASC))


def build_dashboard() -> gd.Dashboard:
    board = (
        gd.Dashboard("kubetrain: training jobs")
        .uid(UID)
        .tags(["kubetrain", "training"])
        .description("Throughput, MFU, loss, goodput, elasticity, checkpoints and GPUs of kubetrain TrainingJobs.")
        .refresh("30s")
        .time("now-3h", "now")
        .timezone("browser")
        .with_variable(gd.DatasourceVariable("datasource").label("Prometheus").type("prometheus"))
        .with_variable(_variable("namespace", "label_values(kubetrain_operator_job_phase, namespace)"))
        .with_variable(_variable("trainingjob", 'label_values(kubetrain_operator_job_phase{namespace=~"$namespace"}, trainingjob)'))
        .annotation(
            gd.AnnotationQuery().name("Scaling events").datasource(DS).enable(True).icon_color("orange")
            .expr(q.scaling_events(SEL))
        )
    )
    for title, specs in ROWS.items():
        board = board.with_row(gd.Row(title))
        for spec in specs:
            board = board.with_panel(_panel(spec))
    return board


def render_dashboard() -> str:
    return json.dumps(build_dashboard().build(), cls=JSONEncoder, indent=2, sort_keys=True) + "\n"
