"""The embedded synthetic scene: a procedural dynamic video with ground truth, no download.

A room of five textured planes (back wall, floor, ceiling, side walls) holds ``num_objects`` textured
spheres and boxes on a "carousel": they orbit a common centre by half a turn over the video, so the
object in front at the start is behind at the end (occlusions and depth-order changes), bob up and
down, and spin about their own axes. A camera moves sideways and forward while looking at the centre.
Lambertian shading under a fixed directional light plus ambient. Rendering is an analytic ray caster
in numpy (float64): one ray through each pixel centre, so ground truth is exact per pixel.

Ground truth: z-depth, the world point and object id of every pixel, object poses (hence flow between
any two frames), 3D tracks with visibility from the ray caster, and the per-frame affine (a_t, b_t) of
the depth prior. The depth *prior* handed to the trainer is the true disparity, optionally blurred
(``prior_blur_px``, smears depth edges like a monocular estimator), mapped through a per-frame affine
that drifts over time, ``disp_t = a_t / z + b_t`` with ``a_t = 1 + prior_scale_drift * u(s)`` and
``b_t = prior_shift_drift * median(1 / z) * u(s)`` (s = t / (T - 1); u(s) = s - 1/2 for ``linear``,
sin(2 pi s) / 2 for ``sine``, 0 for ``none`` and ``perfect``), then multiplied by (1 + ``prior_noise`` * N(0, 1)).
``perfect`` also turns blur and noise off: the prior is then exactly 1 / z.

``python -m flow3d.preprocess.synthetic --out-dir DIR`` writes the scene in the custom layout (see
:func:`write_custom_layout`) so users can see a complete example of the format. ``--data.scene tissue``
is the endoscopy scene of :mod:`flow3d.data.tissue`.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional

import numpy as np
import torch
import tyro

from flow3d.data import io
from flow3d.data.cache import cache_key, cached_sequence
from flow3d.data.common import CommonDataConfig
from flow3d.data.endoscopy import GT_DEPTH_SOURCE_FILE
from flow3d.data.normalize import apply_scene_norm, compute_scene_norm
from flow3d.data.prior_drift import drifting_prior
from flow3d.data.sequence import VideoSequence
from flow3d.data.split import split_frames
from flow3d.data.tissue import make_tissue_sequence
from flow3d.data.tracks import visibility_to_tapir
from flow3d.log import get_logger

logger = get_logger(__name__)


@dataclass(kw_only=True)
class SyntheticDataConfig(CommonDataConfig):
    """The embedded procedural scene with ground truth (deterministic from ``seed``)."""

    scene: Literal["objects", "tissue"] = "objects"
    """Which scene: objects (a room with moving objects, moving camera) or tissue (a static endoscope over
    deforming tissue with instruments; see flow3d.data.tissue)."""
    seed: int = 0
    """Random seed of the scene (object shapes, textures, paths) and of the prior's noise."""
    num_frames: int = 24
    """Number of frames T."""
    width: int = 128
    """Image width W in pixels."""
    height: int = 96
    """Image height H in pixels."""
    num_objects: int = 3
    """Objects scene: number of moving objects (alternately spheres and boxes), 1 to 6."""
    num_instruments: int = 2
    """Tissue scene: number of instruments (rounded shafts) sweeping over the tissue, 0 to 2."""
    tissue_pull: float = 0.18
    """Tissue scene: peak relative depth change of the main pull (0.18 = tissue pulled 18% closer)."""
    fov_deg: float = 65.0
    """Horizontal field of view of the camera in degrees."""
    camera_motion: float = 1.0
    """Objects scene: amplitude of the camera path (0 = static camera). The tissue scene's camera is static."""
    track_grid_step: int = 8
    """Spacing in pixels of the query points of the 2D tracks (a regular grid in each query frame)."""
    track_query_stride: int = 1
    """Every k-th frame is a query frame of 2D tracks."""
    track_noise_px: float = 0.0
    """Standard deviation (pixels) of Gaussian noise added to the 2D tracks outside their query frame."""
    prior_drift: Literal["linear", "sine", "none", "perfect"] = "linear"
    """How the depth prior's per-frame scale and shift drift over time; ``perfect`` gives exactly 1/z."""
    prior_scale_drift: float = 0.3
    """Relative change of the prior's scale over the video (first to last frame for ``linear``)."""
    prior_shift_drift: float = 0.2
    """Change of the prior's shift over the video, as a fraction of the median true disparity."""
    prior_blur_px: float = 1.0
    """Standard deviation (pixels) of a Gaussian blur of the prior (blurs depth edges); 0 = none."""
    prior_noise: float = 0.01
    """Relative standard deviation of multiplicative per-pixel noise on the prior; 0 = none."""
    prior_error: Literal["affine", "realistic"] = "affine"
    """The prior-error model (flow3d.data.prior_drift): ``affine`` (a per-frame scale and shift drift, blur,
    noise) or ``realistic`` (also one object misplaced in some frames, blurred depth edges, a per-frame tone
    curve of disparity and a drifting, flickering low-frequency multiplicative field: errors no per-frame
    affine removes). The ``prior_tone`` ... ``prior_object_frames`` options act only with ``realistic``."""
    prior_tone: float = 0.5
    """Realistic: spread of the per-frame tone curve's exponent, log gamma_t in [-prior_tone, prior_tone]."""
    prior_field: float = 0.1
    """Realistic: amplitude (log, RMS) of the low-frequency multiplicative field."""
    prior_flicker: float = 0.5
    """Realistic: relative frame-to-frame flicker of the field's amplitude."""
    prior_edge_blur_px: float = 2.0
    """Realistic: Gaussian blur (pixels) of the prior's depth edges (replaces ``prior_blur_px``)."""
    prior_object_error: float = 0.25
    """Realistic: relative disparity error of the misplaced object (too near or too far)."""
    prior_object_frames: float = 0.3
    """Realistic: fraction of the frames (two runs) in which one object is misplaced; 0 = never."""
    track_region: Literal["all", "fg"] = "all"
    """Which 2D tracks ship: ``all`` (a grid over the whole image) or ``fg`` (query points on the foreground
    masks only, as a foreground-focused tracker in Shape of Motion's layout gives)."""
    normalize_scene: tyro.conf.FlagConversionOff[bool] = False
    """Apply Shape of Motion's scene normalisation (off: the scene is already at unit scale)."""
    cache_dir: Optional[str] = None
    """Folder for an on-disk cache of the generated scene (None: keep it in memory only)."""

    def load(self) -> VideoSequence:
        """Generate (or fetch from the cache) the whole video; see :func:`make_synthetic_sequence`."""
        key = cache_key(self, exclude=("is_train", "cache_dir"))
        path = Path(self.cache_dir) / f"synthetic_{key}.npz" if self.cache_dir else None
        return cached_sequence(key, path, lambda: make_synthetic_sequence(self))


