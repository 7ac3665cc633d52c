"""What the casual-video loaders (``data:custom``, ``data:davis``) do when a video has no camera file.

``--data.missing-camera``:

* ``estimate`` (default): cameras from the video itself (:func:`flow3d.cameras.estimate_cameras`), on the
  loaded (downscaled) frames; a camera found static keeps the identity poses. Cameras written earlier by
  ``python -m flow3d.preprocess.cameras`` (``ROOT/flow3d_cameras/SEQ.npy``) are used instead when present.
* ``static``: identity poses, focal length from ``--data.focal-length`` or the default field of view.
* ``error``: stop with an error naming the missing file.

Without a depth-prior folder, the geometric depth cue stands in for the prior when the cameras are
estimated (on the fly, or read from ``flow3d_cameras`` with its ``flow3d_geodepth`` folder): valid on
the triangulated static scene (:mod:`flow3d.cameras.geodepth`), invalid elsewhere, and a flat
placeholder on the foreground -- the moving content cannot be triangulated, and the initialisation lifts
its tracks with the prior -- at the median disparity of the valid cue in a ring around the mask
(the same placeholder ``--data.depth-format constant`` puts everywhere).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

import numpy as np

from flow3d.cameras.estimate import CameraEstimateConfig, estimate_cameras
from flow3d.cameras.geodepth import GeoDepthConfig, geometric_depth
from flow3d.cameras.tracks import dilate_masks
from flow3d.log import get_logger

logger = get_logger(__name__)

CAMERA_DIR = "flow3d_cameras"
"""Folder of the camera files written by ``python -m flow3d.preprocess.cameras``."""
GEODEPTH_DIR = "flow3d_geodepth"
"""Folder of the geometric depth cue (disparity ``.npy``, 0 = invalid) written beside them."""

MissingCamera = Literal["estimate", "static", "error"]

ESTIMATE_VERSION = 1
"""Part of the loaders' cache key when they estimate cameras: bump it when the estimation's results change."""


@dataclass
class LoaderCameras:
    w2cs: np.ndarray  # (T, 4, 4)
    Ks: np.ndarray  # (T, 3, 3)
    is_static: bool
    disp: Optional[np.ndarray] = None  # (T, H, W) geometric depth cue as disparity (0 = invalid), when asked
    disp_valid: Optional[np.ndarray] = None  # (T, H, W) bool


def static_cameras(
    T: int, W: int, H: int, focal: Optional[float], fov_deg: float
) -> tuple[np.ndarray, np.ndarray, float]:
    """Identity poses (T, 4, 4) and Ks (T, 3, 3) with ``focal`` (or one from ``fov_deg``) and the principal
    point at the image centre; also returns the focal length."""
    f = float(focal) if focal is not None else (W / 2.0) / np.tan(np.radians(fov_deg) / 2.0)
    K = np.array([[f, 0, (W - 1) / 2.0], [0, f, (H - 1) / 2.0], [0, 0, 1.0]])
    return np.repeat(np.eye(4)[None], T, 0), np.repeat(K[None], T, 0), f


def fill_foreground(
    disp: np.ndarray, valid: np.ndarray, masks: np.ndarray, ring_px: int = 15
) -> tuple[np.ndarray, np.ndarray, int]:
    """Set the foreground (T, H, W) of a disparity cue to the median valid disparity in a ring of
    ``ring_px`` around it (else of the whole frame, else of the whole video); marks it valid. Returns
    (disp, valid, number of frames with no cue at all)."""
    disp, valid = disp.copy(), valid.copy()
    ring = dilate_masks(masks, ring_px) & ~masks
    overall = np.median(disp[valid]) if valid.any() else None
    empty = 0
    for t in range(len(disp)):
        if not masks[t].any():
            continue
        sel = ring[t] & valid[t]
        if sel.sum() < 10:
            sel = valid[t]
        if sel.any():
            value = np.median(disp[t][sel])
        elif overall is not None:
            value, empty = overall, empty + 1
        else:
            continue
        disp[t][masks[t]] = value
        valid[t][masks[t]] = True
    return disp, valid, empty


def estimate_for_loader(
    images: np.ndarray,
    masks: np.ndarray,
    prior_disp: Optional[np.ndarray],
    prior_valid: Optional[np.ndarray],
    *,
    focal: Optional[float],
    default_fov_deg: float,
    cfg: CameraEstimateConfig,
    want_depth: bool,
    flow_cache_dir=None,
) -> LoaderCameras:
    """Cameras for the loaded frames (T, H, W, 3) uint8 and foreground masks (T, H, W) bool; with
    ``want_depth``, also the geometric depth cue (foreground filled, see the module docstring)."""
    T, H, W = images.shape[:3]
    try:
        est = estimate_cameras(
            images,
            masks,
            prior_disp=prior_disp,
            prior_valid=prior_valid,
            focal=focal,
            cfg=cfg,
            flow_cache_dir=flow_cache_dir,
        )
    except ValueError as e:  # too little static texture, no usable frame pair...: the static camera of before
        w2cs, Ks, f = static_cameras(T, W, H, focal, default_fov_deg)
        logger.warning(
            "camera estimation failed (%s): assuming a static camera (identity poses, focal length %.1f px); "
            "pass --data.missing-camera static to skip the estimation",
            e,
            f,
        )
        return LoaderCameras(w2cs, Ks, True)
    if est.is_static:
        w2cs, Ks, f = static_cameras(T, W, H, focal, default_fov_deg)
        logger.warning(
            "camera estimation: the camera looks static (%s); identity poses, focal length %.1f px",
            est.info.get("static_reason", ""),
            f,
        )
        return LoaderCameras(w2cs, Ks, True)
    out = LoaderCameras(est.w2cs, np.repeat(est.K[None], T, 0), False)
    fov = np.degrees(2 * np.arctan(W / 2.0 / est.K[0, 0]))
    logger.warning(
        "no camera file: estimated the cameras from the video (focal %.1f px = %.1f deg field of view, %d static points, "
        "reprojection rms %.2f px, scale from the %s)",
        est.K[0, 0],
        fov,
        est.info["num_points"],
        est.info["rms_final_px"],
        est.info["scale_from"],
    )
    if want_depth:
        disp, valid = geometric_depth(est, masks, (H, W), GeoDepthConfig(dilate_px=cfg.dilate_px))
        static_frac = valid.mean()
        disp, valid, empty = fill_foreground(disp, valid, masks)
        logger.warning(
            "no depth prior folder: using the geometric depth cue (triangulated static points) as the prior: valid on "
            "%.1f %% of the pixels from triangulation, the foreground filled with the depth of its surroundings "
            "(%d frames had no cue at all), invalid elsewhere",
            100 * static_frac,
            empty,
        )
        out.disp, out.disp_valid = disp.astype(np.float32), valid
    return out
