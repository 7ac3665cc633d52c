"""What the endoscopy loaders share: ignore (instrument) masks, per-frame value maps (depth, disparity),
reference depth folders, and ending flow-chained tracks on ignored pixels.

Ignored pixels are ``VideoSequence.valid_masks == False`` (see :mod:`flow3d.data.sequence`). Mask files
use EndoNeRF's polarity: 255 = instrument / ignore, 0 = tissue; a pixel is ignored where any channel is
above 127. Errors name the file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import cv2
import numpy as np
import torch

from flow3d.data import io
from flow3d.data.sequence import touches_ignored
from flow3d.log import get_logger

logger = get_logger(__name__)

GT_DEPTH_SOURCE_FILE = "source.txt"
"""A one-line file beside reference depth maps naming what they are ("ground truth" or "stereo")."""
GT_DEPTH_SOURCES = ("ground truth", "stereo")


def read_ignore_mask(path: Path, shape: tuple[int, int]) -> np.ndarray:
    """Ignore mask bool (H, W) from a PNG where 255 = ignore (any channel > 127). ``shape`` is checked."""
    m = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if m is None:
        raise ValueError(f"cannot read mask {path} (missing, empty or not an image)")
    if m.ndim == 3:
        m = m[..., :3].max(axis=-1)
    if m.shape != tuple(shape):
        raise ValueError(f"mask {path}: expected size (H, W) = {tuple(shape)} like the images, got {m.shape}")
    if m.dtype == np.uint16:
        m = m // 257
    return m > 127


def read_value_map(
    path: Path, shape: tuple[int, int], what: str, png_dtypes: Sequence = (np.uint8, np.uint16)
) -> np.ndarray:
    """Float64 (H, W) values of one per-frame map: ``.npy`` (a numeric (H, W) or (H, W, 1) array) or a
    one-channel PNG whose dtype is one of ``png_dtypes`` (three equal channels count as one). ``what``
    names the map in errors, which also name the file. Values are returned as stored (no scaling)."""
    if path.suffix.lower() == ".npy":
        try:
            arr = np.asarray(np.load(path, allow_pickle=False))
        except Exception as e:  # noqa: BLE001 - any failure of np.load means an unreadable file
            raise ValueError(f"cannot read {what} file {path}: {e}") from None
        if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
            raise ValueError(f"{what} file {path}: expected a numeric (H, W) array, got dtype {arr.dtype}")
    elif path.suffix.lower() == ".png":
        arr = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if arr is None:
            raise ValueError(f"cannot read {what} PNG {path}")
        if arr.ndim == 3 and arr.shape[-1] >= 3 and (arr[..., :3] == arr[..., :1]).all():
            arr = arr[..., 0]
        if arr.ndim != 2:
            raise ValueError(f"{what} PNG {path}: expected one channel, got shape {arr.shape} with differing channels")
        if arr.dtype not in tuple(np.dtype(d) for d in png_dtypes):
            allowed = " or ".join(f"{np.dtype(d).itemsize * 8}-bit" for d in png_dtypes)
            raise ValueError(f"{what} PNG {path}: expected a {allowed} PNG, got {arr.dtype}")
    else:
        raise ValueError(f"{what} file {path}: expected .npy or .png")
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.shape != tuple(shape):
        raise ValueError(f"{what} file {path}: expected size (H, W) = {tuple(shape)} like the images, got {arr.shape}")
    return arr.astype(np.float64)


def read_ignore_folder(folder: Path, names: Sequence[str], shape: tuple[int, int], downscale: int = 1) -> np.ndarray:
    """Ignore masks (T, H', W') bool of frames ``names`` from ``folder/NAME.png`` (255 = ignore)."""
    files = {p.stem: p for p in io.list_files(folder, (".png",), "ignore masks")}
    out = []
    for n in names:
        if n not in files:
            raise ValueError(f"ignore mask for frame {n!r} not found in {folder} (expected {n}.png)")
        out.append(io.resize_nearest(read_ignore_mask(files[n], shape), downscale))
    ignore = np.stack(out)
    logger.info("ignore masks %s: %.1f%% of pixels ignored (valid_masks=False)", folder, 100.0 * ignore.mean())
    return ignore


def read_depth_folder(
    folder: Path, names: Sequence[str], shape: tuple[int, int], downscale: int = 1
) -> tuple[np.ndarray, str]:
    """Reference z-depth (T, H', W') float32 of frames ``names`` from ``folder/NAME.npy`` (0, NaN, Inf or
    negative = unknown, returned as 0), and what it is: the first line of ``folder/source.txt`` when that
    file exists ("ground truth" or "stereo"), else "ground truth"."""
    files = {p.stem: p for p in io.list_files(folder, (".npy",), "reference depth")}
    out = []
    for n in names:
        if n not in files:
            raise ValueError(f"reference depth for frame {n!r} not found in {folder} (expected {n}.npy)")
        d = read_value_map(files[n], shape, "reference depth")
        out.append(io.resize_nearest(np.where(np.isfinite(d) & (d > 0), d, 0.0), downscale))
    source = "ground truth"
    src_file = folder / GT_DEPTH_SOURCE_FILE
    if src_file.is_file():
        lines = src_file.read_text().strip().splitlines()
        source = lines[0].strip() if lines else ""
        if source not in GT_DEPTH_SOURCES:
            raise ValueError(f"{src_file}: expected one of {', '.join(GT_DEPTH_SOURCES)}, got {source!r}")
    return np.stack(out).astype(np.float32), source


def stop_tracks_on_ignored(
    pairs: Mapping[tuple[int, int], np.ndarray], ignore: np.ndarray, unknown_logit: float = 10.0
) -> dict[tuple[int, int], np.ndarray]:
    """End TAPIR-format tracks ``{(q, t): (P, 4)}`` where they land on an ignored pixel.

    Walking away from each query frame q (forwards, then backwards), a track ends at the first frame
    where it is unknown already or where it touches an ignored pixel (``ignore`` (T, H, W) bool; the rule of
    :func:`flow3d.data.sequence.touches_ignored`). From that frame on it reads as unknown (occlusion and distance
    logits ``+unknown_logit``: confidence 0) at the position where it ended, as chained flow tracks do
    (:mod:`flow3d.flow.tracks`). Query entries (q, q) are unchanged. Returns a new dict.
    """
    ign = torch.from_numpy(np.ascontiguousarray(ignore)).to(torch.bool)  # (T, H, W)
    T = ign.shape[0]
    out = {k: np.array(v, dtype=np.float32, copy=True) for k, v in pairs.items()}
    for q in sorted({q for q, _ in pairs}):
        if (q, q) not in out:
            continue
        for steps in (range(q + 1, T), range(q - 1, -1, -1)):
            alive = np.ones(out[(q, q)].shape[0], dtype=bool)
            end_xy = out[(q, q)][:, :2].copy()  # (P, 2) where each ended track stays
            for t in steps:
                if (q, t) not in out:
                    break
                arr = out[(q, t)]  # (P, 4), edited in place
                xy = torch.from_numpy(arr[:, None, :2]).float()  # (P, 1, 2)
                on_ignored = touches_ignored(ign[t : t + 1], xy)[:, 0].numpy()
                ends = alive & (on_ignored | (arr[:, 2] >= 0))
                end_xy[ends] = arr[ends, :2]
                alive &= ~ends
                arr[~alive, :2] = end_xy[~alive]
                arr[~alive, 2:] = unknown_logit
    return out


def count_stopped(before: Mapping[tuple[int, int], np.ndarray], after: Mapping[tuple[int, int], np.ndarray]) -> int:
    """Number of track entries that :func:`stop_tracks_on_ignored` turned from visible to unknown."""
    return int(sum(((before[k][:, 2] < 0) & (after[k][:, 2] >= 0)).sum() for k in before))
