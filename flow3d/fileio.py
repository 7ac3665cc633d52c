"""Atomic file writes: the one helper every writer of a user-visible file goes through.

A file is written under a temporary name in its own folder and renamed over the target with
``os.replace`` (atomic on POSIX and Windows when both names are on one file system), so a crash or an
interrupt never leaves a half-written checkpoint, config, cache or video: readers see the old file or
the new one. The temporary name keeps the target's suffix (``.mp4``, ``.png``) for writers that pick
their format from it, and starts with a dot so folder listings and globs of the target pattern skip it.

    with atomic_path(out / "depth.mp4") as tmp:   # any writer that takes a path
        writer = imageio.get_writer(tmp, ...)
    write_json(work_dir / "train_stats.json", stats)
    torch_save(ckpt_dir / "last.ckpt", payload)

The temporary name also says who writes it: ``.<stem>.<host>-<pid>.<random>.tmp<suffix>``. A process killed
while writing (kill -9, a lost node) leaves its temporary behind; :func:`remove_stale_temporaries` removes
the ones whose writer is no longer running on this host (the caches, the checkpoints folder and the work
dir call it on every run). A failed write (a full disk, a missing permission) raises ``OSError`` naming
the target file, and the target keeps its old content.
"""

from __future__ import annotations

import json
import math
import os
import re
import socket
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_umask()
"""Mode of every file written here: what ``open(path, "w")`` would give under the process's umask."""

_HOST = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname() or "host")[:40] or "host"
_TEMP_RE = re.compile(r"^\..*\.(?P<host>[A-Za-z0-9-]+)-(?P<pid>\d+)\.[^.]+\.tmp(\.[^.]*)?$")

__all__ = [
    "atomic_path",
    "np_savez",
    "owner_tag",
    "process_alive",
    "remove_stale_temporaries",
    "replace_dir",
    "set_aside",
    "torch_save",
    "write_bytes",
    "write_json",
    "write_text",
]


def owner_tag() -> str:
    """``<host>-<pid>`` of this process: put in temporary names so that a later run knows whose they are."""
    return f"{_HOST}-{os.getpid()}"


def process_alive(pid: int) -> bool:
    """Whether a process ``pid`` runs on this host (one of another user counts as running)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return False
    return True


def _named(err: OSError, path: Path) -> OSError:
    """``err`` with ``path`` as its file name when it has none (messages then say which file failed)."""
    if err.filename is None and err.errno is not None:
        return type(err)(err.errno, err.strerror or os.strerror(err.errno), str(path))
    return err


@contextmanager
def atomic_path(path: str | os.PathLike, durable: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; when the block ends without an exception it is renamed
    over ``path``, otherwise removed. The parent folder is created if needed. ``durable``: the data is
    flushed to the disk (``fsync``) before the rename, so a power cut cannot leave an empty file either.
    An ``OSError`` of the block (a full disk, ...) is raised with ``path`` as its file name."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.{owner_tag()}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        try:
            yield tmp
            if durable:
                fd = os.open(tmp, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
            os.chmod(tmp, _FILE_MODE)  # mkstemp makes 0600; a user's files get the usual permissions
            os.replace(tmp, path)
        except OSError as e:
            raise _named(e, path) from e
    finally:
        if tmp.exists():
            tmp.unlink()


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8, newlines as given) to ``path`` atomically."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8", newline="") as f:
        f.write(text)


def _finite_or_none(obj: Any) -> Any:
    """``obj`` with every non-finite float (NaN, +-Inf) replaced by None, in dicts, lists and tuples."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite_or_none(v) for v in obj]
    return obj


def write_json(path: str | os.PathLike, obj: Any, **dumps_kwargs) -> None:
    """``json.dumps(obj, indent=2, **dumps_kwargs)`` plus a final newline, written atomically.

    The file is always valid JSON: a non-finite float (NaN, Inf) is written as ``null``."""
    text = json.dumps(_finite_or_none(obj), **{"indent": 2, **dumps_kwargs, "allow_nan": False})
    write_text(path, text + "\n")


def np_savez(path: str | os.PathLike, arrays: dict) -> None:
    """``np.savez`` of ``arrays`` (name -> array) to ``path`` atomically (the name is used as given)."""
    import numpy as np

    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)


class _RecordingWriter:
    """A file object for ``torch.save`` that remembers the first ``OSError`` of a write: torch reports a failed
    write as a ``RuntimeError`` without the cause (e.g. "unexpected pos 704 vs 598" on a full disk)."""

    def __init__(self, f):
        self.f, self.error = f, None

    def write(self, data) -> int:
        try:
            return self.f.write(data)
        except OSError as e:
            self.error = self.error or e
            raise

    def flush(self) -> None:
        self.f.flush()


def torch_save(path: str | os.PathLike, obj: Any) -> None:
    """``torch.save(obj)`` to ``path`` atomically and durably (``fsync`` before the rename). A failed write
    raises the ``OSError`` (a full disk, ...) naming ``path``; the old file at ``path`` is kept."""
    import torch

    with atomic_path(path, durable=True) as tmp, open(tmp, "wb") as f:
        w = _RecordingWriter(f)
        try:
            torch.save(obj, w)
        except RuntimeError:
            if w.error is not None:
                raise w.error from None
            raise


def set_aside(path: str | os.PathLike, tag: str) -> Path:
    """Rename ``path`` to ``<name>.<tag>`` beside it (``<name>.<tag>.1``, ... when taken); returns the new path.
    For a file that is kept for the user but must not be read again (e.g. an unreadable checkpoint)."""
    path = Path(path)
    new = path.with_name(f"{path.name}.{tag}")
    k = 0
    while new.exists():
        k += 1
        new = path.with_name(f"{path.name}.{tag}.{k}")
    os.replace(path, new)
    return new


def remove_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Remove the temporaries of :func:`atomic_path` in ``folder`` (not recursive) whose writer was killed.

    A temporary is stale when its name says this host and its process no longer runs; a temporary of a
    live process, or of another host (a shared file system), is left alone. Returns the removed paths.
    """
    folder = Path(folder)
    removed = []
    try:
        entries = list(folder.iterdir())
    except OSError:  # missing or unreadable: nothing to clean
        return removed
    for p in entries:
        m = _TEMP_RE.match(p.name)
        if m is None or m["host"] != _HOST or process_alive(int(m["pid"])) or not p.is_file():
            continue
        try:
            p.unlink()
            removed.append(p)
        except FileNotFoundError:
            pass  # another run removed it first
    return removed


def move_into_place(finished: str | os.PathLike, target: str | os.PathLike) -> None:
    """Put the finished file ``finished`` (written elsewhere on the same file system, e.g. by a compiler) at
    ``target`` with one rename: readers see the old file or the whole new one, never a part."""
    os.replace(finished, target)


def replace_dir(staging: str | os.PathLike, target: str | os.PathLike) -> None:
    """Put the finished folder ``staging`` in place of ``target`` (which may not exist).

    The old ``target`` is renamed aside first and removed only once ``staging`` is in place, so an
    interrupted swap loses nothing (at worst a hidden ``.<name>.old-<pid>`` folder is left beside it).
    """
    import shutil

    staging, target = Path(staging), Path(target)
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.replace(target, old)
    os.replace(staging, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
