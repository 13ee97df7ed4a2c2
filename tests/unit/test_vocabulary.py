"""One vocabulary: what the trainer writes, the operator reads as the same reason, and the API lists it."""

from __future__ import annotations

import typing

import pytest

from kubetrain.api.models import FailurePolicy, Phase, RetryableReason
from kubetrain.contract.vocabulary import (ACTIVE_PHASES, DEFAULT_RETRY_ON, NEVER_RETRIED, RETRYABLE_REASONS, TERMINAL_PHASES,
                                           ExitCode, FailureReason)
from kubetrain.contract.vocabulary import Phase as PhaseEnum
from kubetrain.operator.failures import classify
from kubetrain_trainer import failure as trainer_failure


def _failed_pod(message: str, exit_code: int) -> dict:
    terminated = {"exitCode": exit_code, "reason": "Error", "message": message}
    return {"metadata": {"name": "gpt-w0-0"},
            "status": {"phase": "Failed", "containerStatuses": [{"name": "trainer", "state": {"terminated": terminated}}]}}


@pytest.mark.parametrize("head", sorted(trainer_failure.PRIORITY))
def test_every_reason_the_trainer_writes_is_read_back_by_the_operator(head):
    text = trainer_failure.format_message(head, "what happened", "Traceback ...", restart=1)
    # torchrun exits 1 for any worker failure: the message alone must carry the reason.
    got = classify(_failed_pod(text, 1))
    expected = FailureReason.OOM_KILLED if head == trainer_failure.OUT_OF_MEMORY else FailureReason(head)
    assert got.reason is expected and got.message == "what happened"


@pytest.mark.parametrize("code", [c for c in ExitCode if c != ExitCode.PEER_PREEMPTED])
def test_every_exit_code_the_trainer_uses_for_a_failure_is_classified(code):
    reason = next(r for r, c in trainer_failure.EXIT_CODES.items() if c == code)
    got = classify(_failed_pod("", code)).reason
    assert got is not FailureReason.UNKNOWN and got == (FailureReason.OOM_KILLED if reason == trainer_failure.OUT_OF_MEMORY else reason)


def test_the_api_enums_are_the_vocabulary():
    assert typing.get_args(Phase) == tuple(p.value for p in PhaseEnum)
    assert set(typing.get_args(RetryableReason)) == {r.value for r in RETRYABLE_REASONS}
    assert not NEVER_RETRIED & set(typing.get_args(RetryableReason))
    assert FailurePolicy().retry_on == [r.value for r in DEFAULT_RETRY_ON]
    assert not TERMINAL_PHASES & set(ACTIVE_PHASES)
