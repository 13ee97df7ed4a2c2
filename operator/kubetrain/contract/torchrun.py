"""torchrun's command line for a kubetrain worker: one builder for pods and local runs.

Import-light on purpose (no torch, no kopf): the operator image builds these
arguments for pods, the trainer's local launcher builds them for processes.
"""

from __future__ import annotations

from dataclasses import dataclass

# Every agent sets this: without it a running job cannot scale up (the new
# agent times out waiting for the next round's MASTER_ADDR). Exercised by
# tests/trainer/test_elastic.py::test_adding_an_agent_scales_up_without_losing_steps.
ELASTIC_ENV = {"TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1"}

STORE_PORT = 29400
BUILTIN_TRAINER = ("python", "-m", "kubetrain_trainer")


@dataclass(frozen=True)
class RendezvousTimeouts:
    """c10d rendezvous settings (seconds). join covers slow image pulls; last_call
    is how long a round waits for late joiners; heartbeat expires a dead agent."""

    join: int = 900
    last_call: int = 15
    close: int = 30
    heartbeat: int = 5
    keep_alive_interval: int = 2
    keep_alive_max_attempt: int = 3

    def conf(self) -> str:
        # is_host=false: no agent may host the store; it lives in its own
        # process, so losing any agent cannot end the job.
        return (
            f"is_host=false,join_timeout={self.join},last_call_timeout={self.last_call},"
            f"close_timeout={self.close},heartbeat_timeout={self.heartbeat},"
            f"keep_alive_interval={self.keep_alive_interval},keep_alive_max_attempt={self.keep_alive_max_attempt}"
        )


def torchrun_args(
    *,
    min_nodes: int,
    max_nodes: int,
    nproc_per_node: int,
    endpoint: str,
    rdzv_id: str,
    max_restarts: int,
    program: tuple[str, ...] | list[str] = BUILTIN_TRAINER,
    local_addr: str | None = None,
    timeouts: RendezvousTimeouts = RendezvousTimeouts(),
    monitor_interval: float = 1.0,
    shutdown_timeout: int | None = None,
) -> list[str]:
    """The full argv: ``python -m torch.distributed.run <flags> --no-python <program...>``."""
    args = [
        "python",
        "-m",
        "torch.distributed.run",
        f"--nnodes={min_nodes}:{max_nodes}",
        f"--nproc-per-node={nproc_per_node}",
        "--rdzv-backend=c10d",
        f"--rdzv-endpoint={endpoint}",
        f"--rdzv-id={rdzv_id}",
        f"--rdzv-conf={timeouts.conf()}",
        f"--max-restarts={max_restarts}",
        f"--monitor-interval={monitor_interval}",
    ]
    if shutdown_timeout is not None:
        # SIGTERM -> SIGKILL grace for the workers: time to write the SIGTERM checkpoint.
        args.append(f"--shutdown-timeout={shutdown_timeout}")
    if local_addr:
        # Peers reach this agent (a round's MASTER_ADDR) by this address; a pod's
        # hostname does not resolve in cluster DNS, its IP does.
        args.append(f"--local-addr={local_addr}")
    return [*args, "--no-python", *program]
