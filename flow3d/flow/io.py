"""Middlebury ``.flo`` files (written atomically with :func:`flow3d.fileio.write_bytes`).

``.flo`` layout (Baker et al., IJCV 2011): float32 magic 202021.25 ("PIEH"), int32 width, int32 height,
then ``height * width * 2`` float32 values, row-major, interleaved ``(u, v)`` = ``(dx, dy)`` pixels.
Everything is little-endian. Middlebury marks unknown flow with values around 1e10 (treat > 1e9 as
unknown); :func:`read_flo` returns them unchanged.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from flow3d.fileio import write_bytes

FLO_MAGIC = np.float32(202021.25)
_MAX_SIDE = 1 << 16  # a sanity bound on the header, so a corrupt header cannot ask for terabytes


def read_flo(path: str | os.PathLike) -> np.ndarray:
    """Read a Middlebury ``.flo`` file into an (H, W, 2) float32 array of (dx, dy) pixels.

    Raises ``ValueError`` naming the file when the magic number is wrong, the header is implausible,
    or the payload is truncated (or longer than the header says). Never returns None.
    """
    path = Path(path)
    raw = path.read_bytes()
    if len(raw) < 12:
        raise ValueError(f"{path}: truncated .flo file ({len(raw)} bytes, the header alone needs 12)")
    magic = np.frombuffer(raw, dtype="<f4", count=1, offset=0)[0]
    if magic != FLO_MAGIC:
        raise ValueError(f"{path}: not a .flo file (magic number {magic!r}, expected {float(FLO_MAGIC)})")
    width, height = (int(v) for v in np.frombuffer(raw, dtype="<i4", count=2, offset=4))
    if not (0 < width <= _MAX_SIDE and 0 < height <= _MAX_SIDE):
        raise ValueError(f"{path}: implausible .flo size width={width} height={height}")
    expected = 12 + 4 * 2 * width * height
    if len(raw) != expected:
        what = "truncated" if len(raw) < expected else "has trailing bytes"
        raise ValueError(f"{path}: .flo file {what}: {len(raw)} bytes, expected {expected} for {width}x{height}")
    data = np.frombuffer(raw, dtype="<f4", count=2 * width * height, offset=12)
    return data.reshape(height, width, 2).astype(np.float32)


def write_flo(path: str | os.PathLike, flow) -> None:
    """Write ``flow`` (H, W, 2) (numpy or torch; (dx, dy) pixels) as a Middlebury ``.flo`` file, atomically."""
    if hasattr(flow, "detach"):
        flow = flow.detach().cpu().numpy()
    flow = np.asarray(flow)
    if flow.ndim != 3 or flow.shape[-1] != 2 or flow.shape[0] < 1 or flow.shape[1] < 1:
        raise ValueError(f"flow must be (H, W, 2), got {flow.shape}")
    height, width = flow.shape[:2]
    header = FLO_MAGIC.astype("<f4").tobytes() + np.array([width, height], dtype="<i4").tobytes()
    write_bytes(path, header + np.ascontiguousarray(flow, dtype="<f4").tobytes())
