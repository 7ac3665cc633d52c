"""Test helpers: a naive reference rasterizer with gsplat 1.5.3's rules, and small random scenes.

The reference projects with gsplat's own pure-PyTorch code (``gsplat.cuda._torch_impl``, independent of
flow3d) and composites every pixel against every depth-sorted Gaussian, one Gaussian at a time,
vectorised over pixels -- no tiles, no bounding boxes, no chunks. Plain autograd gives its gradients.
"""

from __future__ import annotations

import math
import os
import shutil

import pytest
import torch
from gsplat.cuda._torch_impl import _fully_fused_projection, _quat_scale_to_covar_preci


def naive_rasterization(
    means,
    quats,
    scales,
    opacities,
    colors,
    viewmats,
    Ks,
    width,
    height,
    near_plane=0.01,
    far_plane=1e10,
    eps2d=0.3,
    backgrounds=None,
    render_mode="RGB",
    info=None,
    rasterize_mode="classic",
):
    """Same inputs/outputs as ``flow3d.render.rasterization`` (colours (C,H,W,X), alphas (C,H,W,1)).

    ``info``, when a dict, receives ``terminated``: how many pixels hit the transmittance stop rule.
    """
    C, N = viewmats.shape[0], means.shape[0]
    covars, _ = _quat_scale_to_covar_preci(quats, scales, compute_preci=False)
    aa = rasterize_mode == "antialiased"
    _, means2d, depths, conics, comp = _fully_fused_projection(
        means,
        covars,
        viewmats,
        Ks,
        width,
        height,
        eps2d=eps2d,
        near_plane=near_plane,
        far_plane=far_plane,
        calc_compensations=aa,
    )
    opac = opacities[None] * comp if aa else opacities[None].expand(C, N)  # (C, N)
    feats = colors if colors.dim() == 3 else colors[None].expand(C, N, colors.shape[-1])
    ys, xs = torch.meshgrid(
        torch.arange(height, dtype=means.dtype), torch.arange(width, dtype=means.dtype), indexing="ij"
    )
    px, py = xs.reshape(-1) + 0.5, ys.reshape(-1) + 0.5  # gsplat samples pixel (i, j) at (j+.5, i+.5)
    out_c, out_a = [], []
    terminated = 0
    for c in range(C):
        D = feats.shape[-1]
        T = torch.ones(height * width, dtype=means.dtype)
        done = torch.zeros(height * width, dtype=torch.bool)
        acc = torch.zeros(height * width, D, dtype=means.dtype)
        acc_depth = torch.zeros(height * width, dtype=means.dtype)
        z = depths[c].detach()
        ok = (z >= near_plane) & (z <= far_plane)
        cand = torch.nonzero(ok).squeeze(1)
        order = cand[torch.argsort(z[cand], stable=True)]
        for g in order.tolist():
            dx = means2d[c, g, 0] - px
            dy = means2d[c, g, 1] - py
            A, B, Cc = conics[c, g]
            sigma = 0.5 * (A * dx * dx + Cc * dy * dy) + B * dx * dy
            alpha = torch.clamp(opac[c, g] * torch.exp(-sigma), max=0.999)
            skip = (sigma < 0) | (alpha < 1.0 / 255.0) | done
            next_T = T * (1 - alpha)
            stop = ~skip & (next_T <= 1e-4)  # exclusive: the Gaussian that would cross is not drawn
            use = ~skip & ~stop
            done = done | stop
            w = torch.where(use, alpha * T, torch.zeros_like(T))
            acc = acc + w[:, None] * feats[c, g][None, :]
            acc_depth = acc_depth + w * depths[c, g]
            T = torch.where(use, next_T, T)
        terminated += int(done.sum())
        alpha_img = (1 - T)[:, None]
        if render_mode in ("RGB", "RGB+D", "RGB+ED"):
            rgb = acc if backgrounds is None else acc + T[:, None] * backgrounds[c][None, :]
            chans = [rgb]
        else:
            chans = []
        if render_mode in ("D", "RGB+D"):
            chans.append(acc_depth[:, None])
        if render_mode in ("ED", "RGB+ED"):
            chans.append(acc_depth[:, None] / alpha_img.clamp(min=1e-10))
        out_c.append(torch.cat(chans, dim=-1).reshape(height, width, -1))
        out_a.append(alpha_img.reshape(height, width, 1))
    if info is not None:
        info["terminated"] = terminated
    return torch.stack(out_c), torch.stack(out_a)


