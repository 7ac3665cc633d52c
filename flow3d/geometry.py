"""Camera and image geometry shared by every module (see the glossary in :mod:`flow3d`).

Conventions: ``w2cs`` world -> camera in OpenCV axes, ``Ks`` in pixels, pixel (row i, col j) has its
centre at (x, y) = (j, i). Functions broadcast over leading dimensions and follow their inputs' device
and dtype.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def opencv_to_gsplat_Ks(Ks: Tensor) -> Tensor:
    """Shift the principal point by +0.5 px: gsplat samples pixel (i, j) at (j + 0.5, i + 0.5).

    Ks: (..., 3, 3) intrinsics in the OpenCV pixel-centre convention. Returns a new tensor.
    """
    out = Ks.clone()
    out[..., 0, 2] = out[..., 0, 2] + 0.5
    out[..., 1, 2] = out[..., 1, 2] + 0.5
    return out


def pixel_grid(height: int, width: int, device=None, dtype=torch.float32) -> Tensor:
    """(H, W, 2) tensor of pixel-centre coordinates (x, y) = (j, i)."""
    ys, xs = torch.meshgrid(
        torch.arange(height, device=device, dtype=dtype),
        torch.arange(width, device=device, dtype=dtype),
        indexing="ij",
    )
    return torch.stack([xs, ys], dim=-1)


def transform_points(transforms: Tensor, points: Tensor) -> Tensor:
    """Apply rigid/affine 4x4 ``transforms`` (..., 4, 4) to ``points`` (..., P, 3) -> (..., P, 3)."""
    return points @ transforms[..., :3, :3].transpose(-1, -2) + transforms[..., None, :3, 3]


def project_points(points_world: Tensor, Ks: Tensor, w2cs: Tensor, eps: float = 1e-6) -> tuple[Tensor, Tensor]:
    """Project world points into pixels.

    points_world: (..., P, 3); Ks: (..., 3, 3); w2cs: (..., 4, 4).
    Returns ``xy`` (..., P, 2) in OpenCV pixel coordinates and ``depth`` (..., P) (camera z, scene
    units). Points at or behind the camera get their z clamped to ``eps`` for the division only
    (``depth`` keeps the true value), so the projection stays finite.
    """
    pts_cam = transform_points(w2cs, points_world)
    depth = pts_cam[..., 2]
    z = torch.where(depth > eps, depth, torch.full_like(depth, eps))
    uvw = pts_cam @ Ks.transpose(-1, -2)
    xy = uvw[..., :2] / z[..., None]
    return xy, depth


def unproject_pixels(xy: Tensor, depth: Tensor, Ks: Tensor, c2ws: Tensor) -> Tensor:
    """Lift pixels with z-depth to world points.

    xy: (..., P, 2) OpenCV pixel coordinates; depth: (..., P) z-depth; Ks: (..., 3, 3);
    c2ws: (..., 4, 4) camera -> world. Returns (..., P, 3).
    """
    ones = torch.ones_like(xy[..., :1])
    rays = torch.cat([xy, ones], dim=-1) @ torch.linalg.inv(Ks).transpose(-1, -2)
    return transform_points(c2ws, rays * depth[..., None])


def unproject_depth(depth: Tensor, Ks: Tensor, c2ws: Tensor) -> Tensor:
    """Lift a z-depth map (..., H, W) to world points (..., H, W, 3)."""
    H, W = depth.shape[-2:]
    grid = pixel_grid(H, W, device=depth.device, dtype=depth.dtype).reshape(-1, 2)
    grid = grid.expand(*depth.shape[:-2], H * W, 2)
    pts = unproject_pixels(grid, depth.reshape(*depth.shape[:-2], H * W), Ks, c2ws)
    return pts.reshape(*depth.shape, 3)


def bilinear_sample(images: Tensor, xy: Tensor) -> Tensor:
    """Sample ``images`` (B, C, H, W) at sub-pixel positions ``xy`` (B, P, 2) -> (B, P, C).

    OpenCV pixel-centre convention (``align_corners=True``); positions outside the image are clamped
    to the border. Differentiable with respect to both the images and the positions.
    """
    B, C, H, W = images.shape
    if xy.shape[0] != B or xy.shape[-1] != 2:
        raise ValueError(f"xy must be (B, P, 2) with B={B}, got {tuple(xy.shape)}")
    gx = 2.0 * xy[..., 0] / max(W - 1, 1) - 1.0
    gy = 2.0 * xy[..., 1] / max(H - 1, 1) - 1.0
    grid = torch.stack([gx, gy], dim=-1)[:, :, None, :].to(images.dtype)  # (B, P, 1, 2)
    out = F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=True)
    return out[..., 0].transpose(1, 2)


def inside_image(xy: Tensor, width: int, height: int, margin: float = 0.0) -> Tensor:
    """Bool (...,) telling whether OpenCV pixel coordinates lie inside [0, W-1] x [0, H-1]."""
    x, y = xy[..., 0], xy[..., 1]
    return (x >= -margin) & (x <= width - 1 + margin) & (y >= -margin) & (y <= height - 1 + margin)


def quat_wxyz_to_xyzw(q: Tensor) -> Tensor:
    """(..., 4) wxyz -> xyzw (roma's order)."""
    return torch.cat([q[..., 1:], q[..., :1]], dim=-1)


def quat_xyzw_to_wxyz(q: Tensor) -> Tensor:
    """(..., 4) xyzw (roma's order) -> wxyz."""
    return torch.cat([q[..., 3:], q[..., :3]], dim=-1)
