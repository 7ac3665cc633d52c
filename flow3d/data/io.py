"""File readers for the casual-video layouts, each raising one clear ``ValueError`` naming the file.

Pixel conventions: images are returned as uint8 (H, W, 3) RGB; masks as bool (H, W) (see :func:`read_mask`:
foreground at or above half of 255, a palette PNG's non-zero indices, 0/1 masks as they are); depth files are
converted to disparity with :func:`flow3d.depth.depth_to_disp`.

A JPEG that libjpeg decodes with a warning (corrupt entropy data, a file cut short and re-terminated) is an
error naming the file: libjpeg fills what it could not decode with grey and only prints a line without the
file's name on stderr, which :func:`imread` captures (:func:`decode_messages`).
"""

from __future__ import annotations

import io as _io
import os
import sys
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Literal, Optional, Sequence

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
        raise ValueError(
            f"image {path} is truncated or corrupt (no JPEG end marker): replace the file, or remove the frame"
        )


SEQ_NAME_MAX_BYTES = 255
"""Longest sequence name (bytes of UTF-8): one folder name on the usual file systems."""


def check_seq_name(name: str, flag: str = "--data.seq-name") -> str:
    r"""``name`` when it is a single path component (not empty, ``.`` or ``..``, no ``/`` or ``\``, at most
    :data:`SEQ_NAME_MAX_BYTES` bytes), else a ``ValueError`` naming ``flag``. Every command that takes a sequence
    name checks it with this: a name that is a path would read, write or delete (``--overwrite``) outside the
    sequence's folders."""
    if not isinstance(name, str) or name in ("", ".", "..") or any(c in name for c in "/\\\0"):
        raise ValueError(
            f"{flag} {name!r} must be a single folder name (not empty, '.' or '..', without '/' or "
            "'\\'): it names this sequence's own folders"
        )
    if len(name.encode()) > SEQ_NAME_MAX_BYTES:
        raise ValueError(
            f"{flag} is {len(name.encode())} bytes long; it must be a single folder name of at most "
            f"{SEQ_NAME_MAX_BYTES} bytes"
        )
    return name


def check_downscaled_size(hw: tuple[int, int], factor: int, source, flag: str = "--data.downscale") -> tuple[int, int]:
    """(H // factor, W // factor) of frames of size ``hw`` (H, W), or a ``ValueError`` naming ``flag`` and
    ``source`` (a file or folder) when that leaves no pixel."""
    H, W = int(hw[0]), int(hw[1])
    h, w = H // factor, W // factor
    if h < 1 or w < 1:
        raise ValueError(
            f"{flag} {factor} shrinks the {W}x{H} frames of {source} to {w}x{h} pixels; use a factor of "
            f"at most {min(H, W)}"
        )
    return h, w


JPEG_CORRUPTION = (
    "Corrupt JPEG data",
    "Premature end of JPEG file",
    "Invalid SOS parameters",
    "Huffman",
    "Bogus",
    "Must resync",
    "Application transferred too",
)
"""Starts of libjpeg's warnings that mean damaged pixel data (its other messages are about metadata)."""


@contextmanager
def decode_messages() -> Iterator[list[str]]:
    """Capture what native decoders (libjpeg) print on stderr (file descriptor 2) within the block; the list
    yielded receives the captured lines at the end of the block. Python's own ``sys.stderr`` is flushed first,
    so nothing of ours is caught."""
    lines: list[str] = []
    try:
        sys.stderr.flush()
    except (AttributeError, ValueError):  # no or closed stderr
        pass
    try:
        saved = os.dup(2)
    except OSError:  # no file descriptor 2 (a daemon): nothing to capture
        yield lines
        return
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield lines
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            lines.extend(ln.strip() for ln in tmp.read().decode(errors="replace").splitlines() if ln.strip())


