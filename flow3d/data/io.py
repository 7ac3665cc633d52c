"""File readers for the casual-video layouts, each raising one clear ``ValueError`` naming the file.

Pixel conventions: images are returned as uint8 (H, W, 3) RGB; masks as bool (H, W) (foreground where
any channel > 0); depth files are converted to disparity with :func:`flow3d.depth.depth_to_disp`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Sequence

import io as _io

import cv2
import numpy as np
import torch

from flow3d import depth as depth_lib

from flow3d.fileio import write_bytes
from flow3d.log import get_logger

logger = get_logger(__name__)

IMAGE_EXTS = (".jpg", ".jpeg", ".png")

DepthFormat = Literal["disp_npy", "depth_npy", "depth_png", "constant"]


def list_files(folder: Path, exts: Sequence[str], what: str) -> list[Path]:
    """Sorted files of ``folder`` with one of ``exts`` (case-insensitive); errors if none."""
    if not folder.is_dir():
        raise ValueError(f"{what} folder not found: {folder}")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in exts)
    if not files:
        raise ValueError(f"{what} folder {folder} holds no {'/'.join(exts)} files")
    return files


JPEG_TAIL = 4096
"""Bytes at the end of a JPEG file searched for its end-of-image marker (``FF D9``)."""


def check_jpeg_complete(path: Path) -> None:
    """``ValueError`` naming ``path`` when a ``.jpg``/``.jpeg`` file lacks its end-of-image marker near its end:
    a truncated JPEG (a copy cut short, a full disk), which ``cv2.imread`` would decode to a half-grey image with
    only a libjpeg message. Inside JPEG data ``FF`` is followed by ``00`` or a restart marker, so ``FF D9`` in the
    last bytes is the end marker (trailing padding after it is allowed)."""
    if Path(path).suffix.lower() not in (".jpg", ".jpeg"):
        return
    with open(path, "rb") as f:
        f.seek(0, 2)
        size = f.tell()
        f.seek(max(0, size - JPEG_TAIL))
        tail = f.read()
    if b"\xff\xd9" not in tail:
        raise ValueError(f"image {path} is truncated or corrupt (no JPEG end marker): replace the file, or remove "
                         "the frame")


def read_image(path: Path) -> np.ndarray:
    """RGB uint8 (H, W, 3). Grey images are repeated, alpha dropped, 16-bit scaled to 8-bit. A truncated JPEG
    is an error naming the file (:func:`check_jpeg_complete`); a truncated PNG fails to decode (also an error)."""
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise ValueError(f"cannot read image {path} (missing, empty, truncated or not an image)")
    check_jpeg_complete(path)
    if img.dtype == np.uint16:
        img = (img.astype(np.float32) / 257.0).round().astype(np.uint8)
    elif img.dtype != np.uint8:
        raise ValueError(f"image {path}: expected 8- or 16-bit pixels, got {img.dtype}")
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=-1)
    elif img.shape[-1] == 4:
        img = cv2.cvtColor(img, cv2.COLOR_BGRA2RGB)
    elif img.shape[-1] == 3:
        img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    else:
        raise ValueError(f"image {path}: expected 1, 3 or 4 channels, got shape {img.shape}")
    return np.ascontiguousarray(img)


def read_image_rgba(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """RGB uint8 (H, W, 3) and alpha > 0 as bool (H, W) (all True without an alpha channel)."""
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise ValueError(f"cannot read image {path} (missing, empty or not an image)")
    alpha = np.ones(img.shape[:2], dtype=bool)
    if img.ndim == 3 and img.shape[-1] == 4:
        alpha = img[..., 3] > 0
    return read_image(path), alpha


def read_mask(path: Path, shape: tuple[int, int]) -> np.ndarray:
    """Foreground bool (H, W): any channel > 0. ``shape`` (H, W) is checked."""
    m = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if m is None:
        raise ValueError(f"cannot read mask {path} (missing, empty or not an image)")
    if m.ndim == 3:
        m = m.max(axis=-1)
    if m.shape != tuple(shape):
        raise ValueError(f"mask {path}: expected size (H, W) = {tuple(shape)} like the images, got {m.shape}")
    return m > 0


def read_depth_as_disp(path: Path, fmt: DepthFormat, shape: tuple[int, int], png_scale: float = 1000.0) -> tuple[np.ndarray, np.ndarray]:
    """Disparity float32 (H, W) and validity bool (H, W) from one depth-prior file.

    ``disp_npy``: disparity (1/z up to scale and shift); ``depth_npy``: z-depth; ``depth_png``: 16-bit
    z-depth, value / ``png_scale`` = depth (e.g. 1000 for millimetres). Values failing
    :func:`flow3d.depth.is_valid` (non-finite, <= ``EPS``) are invalid (0 in the output).
    """
    if fmt in ("disp_npy", "depth_npy"):
        try:
            arr = np.load(path, allow_pickle=False)
        except Exception as e:  # noqa: BLE001 - any failure of np.load means an unreadable file
            raise ValueError(f"cannot read depth file {path}: {e}") from None
        arr = np.asarray(arr)
        if arr.ndim == 3 and arr.shape[-1] == 1:
            arr = arr[..., 0]
        if not np.issubdtype(arr.dtype, np.number):
            raise ValueError(f"depth file {path}: expected a numeric (H, W) array, got dtype {arr.dtype}")
    elif fmt == "depth_png":
        arr = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if arr is None:
            raise ValueError(f"cannot read depth PNG {path}")
        if arr.ndim != 2:
            raise ValueError(f"depth PNG {path}: expected one channel (16-bit), got shape {arr.shape}")
        arr = arr.astype(np.float64) / png_scale
    else:
        raise ValueError(f"depth format must be one of disp_npy, depth_npy, depth_png, got {fmt!r}")
    if arr.shape != tuple(shape):
        raise ValueError(f"depth file {path}: expected size (H, W) = {tuple(shape)} like the images, got {arr.shape}")
    values = torch.from_numpy(arr.astype(np.float64))
    if fmt == "disp_npy":
        valid = depth_lib.is_valid(values)
        disp = torch.where(valid, values, torch.zeros_like(values))
    else:
        disp, valid = depth_lib.depth_to_disp(values)
    return disp.numpy().astype(np.float32), valid.numpy()


def read_droid_recon(path: Path, num_frames: int, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Shape of Motion's ``droid_recon/SEQ.npy`` -> ``w2cs`` (N, 4, 4), ``Ks`` (N, 3, 3) float64.

    The file is a pickled dict: ``traj_c2w`` (N, 4, 4), ``img_shape`` (h, w) the intrinsics refer to,
    ``intrinsics`` (fx, fy, cx, cy). Intrinsics are rescaled to (height, width) in the OpenCV
    pixel-centre convention: ``c' = (c + 0.5) * s - 0.5``, ``f' = f * s``.
    """
    try:
        recon = np.load(path, allow_pickle=True)
        recon = recon.item() if isinstance(recon, np.ndarray) and recon.dtype == object else recon
    except Exception as e:  # noqa: BLE001
        raise ValueError(f"cannot read camera file {path}: {e}") from None
    if not isinstance(recon, dict):
        raise ValueError(f"camera file {path}: expected a pickled dict with traj_c2w, img_shape, intrinsics; got {type(recon).__name__}")
    for key in ("traj_c2w", "img_shape", "intrinsics"):
        if key not in recon:
            raise ValueError(f"camera file {path}: missing field {key!r} (has {sorted(recon)})")
    c2w = np.asarray(recon["traj_c2w"], dtype=np.float64)
    if c2w.ndim != 3 or c2w.shape[1:] != (4, 4):
        raise ValueError(f"camera file {path}: field 'traj_c2w' must be (N, 4, 4), got {c2w.shape}")
    if c2w.shape[0] != num_frames:
        raise ValueError(f"camera file {path}: field 'traj_c2w' has {c2w.shape[0]} poses, the images folder has {num_frames} frames")
    if not np.isfinite(c2w).all():
        raise ValueError(f"camera file {path}: field 'traj_c2w' holds NaN/Inf")
    R = c2w[:, :3, :3]
    err = np.abs(R @ R.transpose(0, 2, 1) - np.eye(3)).max()
    if err > 1e-2:
        raise ValueError(f"camera file {path}: field 'traj_c2w' rotations are not orthonormal (max |R R^T - I| = {err:.3g})")
    shape = np.asarray(recon["img_shape"]).reshape(-1)
    intr = np.asarray(recon["intrinsics"], dtype=np.float64).reshape(-1)
    if shape.size < 2:
        raise ValueError(f"camera file {path}: field 'img_shape' must be (h, w), got {shape}")
    if intr.size != 4 or not np.isfinite(intr).all() or intr[0] <= 0 or intr[1] <= 0:
        raise ValueError(f"camera file {path}: field 'intrinsics' must be 4 finite numbers (fx, fy, cx, cy) with fx, fy > 0, got {intr}")
    h, w = float(shape[0]), float(shape[1])
    sx, sy = width / w, height / h
    fx, fy, cx, cy = intr
    K = np.array([[fx * sx, 0, (cx + 0.5) * sx - 0.5], [0, fy * sy, (cy + 0.5) * sy - 0.5], [0, 0, 1]])
    return np.linalg.inv(c2w), np.repeat(K[None], num_frames, axis=0)


