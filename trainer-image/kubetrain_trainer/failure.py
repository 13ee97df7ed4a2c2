"""Why a worker failed, told to Kubernetes: the termination message and exit code.

The message's first line is ``Reason: message`` (what the operator parses, see
``kubetrain.operator.failures``); the lines after it are details for humans.
The whole message stays under 4 KiB, the kubelet's limit.

Reasons, strongest first (when several local workers fail in one attempt, the
strongest reason is kept: an OOM on rank 0 makes rank 1 see its peer vanish,
and the OOM is the root cause):

=====================  =========  ============================================
reason                 exit code  when
=====================  =========  ============================================
ConfigError            2          the configuration can never work
OutOfMemory            3          CUDA or host allocation failed
UserError              5          an exception from model, data or loss code
CommunicationTimeout   4          a collective or the rendezvous timed out or
                                  lost its peers (NCCL/gloo/store errors)
Preempted              0          SIGTERM: a checkpoint was written, then exit
=====================  =========  ============================================

torchrun itself exits 1 for any worker failure, so the pod's exit code is not
ours; the termination message is what carries the reason. A newer restart
attempt (``TORCHELASTIC_RESTART_COUNT``) always replaces an older message.

Torch-free: classification goes by exception type names and messages.
"""

from __future__ import annotations

import contextlib
import os
import re
import traceback
from dataclasses import dataclass
from pathlib import Path

from kubetrain.contract.vocabulary import OUT_OF_MEMORY_HEAD, ExitCode, FailureReason

MAX_MESSAGE_BYTES = 4096

# The message heads this trainer writes (the operator reads them with kubetrain.contract.vocabulary.MESSAGE_HEADS).
CONFIG_ERROR = FailureReason.CONFIG_ERROR.value
OUT_OF_MEMORY = OUT_OF_MEMORY_HEAD
USER_ERROR = FailureReason.USER_ERROR.value
COMM_TIMEOUT = FailureReason.COMMUNICATION_TIMEOUT.value
PREEMPTED = FailureReason.PREEMPTED.value

EXIT_CODES = {
    CONFIG_ERROR: ExitCode.CONFIG_ERROR,
    OUT_OF_MEMORY: ExitCode.OUT_OF_MEMORY,
    USER_ERROR: ExitCode.USER_ERROR,
    COMM_TIMEOUT: ExitCode.COMMUNICATION_TIMEOUT,
    PREEMPTED: 0,
}
PRIORITY = {PREEMPTED: 0, COMM_TIMEOUT: 1, USER_ERROR: 2, OUT_OF_MEMORY: 3, CONFIG_ERROR: 4}

EXIT_PEER_PREEMPTED = ExitCode.PEER_PREEMPTED  # the name main.py imports


class ConfigError(Exception):
    """The job's configuration can never work on this hardware/software: do not retry."""