def imread(path: Path, what: str = "image", flags: int = cv2.IMREAD_UNCHANGED) -> Optional[np.ndarray]:
    """``cv2.imread`` that turns a JPEG decode warning into a ``ValueError`` naming the file (``what`` says what
    the file is); other messages of the decoder are logged with the file's name. None when OpenCV cannot read it."""
    if Path(path).suffix.lower() not in (".jpg", ".jpeg"):
        return cv2.imread(str(path), flags)
    with decode_messages() as msgs:
        img = cv2.imread(str(path), flags)
    bad = [m for m in msgs if m.startswith(JPEG_CORRUPTION)]
    if bad and img is not None:
        raise ValueError(
            f"{what} {path} is corrupt: the JPEG decoder reports {bad[0]!r} (the pixels it could not "
            "decode would be grey); replace the file, or remove the frame"
        )
    for m in msgs:
        if m not in bad:
            logger.info("%s %s: the JPEG decoder says %r", what, path, m)
    return img


def read_image(path: Path) -> np.ndarray:
    """RGB uint8 (H, W, 3). Grey images are repeated, alpha dropped, 16-bit scaled to 8-bit. A truncated or
    otherwise damaged JPEG is an error naming the file (:func:`check_jpeg_complete`, :func:`imread`); a
    truncated PNG fails to decode (also an error)."""
    if Path(path).is_file():
        check_jpeg_complete(path)  # first: a file cut short gets the message that says so
    img = imread(path, "image")
    if img is None:
        raise ValueError(f"cannot read image {path} (missing, empty, truncated or not an image)")
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
    img = imread(path, "image")
    if img is None:
        raise ValueError(f"cannot read image {path} (missing, empty or not an image)")
    alpha = np.ones(img.shape[:2], dtype=bool)
    if img.ndim == 3 and img.shape[-1] == 4:
        alpha = img[..., 3] > 0
    return read_image(path), alpha


MASK_THRESHOLD = 128
"""A mask pixel (0-255) is foreground at or above this: half of 255, so JPEG noise on either side of 0 and 255
does not move the boundary (the old rule ``> 0`` made every noisy background pixel foreground)."""
MID_BAND = (64, 191)
"""Mask values this far from both 0 and 255. JPEG noise on a 0/255 mask stays outside it (measured: no pixel
of the synthetic masks in it at quality 75 and 95, at 32x24 to 640x480, while 0.3-15% of pixels were neither 0
nor 255): there the threshold at half cannot be wrong."""
JPEG_NOISE_MID_FRACTION = 0.005
"""JPEG masks with at most this fraction of pixels in :data:`MID_BAND` are 0/255 masks with compression noise
(an info line with the counts); more, or any value other than 0/255 in a PNG, is a soft or odd mask (a
warning with the counts)."""


@dataclass
class MaskStats:
    """What :func:`read_mask` saw in a folder of masks, for one log line (:func:`log_mask_stats`)."""

    files: int = 0
    pixels: int = 0
    jpeg_files: int = 0
    label_files: int = 0  # PNG masks without a value >= MASK_THRESHOLD: 0/1 or object-index masks (foreground > 0)
    odd: int = 0  # pixels neither 0 nor 255 in the thresholded masks
    below_half: int = 0  # of those, pixels in (0, MASK_THRESHOLD): foreground under ``> 0``, background now
    mid: int = 0  # of those, pixels in MID_BAND


def _is_palette_png(path: Path) -> bool:
    from PIL import Image  # noqa: PLC0415 - Pillow comes with imageio; only masks need it

    try:
        with Image.open(path) as im:
            return im.mode == "P"
    except Exception:  # noqa: BLE001 - not readable by Pillow: OpenCV reads it (or names it) below
        return False


