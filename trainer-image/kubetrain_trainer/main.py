"""The worker entrypoint torchrun starts: ``python -m kubetrain_trainer``.

Reads the contract, refuses impossible configurations (exit 2) before any
collective, joins the process group (NCCL on CUDA, gloo on CPU, with the
contract's timeout), serves metrics from local rank 0, trains, and reports a
failure as a termination message + exit code (see :mod:`.failure`).
"""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import Sequence

PROCESS_START = time.time()

import torch.distributed as dist  # noqa: E402
from torch.distributed.elastic.multiprocessing.errors import get_error_handler, record  # noqa: E402

from kubetrain.contract import TERMINATION_MESSAGE_PATH, TrainerContract  # noqa: E402
from kubetrain.contract.result import FinalFigures, format_result  # noqa: E402

from kubetrain_trainer.config import detect_capabilities, validate  # noqa: E402
from kubetrain_trainer.factory import build_trainer  # noqa: E402
from kubetrain_trainer.failure import (  # noqa: E402
    EXIT_PEER_PREEMPTED,
    PREEMPTED,
    ConfigError,
    replace_termination_message,
    format_message,
    report_failure,
    write_termination_message,
)
from kubetrain_trainer.hooks import StepHook  # noqa: E402
from kubetrain_trainer.process_exit import exit_process  # noqa: E402
from kubetrain_trainer.stop_flag import StopFlag  # noqa: E402
from kubetrain_trainer.trainer import DistEnv  # noqa: E402

log = logging.getLogger("kubetrain_trainer")


def setup_logging(env: DistEnv) -> None:
    """INFO from global rank 0 only; warnings and errors from every rank."""
    level = logging.INFO if env.rank == 0 else logging.WARNING
    logging.basicConfig(
        level=level,
        format=f"%(asctime)s [rank {env.rank}/{env.world_size}] %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
        force=True,
    )


def _contract() -> TrainerContract:
    try:
        return TrainerContract.from_env()
    except (ValueError, TypeError) as exc:
        raise ConfigError(str(exc)) from exc


def run(env: DistEnv, stop: StopFlag, hooks: Sequence[StepHook] = ()) -> tuple[str, FinalFigures, TrainerContract]:
    """Everything between reading the contract and the end of training; returns (outcome, final figures, contract)."""
    contract = _contract()
    caps = detect_capabilities()
    for warning in validate(contract, caps):
        log.warning("%s", warning)
    trainer = build_trainer(contract, env, caps=caps, stop=stop, hooks=hooks, process_start=PROCESS_START)
    server = None
    if trainer.metrics is not None:
        from kubetrain_trainer.metrics import serve

        try:
            server = serve(trainer.metrics.registry, contract.metrics_port)
            log.info("metrics on :%d/metrics", contract.metrics_port)
        except OSError as exc:
            log.warning("metrics port %d unavailable (%s): metrics are not served", contract.metrics_port, exc)
    try:
        result = trainer.fit()
    finally:
        if server is not None:
            server.shutdown()
    if result.outcome == "completed" and result.first_loss is not None:
        log.info(
            "done: step %d, loss %.4f -> %.4f, %.0f tokens/s (job)",
            result.step, result.first_loss, result.last_loss, result.tokens_per_second,
        )
    return result.outcome, FinalFigures(result.step, result.last_loss, result.tokens_per_second), contract


@record
def main(hooks: Sequence[StepHook] = ()) -> None:
    """``hooks``: step hooks for a benchmark that runs this entrypoint unchanged (bench/probe_kubetrain.py)."""
    env = DistEnv.from_environ()
    setup_logging(env)
    stop = StopFlag().install()
    message_path = os.environ.get("KUBETRAIN_TERMINATION_MESSAGE_PATH", TERMINATION_MESSAGE_PATH)
    where = f"rank {env.rank}/{env.world_size}, local rank {env.local_rank}, pod {os.environ.get('KUBETRAIN_POD_NAME', '')}".strip(", ")
    try:
        outcome, final, contract = run(env, stop, hooks)
    except BaseException as exc:  # noqa: BLE001 - every failure is reported, then exits with its code
        if isinstance(exc, SystemExit):
            raise
        classified = report_failure(exc, message_path, restart=env.restart_count, where=where)
        log.error("%s: %s", classified.reason, classified.message, exc_info=exc)
        get_error_handler().record_exception(exc)  # torchrun's error file, as @record would
        # Skips interpreter teardown, where a broken process group can hang in destructors; the atexit
        # handlers it runs touch no process group (see process_exit).
        exit_process(classified.exit_code)

    if dist.is_initialized():
        if outcome == "completed":
            dist.destroy_process_group()
    if outcome == "sigterm":
        write_termination_message(
            message_path,
            format_message(PREEMPTED, f"stopped by signal at step {final.step}; checkpoint written", restart=env.restart_count, where=where),
            PREEMPTED,
            env.restart_count,
        )
        exit_process(0)
    if outcome == "peer_preempted":
        log.warning("a peer was preempted; checkpoint written at step %d; exiting so the agent re-forms the group", final.step)
        exit_process(EXIT_PEER_PREEMPTED)
    if env.local_rank == 0:
        # The pod's result, read by the operator when the pod ends (a metrics read may never see the last step).
        replace_termination_message(message_path, format_result(final))
    exit_process(0)  # see process_exit: gloo threads may still hold Python callbacks


if __name__ == "__main__":
    main()