def read_track_file(path: Path) -> np.ndarray:
    """(P, 4) float32 TAPIR rows; errors name the file."""
    try:
        arr = np.load(path, allow_pickle=False)
    except Exception as e:  # noqa: BLE001
        raise ValueError(f"cannot read track file {path}: {e}") from None
    if arr.ndim != 2 or arr.shape[1] != 4:
        raise ValueError(f"track file {path}: expected (P, 4) rows (x, y, occlusion logit, distance logit), got {arr.shape}")
    return arr.astype(np.float32)


def read_track_dir(track_dir: Path, names: list[str]) -> dict[tuple[int, int], np.ndarray]:
    """Read the ``<q>_<t>.npy`` files of ``track_dir`` whose q and t are frame names of the clip ->
    ``{(q_index, t_index): (P, 4)}`` (indices into ``names``; other files are ignored)."""
    index = {n: i for i, n in enumerate(names)}
    pairs = {}
    for p in sorted(Path(track_dir).glob("*.npy")):
        stem = p.stem
        for k in range(len(stem)):
            if stem[k] == "_" and stem[:k] in index and stem[k + 1:] in index:
                pairs[(index[stem[:k]], index[stem[k + 1:]])] = read_track_file(p)
                break
    return pairs


def resize_image(img: np.ndarray, factor: int) -> np.ndarray:
    """Downscale by an integer ``factor`` with area averaging ((H, W[, C]) -> (H // f, W // f[, C]))."""
    if factor == 1:
        return img
    H, W = img.shape[:2]
    return cv2.resize(img, (W // factor, H // factor), interpolation=cv2.INTER_AREA)


def resize_nearest(arr: np.ndarray, factor: int) -> np.ndarray:
    """Downscale by an integer ``factor`` taking the pixel nearest each new pixel centre."""
    if factor == 1:
        return arr
    H, W = arr.shape[:2]
    ys = np.clip(np.round((np.arange(H // factor) + 0.5) * factor - 0.5).astype(int), 0, H - 1)
    xs = np.clip(np.round((np.arange(W // factor) + 0.5) * factor - 0.5).astype(int), 0, W - 1)
    return arr[ys][:, xs]


def write_png_atomic(path: Path, img: np.ndarray) -> None:
    """Write ``img`` (H, W) or (H, W, 3) RGB, uint8 or uint16, as a PNG atomically (temp file + rename)."""
    if img.ndim == 3:
        img = cv2.cvtColor(img, cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".png", img)
    if not ok:
        raise ValueError(f"cannot encode {path} as PNG (dtype {img.dtype}, shape {img.shape})")
    write_bytes(path, buf.tobytes())


def save_npy_atomic(path: Path, arr, allow_pickle: bool = False) -> None:
    """``np.save`` to ``path`` atomically (temp file + rename)."""
    buf = _io.BytesIO()
    np.save(buf, arr, allow_pickle=allow_pickle)
    write_bytes(path, buf.getvalue())