_OOM_TYPES = {"OutOfMemoryError", "MemoryError"}
_OOM_TEXT = re.compile(
    r"out of memory|can't allocate memory|cannot allocate memory|not enough memory|CUBLAS_STATUS_ALLOC_FAILED",
    re.IGNORECASE,
)
_COMM_TYPES = {
    "DistError", "DistBackendError", "DistNetworkError", "DistStoreError",
    "RendezvousError", "RendezvousTimeoutError", "RendezvousConnectionError",
    "RendezvousClosedError", "RendezvousStateError", "TimeoutError", "StaleWorldError",
}
_COMM_TEXT = re.compile(
    r"timed out|timeout|connection (closed|reset|refused) by peer|connection reset|broken pipe|"
    r"NCCL (error|communicator)|ncclRemoteError|ncclSystemError|watchdog|gloo.*(read|write) error|"
    r"socket (closed|timeout)",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class Classified:
    reason: str
    message: str  # one line
    exit_code: int


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    cur: BaseException | None = exc
    while cur is not None and cur not in seen and len(seen) < 10:
        seen.append(cur)
        cur = cur.__cause__ or cur.__context__
    return seen


def _runtime(exc: BaseException) -> bool:
    # Text is only trusted on the error types torch and the OS raise for these
    # failures; a user's ValueError("timeout must be > 0") stays a UserError.
    return isinstance(exc, (RuntimeError, OSError))


def _last_line(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
    return lines[-1] if lines else ""


def _type_names(exc: BaseException) -> set[str]:
    return {cls.__name__ for cls in type(exc).__mro__}


def classify(exc: BaseException) -> Classified:
    """Map an exception (and its cause chain) to a reason, a one-line message and an exit code."""
    chain = _chain(exc)
    for e in chain:
        if isinstance(e, ConfigError) or CONFIG_ERROR in _type_names(e):
            return Classified(CONFIG_ERROR, _one_line(str(e)) or "invalid configuration", EXIT_CODES[CONFIG_ERROR])
    for e in chain:
        if _type_names(e) & _OOM_TYPES or (_runtime(e) and _OOM_TEXT.search(str(e))):
            return Classified(OUT_OF_MEMORY, f"{type(e).__name__}: {_last_line(e)}"[:500], EXIT_CODES[OUT_OF_MEMORY])
    for e in chain:
        if _type_names(e) & _COMM_TYPES or (_runtime(e) and _COMM_TEXT.search(str(e))):
            return Classified(COMM_TIMEOUT, f"{type(e).__name__}: {_last_line(e)}"[:500], EXIT_CODES[COMM_TIMEOUT])
    return Classified(USER_ERROR, f"{type(exc).__name__}: {_last_line(exc)}"[:500], EXIT_CODES[USER_ERROR])


def _one_line(text: str) -> str:
    return " ".join(text.split())[:500]


def format_message(reason: str, message: str, details: str = "", restart: int = 0, where: str = "") -> str:
    """``Reason: message`` then ``Restart: n``, ``Where: ...`` and details; at most 4 KiB of UTF-8."""
    head = f"{reason}: {_one_line(message)}\nRestart: {restart}\n"
    if where:
        head += f"Where: {where}\n"
    text = head + ("\n" + details.strip() + "\n" if details.strip() else "")
    raw = text.encode("utf-8")
    if len(raw) <= MAX_MESSAGE_BYTES:
        return text
    # Keep the head and the end of the details (the traceback's last frames matter most).
    budget = MAX_MESSAGE_BYTES - len(head.encode("utf-8")) - len("\n…\n".encode("utf-8"))
    tail = details.strip().encode("utf-8")[-max(budget, 0):].decode("utf-8", errors="ignore")
    return (head + "\n…\n" + tail)[:MAX_MESSAGE_BYTES]


def parse_message(text: str) -> tuple[str, str, int] | None:
    """(reason, message, restart) of a message this module wrote, or None."""
    first, _, rest = text.strip().partition("\n")
    reason, sep, message = first.partition(":")
    if not sep or reason.strip() not in PRIORITY:
        return None
    m = re.search(r"^Restart: (\d+)$", rest, re.MULTILINE)
    return reason.strip(), message.strip(), int(m.group(1)) if m else 0


def write_termination_message(path: str | os.PathLike, text: str, reason: str, restart: int) -> bool:
    """Write ``text`` unless the file already holds a stronger reason from the same (or a newer) attempt.

    Local workers of one pod share the file; ``flock`` makes check-and-write atomic.
    Returns whether the file was written. Never raises: failing to report must
    not hide the original error.
    """
    try:
        p = Path(path)
        if str(p) != "/dev/termination-log":
            p.parent.mkdir(parents=True, exist_ok=True)
        with open(p, "a+", encoding="utf-8") as fh:
            with _locked(fh):
                fh.seek(0)
                existing = parse_message(fh.read())
                if existing is not None:
                    old_reason, _, old_restart = existing
                    if old_restart > restart or (old_restart == restart and PRIORITY[old_reason] >= PRIORITY[reason]):
                        return False
                fh.seek(0)
                fh.truncate()
                fh.write(text)
                fh.flush()
        return True
    except Exception:  # noqa: BLE001 - reporting is best effort
        return False


def replace_termination_message(path: str | os.PathLike, text: str = "") -> None:
    """Replace the file's content with ``text``, empty by default (after success, so an earlier attempt's failure
    is not shown as the pod's reason; ``text``: the completed worker's result, :mod:`kubetrain.contract.result`)."""
    with contextlib.suppress(Exception):
        with open(path, "a+", encoding="utf-8") as fh, _locked(fh):
            fh.truncate(0)
            fh.write(text[:MAX_MESSAGE_BYTES])
            fh.flush()


@contextlib.contextmanager
def _locked(fh):
    try:
        import fcntl

        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
    except Exception:  # noqa: BLE001 - no flock (e.g. some special files): write unlocked
        yield
        return
    try:
        yield
    finally:
        fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def report_failure(exc: BaseException, path: str | os.PathLike, restart: int = 0, where: str = "") -> Classified:
    """Classify ``exc``, write the termination message and return the classification."""
    c = classify(exc)
    details = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)[-12:])
    write_termination_message(path, format_message(c.reason, c.message, details, restart, where), c.reason, restart)
    return c
