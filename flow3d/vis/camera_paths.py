"""Camera paths for novel-view videos: orbit, spiral, fixed, around the training cameras' look-at point.

Cameras follow the glossary: ``w2cs`` (N, 4, 4) world -> camera in OpenCV axes (x right, y down,
z forward), ``Ks`` in pixels with pixel centres at integer coordinates. The look-at point is where the
training cameras' optical axes meet (least squares, as Shape of Motion's ``get_lookat``); when they are
(nearly) parallel - a static endoscope, a camera that only pans a little - it is the point on the
reference camera's optical axis at the median depth of the scene's Gaussians. "Up" is the training
cameras' mean up direction (minus their y axis), so an orbit turns about the video's own vertical.
"""

from __future__ import annotations

import math

import roma
import torch
import torch.nn.functional as F
from torch import Tensor

from flow3d.geometry import project_points


def camera_centers(w2cs: Tensor) -> Tensor:
    """(..., 3) camera centres in world coordinates of ``w2cs`` (..., 4, 4)."""
    R, t = w2cs[..., :3, :3], w2cs[..., :3, 3]
    return -(R.transpose(-1, -2) @ t[..., None])[..., 0]


def cameras_up(w2cs: Tensor) -> Tensor:
    """(3,) unit world vector: the mean of the cameras' up directions (minus their y axis)."""
    return -F.normalize(w2cs[:, 1, :3].mean(0), dim=-1)


def look_at_w2cs(positions: Tensor, target: Tensor, up: Tensor) -> Tensor:
    """(N, 4, 4) OpenCV w2cs of cameras at ``positions`` (N, 3) looking at ``target`` (3,), ``up`` (3,) up.

    Raises ValueError when a camera looks along ``up`` (its roll is undefined) or sits on ``target``.
    """
    fwd = target[None] - positions
    if bool((fwd.norm(dim=-1) < 1e-9).any()):
        raise ValueError("a camera of the path sits on the look-at point")
    fwd = F.normalize(fwd, dim=-1)
    right = torch.linalg.cross(fwd, up[None].expand_as(fwd))
    if bool((right.norm(dim=-1) < 1e-6).any()):
        raise ValueError("a camera of the path looks straight along the up direction")
    right = F.normalize(right, dim=-1)
    down = torch.linalg.cross(fwd, right)
    R_c2w = torch.stack([right, down, fwd], dim=-1)  # (N, 3, 3), columns = camera axes in world
    w2cs = torch.eye(4, dtype=positions.dtype, device=positions.device).repeat(len(positions), 1, 1)
    w2cs[:, :3, :3] = R_c2w.transpose(-1, -2)
    w2cs[:, :3, 3] = -(R_c2w.transpose(-1, -2) @ positions[..., None])[..., 0]
    return w2cs


def triangulate_axes(w2cs: Tensor, min_conditioning: float = 1e-3) -> Tensor | None:
    """The point closest (least squares) to all optical axes of ``w2cs`` (T, 4, 4), or None when the axes
    are too close to parallel (smallest / largest eigenvalue of sum(I - d d^T) below ``min_conditioning``)."""
    origins = camera_centers(w2cs).double()  # (T, 3)
    dirs = F.normalize(w2cs[:, 2, :3].double(), dim=-1)  # optical axes (camera z) in world
    P = torch.eye(3, dtype=torch.float64) - dirs[:, :, None] * dirs[:, None, :]  # (T, 3, 3)
    A, b = P.sum(0), (P @ origins[..., None]).sum(0)
    ev = torch.linalg.eigvalsh(A)
    if not bool(ev[-1] > 0) or float(ev[0] / ev[-1]) < min_conditioning:
        return None
    return torch.linalg.solve(A, b)[:, 0].to(w2cs.dtype)


