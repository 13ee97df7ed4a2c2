"""The stop request of a process: which signal asked it to stop, and how often. Torch-free.

One vocabulary for "stop cleanly": the trainer (SIGTERM/SIGINT from torchrun,
as on pod deletion) and ``kubetrain run`` (SIGTERM/SIGINT/SIGHUP from a user,
a terminal or ``timeout``) record the signal here and act on it in their own
loop, never inside the handler: a handler that raised could cut a save or a
``Popen`` in half.
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator

TRAINER_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopFlag:
    """Set by the first stop signal; ``count`` tells a second one (an impatient user) from the first."""

    def __init__(self, signals: tuple[signal.Signals, ...] = TRAINER_SIGNALS) -> None:
        self.signals = signals
        self.signum: int | None = None
        self.count = 0

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @property
    def exit_code(self) -> int | None:
        """The shell's code for "ended by this signal" (128 + signal number), or None when no stop was asked."""
        return None if self.signum is None else 128 + self.signum

    def _handle(self, signum, frame) -> None:  # noqa: ARG002
        self.count += 1
        if self.signum is None:
            self.signum = signum

    def install(self) -> "StopFlag":
        for sig in self.signals:
            signal.signal(sig, self._handle)
        return self

    @contextlib.contextmanager
    def installed(self) -> Iterator["StopFlag"]:
        """Handle the signals while the block runs, then put the previous handlers back."""
        previous = {sig: signal.getsignal(sig) for sig in self.signals}
        self.install()
        try:
            yield self
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
