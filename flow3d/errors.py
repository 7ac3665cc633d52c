"""The package's own exceptions, beside ``ValueError`` (bad input: a file or a field) and ``OSError`` (the file
system: a full disk, a missing permission). The command-line wrapper :mod:`flow3d.cli` turns all of them into
one line and an exit code."""

from __future__ import annotations

import signal


class TrainingError(RuntimeError):
    """A run that cannot go on for a reason the user can act on (e.g. non-finite losses step after step)."""


class Interrupted(Exception):
    """A run stopped by a signal (SIGINT, SIGTERM) after saving what it had.

    ``str(exc)`` is the one line a command prints (what was saved, how to go on); ``exit_code`` is the
    shell's convention, 128 + the signal number (130 for SIGINT, 143 for SIGTERM).
    """

    def __init__(self, signum: int, message: str):
        super().__init__(message)
        self.signum = int(signum)

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def signal_name(signum: int) -> str:
    """'SIGINT', 'SIGTERM', ... (the number when it has no name)."""
    try:
        return signal.Signals(signum).name
    except ValueError:
        return str(signum)


__all__ = ["Interrupted", "TrainingError", "signal_name"]
