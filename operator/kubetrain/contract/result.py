"""A completed worker's final figures, told to the operator through the pod's termination message.

Why: the operator otherwise learns a job's step, loss and tokens/s only by reading the
trainer's /metrics every few seconds. A job (or a sweep's trial) that finishes between two
reads would end with no figures, or with figures from before its last step, and a sweep would
judge the trial by them. The kubelet keeps a container's termination message in the pod's
status, which the operator already watches: the last figures arrive with the pod's end.

Part of the contract, standard library only: the trainer writes it (``format_result``), the
operator reads it (``parse_result``). It never collides with a failure message: its head,
``Completed``, is not a failure reason.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

COMPLETED_HEAD = "Completed"
_RESULT = "Result: "


@dataclass(frozen=True)
class FinalFigures:
    step: int
    loss: float | None = None  # the all-rank mean loss of the last step
    tokens_per_second: float | None = None  # the job's, over the last throughput window


def format_result(figures: FinalFigures) -> str:
    """Two lines: one for people (``kubectl describe pod``), one JSON line for the operator."""
    data: dict[str, float | int] = {"step": int(figures.step)}
    if figures.loss is not None and math.isfinite(figures.loss):
        data["loss"] = figures.loss
    if figures.tokens_per_second is not None and math.isfinite(figures.tokens_per_second):
        data["tokensPerSecond"] = figures.tokens_per_second
    human = f"{COMPLETED_HEAD}: step {figures.step}" + (f", loss {data['loss']:.4f}" if "loss" in data else "")
    return f"{human}\n{_RESULT}{json.dumps(data, separators=(',', ':'))}\n"


def parse_result(message: str | None) -> FinalFigures | None:
    """The figures in a termination message, or None when it is not a completed worker's (or is malformed:
    anyone can write a container's termination message)."""
    if not message or not message.startswith(f"{COMPLETED_HEAD}:"):
        return None
    for line in message.splitlines()[1:]:
        if not line.startswith(_RESULT):
            continue
        try:
            data = json.loads(line[len(_RESULT):])
            step = data["step"]
            if not isinstance(step, int) or isinstance(step, bool) or step < 0:
                return None
            return FinalFigures(step, _number(data.get("loss")), _number(data.get("tokensPerSecond")))
        except (ValueError, KeyError, TypeError):
            return None
    return None


def _number(value: object) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None