def read_mask(path: Path, shape: Optional[tuple[int, int]], stats: Optional[MaskStats] = None) -> np.ndarray:
    """Foreground bool (H, W). ``shape`` (H, W) is checked (None: any size).

    * a palette PNG (DAVIS annotations): every non-zero palette index is foreground;
    * a PNG without any value >= :data:`MASK_THRESHOLD` (a 0/1 mask, or object indices 1, 2, ...): > 0;
    * otherwise (0/255 masks, JPEG masks, soft masks) the largest channel >= :data:`MASK_THRESHOLD` (half of
      255; 16-bit masks are scaled to 8 bits first). ``stats`` counts what the threshold decided."""
    path = Path(path)
    is_png = path.suffix.lower() == ".png"
    if is_png and _is_palette_png(path):
        from PIL import Image  # noqa: PLC0415

        with Image.open(path) as im:
            m = np.asarray(im)
        label = True
    else:
        m = imread(path, "mask")
        if m is None:
            raise ValueError(f"cannot read mask {path} (missing, empty or not an image)")
        if m.ndim == 3:
            m = m[..., :3].max(axis=-1)
        if m.dtype == np.uint16:
            m = (m.astype(np.float32) / 257.0).round().astype(np.uint8)
        label = is_png and int(m.max(initial=0)) < MASK_THRESHOLD
    if shape is not None and m.shape != tuple(shape):
        raise ValueError(f"mask {path}: expected size (H, W) = {tuple(shape)} like the images, got {m.shape}")
    if stats is not None:
        stats.files += 1
        stats.pixels += m.size
        stats.jpeg_files += not is_png
        stats.label_files += bool(label) and m.any()
        if not label:
            odd = (m != 0) & (m != 255)
            stats.odd += int(odd.sum())
            stats.below_half += int((odd & (m < MASK_THRESHOLD)).sum())
            stats.mid += int(((m >= MID_BAND[0]) & (m <= MID_BAND[1])).sum())
    return m > 0 if label else m >= MASK_THRESHOLD


def log_mask_stats(stats: MaskStats, folder: Path) -> None:
    """One line about the masks of ``folder`` that were not plain 0/255 (nothing when they all were)."""
    if stats.label_files:
        logger.info(
            "masks %s: %d of %d files hold only values below %d (0/1 or object-index masks): foreground where > 0",
            folder,
            stats.label_files,
            stats.files,
            MASK_THRESHOLD,
        )
    if not stats.odd:
        return
    frac = stats.odd / max(stats.pixels, 1)
    msg = (
        "masks %s: %d pixels (%.2f%%) in %d files are neither 0 nor 255; foreground is >= %d (half of 255), "
        "so %d of them that are above 0 count as background"
    )
    args = (folder, stats.odd, 100.0 * frac, stats.files, MASK_THRESHOLD, stats.below_half)
    if stats.jpeg_files == stats.files and stats.mid <= JPEG_NOISE_MID_FRACTION * stats.pixels:
        logger.info(msg + " (JPEG compression noise; save masks as PNG to avoid it)", *args)
    else:
        logger.warning(msg + " (soft or re-encoded masks? save them as 0/255 PNG)", *args)


def read_depth_as_disp(
    path: Path, fmt: DepthFormat, shape: tuple[int, int], png_scale: float = 1000.0
) -> tuple[np.ndarray, np.ndarray]:
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
        if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
            raise ValueError(f"depth file {path}: expected a real-valued (H, W) array, got dtype {arr.dtype}")
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
        raise ValueError(
            f"camera file {path}: expected a pickled dict with traj_c2w, img_shape, intrinsics; got {type(recon).__name__}"
        )
    for key in ("traj_c2w", "img_shape", "intrinsics"):
        if key not in recon:
            raise ValueError(f"camera file {path}: missing field {key!r} (has {sorted(recon)})")
    c2w = _numbers(recon["traj_c2w"], path, "traj_c2w")
    if c2w.ndim != 3 or c2w.shape[1:] != (4, 4):
        raise ValueError(f"camera file {path}: field 'traj_c2w' must be (N, 4, 4), got {c2w.shape}")
    if c2w.shape[0] != num_frames:
        raise ValueError(
            f"camera file {path}: field 'traj_c2w' has {c2w.shape[0]} poses, the images folder has {num_frames} frames"
        )
    if not np.isfinite(c2w).all():
        raise ValueError(f"camera file {path}: field 'traj_c2w' holds NaN/Inf")
    R = c2w[:, :3, :3]
    err = np.abs(R @ R.transpose(0, 2, 1) - np.eye(3)).max()
    if err > 1e-2:
        raise ValueError(
            f"camera file {path}: field 'traj_c2w' rotations are not orthonormal (max |R R^T - I| = {err:.3g})"
        )
    shape = _numbers(recon["img_shape"], path, "img_shape").reshape(-1)
    intr = _numbers(recon["intrinsics"], path, "intrinsics").reshape(-1)
    if shape.size < 2 or not np.isfinite(shape[:2]).all() or (shape[:2] < 1).any():
        raise ValueError(
            f"camera file {path}: field 'img_shape' must be the (h, w) in pixels of the images the "
            f"intrinsics refer to, both >= 1; got {recon['img_shape']!r}"
        )
    if intr.size != 4 or not np.isfinite(intr).all() or intr[0] <= 0 or intr[1] <= 0:
        raise ValueError(
            f"camera file {path}: field 'intrinsics' must be 4 finite numbers (fx, fy, cx, cy) with fx, fy > 0, got {intr}"
        )
    h, w = float(shape[0]), float(shape[1])
    sx, sy = width / w, height / h
    fx, fy, cx, cy = intr
    K = np.array([[fx * sx, 0, (cx + 0.5) * sx - 0.5], [0, fy * sy, (cy + 0.5) * sy - 0.5], [0, 0, 1]])
    return np.linalg.inv(c2w), np.repeat(K[None], num_frames, axis=0)


