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
"""

from __future__ import annotations

import json
import os
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

__all__ = ["atomic_path", "np_savez", "replace_dir", "torch_save", "write_bytes", "write_json", "write_text"]


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; when the block ends without an exception it is renamed
    over ``path``, otherwise removed. The parent folder is created if needed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        os.chmod(tmp, _FILE_MODE)  # mkstemp makes 0600; a user's files get the usual permissions
        os.replace(tmp, path)
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


def write_json(path: str | os.PathLike, obj: Any, **dumps_kwargs) -> None:
    """``json.dumps(obj, indent=2, **dumps_kwargs)`` plus a final newline, written atomically."""
    write_text(path, json.dumps(obj, **{"indent": 2, **dumps_kwargs}) + "\n")


def np_savez(path: str | os.PathLike, arrays: dict) -> None:
    """``np.savez`` of ``arrays`` (name -> array) to ``path`` atomically (the name is used as given)."""
    import numpy as np

    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)


def torch_save(path: str | os.PathLike, obj: Any) -> None:
    """``torch.save(obj)`` to ``path`` atomically."""
    import torch

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


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