# ------------------------------------------------------------------------------------------------
# Scene description
# ------------------------------------------------------------------------------------------------
# Planes (normal n facing into the room, offset h with n . x = h), world axes as OpenCV: y down.
_PLANES = [
    (np.array([0.0, 0.0, -1.0]), -6.0),  # back wall z = 6
    (np.array([0.0, -1.0, 0.0]), -1.2),  # floor y = 1.2
    (np.array([0.0, 1.0, 0.0]), -2.2),  # ceiling y = -2.2
    (np.array([1.0, 0.0, 0.0]), -3.5),  # left wall x = -3.5
    (np.array([-1.0, 0.0, 0.0]), -3.5),  # right wall x = 3.5
]
_CENTER = np.array([0.0, 0.2, 3.4])
_LIGHT = np.array([0.3, -1.0, -0.6]) / np.linalg.norm([0.3, -1.0, -0.6])  # towards the light


def _rodrigues(axis: np.ndarray, angle: float) -> np.ndarray:
    axis = axis / np.linalg.norm(axis)
    K = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + math.sin(angle) * K + (1 - math.cos(angle)) * K @ K


@dataclass
class _Scene:
    kinds: list  # "sphere" | "box"
    sizes: list  # radius or half extents (3,)
    poses: np.ndarray  # (O, T, 4, 4) object -> world
    w2cs: np.ndarray  # (T, 4, 4)
    K: np.ndarray  # (3, 3)
    materials: list  # (color_a, color_b, freq, wave1, wave2) per plane then per object


