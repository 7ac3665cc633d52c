"""The one wrapper of every command-line entry point (``run_training.py``, ``run_val.py``, ``python -m
flow3d.<tool>``): expected failures as one line, ``--debug``, exit codes, signals.

    def main(argv: list[str] | None = None):
        return run_main(_main, argv)        # _main(argv) parses with tyro and does the work

What a user sees, and the exit codes:

- 0: done.
- 1: an expected failure, as ONE line on stderr, ``error: <message>``: bad input naming the file or the
  field (``ValueError``), the file system (``OSError``: a full disk, a missing permission; the message names
  the file), a run that cannot go on (:class:`flow3d.errors.TrainingError`), out of memory (CUDA's, the CPU
  allocator's ``RuntimeError``, ``MemoryError``: "out of memory: ..." with what to do).
- 2: a usage error (tyro prints it).
- 128 + the signal: interrupted, 130 for SIGINT (Ctrl-C), 143 for SIGTERM (Ray, SLURM and the sweep runner
  send it), with one line saying what happened. SIGTERM raises an exception here, as Ctrl-C does, so
  ``finally`` blocks run and atomic writes remove their temporaries. The trainer handles both signals
  itself while it trains (it saves ``last.ckpt`` at the step boundary, see :mod:`flow3d.train.trainer`).

``--debug`` anywhere in the arguments, or the environment variable ``FLOW3D_DEBUG=1``, re-raises expected
failures with their traceback. An unexpected exception (a bug) always shows its traceback.
"""

from __future__ import annotations

import errno
import os
import re
import signal
import sys
import threading
from contextlib import contextmanager
from typing import Callable, Iterator, TypeVar

from flow3d.errors import Interrupted, TrainingError, signal_name

T = TypeVar("T")

DEBUG_FLAG = "--debug"
DEBUG_ENV = "FLOW3D_DEBUG"

_HINTS = {
    errno.ENOSPC: "the disk is full: free some space and run the same command again",
    errno.EDQUOT: "the disk quota is exceeded: free some space and run the same command again",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "no permission",
}


def describe(exc: BaseException) -> str:
    """One line for an expected failure: the message (with the file of an ``OSError``), whitespace collapsed."""
    if isinstance(exc, OSError) and exc.strerror:
        files = " -> ".join(str(f) for f in (exc.filename, exc.filename2) if f is not None)
        msg = f"{exc.strerror}: {files}" if files else exc.strerror
        hint = _HINTS.get(exc.errno or -1)
        if hint and hint.lower() not in msg.lower():
            msg += f" ({hint})"
    elif type(exc).__name__ == "OutOfMemoryError" or is_cpu_out_of_memory(exc):  # CUDA's, the CPU allocator's
        text = re.sub(r"^\[enforce fail at [^\]]*\]\s*(err == 0\.\s*)?", "", str(exc)) or "MemoryError"
        msg = f"out of memory: {text} ({OUT_OF_MEMORY_ADVICE})"
    else:
        msg = str(exc) or type(exc).__name__
    return " ".join(msg.split())


OUT_OF_MEMORY_ADVICE = (
    "free memory (close other programs), or make the job smaller: fewer Gaussians, a smaller batch, "
    "smaller frames or a shorter clip"
)


def is_cpu_out_of_memory(exc: BaseException) -> bool:
    """``MemoryError``, or the ``RuntimeError`` of torch's CPU allocator (``DefaultCPUAllocator: can't allocate
    memory``)."""
    if isinstance(exc, MemoryError):
        return True
    text = str(exc) if isinstance(exc, RuntimeError) else ""
    return "DefaultCPUAllocator" in text or "can't allocate memory" in text or "not enough memory" in text


def _expected() -> tuple[type[BaseException], ...]:
    types: list[type[BaseException]] = [ValueError, OSError, TrainingError, MemoryError]
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(getattr(torch, "OutOfMemoryError", None), type):
        types.append(torch.OutOfMemoryError)
    return tuple(types)


def debug_requested(argv: list[str]) -> tuple[bool, list[str]]:
    """(``--debug`` given or ``FLOW3D_DEBUG`` set, the arguments without ``--debug``)."""
    debug = DEBUG_FLAG in argv or os.environ.get(DEBUG_ENV, "") not in ("", "0")
    return debug, [a for a in argv if a != DEBUG_FLAG]


@contextmanager
def sigterm_raises() -> Iterator[None]:
    """Within the block, SIGTERM raises :class:`flow3d.errors.Interrupted` (main thread only; restored after)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise Interrupted(signum, f"terminated by {signal_name(signum)}")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_main(fn: Callable[[list[str]], T], argv: list[str] | None = None) -> T:
    """Run ``fn(argv)`` (``argv`` defaults to ``sys.argv[1:]``) as a command: see the module docstring.

    Returns what ``fn`` returns; every failure leaves through ``SystemExit`` (``"error: ..."`` -> exit 1,
    an interrupt -> 128 + signal), so tests can call a command's ``main`` in-process.
    """
    debug, argv = debug_requested(list(sys.argv[1:] if argv is None else argv))
    with sigterm_raises():
        try:
            return fn(argv)
        except Interrupted as e:
            print(describe(e), file=sys.stderr, flush=True)
            raise SystemExit(e.exit_code) from None
        except KeyboardInterrupt:
            if debug:
                raise
            print("interrupted by SIGINT", file=sys.stderr, flush=True)
            raise SystemExit(128 + signal.SIGINT) from None
        except _expected() as e:
            if debug:
                raise
            raise SystemExit(f"error: {describe(e)}") from None
        except RuntimeError as e:
            if debug or not is_cpu_out_of_memory(e):
                raise
            raise SystemExit(f"error: {describe(e)}") from None


__all__ = [
    "DEBUG_ENV",
    "DEBUG_FLAG",
    "debug_requested",
    "describe",
    "is_cpu_out_of_memory",
    "run_main",
    "sigterm_raises",
]