def scene_look_at(w2cs: Tensor, ref_w2c: Tensor, K: Tensor, img_wh: tuple[int, int], points: Tensor) -> Tensor:
    """(3,) look-at point of the training cameras ``w2cs`` (T, 4, 4); see the module docstring.

    ``points`` (P, 3) are scene points (e.g. Gaussian centres); those in front of the reference camera
    ``ref_w2c`` (4, 4) and inside its image (``K`` (3, 3), ``img_wh``) give the depth range the
    triangulated point must fall in (10th-90th percentile) and the fallback depth (their median).
    """
    W, H = img_wh
    xy, z = project_points(points.to(ref_w2c.dtype), K, ref_w2c)
    seen = (z > 0) & (xy[:, 0] >= -0.5) & (xy[:, 0] <= W - 0.5) & (xy[:, 1] >= -0.5) & (xy[:, 1] <= H - 0.5)
    depths = z[seen] if bool(seen.any()) else z[z > 0]
    if depths.numel() == 0:
        raise ValueError("no scene point lies in front of the reference camera: cannot place a look-at point")
    lo, med, hi = torch.quantile(depths.double(), depths.new_tensor([0.1, 0.5, 0.9]).double()).tolist()
    p = triangulate_axes(w2cs)
    if p is not None:
        d = float((ref_w2c[:3, :3] @ p + ref_w2c[:3, 3])[2])
        if lo <= d <= hi:
            return p
    c2w = torch.linalg.inv(ref_w2c)
    return c2w[:3, 3] + med * c2w[:3, 2]


def orbit_path(ref_w2c: Tensor, target: Tensor, up: Tensor, num: int, degrees: float) -> Tensor:
    """(num, 4, 4): the reference camera swung about the ``up`` axis through ``target``, looking at it.

    The angle follows (degrees / 2) sin(2 pi i / num): from the reference view out to one side, back
    through it to the other side and home, so the video loops.
    """
    pos = camera_centers(ref_w2c)
    theta = torch.sin(torch.arange(num, dtype=pos.dtype) * (2 * math.pi / num)) * math.radians(degrees / 2)
    rot = roma.rotvec_to_rotmat(theta[:, None] * F.normalize(up, dim=-1)[None])  # (num, 3, 3)
    positions = target[None] + (rot @ (pos - target)[:, None])[..., 0]
    return look_at_w2cs(positions, target, up)


def spiral_path(ref_w2c: Tensor, target: Tensor, up: Tensor, num: int, degrees: float, rotations: int = 2) -> Tensor:
    """(num, 4, 4): cameras on a spiral around the reference camera's centre, looking at ``target``.

    In the reference camera's axes the centre moves on (r cos a, -r sin a, -r sin(a / 2)) with
    a = 2 pi rotations i / num (Shape of Motion's spiral), r = distance to the target x tan(degrees / 2).
    """
    pos = camera_centers(ref_w2c)
    r = float((pos - target).norm()) * math.tan(math.radians(degrees / 2))
    a = torch.arange(num, dtype=pos.dtype) * (2 * math.pi * rotations / num)
    offsets = torch.stack([torch.cos(a), -torch.sin(a), -torch.sin(a / 2)], dim=-1) * r  # (num, 3) camera axes
    positions = pos[None] + offsets @ ref_w2c[:3, :3]  # rows: R^T offset = camera -> world direction
    return look_at_w2cs(positions, target, up)


def play_times(num_frames: int, num: int) -> list[int]:
    """Video frames shown by ``num`` output frames that play the whole video once (nearest frame)."""
    if num == 1:
        return [0]
    return [int(round(i * (num_frames - 1) / (num - 1))) for i in range(num)]


def scale_intrinsics(K: Tensor, s: float) -> Tensor:
    """(3, 3) intrinsics of the same camera with images ``s`` times as large (pixel centres at integers)."""
    out = K.clone()
    out[0, 0], out[1, 1] = K[0, 0] * s, K[1, 1] * s
    out[0, 2], out[1, 2] = (K[0, 2] + 0.5) * s - 0.5, (K[1, 2] + 0.5) * s - 0.5
    return out


__all__ = [
    "camera_centers",
    "cameras_up",
    "look_at_w2cs",
    "orbit_path",
    "play_times",
    "scale_intrinsics",
    "scene_look_at",
    "spiral_path",
    "triangulate_axes",
]