def _build_scene(cfg: SyntheticDataConfig, rng: np.random.Generator) -> _Scene:
    T, W, H = cfg.num_frames, cfg.width, cfg.height
    O = cfg.num_objects
    if not 1 <= O <= 6:
        raise ValueError(f"num_objects must be in 1..6, got {O}")
    if T < 2 or W < 8 or H < 8:
        raise ValueError(f"need num_frames >= 2 and an image of at least 8x8, got T={T}, {W}x{H}")
    s = np.linspace(0.0, 1.0, T)
    kinds, sizes, poses = [], [], np.zeros((O, T, 4, 4))
    direction = rng.choice([-1.0, 1.0])
    for k in range(O):
        kind = "sphere" if k % 2 == 0 else "box"
        kinds.append(kind)
        sizes.append(rng.uniform(0.38, 0.5) if kind == "sphere" else rng.uniform(0.26, 0.4, size=3))
        radius = rng.uniform(0.8, 1.05)
        phase = 2 * math.pi * k / O + rng.uniform(-0.2, 0.2)
        height = rng.uniform(-0.3, 0.1)
        bob_phase = rng.uniform(0, 2 * math.pi)
        axis = rng.normal(size=3)
        spin = rng.uniform(1.5, 3.0) * rng.choice([-1.0, 1.0])
        spin0 = rng.uniform(0, 2 * math.pi)
        for t in range(T):
            theta = phase + direction * math.pi * s[t]
            p = _CENTER + np.array(
                [
                    radius * math.sin(theta),
                    height + 0.12 * math.sin(2 * math.pi * s[t] + bob_phase),
                    -radius * math.cos(theta),
                ]
            )
            poses[k, t] = np.eye(4)
            poses[k, t, :3, :3] = _rodrigues(axis, spin0 + spin * s[t])
            poses[k, t, :3, 3] = p
    a = cfg.camera_motion
    w2cs = np.zeros((T, 4, 4))
    target = _CENTER
    for t in range(T):
        c = np.array([a * (-0.8 + 1.6 * s[t]), -0.2 - 0.15 * a * math.sin(math.pi * s[t]), -0.4 + 0.5 * a * s[t]])
        z = target - c
        z /= np.linalg.norm(z)
        x = np.cross(np.array([0.0, 1.0, 0.0]), z)
        x /= np.linalg.norm(x)
        y = np.cross(z, x)
        c2w = np.eye(4)
        c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = x, y, z, c
        w2cs[t] = np.linalg.inv(c2w)
    f = (W / 2.0) / math.tan(math.radians(cfg.fov_deg) / 2.0)
    K = np.array([[f, 0.0, (W - 1) / 2.0], [0.0, f, (H - 1) / 2.0], [0.0, 0.0, 1.0]])
    materials = []
    for m in range(len(_PLANES) + O):
        ca = rng.uniform(0.25, 0.95, size=3)
        cb = ca * rng.uniform(0.35, 0.7) + rng.uniform(0.0, 0.2, size=3)
        freq = rng.uniform(1.2, 2.2) if m < len(_PLANES) else rng.uniform(4.0, 7.0)
        materials.append((ca, cb, freq, rng.normal(size=3) * 6.0, rng.normal(size=3) * 9.0))
    return _Scene(kinds, sizes, poses, w2cs, K, materials)


