"""Writing cameras in Shape of Motion's ``droid_recon/SEQ.npy`` format (read by
:func:`flow3d.data.io.read_droid_recon`) and the sparse static points beside them."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np

from flow3d.fileio import write_bytes


def write_camera_file(
    path: str | os.PathLike, w2cs: np.ndarray, K: np.ndarray, img_wh: tuple[int, int], tstamps=None
) -> Path:
    """Write a pickled dict ``traj_c2w`` (T, 4, 4), ``img_shape`` (H, W), ``intrinsics`` (fx, fy, cx, cy)
    (OpenCV pixel-centre convention, for images of ``img_wh`` = (W, H)), ``tstamps`` (T,), atomically."""
    w2cs = np.asarray(w2cs, dtype=np.float64)
    if w2cs.ndim != 3 or w2cs.shape[1:] != (4, 4):
        raise ValueError(f"w2cs must be (T, 4, 4), got {w2cs.shape}")
    K = np.asarray(K, dtype=np.float64)
    T = len(w2cs)
    recon = {
        "traj_c2w": np.linalg.inv(w2cs),
        "img_shape": (int(img_wh[1]), int(img_wh[0])),
        "intrinsics": np.array([K[0, 0], K[1, 1], K[0, 2], K[1, 2]], dtype=np.float64),
        "tstamps": np.arange(T) if tstamps is None else np.asarray(tstamps),
    }
    buf = io.BytesIO()
    np.save(buf, np.array(recon, dtype=object), allow_pickle=True)
    path = Path(path)
    write_bytes(path, buf.getvalue())
    return path


def write_npy(path: str | os.PathLike, arr: np.ndarray) -> Path:
    """``np.save`` to ``path`` atomically (no pickle)."""
    buf = io.BytesIO()
    np.save(buf, np.asarray(arr), allow_pickle=False)
    path = Path(path)
    write_bytes(path, buf.getvalue())
    return path
