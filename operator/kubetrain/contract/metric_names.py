"""The names of kubetrain's Prometheus series and of their labels: the one vocabulary of the trainer that
exports them and of the operator, PromQL, rules and dashboard that read them.

Part of the contract: constants only.

The TrainingJob's name is the label ``trainingjob``, never ``job``: Prometheus owns ``job`` and
``instance`` (every target gets them). A series carrying its own ``job`` is renamed ``exported_job``
by a plain scrape, and with ``honor_labels`` it overwrites the scrape job that ``up{job=...}`` relies on.
"""

from __future__ import annotations

# -- labels ---------------------------------------------------------------------------------------
TRAININGJOB = "trainingjob"  # the TrainingJob's metadata.name
TRAININGSWEEP = "trainingsweep"  # a TrainingSweep's metadata.name (the operator's sweep series)
NAMESPACE = "namespace"  # the TrainingJob's namespace (for trainer series also the pod's)
POD = "pod"
LOCAL_RANK = "local_rank"
# Labels Prometheus attaches to every scraped target: no kubetrain series may carry them.
TARGET_LABELS = frozenset({"job", "instance"})

# The trainer's series: pod level, and per process (one per local rank of the pod).
TRAINER_POD_LABELS = (TRAININGJOB, NAMESPACE, POD)
TRAINER_PROCESS_LABELS = (*TRAINER_POD_LABELS, LOCAL_RANK)
# The operator's per-job series; a closed set of extra labels (phase, reason, role, state) on some.
OPERATOR_JOB_LABELS = (NAMESPACE, TRAININGJOB)
# The operator's per-sweep series (state, on the trial counts, is the trial's).
OPERATOR_SWEEP_LABELS = (NAMESPACE, TRAININGSWEEP)
OPERATOR_LABELS = frozenset({*OPERATOR_JOB_LABELS, *OPERATOR_SWEEP_LABELS, "phase", "role", "reason", "state"})


class TrainerMetric:
    """Series the trainer exports (kubetrain_trainer/metrics.py); counters with their ``_total``."""

    TOKENS_PER_SECOND = "kubetrain_trainer_tokens_per_second"
    SAMPLES_PER_SECOND = "kubetrain_trainer_samples_per_second"
    TOKENS_TOTAL = "kubetrain_trainer_tokens_total"
    SAMPLES_TOTAL = "kubetrain_trainer_samples_total"
    MFU = "kubetrain_trainer_mfu_ratio"
    STEP = "kubetrain_trainer_step"
    MAX_STEPS = "kubetrain_trainer_max_steps"
    LOSS = "kubetrain_trainer_loss"
    WORLD_SIZE = "kubetrain_trainer_world_size"
    GOODPUT = "kubetrain_trainer_goodput_ratio"
    GRADIENT_NOISE_SCALE = "kubetrain_trainer_gradient_noise_scale"
    LAST_CHECKPOINT = "kubetrain_trainer_last_checkpoint_timestamp_seconds"
    STEP_DURATION = "kubetrain_trainer_step_duration_seconds"
    CHECKPOINT_DURATION = "kubetrain_trainer_checkpoint_duration_seconds"
    RESTARTS = "kubetrain_trainer_restarts_total"
    COMMUNICATED_BYTES = "kubetrain_trainer_communicated_bytes_total"
    DATA_LOADING_SECONDS = "kubetrain_trainer_data_loading_seconds_total"
    PROCESS_CPU_SECONDS = "kubetrain_trainer_process_cpu_seconds_total"
    PROCESS_RESIDENT_MEMORY = "kubetrain_trainer_process_resident_memory_bytes"
    GPU_UTILIZATION = "kubetrain_trainer_gpu_utilization_ratio"
    GPU_MEMORY_USED = "kubetrain_trainer_gpu_memory_used_bytes"
    GPU_POWER = "kubetrain_trainer_gpu_power_watts"
    GPU_ENERGY = "kubetrain_trainer_gpu_energy_joules_total"
    COMPRESSION_ERROR = "kubetrain_trainer_compression_error_ratio"


class OperatorMetric:
    """Series the operator exports (kubetrain/operator/metrics.py); counters with their ``_total``."""

    JOB_PHASE = "kubetrain_operator_job_phase"
    RECONCILE_DURATION = "kubetrain_operator_reconcile_duration_seconds"
    RECONCILE_ERRORS = "kubetrain_operator_reconcile_errors_total"
    SCALING_EVENTS = "kubetrain_operator_scaling_events_total"
    RESTARTS = "kubetrain_operator_restarts_total"
    TIME_TO_RUNNING = "kubetrain_operator_time_to_running_seconds"
    JOB_PODS = "kubetrain_operator_job_pods"
    JOB_REPLICAS = "kubetrain_operator_job_replicas"
    JOB_GPUS = "kubetrain_operator_job_gpus"
    JOB_GPU_SECONDS = "kubetrain_operator_job_gpu_seconds_total"
    JOB_TRAINER_METRICS = "kubetrain_operator_job_trainer_metrics"
    ALLOCATOR_ROUND_DURATION = "kubetrain_operator_allocator_round_duration_seconds"
    ALLOCATOR_DECISIONS = "kubetrain_operator_allocator_decisions_total"
    JOB_ALLOCATED_REPLICAS = "kubetrain_operator_job_allocated_replicas"
    # TrainingSweeps (kubetrain/operator/sweep_metrics.py).
    SWEEP_TRIALS = "kubetrain_operator_sweep_trials"
    SWEEP_BEST_VALUE = "kubetrain_operator_sweep_best_value"
    SWEEP_SAVED_TRIAL_STEPS = "kubetrain_operator_sweep_saved_trial_steps"
    SWEEP_SAVED_GPU_SECONDS = "kubetrain_operator_sweep_saved_gpu_seconds"