def _cast(scene: _Scene, t: int, origin: np.ndarray, dirs: np.ndarray):
    """Ray-cast rays ``origin + tau * dirs`` (dirs (P, 3) with unit camera-z component, so tau is
    z-depth). Returns depth (P,), object id (P,) (-1 background), material (P,), normal (P, 3) world,
    texture coordinates (P, 3) (object-local for objects, world for planes)."""
    P = dirs.shape[0]
    best = np.full(P, np.inf)
    obj = np.full(P, -1, dtype=np.int64)
    mat = np.full(P, -1, dtype=np.int64)
    normal = np.zeros((P, 3))
    texc = np.zeros((P, 3))
    eps = 1e-6
    for i, (n, h) in enumerate(_PLANES):
        den = dirs @ n
        with np.errstate(divide="ignore", invalid="ignore"):
            tau = (h - origin @ n) / den
        ok = (np.abs(den) > 1e-12) & (tau > eps) & (tau < best)
        best[ok], mat[ok], obj[ok] = tau[ok], i, -1
        normal[ok] = n
        texc[ok] = origin + tau[ok, None] * dirs[ok]
    for k, kind in enumerate(scene.kinds):
        pose = scene.poses[k, t]
        R, p = pose[:3, :3], pose[:3, 3]
        o_l = R.T @ (origin - p)  # (3,)
        d_l = dirs @ R  # (P, 3) = R^T d
        if kind == "sphere":
            r = scene.sizes[k]
            a = (d_l * d_l).sum(-1)
            b = d_l @ o_l
            c = o_l @ o_l - r * r
            disc = b * b - a * c
            tau = (-b - np.sqrt(np.maximum(disc, 0.0))) / a
            ok = (disc >= 0) & (tau > eps) & (tau < best)
            n_l = (o_l + tau[:, None] * d_l) / r
        else:
            hx = np.asarray(scene.sizes[k])
            with np.errstate(divide="ignore", invalid="ignore"):
                inv = 1.0 / np.where(np.abs(d_l) < 1e-15, 1e-15, d_l)
            t1 = (-hx - o_l) * inv
            t2 = (hx - o_l) * inv
            tmin_ax = np.minimum(t1, t2)
            tau = tmin_ax.max(-1)
            tfar = np.maximum(t1, t2).min(-1)
            ok = (tau <= tfar) & (tau > eps) & (tau < best)
            ax = tmin_ax.argmax(-1)
            n_l = np.zeros((P, 3))
            n_l[np.arange(P), ax] = -np.sign(d_l[np.arange(P), ax])
        best[ok], obj[ok], mat[ok] = tau[ok], k, len(_PLANES) + k
        normal[ok] = n_l[ok] @ R.T
        texc[ok] = o_l + tau[ok, None] * d_l[ok]
    return best, obj, mat, normal, texc


def _shade(scene: _Scene, mat: np.ndarray, normal: np.ndarray, texc: np.ndarray) -> np.ndarray:
    out = np.zeros((mat.shape[0], 3))
    for m, (ca, cb, freq, w1, w2) in enumerate(scene.materials):
        sel = mat == m
        if not sel.any():
            continue
        p = texc[sel]
        checker = (np.floor(p * freq).sum(-1) % 2)[:, None]
        wave = 0.82 + 0.18 * np.sin(p @ w1)[:, None] * np.cos(p @ w2)[:, None]
        out[sel] = np.where(checker > 0, ca, cb) * wave
    lambert = np.clip(normal @ _LIGHT, 0.0, None)[:, None]
    return np.clip(out * (0.4 + 0.6 * lambert), 0.0, 1.0)


