"""EWA projection of 3D Gaussians to the image plane, with gsplat 1.5.3's rules (plain autograd).

Follows gsplat's CUDA kernel ``projection_ewa_3dgs_fused_fwd`` (pinhole camera, "classic" and
"antialiased" modes): covariance ``R S S^T R^T`` from a wxyz quaternion (normalised here) and scales,
camera-space covariance, the perspective Jacobian with gsplat's field-of-view clamp of ``x/z`` and
``y/z`` (1.3 x the half-FoV), the ``eps2d`` low-pass added to the 2D covariance, conics (inverse 2D
covariance, upper triangle), and the opacity-aware bounding radius
``ceil(min(3.33, sqrt(2 ln(255 opacity))) * sqrt(cov2d_ii))`` per axis.

A Gaussian is culled (radii 0) when its camera depth is outside ``[near_plane, far_plane]``, the
blurred 2D covariance is not positive definite, its opacity is below 1/255, both radii are at most
``radius_clip`` or its bounding box misses the image. Culled entries still hold finite values (the
divisions use safe denominators) and receive zero gradient from the rasterizer.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

ALPHA_THRESHOLD = 1.0 / 255.0
"""Contributions with alpha below this are skipped (gsplat's ``ALPHA_THRESHOLD``)."""
MAX_EXTEND = 3.33
"""Upper bound of the bounding-box extent in standard deviations (gsplat's ``extend``)."""


def quat_scale_to_covar(quats: Tensor, scales: Tensor) -> Tensor:
    """3D covariances ``R diag(s)^2 R^T``.

    quats: (N, 4) wxyz, need not be normalised; scales: (N, 3) (activated, scene units).
    Returns (N, 3, 3).
    """
    q = F.normalize(quats, p=2, dim=-1)
    w, x, y, z = q.unbind(-1)
    R = torch.stack(
        [
            1 - 2 * (y * y + z * z),
            2 * (x * y - w * z),
            2 * (x * z + w * y),
            2 * (x * y + w * z),
            1 - 2 * (x * x + z * z),
            2 * (y * z - w * x),
            2 * (x * z - w * y),
            2 * (y * z + w * x),
            1 - 2 * (x * x + y * y),
        ],
        dim=-1,
    ).reshape(*q.shape[:-1], 3, 3)
    M = R * scales[..., None, :]
    return M @ M.transpose(-1, -2)


def project_gaussians(
    means: Tensor,  # (N, 3) world
    covars: Tensor,  # (N, 3, 3) world
    opacities: Tensor,  # (N,) or (C, N), activated, in (0, 1)
    viewmats: Tensor,  # (C, 4, 4) world -> camera
    Ks: Tensor,  # (C, 3, 3) gsplat pixel convention
    width: int,
    height: int,
    eps2d: float = 0.3,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
    radius_clip: float = 0.0,
    antialiased: bool = False,
) -> dict[str, Tensor]:
    """Project Gaussians into C cameras.

    Returns a dict with ``means2d`` (C, N, 2) pixels, ``conics`` (C, N, 3) (inverse 2D covariance
    xx, xy, yy), ``depths`` (C, N) camera z in scene units, ``radii`` (C, N, 2) int32 pixels (0 when
    culled), ``opacities`` (C, N) (multiplied by the Mip-Splatting compensation when ``antialiased``)
    and ``compensations`` (C, N) (ones unless ``antialiased``).
    """
    C, N = viewmats.shape[0], means.shape[0]
    R = viewmats[:, :3, :3]  # (C, 3, 3)
    t = viewmats[:, :3, 3]  # (C, 3)
    means_c = torch.einsum("cij,nj->cni", R, means) + t[:, None, :]  # (C, N, 3)
    covars_c = R[:, None] @ covars[None] @ R.transpose(-1, -2)[:, None]  # (C, N, 3, 3)

    x, y, z = means_c.unbind(-1)  # (C, N)
    depth_ok = (z >= near_plane) & (z <= far_plane)
    zs = torch.where(depth_ok, z, torch.ones_like(z))  # safe z: finite values and gradients when culled

    fx, fy = Ks[:, 0, 0, None], Ks[:, 1, 1, None]  # (C, 1)
    cx, cy = Ks[:, 0, 2, None], Ks[:, 1, 2, None]
    tan_fovx, tan_fovy = 0.5 * width / fx, 0.5 * height / fy
    lim_x_pos = (width - cx) / fx + 0.3 * tan_fovx
    lim_x_neg = cx / fx + 0.3 * tan_fovx
    lim_y_pos = (height - cy) / fy + 0.3 * tan_fovy
    lim_y_neg = cy / fy + 0.3 * tan_fovy
    tx = zs * torch.minimum(torch.maximum(x / zs, -lim_x_neg), lim_x_pos)
    ty = zs * torch.minimum(torch.maximum(y / zs, -lim_y_neg), lim_y_pos)

    zero = torch.zeros_like(zs)
    rz = 1.0 / zs
    J = torch.stack([fx * rz, zero, -fx * tx * rz * rz, zero, fy * rz, -fy * ty * rz * rz], dim=-1).reshape(C, N, 2, 3)
    cov2d = J @ covars_c @ J.transpose(-1, -2)  # (C, N, 2, 2)
    means2d = torch.stack([fx * x * rz + cx, fy * y * rz + cy], dim=-1)  # (C, N, 2)

    c00, c11 = cov2d[..., 0, 0], cov2d[..., 1, 1]
    c01 = 0.5 * (cov2d[..., 0, 1] + cov2d[..., 1, 0])
    det_orig = c00 * c11 - c01 * c01
    a, c = c00 + eps2d, c11 + eps2d
    det = a * c - c01 * c01
    valid = depth_ok & (det > 0)
    det_s = torch.where(valid, det, torch.ones_like(det))
    conics = torch.stack([c / det_s, -c01 / det_s, a / det_s], dim=-1)  # (C, N, 3)

    opac = opacities.expand(C, N) if opacities.dim() == 1 else opacities
    if antialiased:
        ratio = (det_orig / det_s).clamp(min=0.0)
        pos = ratio > 0
        comp = torch.where(pos, torch.sqrt(torch.where(pos, ratio, torch.ones_like(ratio))), torch.zeros_like(ratio))
        opac = opac * comp
    else:
        comp = torch.ones_like(z)

    with torch.no_grad():
        op = opac.detach()
        valid = valid & (op >= ALPHA_THRESHOLD)
        op_s = torch.where(valid, op, torch.ones_like(op))
        extend = torch.sqrt(2.0 * torch.log(op_s / ALPHA_THRESHOLD).clamp(min=0.0)).clamp(max=MAX_EXTEND)
        rx = torch.ceil(extend * torch.sqrt(torch.where(valid, a, zero).clamp(min=0.0)))
        ry = torch.ceil(extend * torch.sqrt(torch.where(valid, c, zero).clamp(min=0.0)))
        valid = valid & ((rx > radius_clip) | (ry > radius_clip))
        mx, my = means2d[..., 0], means2d[..., 1]
        valid = valid & (mx + rx > 0) & (mx - rx < width) & (my + ry > 0) & (my - ry < height)
        radii = torch.stack([rx, ry], dim=-1) * valid[..., None]
        radii = radii.to(torch.int32)

    return {
        "means2d": means2d,
        "conics": conics,
        "depths": z,
        "radii": radii,
        "opacities": opac,
        "compensations": comp,
    }
