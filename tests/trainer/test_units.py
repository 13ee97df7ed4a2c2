"""Fast unit tests of the trainer's pure parts: no torchrun, no network (except one local metrics scrape)."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import urllib.request

import pytest
import torch
from prometheus_client import REGISTRY, CollectorRegistry

from conftest import child_env, free_port_block
from kubetrain.contract import TrainerContract
from kubetrain.contract.vocabulary import ExitCode
from kubetrain.contract.result import FinalFigures, format_result, parse_result
from kubetrain_trainer import failure, mfu
from kubetrain_trainer.config import Capabilities, ConfigError, validate
from kubetrain_trainer.data import ElasticSampler
from kubetrain_trainer.metrics import TrainerMetrics, serve
from kubetrain_trainer.metrics_processor import MetricsProcessor
from kubetrain_trainer.stats import StepRecord, StepStats

CPU = Capabilities()
H100 = Capabilities(device_type="cuda", backend="nccl", cuda_capability=(9, 0), has_torchao=True, device_name="NVIDIA H100 80GB HBM3")


# -- elastic data order ------------------------------------------------------------------


def _run_schedule(num_samples: int, batch: int, schedule: list[tuple[int, int]], seed: int = 0) -> list[int]:
    """Train through ``schedule`` [(world_size, steps), ...] the way the trainer does; return every id seen, in order."""
    position, seen = 0, []
    for world_size, steps in schedule:
        samplers = [ElasticSampler(num_samples, batch, r, world_size, seed, position) for r in range(world_size)]
        iters = [iter(s) for s in samplers]
        for _ in range(steps):
            for it in iters:
                seen.extend(next(it))
            position += world_size * batch
    return seen


def _assert_each_epoch_exact(seen: list[int], n: int) -> int:
    epochs = len(seen) // n
    for e in range(epochs):
        assert sorted(seen[e * n : (e + 1) * n]) == list(range(n)), f"epoch {e} repeats or skips a sample"
    tail = seen[epochs * n :]
    assert len(tail) == len(set(tail))
    return epochs


@pytest.mark.parametrize("n,batch", [(100, 4), (97, 3), (64, 8)])
def test_sampler_world_size_change_mid_epoch_sees_every_sample_once(n, batch):
    # 2 -> 1 -> 2 -> 3, each change in the middle of an epoch, several epochs in total.
    schedule = [(2, 7), (1, 11), (2, 9), (3, 13), (1, 5)]
    seen = _run_schedule(n, batch, schedule)
    assert _assert_each_epoch_exact(seen, n) >= 2


def test_sampler_random_world_size_schedules():
    rng = random.Random(7)
    for trial in range(30):
        n, batch = rng.randint(5, 60), rng.randint(1, 5)
        schedule = [(rng.randint(1, 4), rng.randint(1, 12)) for _ in range(rng.randint(2, 6))]
        seen = _run_schedule(n, batch, schedule, seed=trial)
        _assert_each_epoch_exact(seen, n)


def test_sampler_order_is_seeded_and_rank_slices_are_disjoint():
    a = ElasticSampler(50, 5, 0, 2, seed=1)
    b = ElasticSampler(50, 5, 1, 2, seed=1)
    assert next(iter(a)) != next(iter(ElasticSampler(50, 5, 0, 2, seed=2)))
    assert next(iter(a)) == next(iter(ElasticSampler(50, 5, 0, 2, seed=1)))
    assert not set(next(iter(a))) & set(next(iter(b)))
    # Resuming at a position continues the same stream.
    assert a.stream(0, 30)[20:30] == ElasticSampler(50, 5, 0, 2, seed=1, position=20).indices_at(20) + a.stream(25, 5)


# -- MFU ------------------------------------------------------------------------------------


def test_flops_per_token_and_mfu_on_a_known_config():
    # GPT-2 small: 85M non-embedding parameters, 12 layers, 12 heads of 64, sequence 1024.
    n, layers, heads, head_dim, seq = 85_000_000, 12, 12, 64, 1024
    fpt = mfu.flops_per_token(n, layers, heads, head_dim, seq)
    assert fpt == 6 * 85_000_000 + 12 * 12 * 12 * 64 * 1024 == 623_246_208
    # 100k tokens/s on one H100 SXM.
    assert mfu.mfu(fpt, 100_000, 989e12) == pytest.approx(623_246_208 * 1e5 / 989e12)
    assert mfu.mfu(fpt, 100_000, 989e12, devices=8) == pytest.approx(623_246_208 * 1e5 / 989e12 / 8)
    assert mfu.mfu(fpt, 100_000, None) is None and mfu.mfu(None, 100_000, 989e12) is None


@pytest.mark.parametrize(
    "name,peak",
    [
        ("NVIDIA H100 80GB HBM3", 989e12),
        ("NVIDIA H100 NVL", 835e12),
        ("NVIDIA H100 PCIe", 756e12),
        ("NVIDIA H200", 989e12),
        ("NVIDIA GH200 480GB", 989e12),
        ("NVIDIA A100-SXM4-80GB", 312e12),
        ("NVIDIA B200", 2.25e15),
        ("Tesla T4", None),
        ("cpu", None),
        (None, None),
    ],
)
def test_peak_flops_table(name, peak):
    assert mfu.peak_flops_for(name) == peak


def test_builtin_gpt_flops_follow_the_formula():
    from kubetrain_trainer.builtin_gpt import GPT, GPTConfig

    cfg = GPTConfig(seq_len=64, d_model=64, n_layers=2, n_heads=4)
    model = GPT(cfg)
    emb = model.tok_emb.weight.numel() + model.pos_emb.weight.numel()
    assert model.non_embedding_params() == sum(p.numel() for p in model.parameters()) - emb
    assert mfu.flops_per_token(model.non_embedding_params(), 2, 4, 16, 64) == 6 * model.non_embedding_params() + 12 * 2 * 4 * 16 * 64


# -- metrics ----------------------------------------------------------------------------------

# Naming and label conventions: tests/unit/test_metric_conventions.py checks the trainer's and the operator's series.


def _filled_metrics(registry: CollectorRegistry, peak: float | None) -> TrainerMetrics:
    """Two steps of a pod with two processes, through the metrics processor as Trainer.fit feeds it."""
    m = TrainerMetrics(registry, trainingjob="j", namespace="ns", pod="p-0")
    proc = MetricsProcessor(TrainerContract(max_steps=100), rank=0, world_size=4, restart_count=2, local_world_size=2,
                            exporter=m, flops_per_token=1e6, peak_flops=peak)
    proc.start(step=0, checkpoint_saved_at=None)
    pod = (
        StepStats(local_rank=0, samples=4, tokens=512, communicated_bytes=1000, data_loading_seconds=0.5, cpu_seconds=3,
                  rss_bytes=1e8, gpu_utilization=0.9, gpu_memory_bytes=2e9, gpu_power_watts=300, gpu_energy_joules=5000),
        StepStats(local_rank=1, samples=4, tokens=512, communicated_bytes=1000, data_loading_seconds=0.25, cpu_seconds=2,
                  rss_bytes=1e8),
    )
    for step in (1, 2):
        proc.observe(StepRecord(step=step, loss=2.0, step_seconds=0.5, job_tokens=2048, job_samples=16, comm_bytes=0,
                                compression_error=None, noise_scale=None, goodput=0.5, stopping=0, pod=pod))
    proc.observe_checkpoint(completed_at=1.7e9, seconds=1.5)
    return m


def test_metric_values_and_mfu_absence_without_a_peak():
    registry = CollectorRegistry()
    _filled_metrics(registry, peak=989e12)
    get = registry.get_sample_value
    labels = {"trainingjob": "j", "namespace": "ns", "pod": "p-0"}
    assert get("kubetrain_trainer_tokens_total", labels) == 2048
    assert get("kubetrain_trainer_tokens_per_second", labels) == pytest.approx(2048 / 1.0)
    assert get("kubetrain_trainer_restarts_total", labels) == 2
    assert get("kubetrain_trainer_communicated_bytes_total", {**labels, "local_rank": "1"}) == 1000
    assert get("kubetrain_trainer_gpu_utilization_ratio", {**labels, "local_rank": "0"}) == 0.9
    assert get("kubetrain_trainer_gpu_utilization_ratio", {**labels, "local_rank": "1"}) is None
    assert get("kubetrain_trainer_mfu_ratio", labels) == pytest.approx(1e6 * 2048 / (989e12 * 2))
    assert get("kubetrain_trainer_last_checkpoint_timestamp_seconds", labels) == 1.7e9

    cpu_registry = CollectorRegistry()
    _filled_metrics(cpu_registry, peak=None)
    assert cpu_registry.get_sample_value("kubetrain_trainer_mfu_ratio", labels) is None


def test_the_noise_scale_is_absent_while_unknown_and_returns_when_known():
    registry = CollectorRegistry()
    m = TrainerMetrics(registry, trainingjob="j", namespace="ns", pod="p")
    labels = {"trainingjob": "j", "namespace": "ns", "pod": "p"}
    step = dict(loss=1.0, step_seconds=0.1, pod_tokens=1, pod_samples=1, tokens_per_second=10, samples_per_second=10)
    for noise, expected in ((None, None), (12.0, 12.0), (None, None), (None, None), (30.0, 30.0)):
        m.observe_step(step=1, noise_scale=noise, **step)
        assert registry.get_sample_value("kubetrain_trainer_gradient_noise_scale", labels) == expected


def test_metrics_are_served_over_http():
    registry = CollectorRegistry()
    _filled_metrics(registry, peak=None)
    port = free_port_block(1)
    server = serve(registry, port, addr="127.0.0.1")
    try:
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    finally:
        server.shutdown()
    assert 'kubetrain_trainer_step{namespace="ns",pod="p-0",trainingjob="j"} 2.0' in body


# -- the trainer's seams: StepStats, the metrics processor, step hooks ---------------------------


def test_step_stats_round_trip_a_gather_row_by_field_name():
    stats = StepStats(loss_sum=5.0, samples=2, tokens=64, stop=1, group_rank=3, local_rank=1, grad_global_sq=0.5)
    row = stats.row()
    assert len(row) == len(StepStats.COLUMNS) and row[StepStats.column("tokens")] == 64.0
    assert StepStats.from_row(row) == stats


def _record(step: int, seconds: float, tokens: int = 100, loss: float = 1.0, **kw) -> StepRecord:
    return StepRecord(step=step, loss=loss, step_seconds=seconds, job_tokens=tokens, job_samples=1, comm_bytes=10,
                      compression_error=None, noise_scale=None, goodput=0.5, stopping=0, **kw)


def test_throughput_is_computed_once_for_the_status_file_the_exporter_and_the_result(tmp_path):
    registry = CollectorRegistry()
    status = tmp_path / "status.json"
    proc = MetricsProcessor(TrainerContract(max_steps=50, status_path=str(status)), rank=0, world_size=2, restart_count=0,
                            exporter=TrainerMetrics(registry, trainingjob="j", namespace="ns", pod="p"))
    proc.start(step=0, checkpoint_saved_at=None)
    pod = (StepStats(local_rank=0, tokens=25, samples=1),)
    # 30 steps: the first 10 slow; the window (20 steps) holds only the fast ones at the end.
    for step in range(1, 31):
        proc.observe(_record(step, 1.0 if step <= 10 else 0.5, pod=pod))
    proc.write_status(_record(30, 0.5), outcome="completed", checkpoint_step=None)
    assert proc.rates.tokens_per_second == pytest.approx(100 / 0.5)
    assert json.loads(status.read_text())["tokens_per_second"] == proc.rates.tokens_per_second
    assert json.loads(status.read_text())["eta_seconds"] == pytest.approx(20 * 0.5)
    labels = {"trainingjob": "j", "namespace": "ns", "pod": "p"}
    assert registry.get_sample_value("kubetrain_trainer_tokens_per_second", labels) == pytest.approx(25 / 0.5)
    assert registry.get_sample_value("kubetrain_trainer_step", labels) == 30


def test_the_status_file_is_rate_limited_but_always_written_at_the_end(tmp_path):
    status = tmp_path / "status.json"
    now = [100.0]
    proc = MetricsProcessor(TrainerContract(max_steps=10, status_path=str(status)), rank=0, world_size=1, restart_count=0,
                            clock=lambda: now[0])
    proc.start(step=0, checkpoint_saved_at=None)
    written = []
    for step in range(1, 4):
        proc.observe(_record(step, 0.1))
        proc.write_status(_record(step, 0.1), outcome="running", checkpoint_step=None)
        written.append(json.loads(status.read_text())["step"])
        now[0] += 0.1
    assert written == [1, 1, 1]  # within 0.25 s of the first write
    proc.write_status(_record(4, 0.1), outcome="sigterm", checkpoint_step=4)
    assert json.loads(status.read_text())["outcome"] == "sigterm"
    # Only global rank 0 writes.
    status.unlink()
    other = MetricsProcessor(TrainerContract(max_steps=10, status_path=str(status)), rank=1, world_size=2, restart_count=0)
    other.write_status(_record(1, 0.1), outcome="completed", checkpoint_step=None)
    assert not status.exists()


def test_the_recorder_is_bounded_by_default_and_keeps_everything_on_request():
    from kubetrain_trainer.hooks import StepRecorder

    bounded, everything = StepRecorder(limit=3), StepRecorder(limit=None)
    assert StepRecorder().records.maxlen == StepRecorder.DEFAULT_LIMIT
    for step in range(1, 6):
        for r in (bounded, everything):
            r.on_step_end(_record(step, 0.1 * step, loss=float(step)))
    assert bounded.losses == [3.0, 4.0, 5.0] and len(everything.losses) == 5
    assert everything.step_seconds == pytest.approx([0.1, 0.2, 0.3, 0.4, 0.5])


# -- configuration refusals -------------------------------------------------------------------

C = TrainerContract()


@pytest.mark.parametrize(
    "changes,caps,match",
    [
        (dict(precision="fp8"), CPU, "fp8 needs an NVIDIA GPU"),
        (dict(precision="fp8"), Capabilities(device_type="cuda", cuda_capability=(8, 0), has_torchao=True, device_name="A100"), "compute capability >= 8.9"),
        (dict(precision="fp8"), Capabilities(device_type="cuda", cuda_capability=(9, 0), has_torchao=False, device_name="H100"), "torchao"),
        (dict(strategy="fsdp", compression="powersgd"), CPU, "powersgd works with strategy ddp only"),
        (dict(compression="powersgd", powersgd_start_iteration=1), CPU, "must be > 1"),
        (dict(compression="powersgd", powersgd_rank=0), CPU, "powersgd_rank"),
        (dict(precision="bf16"), Capabilities(device_type="cuda", bf16_supported=False, cuda_capability=(7, 0), device_name="V100"), "bf16 is not supported"),
        (dict(compression="bf16"), Capabilities(device_type="cuda", bf16_supported=False, cuda_capability=(7, 0), device_name="V100"), "bf16 is not supported"),
        (dict(precision="fp64"), CPU, "precision 'fp64'"),
        (dict(strategy="zero3"), CPU, "strategy 'zero3'"),
        (dict(compression="batched_powersgd"), CPU, "compression 'batched_powersgd'"),
        (dict(workload="builtin:resnet"), CPU, "unknown built-in workload"),
        (dict(workload="no_colon"), CPU, "module:function"),
        (dict(batch_size=0), CPU, "batch_size"),
    ],
)
def test_unsupported_combinations_are_refused_with_a_message(changes, caps, match):
    with pytest.raises(ConfigError, match=match):
        validate(C.replace(**changes), caps)


def test_a_start_fraction_outside_zero_to_one_is_refused_and_a_tiny_job_still_gets_two_plain_steps():
    with pytest.raises(ConfigError, match="powersgd_start_fraction"):
        validate(C.replace(compression="powersgd", powersgd_start_fraction=1.5), CPU)
    validate(C.replace(compression="powersgd", max_steps=1), CPU)  # start = 2: never compresses, but valid


def test_powersgd_warmup_after_a_resume_runs_only_what_is_left_but_fills_the_memories():
    from kubetrain_trainer.compression import powersgd_warmup

    c = C.replace(compression="powersgd", max_steps=20000, powersgd_start_fraction=0.05)
    assert powersgd_warmup(c) == 1000
    assert powersgd_warmup(c, resumed_step=400) == 600
    assert powersgd_warmup(c, resumed_step=15000) == 2  # not another 1,000 uncompressed steps
    assert powersgd_warmup(c.replace(powersgd_error_feedback=False, powersgd_warm_start=False), resumed_step=15000) == 1


def test_every_cpu_mode_we_offer_validates():
    for precision in ("fp32", "tf32", "bf16", "fp16"):
        for compression in ("none", "fp16", "bf16", "powersgd"):
            validate(C.replace(precision=precision, compression=compression), CPU)
        for compression in ("none", "fp16", "bf16"):
            validate(C.replace(precision=precision, strategy="fsdp", compression=compression), CPU)
    assert "plain fp32" in validate(C.replace(precision="tf32"), CPU)[0]
    assert validate(C.replace(precision="fp8", strategy="fsdp"), H100) == []


def test_fsdp_mixed_precision_policy_mapping():
    from kubetrain_trainer.precision import PrecisionPlan

    p = PrecisionPlan("bf16", "fsdp", "none", "cpu").fsdp_mp_policy()
    assert (p.param_dtype, p.reduce_dtype, p.output_dtype) == (torch.bfloat16, torch.float32, None)
    p = PrecisionPlan("bf16", "fsdp", "fp16", "cpu").fsdp_mp_policy(root=True)
    assert (p.param_dtype, p.reduce_dtype, p.output_dtype) == (torch.bfloat16, torch.float16, torch.float32)
    p = PrecisionPlan("fp32", "fsdp", "bf16", "cpu").fsdp_mp_policy(root=True)
    assert (p.param_dtype, p.reduce_dtype) == (None, torch.bfloat16)
    assert PrecisionPlan("fp16", "ddp", "none", "cpu").uses_grad_scaler
    assert not PrecisionPlan("bf16", "fsdp", "none", "cpu").uses_autocast


# -- failure classification and the termination message ----------------------------------------


def _raised(exc_factory):
    try:
        exc_factory()
    except BaseException as e:  # noqa: BLE001
        return e


def test_failure_classification():
    from torch.distributed.elastic.rendezvous import RendezvousTimeoutError

    cases = [
        (ConfigError("precision fp8 needs an NVIDIA GPU"), "ConfigError", ExitCode.CONFIG_ERROR),
        (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), "OutOfMemory", ExitCode.OUT_OF_MEMORY),
        (MemoryError(), "OutOfMemory", ExitCode.OUT_OF_MEMORY),
        (RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory"), "OutOfMemory", ExitCode.OUT_OF_MEMORY),
        (RuntimeError("[../third_party/gloo/gloo/transport/tcp/pair.cc:534] Connection closed by peer [127.0.0.1]:123"), "CommunicationTimeout", ExitCode.COMMUNICATION_TIMEOUT),
        (torch.distributed.DistBackendError("NCCL communicator was aborted"), "CommunicationTimeout", ExitCode.COMMUNICATION_TIMEOUT),
        (RendezvousTimeoutError("rendezvous timed out"), "CommunicationTimeout", ExitCode.COMMUNICATION_TIMEOUT),
        (ValueError("timeout must be positive"), "UserError", ExitCode.USER_ERROR),
        (KeyError("hidden"), "UserError", ExitCode.USER_ERROR),
    ]
    for exc, reason, code in cases:
        c = failure.classify(exc)
        assert (c.reason, c.exit_code) == (reason, code), exc
    user = failure.classify(ValueError("bad shape\nexpected (8, 32) got (8, 31)"))
    assert user.message == "ValueError: expected (8, 32) got (8, 31)"
    chained = _raised(lambda: _reraise(torch.OutOfMemoryError("CUDA out of memory")))
    assert failure.classify(chained).reason == "OutOfMemory"


def _reraise(inner):
    try:
        raise inner
    except Exception as e:
        raise RuntimeError("step failed") from e


def test_termination_message_format_size_and_operator_parsing(tmp_path):
    from kubetrain.operator.failures import _from_message

    exc = _raised(lambda: (_ for _ in ()).throw(ValueError("x" * 10_000)))
    path = tmp_path / "termination-log"
    c = failure.report_failure(exc, path, restart=1, where="rank 0/2")
    text = path.read_text()
    assert len(text.encode()) <= 4096
    assert text.splitlines()[0].startswith("UserError: ValueError: xxx")
    assert "Restart: 1" in text and "Where: rank 0/2" in text
    assert _from_message(text)[0] == "UserError"
    assert c.exit_code == ExitCode.USER_ERROR
    assert _from_message(failure.format_message("OutOfMemory", "CUDA out of memory"))[0] == "OOMKilled"


def test_strongest_reason_of_an_attempt_wins_and_newer_attempts_replace(tmp_path):
    path = tmp_path / "termination-log"

    def write(reason, restart):
        return failure.write_termination_message(path, failure.format_message(reason, "m", restart=restart), reason, restart)

    assert write("OutOfMemory", 0)
    assert not write("CommunicationTimeout", 0)  # the peer that saw rank 0 die
    assert path.read_text().startswith("OutOfMemory:")
    assert write("CommunicationTimeout", 1)  # a later attempt
    assert path.read_text().startswith("CommunicationTimeout:")
    failure.replace_termination_message(path)
    assert path.read_text() == ""
    # Success replaces any failure of an earlier attempt with the result, which is no failure.
    assert write("OutOfMemory", 0)
    failure.replace_termination_message(path, format_result(FinalFigures(step=60, loss=2.5, tokens_per_second=900.0)))
    assert parse_result(path.read_text()) == FinalFigures(60, 2.5, 900.0)
    assert failure.parse_message(path.read_text()) is None


# -- torchrun flags and the torch-free launcher ---------------------------------------------------


def test_build_torchrun_args_is_pure_and_needs_no_torch():
    code = (
        "import sys; from kubetrain_trainer.local import build_torchrun_args; "
        "a = build_torchrun_args(min_nodes=1, max_nodes=4, nproc_per_node=8, endpoint='store:29400', rdzv_id='job-x', max_restarts=5, python='python'); "
        "import json; print(json.dumps([a, 'torch' in sys.modules]))"
    )
    out = subprocess.run([sys.executable, "-c", code], env=child_env(), capture_output=True, text=True, check=True)
    args, torch_loaded = json.loads(out.stdout)
    assert not torch_loaded
    assert args[:3] == ["python", "-m", "torch.distributed.run"]
    for flag in ("--nnodes=1:4", "--nproc-per-node=8", "--rdzv-backend=c10d", "--rdzv-endpoint=store:29400", "--rdzv-id=job-x", "--max-restarts=5"):
        assert flag in args
    conf = next(a for a in args if a.startswith("--rdzv-conf="))
    assert "is_host=false" in conf and "last_call_timeout=" in conf
    assert args[-3:] == ["python", "-m", "kubetrain_trainer"]


# -- PowerSGD memory repair under fp16 ----------------------------------------------------------------


def test_powersgd_memories_are_reset_after_a_non_finite_step():
    from kubetrain_trainer.compression import _sanitize_powersgd_memory, make_powersgd_state

    state = make_powersgd_state(C.replace(compression="powersgd"))
    state.error_dict[0] = torch.tensor([1.0, float("nan")])
    state.p_memory_dict[0] = torch.ones(2)
    state.q_memory_dict[0] = torch.tensor([float("inf")])
    state.error_dict[1] = torch.ones(2)
    assert _sanitize_powersgd_memory(state, 0)
    assert torch.equal(state.error_dict[0], torch.zeros(2)) and 0 not in state.p_memory_dict and 0 not in state.q_memory_dict
    assert not _sanitize_powersgd_memory(state, 1)


def test_compression_error_is_the_norm_ratio_over_a_step_and_none_without_compression_or_when_not_finite():
    from kubetrain_trainer.compression import CommCounter

    c = CommCounter()
    assert c.take_compression_error() is None
    c.add_compression_error(torch.tensor(1.0), torch.tensor(16.0))  # bucket 1: |e|^2 = 1, |g + e_prev|^2 = 16
    c.add_compression_error(torch.tensor(3.0), torch.tensor(48.0))  # bucket 2
    assert c.take_compression_error() == pytest.approx(0.25)  # sqrt(4 / 64), over the step's buckets
    assert c.take_compression_error() is None  # taken: the next step starts empty
    c.add_compression_error(torch.tensor(9.0), torch.tensor(4.0))
    assert c.take_compression_error() == 1.0  # capped
    c.add_compression_error(torch.tensor(float("inf")), torch.tensor(float("inf")))
    assert c.take_compression_error() is None
