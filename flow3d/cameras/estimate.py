"""Cameras from the video itself: static tracks -> focal length -> incremental start -> bundle adjustment.

:func:`estimate_cameras` takes the frames and foreground masks (and a depth prior when one exists) and
returns a :class:`CameraEstimate`: per-frame ``w2cs`` (OpenCV, world = the first registered frame's
camera, up to the scale below), one ``K`` (fx = fy, principal point at the image centre), the static
points with a confidence (the geometric depth cue of :mod:`flow3d.cameras.geodepth`), and whether the
camera was found static.

Steps:
1. static tracks from fb-consistent flow outside the dilated foreground (:mod:`flow3d.cameras.tracks`);
2. static camera: when the median static-track displacement stays below ``static_threshold`` of the
   image's long side in 90 % of the frames, the identity poses are kept (nothing else is estimated);
3. focal length (unless given) from fundamental matrices / homographies (:func:`init.estimate_focal`);
4. moving points the masks missed: tracks that are essential-matrix RANSAC outliers in more than half of
   the frame pairs that test them are dropped;
5. two-view start, PnP registration of every frame with periodic local adjustments, then a global
   bundle adjustment with the focal length free (:mod:`flow3d.cameras.bundle`, soft L1 loss); observations
   with a residual above ``outlier_px`` (or 3 robust sigmas) are dropped and the adjustment re-run;
   without parallax anywhere (a pure pan) the start is rotations from homographies;
6. scale: with a depth prior, the median ratio of prior depth (1 / disparity) to reconstructed depth on
   the static points; without one, the median static-point depth is 1 (the scale is arbitrary).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Literal, Optional

import numpy as np

from flow3d.cameras import init as cinit
from flow3d.cameras.bundle import Observations, anchor_points, bundle_adjust, points_from_world
from flow3d.cameras.tracks import StaticTracks, camera_motion_px, static_tracks
from flow3d.log import get_logger

logger = get_logger(__name__)


@dataclass
class CameraEstimateConfig:
    """Options of the camera estimation (``python -m flow3d.preprocess.cameras`` and the loaders' ``estimate``)."""

    grid_step: int = 8
    """Spacing in pixels of the query grid of static tracks."""
    query_stride: int = 4
    """Every k-th frame starts new static tracks."""
    dilate_px: int = 5
    """Margin in pixels around the foreground masks kept free of static tracks."""
    flow_backend: str = "dis"
    """Optical-flow backend of the static tracks (flow3d.flow)."""
    static_threshold: float = 0.005
    """The camera counts as static when the median static-track displacement stays below this fraction
    of the image's long side in 90 % of the frames."""
    ransac_px: float = 1.5
    """RANSAC threshold (pixels) of the essential matrix, homography and PnP steps."""
    min_angle_deg: float = 1.0
    """Smallest triangulation angle of a point used to start and register cameras."""
    loss: Literal["soft_l1", "huber", "cauchy", "linear"] = "soft_l1"
    """Robust loss of the bundle adjustment. scipy rescales the Jacobian rows by the loss's curvature: with
    Huber (or Cauchy) rows beyond the scale get zero weight in the Gauss-Newton step, and from a start
    several pixels off the focal length did not move at all in our measurements; soft_l1 converges."""
    loss_scale_px: float = 1.0
    """Scale (pixels) of the robust loss."""
    outlier_px: float = 3.0
    """After the first global adjustment, observations with a residual above max(this, 3 robust sigmas)
    are dropped (moving points, track drift)."""
    max_points: int = 3000
    """At most this many static tracks enter the adjustment (the longest ones)."""
    local_ba_every: int = 5
    """Local bundle adjustment (focal fixed) after every k registered frames."""
    max_nfev: int = 60
    """Function evaluations of each global adjustment."""
    fov_range_deg: tuple[float, float] = (20.0, 120.0)
    """Horizontal fields of view (deg) the estimated focal length is kept within."""
    seed: int = 0
    """Seed of the track subset."""


@dataclass
class CameraEstimate:
    """Result of :func:`estimate_cameras` (all numpy, float64)."""

    w2cs: np.ndarray  # (T, 4, 4) world -> camera, OpenCV
    K: np.ndarray  # (3, 3) pixels, OpenCV pixel centres
    img_wh: tuple[int, int]  # (W, H) the poses and K refer to
    is_static: bool
    motion_px: np.ndarray  # (T,) median static-track displacement from the query frame
    tracks: Optional[StaticTracks] = None  # the tracks the points come from (after outlier removal)
    points: Optional[np.ndarray] = None  # (P, 3) world points of ``tracks``
    point_ok: Optional[np.ndarray] = None  # (P,) bool, reconstructed
    obs_visible: Optional[np.ndarray] = None  # (P, T) bool, inlier observations
    point_angle_deg: Optional[np.ndarray] = None  # (P,) largest triangulation angle between observations
    point_rms_px: Optional[np.ndarray] = None  # (P,) rms reprojection error over the inlier observations
    info: dict = field(default_factory=dict)


def _pairs(vis: np.ndarray, n: int = 8) -> list[tuple[int, int]]:
    """Up to ``n`` frame pairs (t, t + g) spread over the video with the largest gap g that keeps 50 common tracks."""
    T = vis.shape[1]
    out = []
    for t in np.linspace(0, T - 2, min(n, T - 1)).round().astype(int):
        for g in range(T - 1 - t, 0, -1):
            if (vis[:, t] & vis[:, t + g]).sum() >= 50:
                out.append((int(t), int(t + g)))
                break
    return sorted(set(out))


def reject_moving(tracks: StaticTracks, K: np.ndarray, ransac_px: float, gap: int = 3) -> StaticTracks:
    """Drop tracks that are essential-matrix RANSAC outliers in more than half of the pairs (t, t + gap)
    that test them (at least two)."""
    import cv2

    P, T = tracks.visible.shape
    tested, outlier = np.zeros(P, int), np.zeros(P, int)
    for t in range(0, max(T - gap, 1)):
        j = min(t + gap, T - 1)
        if j == t:
            continue
        ids, x1, x2 = cinit.common(tracks.xy, tracks.visible, t, j)
        if len(ids) < 20 or np.median(np.linalg.norm(x2 - x1, axis=-1)) < 2 * ransac_px:
            continue  # too little motion: everything is an inlier
        E, mask = cv2.findEssentialMat(x1, x2, K, cv2.RANSAC, 0.999, ransac_px)
        if E is None or mask is None:
            continue
        tested[ids] += 1
        outlier[ids] += mask.ravel() == 0
    bad = (tested >= 2) & (outlier > 0.5 * tested)
    logger.info(
        "moving-point rejection: %d of %d static tracks are essential-matrix outliers in most pairs", int(bad.sum()), P
    )
    return tracks.subset(~bad)


def _anchor(vis: np.ndarray) -> np.ndarray:
    return np.argmax(vis, axis=1)


def _adjust(xy, vis, w2cs, focal, center, X, has_X, frames_ok, fixed, optimize_focal, cfg, max_nfev):
    """Bundle adjustment of the points ``has_X`` seen in ``frames_ok``; updates w2cs, X, has_X in place."""
    vis_ok = vis & frames_ok[None, :] & has_X[:, None]
    use = vis_ok.sum(1) >= 2
    ids = np.nonzero(use)[0]
    anchor_t = _anchor(vis_ok[ids])
    anchor_xy = xy[ids, anchor_t]
    rho = points_from_world(w2cs, focal, center, X[ids], anchor_t, anchor_xy)
    front = rho < 1e8
    ids, anchor_t, anchor_xy, rho = ids[front], anchor_t[front], anchor_xy[front], rho[front]
    obs = Observations.from_tracks(xy[ids], vis_ok[ids])
    W = 2 * center[0] + 1
    bounds = (cinit.focal_from_fov(max(cfg.fov_range_deg), W), cinit.focal_from_fov(min(cfg.fov_range_deg), W))
    res = bundle_adjust(
        obs,
        w2cs,
        focal,
        center,
        rho,
        anchor_t,
        anchor_xy,
        fixed_frames=fixed,
        optimize_focal=optimize_focal,
        focal_bounds=bounds,
        loss=cfg.loss,
        loss_scale_px=cfg.loss_scale_px,
        max_nfev=max_nfev,
    )
    w2cs[:] = res.w2cs
    X[ids] = anchor_points(res.w2cs, res.focal, center, res.inv_depth, anchor_t, anchor_xy)
    err = np.full(vis.shape, np.nan)
    err[ids[obs.p], obs.t] = np.linalg.norm(res.residuals, axis=-1)
    return res, err


def _static_result(W, H, focal, motion, t0, reason) -> CameraEstimate:
    T = len(motion)
    f = focal if focal is not None else cinit.focal_from_fov(60.0, W)
    K = cinit.intrinsics(f, np.array([(W - 1) / 2.0, (H - 1) / 2.0]))
    logger.info("camera looks static (%s): keeping identity poses", reason)
    return CameraEstimate(
        np.tile(np.eye(4), (T, 1, 1)),
        K,
        (W, H),
        True,
        motion,
        info={"static_reason": reason, "seconds": {"total": time.perf_counter() - t0}},
    )


def estimate_cameras(
    images: np.ndarray,
    fg_masks: np.ndarray,
    *,
    prior_disp: Optional[np.ndarray] = None,
    prior_valid: Optional[np.ndarray] = None,
    focal: Optional[float] = None,
    cfg: CameraEstimateConfig | None = None,
    flow_cache_dir=None,
) -> CameraEstimate:
    """Estimate the cameras of a video (see the module docstring).

    images: (T, H, W, 3) uint8 RGB. fg_masks: (T, H, W) bool, moving content. prior_disp / prior_valid:
    optional (T, H, W) disparity prior (1 / depth up to scale) and its validity, used for the scale only.
    focal: a known focal length in pixels (then not estimated). flow_cache_dir: a FlowCache folder.
    """
    cfg = cfg or CameraEstimateConfig()
    t0 = time.perf_counter()
    T, H, W = images.shape[:3]
    if T < 2:
        raise ValueError(f"camera estimation needs at least 2 frames, got {T}")
    tracks = static_tracks(
        images,
        fg_masks,
        grid_step=cfg.grid_step,
        query_stride=cfg.query_stride,
        dilate_px=cfg.dilate_px,
        backend=cfg.flow_backend,
        cache_dir=flow_cache_dir,
    )
    t_tracks = time.perf_counter()
    motion = camera_motion_px(tracks)
    finite = motion[np.isfinite(motion)]
    level = float(np.percentile(finite, 90)) if finite.size else 0.0
    thresh = cfg.static_threshold * max(W, H)
    if level < thresh:
        return _static_result(
            W,
            H,
            focal,
            motion,
            t0,
            f"90th percentile of the median static-track motion {level:.2f} px < {thresh:.2f} px",
        )
    est = reconstruct_from_tracks(tracks, W, H, prior_disp=prior_disp, prior_valid=prior_valid, focal=focal, cfg=cfg)
    est.motion_px = motion
    est.info.update(motion_level_px=level)
    est.info["seconds"].update(tracks=t_tracks - t0, total=time.perf_counter() - t0)
    logger.info(
        "cameras: %d frames, focal %.1f px, %d points, reprojection rms %.2f px (scale: %s); %.1f s",
        T,
        est.K[0, 0],
        est.info["num_points"],
        est.info["rms_final_px"],
        est.info["scale_from"],
        est.info["seconds"]["total"],
    )
    return est


def reconstruct_from_tracks(
    tracks: StaticTracks,
    width: int,
    height: int,
    *,
    prior_disp: Optional[np.ndarray] = None,
    prior_valid: Optional[np.ndarray] = None,
    focal: Optional[float] = None,
    cfg: CameraEstimateConfig | None = None,
) -> CameraEstimate:
    """Steps 3-6 of the module docstring on given static tracks (pixels of a ``width`` x ``height`` image)."""
    cfg = cfg or CameraEstimateConfig()
    t0 = time.perf_counter()
    W, H, T = int(width), int(height), tracks.visible.shape[1]
    center = np.array([(W - 1) / 2.0, (H - 1) / 2.0])
    f0 = focal
    if f0 is None:
        f_fund = cinit.estimate_focal(
            tracks.xy,
            tracks.visible,
            W,
            H,
            pairs=_pairs(tracks.visible),
            ransac_px=cfg.ransac_px,
            fov_range=cfg.fov_range_deg,
        )
        f0 = f_fund if f_fund is not None else cinit.focal_from_fov(60.0, W)
    tracks = reject_moving(tracks, cinit.intrinsics(f0, center), cfg.ransac_px)
    tracks = _longest(tracks, cfg.max_points, cfg.seed)
    if tracks.num_tracks < 8:
        raise ValueError(f"only {tracks.num_tracks} static tracks: too little static texture to estimate cameras")
    xy, vis = tracks.xy, tracks.visible.copy()
    t_prep = time.perf_counter()
    w2cs, X, has_X, f, err, info = _reconstruct(xy, vis, cinit.intrinsics(f0, center), f0, center, focal is None, cfg)
    t_ba = time.perf_counter()
    scale, how = _scale(w2cs, f, center, X, has_X, xy, vis, prior_disp, prior_valid)
    w2cs[:, :3, 3] *= scale
    X = X * scale
    angle, rms = _point_stats(w2cs, X, has_X, vis, err)
    info.update(
        scale=scale,
        scale_from=how,
        focal_init=float(f0),
        num_tracks=int(tracks.num_tracks),
        num_points=int(has_X.sum()),
        seconds={"init": t_prep - t0, "adjustment": t_ba - t_prep},
    )
    return CameraEstimate(
        w2cs,
        cinit.intrinsics(f, center),
        (W, H),
        False,
        np.full(T, np.nan),
        tracks,
        X,
        has_X,
        vis & has_X[:, None] & np.isfinite(err),
        angle,
        rms,
        info,
    )


def _longest(tracks: StaticTracks, n: int, seed: int) -> StaticTracks:
    """The ``n`` tracks visible in the most frames (ties broken at random with ``seed``)."""
    if tracks.num_tracks <= n:
        return tracks
    rng = np.random.default_rng(seed)
    order = np.lexsort((rng.random(tracks.num_tracks), -tracks.visible.sum(1)))
    return tracks.subset(np.isin(np.arange(tracks.num_tracks), order[:n]))


def _reconstruct(xy, vis, K, f0, center, optimize_focal, cfg):
    """Initial poses and points, then the global adjustments with outlier removal. Returns
    (w2cs, X, has_X, focal, err (P, T) residual norms (NaN where not used), info)."""
    P, T = vis.shape
    start = cinit.initial_pair(xy, vis, K, ransac_px=cfg.ransac_px, min_angle_deg=cfg.min_angle_deg)
    info: dict = {}
    if start is None:
        info["init"] = "rotation_only"
        logger.warning(
            "no frame pair has enough parallax to triangulate: starting from rotations (homographies), zero translations"
        )
        w2cs = cinit.rotation_only_init(xy, vis, K, cfg.ransac_px)
        anchor_t = _anchor(vis)
        has_X = vis.sum(1) >= 2
        X = anchor_points(w2cs, f0, center, np.ones(P), anchor_t, xy[np.arange(P), anchor_t])
        gauge = 0
    else:
        info["init"] = f"two_view({start[0]},{start[1]})"
        gauge = start[0]
        state = {"n": 0}

        def local_ba(w2cs_, registered, X_, has_X_):
            state["n"] += 1
            if state["n"] % cfg.local_ba_every == 0:
                fixed = [gauge] + np.nonzero(~registered)[0].tolist()
                _adjust(xy, vis, w2cs_, f0, center, X_, has_X_, registered, fixed, False, cfg, 20)

        w2cs, X, has_X, pnp_ok = cinit.register_incrementally(
            xy, vis, K, start, ransac_px=cfg.ransac_px, min_angle_deg=cfg.min_angle_deg, on_registered=local_ba
        )
        info["pnp_failed_frames"] = np.nonzero(~pnp_ok)[0].tolist()
    all_frames = np.ones(T, dtype=bool)
    res, err = _adjust(xy, vis, w2cs, f0, center, X, has_X, all_frames, [gauge], optimize_focal, cfg, cfg.max_nfev)
    f = res.focal
    finite = err[np.isfinite(err)]
    sigma = 1.4826 * np.median(np.abs(finite - np.median(finite))) if finite.size else 0.0
    thresh = max(cfg.outlier_px, float(np.median(finite) + 3 * sigma) if finite.size else cfg.outlier_px)
    bad = np.isfinite(err) & (err > thresh)
    vis &= ~bad
    moving = bad.sum(1) > 0.5 * np.isfinite(err).sum(1)
    has_X &= ~moving & (vis.sum(1) >= 2)
    info.update(
        rms_first_px=float(np.sqrt(np.mean(finite**2))) if finite.size else float("nan"),
        outlier_observations=int(bad.sum()),
        outlier_tracks=int(moving.sum()),
        outlier_threshold_px=thresh,
    )
    res, err = _adjust(xy, vis, w2cs, f, center, X, has_X, all_frames, [gauge], optimize_focal, cfg, cfg.max_nfev)
    finite = err[np.isfinite(err)]
    info.update(
        rms_final_px=float(np.sqrt(np.mean(finite**2))) if finite.size else float("nan"), gauge_frame=int(gauge)
    )
    # the world frame is the gauge frame's camera; make it frame 0's camera instead
    M = w2cs[0].copy()
    w2cs = w2cs @ np.linalg.inv(M)
    X = X @ M[:3, :3].T + M[:3, 3]
    return w2cs, X, has_X, res.focal, err, info


def _scale(w2cs, f, center, X, has_X, xy, vis, prior_disp, prior_valid) -> tuple[float, str]:
    """Scale factor for translations and points: from the prior when given, else median depth = 1."""
    p, t = np.nonzero(vis & has_X[:, None])
    if len(p) == 0:
        return 1.0, "no points"
    Xc = np.einsum("oij,oj->oi", w2cs[t, :3, :3], X[p]) + w2cs[t, :3, 3]
    z = Xc[:, 2]
    if prior_disp is not None:
        H, W = prior_disp.shape[1:]
        xi = np.clip(np.round(xy[p, t, 0]).astype(int), 0, W - 1)
        yi = np.clip(np.round(xy[p, t, 1]).astype(int), 0, H - 1)
        d = prior_disp[t, yi, xi]
        ok = (z > 0) & np.isfinite(d) & (d > 0)
        if prior_valid is not None:
            ok &= prior_valid[t, yi, xi]
        if ok.sum() >= 10:
            return float(np.median(1.0 / d[ok] / z[ok])), f"depth prior ({int(ok.sum())} observations)"
    zpos = z[z > 0]
    return (1.0 / float(np.median(zpos)) if zpos.size else 1.0), "median static-point depth = 1"


def _point_stats(w2cs, X, has_X, vis, err) -> tuple[np.ndarray, np.ndarray]:
    """Largest ray angle (deg) between the first and last inlier observation, and rms residual (px)."""
    P, T = vis.shape
    use = vis & has_X[:, None] & np.isfinite(err)
    centers = np.einsum("tji,tj->ti", w2cs[:, :3, :3], -w2cs[:, :3, 3])  # (T, 3) camera centres
    first = np.argmax(use, axis=1)
    last = T - 1 - np.argmax(use[:, ::-1], axis=1)
    angle = cinit.ray_angle_deg(X, centers[first], centers[last])
    n = use.sum(1)
    rms = np.sqrt(np.where(use, np.nan_to_num(err) ** 2, 0.0).sum(1) / np.maximum(n, 1))
    angle[n < 2] = 0.0
    rms[n < 2] = np.inf
    return angle, rms
