"""A training's work dir: checked before anything loads, and locked while a training runs in it.

    work_dir = prepare_work_dir(cfg.work_dir)     # a file, or a folder that cannot be written: one error
    with WorkDirLock(work_dir):                   # a second training in the same folder refuses at once
        ...

The lock is ``fcntl.flock`` on ``WORK_DIR/.lock``: the operating system releases it when the process ends,
however it ends (kill -9 included), so a lock is never stale. The file stays behind (removing it would race
with a second run) and holds the pid, host, start time and command of the holder, which the refusal names.
On a system without ``fcntl`` (Windows) no lock is taken and a warning says so.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path

from flow3d.log import get_logger

logger = get_logger(__name__)

LOCK_NAME = ".lock"

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None


def prepare_work_dir(work_dir: str | os.PathLike) -> Path:
    """Create ``work_dir`` if needed and check that files can be written in it; ``ValueError`` otherwise.

    Called first, before the data loads, so that a wrong ``--work-dir`` costs nothing."""
    path = Path(work_dir)
    if path.exists() and not path.is_dir():
        raise ValueError(f"--work-dir {path} is a file, not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ValueError(f"--work-dir {path} cannot be created ({e.strerror or e})") from None
    probe = path / f".write-test-{os.getpid()}"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise ValueError(f"--work-dir {path} is not writable ({e.strerror or e})") from None
    return path


class WorkDirLock:
    """An exclusive lock on a work dir for the life of a training (a context manager; see the module docstring)."""

    def __init__(self, work_dir: str | os.PathLike):
        self.path = Path(work_dir) / LOCK_NAME
        self._f = None

    def acquire(self) -> None:
        if fcntl is None:
            logger.warning("no file locking on this system: nothing stops a second training in %s", self.path.parent)
            return
        f = open(self.path, "a+", encoding="utf-8")
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = _describe_holder(f.read())
            f.close()
            raise ValueError(
                f"work dir {self.path.parent} is in use by another training ({holder}); wait for it to finish, "
                "stop it, or use another --work-dir"
            ) from None
        except OSError:
            f.close()
            raise
        f.seek(0)
        f.truncate()
        f.write(
            json.dumps(
                {
                    "pid": os.getpid(),
                    "host": socket.gethostname(),
                    "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                    "command": " ".join(sys.argv),
                }
            )
            + "\n"
        )
        f.flush()
        self._f = f

    def release(self) -> None:
        if self._f is not None:
            self._f.close()  # closing the file releases the flock
            self._f = None

    def __enter__(self) -> "WorkDirLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _describe_holder(text: str) -> str:
    try:
        info = json.loads(text)
        return f"pid {info['pid']} on {info['host']}, started {info['started']}: {info['command']}"
    except (ValueError, KeyError, TypeError):
        return "a process that has not recorded itself yet"


__all__ = ["LOCK_NAME", "WorkDirLock", "prepare_work_dir"]