def _numbers(value, path: Path, field: str) -> np.ndarray:
    """``value`` of the camera file's ``field`` as float64, or a ``ValueError`` naming both (text, None, ...)."""
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        arr = None
    if arr is None or arr.dtype.kind != "f":
        raise ValueError(f"camera file {path}: field {field!r} must hold numbers, got {value!r:.80}")
    return arr


def read_track_file(path: Path) -> np.ndarray:
    """(P, 4) float32 TAPIR rows; errors name the file."""
    try:
        arr = np.load(path, allow_pickle=False)
    except Exception as e:  # noqa: BLE001
        raise ValueError(f"cannot read track file {path}: {e}") from None
    if arr.ndim != 2 or arr.shape[1] != 4:
        raise ValueError(
            f"track file {path}: expected (P, 4) rows (x, y, occlusion logit, distance logit), got {arr.shape}"
        )
    return arr.astype(np.float32)


UNKNOWN_LOGIT = 20.0
"""Occlusion and distance logits of a track entry that is neither visible nor occluded (confidence 0)."""


def read_track_dir(track_dir: Path, names: list[str]) -> dict[tuple[int, int], np.ndarray]:
    """Read the ``<q>_<t>.npy`` files of ``track_dir`` whose q and t are frame names of the clip ->
    ``{(q_index, t_index): (P, 4)}`` (indices into ``names``; other files are ignored).

    Rows holding NaN/Inf are masked out: NaN position, logits of an unknown entry (confidence 0), counted in one
    warning; an error naming the folder when no row is finite."""
    index = {n: i for i, n in enumerate(names)}
    pairs = {}
    for p in sorted(Path(track_dir).glob("*.npy")):
        stem = p.stem
        for k in range(len(stem)):
            if stem[k] == "_" and stem[:k] in index and stem[k + 1 :] in index:
                pairs[(index[stem[:k]], index[stem[k + 1 :]])] = read_track_file(p)
                break
    rows = bad = files = 0
    for arr in pairs.values():
        nonfinite = ~np.isfinite(arr).all(axis=1)
        rows += len(arr)
        if nonfinite.any():
            bad += int(nonfinite.sum())
            files += 1
            arr[nonfinite, :2] = np.nan
            arr[nonfinite, 2:] = UNKNOWN_LOGIT
    if rows and bad == rows:
        raise ValueError(f"track folder {track_dir}: every track entry holds NaN/Inf ({rows} rows)")
    if bad:
        logger.warning(
            "track folder %s: %d of %d track entries (in %d files) hold NaN/Inf and are masked out "
            "(unknown: neither visible nor occluded)",
            track_dir,
            bad,
            rows,
            files,
        )
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
