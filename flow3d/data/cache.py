"""On-disk cache of loaded sequences: one ``.npz`` per (config, input files) key, written atomically.

Images are stored as uint8 (they come from 8-bit files) and expanded to float on load, so an epoch
never re-decodes JPEGs. The key is a hash of the loader's configuration (fields that change the
result) and of the names, sizes and modification times of the input files. Also an in-process memo so
that a second ``load()`` of the same config in one process costs nothing. Every loader goes through
:func:`cached_sequence`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

import numpy as np
import torch

from flow3d.data.sequence import HeldOutViews, VideoSequence
from flow3d.fileio import np_savez, remove_stale_temporaries
from flow3d.log import get_logger

logger = get_logger(__name__)

_MEMO: dict[str, VideoSequence] = {}
_FORMAT_VERSION = 2  # 2: flow tracks are chained on frames whose ignored pixels are inpainted


def default_cache_dir() -> Path:
    """``$FLOW3D_CACHE_DIR``, else ``$XDG_CACHE_HOME/flow3d/data``, else ``~/.cache/flow3d/data``."""
    env = os.environ.get("FLOW3D_CACHE_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "flow3d" / "data"


def files_signature(paths: Iterable[Path]) -> list[tuple[str, int, int]]:
    """(name, size, mtime_ns) of each file, for cache keys."""
    out = []
    for p in paths:
        st = p.stat()
        out.append((str(p), st.st_size, st.st_mtime_ns))
    return out


def cache_key(cfg: Any, exclude: Iterable[str] = (), extra: Any = None) -> str:
    """Hex key from a dataclass config (minus ``exclude`` fields) and any JSON-able ``extra``."""
    d = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in set(exclude)}
    blob = json.dumps([type(cfg).__name__, _FORMAT_VERSION, d, extra], sort_keys=True, default=str)
    return hashlib.sha1(blob.encode()).hexdigest()[:20]


CACHE_NAME_PREFIX = 64
"""Characters of a sequence's name kept at the start of its cache file names (the key after it identifies it)."""


def cache_stem(name: str, key: str) -> str:
    """``<name>_<key>`` with ``name`` cut to :data:`CACHE_NAME_PREFIX` characters: the key (:func:`cache_key`)
    already hashes the whole name, and a file name stays under the 255-byte limit whatever the name's length."""
    return f"{name[:CACHE_NAME_PREFIX]}_{key}"


def cache_dir_usable(folder: Path) -> bool:
    """Whether ``folder`` can hold the cache (created if missing, a file can be written in it); else one warning
    naming it and the reason, and the caller loads without a disk cache (the data and the flow cache)."""
    import tempfile  # noqa: PLC0415

    try:
        Path(folder).mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
        return True
    except OSError as e:
        _skip_warning(Path(folder), e)
        return False


def clear_memo() -> None:
    """Forget the sequence kept in memory (the next load reads the disk cache or the inputs)."""
    _MEMO.clear()


def cached_sequence(
    key: str, path: Optional[Path], build: Callable[[], VideoSequence], use_disk: bool = True
) -> VideoSequence:
    """The one cache protocol of the loaders: the in-process memo, else the ``.npz`` at ``path``, else
    ``build()`` (then written to ``path``). ``path`` None or ``use_disk`` False skips the disk. The memo
    keeps one sequence (they are large).

    Temporaries left in the cache folder by a killed write are removed; a cache file that cannot be read
    (truncated, not a zip, missing arrays) is discarded with a warning naming it, and the sequence is built
    again from its inputs. A cache location that cannot be used (a file, no permission, a full disk) is skipped
    with one warning: the cache only saves time, it never stops a run."""
    seq = _MEMO.get(key)
    if seq is not None:
        return seq
    disk = path is not None and use_disk
    seq = None
    if disk:
        try:
            for p in remove_stale_temporaries(path.parent):
                logger.warning("removed %s, left in the data cache by an interrupted write", p)
            seq = _read_cache_entry(path) if path.exists() else None
        except OSError as e:
            _skip_warning(path, e)
            disk = False
    if seq is None:
        seq = build()
        if disk:
            try:
                save_sequence(path, seq)
            except OSError as e:
                _skip_warning(path, e)
    _MEMO.clear()
    _MEMO[key] = seq
    return seq


def _skip_warning(path: Path, e: OSError) -> None:
    from flow3d.cli import describe  # noqa: PLC0415 - the one-line form of an OSError

    logger.warning(
        "the data cache %s cannot be used (%s): loading without it (set FLOW3D_CACHE_DIR or "
        "--data.cache-dir to a writable folder to keep loads fast)",
        path,
        describe(e),
    )


def _read_cache_entry(path: Path) -> Optional[VideoSequence]:
    """The sequence cached at ``path``, or None (the file then discarded with a warning) when it is unreadable."""
    logger.info("loading cached sequence %s", path)
    try:
        return load_sequence(path)
    except Exception as e:  # noqa: BLE001 - any failure to read a cache entry means: rebuild it
        logger.warning(
            "data cache file %s is unreadable (%s: %s); discarding it and building the sequence again from its inputs",
            path,
            type(e).__name__,
            e,
        )
        path.unlink(missing_ok=True)  # a cache entry, rebuilt below: nothing of the user's is lost
        return None


def save_sequence(path: Path, seq: VideoSequence) -> None:
    """Write ``seq`` to ``path`` (.npz) atomically (temporary file in the same folder, then rename)."""
    arrays: dict[str, np.ndarray] = {}
    meta: dict[str, Any] = {
        "name": seq.name,
        "scene_scale": seq.scene_scale,
        "frame_names": seq.frame_names,
        "gt_depth_source": seq.gt_depth_source,
    }
    for f in dataclasses.fields(seq):
        v = getattr(seq, f.name)
        if isinstance(v, torch.Tensor):
            if f.name == "images":
                arrays[f.name] = _to_uint8(v)
            else:
                arrays[f.name] = v.numpy()
    if seq.val_views is not None:
        meta["val_names"] = seq.val_views.names
        for k, v in vars(seq.val_views).items():
            if isinstance(v, torch.Tensor):
                arrays["val_views." + k] = _to_uint8(v) if k == "images" else v.numpy()
    arrays["__meta__"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    np_savez(path, arrays)


def load_sequence(path: Path) -> VideoSequence:
    """Read a sequence written by :func:`save_sequence`."""
    with np.load(path, allow_pickle=False) as z:
        data = {k: z[k] for k in z.files}
    meta = json.loads(data.pop("__meta__").tobytes().decode())
    kw: dict[str, Any] = {
        "name": meta["name"],
        "scene_scale": meta["scene_scale"],
        "frame_names": meta["frame_names"],
        "gt_depth_source": meta.get("gt_depth_source", "ground truth"),
    }
    val: dict[str, Any] = {}
    for k, v in data.items():
        t = torch.from_numpy(v)
        if k.startswith("val_views."):
            k = k.split(".", 1)[1]
            val[k] = t.float() / 255.0 if k == "images" else t
        else:
            kw[k] = t.float() / 255.0 if k == "images" else t
    if val:
        kw["val_views"] = HeldOutViews(names=meta.get("val_names", []), **val)
    return VideoSequence(**kw)


def _to_uint8(images: torch.Tensor) -> np.ndarray:
    """Images in [0, 1] -> uint8. Exact for images that came from 8-bit files."""
    return (images.clamp(0, 1) * 255.0).round().to(torch.uint8).numpy()