def _rays(scene: _Scene, t: int, xy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Origin (3,) and directions (P, 3) with unit camera-z through OpenCV pixel positions xy (P, 2)."""
    c2w = np.linalg.inv(scene.w2cs[t])
    pix = np.concatenate([xy, np.ones((xy.shape[0], 1))], axis=-1)
    d_cam = pix @ np.linalg.inv(scene.K).T  # z = 1
    return c2w[:3, 3], d_cam @ c2w[:3, :3].T


def make_synthetic_sequence(cfg: SyntheticDataConfig) -> VideoSequence:
    """Render the scene of ``cfg`` (``cfg.scene``) into a :class:`VideoSequence` with ground truth."""
    if cfg.scene not in ("objects", "tissue"):
        raise ValueError(f"scene must be one of objects, tissue, got {cfg.scene!r}")
    seq = make_tissue_sequence(cfg) if cfg.scene == "tissue" else _make_objects_sequence(cfg)
    return foreground_tracks_only(seq) if cfg.track_region == "fg" else seq


def foreground_tracks_only(seq: VideoSequence) -> VideoSequence:
    """``seq`` keeping only the tracks whose query point lies on its foreground mask (``--data.track-region fg``)."""
    M = seq.tracks_xy.shape[0]
    xy = seq.tracks_xy[torch.arange(M), seq.tracks_query_t].round().long()
    W, H = seq.img_wh
    x, y = xy[:, 0].clamp(0, W - 1), xy[:, 1].clamp(0, H - 1)
    keep = seq.fg_masks[seq.tracks_query_t, y, x] > 0.5
    logger.info("track region fg: %d of %d tracks start on the foreground", int(keep.sum()), M)
    return dataclasses.replace(
        seq,
        tracks_xy=seq.tracks_xy[keep],
        tracks_visible=seq.tracks_visible[keep],
        tracks_conf=seq.tracks_conf[keep],
        tracks_query_t=seq.tracks_query_t[keep],
        gt_tracks_3d=None if seq.gt_tracks_3d is None else seq.gt_tracks_3d[keep],
    )


def _make_objects_sequence(cfg: SyntheticDataConfig) -> VideoSequence:
    rng = np.random.default_rng(cfg.seed)
    scene = _build_scene(cfg, rng)
    T, W, H = cfg.num_frames, cfg.width, cfg.height
    images, depth, ids, points = _render_frames(scene, T, H, W)
    prior, prior_valid, a_t, b_t = drifting_prior(depth, cfg, rng, objects=ids)
    xy_obs, vis, gt3d, query_t, fg_track = _tracks(cfg, scene, points, ids, rng)
    M = gt3d.shape[0]
    train_ids, val_ids = split_frames(T, cfg.val_every)
    f32 = lambda a: torch.from_numpy(np.ascontiguousarray(a)).float()  # noqa: E731
    seq = VideoSequence(
        name=f"synthetic_s{cfg.seed}",
        images=f32(images),
        fg_masks=f32(ids >= 0),
        valid_masks=torch.ones(T, H, W, dtype=torch.bool),
        prior_disp=f32(prior),
        prior_valid=torch.from_numpy(prior_valid),
        w2cs=f32(scene.w2cs),
        Ks=f32(np.repeat(scene.K[None], T, 0)),
        time_ids=torch.arange(T),
        train_ids=train_ids,
        val_ids=val_ids,
        tracks_xy=f32(xy_obs),
        tracks_visible=torch.from_numpy(vis),
        tracks_conf=torch.ones(M, T),
        tracks_query_t=torch.from_numpy(query_t).long(),
        gt_depth=f32(depth),
        gt_tracks_3d=f32(gt3d),
        gt_points=f32(points),
        gt_object_ids=torch.from_numpy(ids),
        gt_object_poses=f32(scene.poses),
        gt_prior_affine=f32(np.stack([a_t, b_t], -1)),
        frame_names=[f"{t:05d}" for t in range(T)],
    )
    if cfg.normalize_scene:
        # Shape of Motion normalises with the foreground tracks; here their true 3D points.
        pts = seq.gt_tracks_3d[torch.from_numpy(fg_track)] if fg_track.any() else seq.gt_tracks_3d
        scale, transform = compute_scene_norm(pts.reshape(-1, 3), seq.w2cs)
        seq = apply_scene_norm(seq, scale, transform)
    logger.info("synthetic scene: %d frames %dx%d, %d objects, %d tracks", T, W, H, cfg.num_objects, M)
    return seq


def _render_frames(scene: _Scene, T: int, H: int, W: int):
    """Ray-cast every pixel centre of every frame: images (T, H, W, 3) in 8-bit levels, z-depth (T, H, W),
    object ids (T, H, W) (-1 background) and world points (T, H, W, 3)."""
    ys, xs = np.meshgrid(np.arange(H, dtype=np.float64), np.arange(W, dtype=np.float64), indexing="ij")
    grid = np.stack([xs, ys], -1).reshape(-1, 2)
    images = np.zeros((T, H, W, 3))
    depth = np.zeros((T, H, W))
    ids = np.zeros((T, H, W), dtype=np.int64)
    points = np.zeros((T, H, W, 3))
    for t in range(T):
        o, d = _rays(scene, t, grid)
        tau, obj, mat, normal, texc = _cast(scene, t, o, d)
        if not np.isfinite(tau).all():
            raise RuntimeError("synthetic scene: a ray hit nothing (camera left the room)")
        images[t] = _shade(scene, mat, normal, texc).reshape(H, W, 3)
        depth[t] = tau.reshape(H, W)
        ids[t] = obj.reshape(H, W)
        points[t] = (o + tau[:, None] * d).reshape(H, W, 3)
    images = np.round(images * 255.0) / 255.0  # 8-bit levels, as from a real camera (and exact through PNG)
    return images, depth, ids, points


def _tracks(cfg: SyntheticDataConfig, scene: _Scene, points: np.ndarray, ids: np.ndarray, rng: np.random.Generator):
    """Grid tracks of the query frames carried with their objects: observed xy (M, T, 2) (with
    ``track_noise_px``), visibility (M, T) from the ray caster, true 3D points (M, T, 3), query frames (M,)
    and whether each track starts on an object (M,)."""
    T, H, W = ids.shape
    g = cfg.track_grid_step
    gy, gx = np.meshgrid(np.arange(g // 2, H, g), np.arange(g // 2, W, g), indexing="ij")
    tr_xyz, tr_q, tr_fg = [], [], []
    for q in range(0, T, max(cfg.track_query_stride, 1)):
        X = points[q, gy.ravel(), gx.ravel()]  # (P, 3)
        k = ids[q, gy.ravel(), gx.ravel()]
        tr_fg.append(k >= 0)
        traj = np.repeat(X[:, None], T, axis=1)  # (P, T, 3)
        for kk in range(cfg.num_objects):
            sel = k == kk
            if sel.any():
                local = (np.linalg.inv(scene.poses[kk, q]) @ np.concatenate([X[sel], np.ones((sel.sum(), 1))], -1).T).T
                traj[sel] = np.einsum("tij,pj->pti", scene.poses[kk], local)[..., :3]
        tr_xyz.append(traj)
        tr_q.append(np.full(X.shape[0], q))
    gt3d, query_t = np.concatenate(tr_xyz), np.concatenate(tr_q)  # (M, T, 3), (M,)
    xy, vis = _project_tracks(scene, gt3d, query_t, H, W)
    xy_obs = xy.copy()
    if cfg.track_noise_px > 0:
        M = gt3d.shape[0]
        xy_obs = xy_obs + cfg.track_noise_px * rng.normal(size=xy.shape)
        xy_obs[np.arange(M), query_t] = xy[np.arange(M), query_t]
    return xy_obs, vis, gt3d, query_t, np.concatenate(tr_fg)


def _project_tracks(scene: _Scene, gt3d: np.ndarray, query_t: np.ndarray, H: int, W: int):
    """Pixels (M, T, 2) of the 3D tracks and their visibility (M, T): inside the image and the first hit
    of the ray through them (always visible in their query frame)."""
    M, T = gt3d.shape[:2]
    xy = np.zeros((M, T, 2))
    vis = np.zeros((M, T), dtype=bool)
    for t in range(T):
        cam = gt3d[:, t] @ scene.w2cs[t, :3, :3].T + scene.w2cs[t, :3, 3]
        z = cam[:, 2]
        uv = cam @ scene.K.T
        xy[:, t] = uv[:, :2] / np.where(z > 1e-9, z, 1e-9)[:, None]
        inside = (
            (z > 1e-6)
            & (xy[:, t, 0] >= -0.5)
            & (xy[:, t, 0] <= W - 0.5)
            & (xy[:, t, 1] >= -0.5)
            & (xy[:, t, 1] <= H - 0.5)
        )
        idx = np.nonzero(inside)[0]
        o, d = _rays(scene, t, xy[idx, t])
        tau = _cast(scene, t, o, d)[0]
        vis[idx, t] = np.abs(tau - z[idx]) <= 1e-6 * z[idx] + 1e-9
    vis[np.arange(M), query_t] = True
    return xy, vis


# ------------------------------------------------------------------------------------------------
# Writing any (un-normalised) sequence in the custom layout
# ------------------------------------------------------------------------------------------------
def write_custom_layout(
    seq: VideoSequence,
    root: Path | str,
    seq_name: str,
    depth_type: str = "aligned_depth_anything",
    track_type: Optional[str] = "bootstapir",
) -> Path:
    """Write ``seq`` as Shape of Motion's custom layout under ``root`` (every file atomically).

    ``images/SEQ/NNNNN.png``, ``masks/SEQ/NNNNN.png`` (255 = foreground), ``<depth_type>/SEQ/NNNNN.npy``
    (float32 disparity, 0 = invalid), ``droid_recon/SEQ.npy`` (pickled dict ``traj_c2w`` (T, 4, 4),
    ``img_shape`` (H, W), ``intrinsics`` (fx, fy, cx, cy) in OpenCV pixel-centre convention, ``tstamps``),
    ``<track_type>/SEQ/<q>_<t>.npy`` ((P, 4) TAPIR rows; skipped when ``track_type`` is None), and, when
    known, ``ignore_masks/SEQ/NNNNN.png`` (255 = ignore: ``valid_masks`` False) and
    ``gt_depth/SEQ/NNNNN.npy`` (reference z-depth, with a ``source.txt`` unless it is ground truth).
    Returns ``root``.
    """
    root = Path(root)
    io.check_seq_name(seq_name, "seq_name")
    if seq.scene_scale != 1.0 or not torch.equal(seq.scene_transform, torch.eye(4)):
        raise ValueError("write_custom_layout needs an un-normalised sequence (scene_scale 1, identity transform)")
    K0 = seq.Ks[0]
    if not torch.allclose(seq.Ks, K0.expand_as(seq.Ks)):
        raise ValueError(
            "write_custom_layout: droid_recon stores one intrinsic matrix; the sequence's Ks differ per frame"
        )
    names = seq.frame_names or [f"{t:05d}" for t in range(seq.num_frames)]
    folders = {"images": "images", "masks": "masks", "depth": depth_type, "ignore": "ignore_masks", "gt": "gt_depth"}
    d = {k: root / v / seq_name for k, v in folders.items()}
    imgs = (seq.images.clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    ignore = None if bool(seq.valid_masks.all()) else (~seq.valid_masks).numpy()
    for t, n in enumerate(names):
        io.write_png_atomic(d["images"] / f"{n}.png", imgs[t])
        io.write_png_atomic(d["masks"] / f"{n}.png", ((seq.fg_masks[t] > 0.5).numpy() * 255).astype(np.uint8))
        io.save_npy_atomic(
            d["depth"] / f"{n}.npy", torch.where(seq.prior_valid[t], seq.prior_disp[t], 0.0).numpy().astype(np.float32)
        )
        if ignore is not None:
            io.write_png_atomic(d["ignore"] / f"{n}.png", ignore[t].astype(np.uint8) * 255)
        if seq.gt_depth is not None:
            io.save_npy_atomic(d["gt"] / f"{n}.npy", seq.gt_depth[t].numpy())
    if seq.gt_depth is not None and seq.gt_depth_source != "ground truth":
        (d["gt"] / GT_DEPTH_SOURCE_FILE).write_text(seq.gt_depth_source + "\n")
    recon = {
        "traj_c2w": np.linalg.inv(seq.w2cs.double().numpy()),
        "img_shape": (seq.img_wh[1], seq.img_wh[0]),
        "intrinsics": np.array([K0[0, 0], K0[1, 1], K0[0, 2], K0[1, 2]], dtype=np.float64),
        "tstamps": np.arange(seq.num_frames),
    }
    io.save_npy_atomic(root / "droid_recon" / f"{seq_name}.npy", recon, allow_pickle=True)
    if track_type is not None:
        for q in torch.unique(seq.tracks_query_t).tolist():
            rows = seq.tracks_query_t == q
            tap = visibility_to_tapir(seq.tracks_xy[rows], seq.tracks_visible[rows], seq.tracks_conf[rows])  # (P, T, 4)
            for t, n in enumerate(names):
                io.save_npy_atomic(root / track_type / seq_name / f"{names[q]}_{n}.npy", tap[:, t].numpy())
    return root