def require_compiled() -> None:
    """Skip where the compiled CPU rasterizer cannot be had by design (no C++ compiler on PATH, or disabled
    by ``FLOW3D_DISABLE_COMPILED``); fail where a compiler is present but the build or load failed. In CI
    (``CI=true``) a missing compiler fails too: CI must build the extension on every torch it installs."""
    from flow3d.render import compiled

    if compiled.load_extension():
        return
    if os.environ.get("FLOW3D_DISABLE_COMPILED", "") not in ("", "0"):
        pytest.skip("compiled CPU rasterizer disabled by FLOW3D_DISABLE_COMPILED")
    in_ci = os.environ.get("CI", "").lower() in ("1", "true", "yes")
    if shutil.which(os.environ.get("CXX", "c++")) is None and not in_ci:
        pytest.skip("no C++ compiler on PATH: the compiled CPU rasterizer cannot be built here")
    pytest.fail(f"the compiled CPU rasterizer did not build or load: {compiled.load_error()}")


def look_at_viewmat(eye, target, dtype):
    """World->camera (4, 4), OpenCV axes (x right, y down, z forward), world up -y."""
    eye = torch.tensor(eye, dtype=dtype)
    f = torch.tensor(target, dtype=dtype) - eye
    f = f / f.norm()
    right = torch.linalg.cross(f, torch.tensor([0.0, -1.0, 0.0], dtype=dtype))
    right = right / right.norm()
    down = torch.linalg.cross(f, right)
    R = torch.stack([right, down, f])  # rows: camera axes in world
    M = torch.eye(4, dtype=dtype)
    M[:3, :3] = R
    M[:3, 3] = -R @ eye
    return M


def make_scene(
    n=40,
    n_cams=1,
    width=24,
    height=20,
    depth=(1.5, 6.0),
    log_scale=(-3.5, -1.5),
    opacity=(0.05, 0.95),
    n_channels=3,
    per_camera_colors=False,
    n_behind=0,
    offscreen=0.3,
    dtype=torch.float64,
    seed=0,
):
    """A random scene of Gaussians a few pixels wide spread over the image (and a margin around it).

    ``n_behind`` Gaussians are placed behind the first camera or just in front of its near plane.
    Returns a dict of rasterization keyword arguments (parameters require grad).
    """
    gen = torch.Generator().manual_seed(seed)
    rnd = lambda *s: torch.rand(*s, generator=gen, dtype=dtype)  # noqa: E731
    f = 1.1 * width
    K = torch.tensor([[f, 0.0, width / 2], [0.0, f, height / 2], [0.0, 0.0, 1.0]], dtype=dtype)
    u = (-offscreen + (1 + 2 * offscreen) * rnd(n)) * width
    v = (-offscreen + (1 + 2 * offscreen) * rnd(n)) * height
    z = depth[0] + (depth[1] - depth[0]) * rnd(n)
    if n_behind:
        z[:n_behind] = torch.linspace(-2.0, 0.011, n_behind, dtype=dtype)
    means = torch.stack([(u - width / 2) * z / f, (v - height / 2) * z / f, z], dim=-1)
    quats = torch.randn(n, 4, generator=gen, dtype=dtype)
    scales = torch.exp(log_scale[0] + (log_scale[1] - log_scale[0]) * rnd(n, 3)) * z[:, None].abs().clamp(min=1.0) / 3
    opac = opacity[0] + (opacity[1] - opacity[0]) * rnd(n)
    cshape = (n_cams, n, n_channels) if per_camera_colors else (n, n_channels)
    colors = rnd(*cshape)
    viewmats = [torch.eye(4, dtype=dtype)]
    for k in range(1, n_cams):
        ang = 0.15 * k
        eye = [math.sin(ang) * 4.0, 0.2 * k, 4.0 - math.cos(ang) * 4.0]
        viewmats.append(look_at_viewmat(eye, [0.0, 0.0, 4.0], dtype))
    return {
        "means": means.requires_grad_(True),
        "quats": quats.requires_grad_(True),
        "scales": scales.requires_grad_(True),
        "opacities": opac.requires_grad_(True),
        "colors": colors.requires_grad_(True),
        "viewmats": torch.stack(viewmats),
        "Ks": K[None].repeat(n_cams, 1, 1),
        "width": width,
        "height": height,
    }
