"""Scene normalisation as Shape of Motion does it (``compute_scene_norm`` in its casual loader).

From world points of the foreground tracks (lifted with the depth prior): centre = their mean; scale =
half the largest extent over the three axes between the 5th and 95th percentiles; rotation = the one
that takes the mean camera "up" (minus the mean second row of ``w2cs``, i.e. minus the cameras' y axis
in world coordinates, since OpenCV y points down) to +z. Then ``x_norm = R (x - centre) / scale``:
cameras become ``w2c @ inv(transform)`` with their translation divided by ``scale``, and depths are
divided by ``scale`` (disparities multiplied).
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import Tensor

from flow3d.data.sequence import VideoSequence
from flow3d.geometry import transform_points, unproject_pixels
from flow3d.log import get_logger

logger = get_logger(__name__)


def rotation_between(a: Tensor, b: Tensor) -> Tensor:
    """(3, 3) rotation taking unit vector ``a`` (3,) to unit vector ``b`` (3,) (Rodrigues)."""
    a = F.normalize(a, dim=-1)
    b = F.normalize(b, dim=-1)
    v = torch.linalg.cross(a, b)
    c = torch.dot(a, b)
    if c <= -1 + 1e-6:  # opposite: rotate by pi about any axis perpendicular to a
        axis = torch.linalg.cross(a, a.new_tensor([1.0, 0.0, 0.0]))
        if axis.norm() < 1e-6:
            axis = torch.linalg.cross(a, a.new_tensor([0.0, 1.0, 0.0]))
        axis = F.normalize(axis, dim=-1)
        return 2 * torch.outer(axis, axis) - torch.eye(3, dtype=a.dtype)
    vx = a.new_zeros(3, 3)
    vx[0, 1], vx[0, 2], vx[1, 0], vx[1, 2], vx[2, 0], vx[2, 1] = -v[2], v[1], v[2], -v[0], -v[1], v[0]
    return torch.eye(3, dtype=a.dtype) + vx + vx @ vx / (1 + c)


def compute_scene_norm(points: Tensor, w2cs: Tensor) -> tuple[float, Tensor]:
    """``points`` (P, 3) world, ``w2cs`` (T, 4, 4) -> ``(scale, transform (4, 4))``; see the module doc."""
    if points.ndim != 2 or points.shape[-1] != 3 or points.shape[0] < 2:
        raise ValueError(f"points must be (P, 3) with P >= 2, got {tuple(points.shape)}")
    points = points.double()
    center = points.mean(0)
    X = points - center
    lo = torch.quantile(X, 0.05, dim=0)
    hi = torch.quantile(X, 0.95, dim=0)
    scale = float((hi - lo).max() / 2.0)
    if not scale > 0:
        raise ValueError(f"scene normalisation: the points have no extent (scale {scale})")
    up = -F.normalize(w2cs[:, 1, :3].double().mean(0), dim=-1)
    R = rotation_between(up, up.new_tensor([0.0, 0.0, 1.0]))
    transform = torch.eye(4, dtype=torch.float64)
    transform[:3, :3] = R
    transform[:3, 3] = -R @ center
    return scale, transform.float()


def apply_scene_norm(seq: VideoSequence, scale: float, transform: Tensor) -> VideoSequence:
    """Return a copy of ``seq`` in normalised coordinates: cameras, depth prior, GT depth, GT points,
    object poses and surface points, held-out views. ``seq`` must be un-normalised (``scene_scale`` 1, identity transform)."""
    S = torch.diag(torch.tensor([1.0 / scale, 1.0 / scale, 1.0 / scale, 1.0], dtype=torch.float64))
    Tm = transform.double()

    def cams(w2cs: Tensor) -> Tensor:
        out = w2cs.double() @ torch.linalg.inv(Tm)
        out[..., :3, 3] /= scale
        return out.float()

    def pts(x: Tensor) -> Tensor:
        return (transform_points(Tm, x.double()) / scale).float()

    changes = dict(
        w2cs=cams(seq.w2cs),
        prior_disp=seq.prior_disp * scale,
        scene_scale=float(scale),
        scene_transform=transform.float().clone(),
    )
    if seq.gt_depth is not None:
        changes["gt_depth"] = seq.gt_depth / scale
    if seq.gt_tracks_3d is not None:
        changes["gt_tracks_3d"] = pts(seq.gt_tracks_3d)
    if seq.gt_points is not None:
        changes["gt_points"] = pts(seq.gt_points)
    if seq.gt_surface_points is not None:
        changes["gt_surface_points"] = pts(seq.gt_surface_points)
    if seq.gt_object_poses is not None:
        changes["gt_object_poses"] = (S @ Tm @ seq.gt_object_poses.double()).float()
    if seq.gt_prior_affine is not None:
        aff = seq.gt_prior_affine.clone()
        aff[:, 1] = aff[:, 1] * scale
        changes["gt_prior_affine"] = aff
    if seq.val_views is not None:
        changes["val_views"] = dataclasses.replace(seq.val_views, w2cs=cams(seq.val_views.w2cs))
    return dataclasses.replace(seq, **changes)


def normalize_from_tracks(seq: VideoSequence, seed: int = 0, num_points: int = 5000) -> VideoSequence:
    """Shape of Motion's normalisation computed from the foreground tracks lifted with the depth prior
    (their visible entries); falls back to the back-projected depth prior of all pixels when fewer than
    10 foreground track points exist (logged)."""
    g = torch.Generator().manual_seed(seed)
    tr = seq.get_tracks_3d(num_points, generator=g)
    pts = tr.points[tr.visible]
    if pts.shape[0] < 10:
        valid = (seq.prior_valid & seq.valid_masks).reshape(-1)
        T, H, W = seq.prior_valid.shape
        flat = torch.randint(0, T * H * W, (num_points * 4,), generator=g)
        flat = flat[valid[flat]][:num_points]
        t, y, x = flat // (H * W), (flat % (H * W)) // W, flat % W
        depth = seq.prior_depth()[t, y, x]
        xy = torch.stack([x, y], -1).to(depth.dtype)[:, None]  # (P, 1, 2)
        pts = unproject_pixels(xy, depth[:, None], seq.Ks[t], seq.c2ws[t])[:, 0]
        logger.warning(
            "scene normalisation: %d foreground track points; using %d depth-prior points of all pixels instead",
            int(tr.visible.sum()),
            pts.shape[0],
        )
    scale, transform = compute_scene_norm(pts, seq.w2cs)
    logger.info("scene normalisation: scale %.4g (from %d points)", scale, pts.shape[0])
    return apply_scene_norm(seq, scale, transform)
