"""The geometric depth cue: triangulated static points as a depth prior, dense only where honest.

Sparse cue (:func:`sparse_depth`): for each frame, the camera z of every reconstructed static point
observed there, with a confidence ``min(1, angle / full_angle_deg) * exp(-rms^2 / 2)`` from the
point's triangulation angle (deg) and its rms reprojection error (px). Points with an angle below
``min_angle_deg`` or an rms above ``max_rms_px`` are left out.

Dense cue (:func:`geometric_depth`): per frame, *disparity* (1 / z) interpolated linearly over the
Delaunay triangulation of the frame's points (``scipy.interpolate.LinearNDInterpolator``; disparity is
affine in the pixel coordinates on a plane, so this is exact for piecewise-planar static surfaces). A
pixel is valid only inside the convex hull of the points, within ``support_radius`` (fraction of the
long image side) of a point, and outside the dilated foreground (moving content has no triangulated
depth). Elsewhere the disparity is 0 and invalid. Disparities are in 1 / (the cameras' scene units).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from scipy.interpolate import LinearNDInterpolator
from scipy.spatial import QhullError

from flow3d.cameras.estimate import CameraEstimate
from flow3d.cameras.tracks import dilate_masks
from flow3d.log import get_logger

logger = get_logger(__name__)


@dataclass
class GeoDepthConfig:
    """Options of the geometric depth cue."""

    min_angle_deg: float = 0.5
    """Points triangulated under a smaller angle (deg) between their rays are not used."""
    full_angle_deg: float = 3.0
    """Angle (deg) from which the angle part of the confidence is 1."""
    max_rms_px: float = 2.0
    """Points with a larger rms reprojection error (px) are not used."""
    support_radius: float = 0.05
    """A pixel is valid within this distance (fraction of the long image side) of a supporting point."""
    dilate_px: int = 5
    """Margin (px, at the estimation resolution) around the foreground left invalid."""


def sparse_depth(
    est: CameraEstimate, cfg: GeoDepthConfig | None = None
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per frame ``(xy (n, 2) px, depth (n,) camera z, confidence (n,) in (0, 1])`` at the estimate's
    resolution. Empty arrays for every frame of a static-camera estimate (nothing is triangulated)."""
    cfg = cfg or GeoDepthConfig()
    T = len(est.w2cs)
    empty = (np.zeros((0, 2)), np.zeros(0), np.zeros(0))
    if est.is_static or est.points is None:
        return [empty] * T
    use = est.point_ok & (est.point_angle_deg >= cfg.min_angle_deg) & (est.point_rms_px <= cfg.max_rms_px)
    conf_p = np.minimum(1.0, est.point_angle_deg / cfg.full_angle_deg) * np.exp(
        -0.5 * np.minimum(est.point_rms_px, 1e3) ** 2
    )
    out = []
    for t in range(T):
        ids = np.nonzero(use & est.obs_visible[:, t])[0]
        Xc = est.points[ids] @ est.w2cs[t, :3, :3].T + est.w2cs[t, :3, 3]
        front = Xc[:, 2] > 0
        ids = ids[front]
        out.append((est.tracks.xy[ids, t].copy(), Xc[front, 2], conf_p[ids]))
    return out


def _densify(xy: np.ndarray, disp: np.ndarray, out_hw: tuple[int, int], radius_px: float) -> np.ndarray:
    """Linear interpolation of ``disp`` (n,) at (n, 2) positions over an (H, W) grid; NaN outside the
    convex hull or farther than ``radius_px`` from every point."""
    H, W = out_hw
    out = np.full((H, W), np.nan)
    if len(xy) < 3:
        return out
    try:
        interp = LinearNDInterpolator(xy, disp)
    except QhullError:  # collinear or duplicate points
        return out
    x0, y0 = np.floor(xy.min(0)).astype(int).clip(0, [W - 1, H - 1])
    x1, y1 = np.ceil(xy.max(0)).astype(int).clip(0, [W - 1, H - 1])
    ys, xs = np.mgrid[y0 : y1 + 1, x0 : x1 + 1]
    out[y0 : y1 + 1, x0 : x1 + 1] = interp(xs, ys)
    support = np.full((H, W), 255, np.uint8)
    xi, yi = np.round(xy[:, 0]).astype(int).clip(0, W - 1), np.round(xy[:, 1]).astype(int).clip(0, H - 1)
    support[yi, xi] = 0
    dist = cv2.distanceTransform(support, cv2.DIST_L2, 5)
    out[dist > radius_px] = np.nan
    return out


def geometric_depth(
    est: CameraEstimate, fg_masks: np.ndarray, out_hw: tuple[int, int] | None = None, cfg: GeoDepthConfig | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Dense disparity (T, H', W') float32 (0 where invalid) and validity (T, H', W') bool at ``out_hw``
    (default: the estimate's resolution); ``fg_masks`` (T, H, W) bool at the estimate's resolution."""
    cfg = cfg or GeoDepthConfig()
    W, H = est.img_wh
    Ho, Wo = out_hw or (H, W)
    sx, sy = Wo / W, Ho / H
    fg = dilate_masks(fg_masks.astype(bool), cfg.dilate_px)
    T = len(est.w2cs)
    disp = np.zeros((T, Ho, Wo), np.float32)
    radius = cfg.support_radius * max(Wo, Ho)
    for t, (xy, depth, _) in enumerate(sparse_depth(est, cfg)):
        xy_o = (xy + 0.5) * np.array([sx, sy]) - 0.5
        d = _densify(xy_o, 1.0 / depth, (Ho, Wo), radius)
        fg_o = cv2.resize(fg[t].astype(np.uint8), (Wo, Ho), interpolation=cv2.INTER_NEAREST) > 0
        d[fg_o] = np.nan
        ok = np.isfinite(d) & (d > 0)
        disp[t][ok] = d[ok]
    valid = disp > 0
    logger.info("geometric depth cue: %.1f %% of the pixels valid (%d frames)", 100.0 * valid.mean(), T)
    return disp, valid
