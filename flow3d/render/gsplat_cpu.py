"""CPU stand-ins for gsplat's CUDA ops, so the real ``gsplat.rasterization`` runs on CPU tensors.

gsplat's Python (argument handling, the autograd Functions, channel padding and chunking, the ``meta``
dict) calls its compiled extension through ``gsplat.cuda._wrapper._make_lazy_cuda_func(name)``. On a
machine without CUDA that extension cannot load, so no test here could run the users' GPU path.
:func:`gsplat_cpu_ops` replaces that lookup, for as long as it is active, by plain-PyTorch ops with the
same names, argument lists and return values (gsplat 1.5.3, non-packed, pinhole, no spherical
harmonics):

- ``projection_ewa_3dgs_fused_fwd`` / ``_bwd``: the EWA projection of
  :func:`flow3d.render.projection.project_gaussians` (a transcription of gsplat's kernel, checked against
  it by the rasterizer tests); the backward re-runs it under autograd and, as gsplat's kernel does,
  passes no gradient to entries with zero radii;
- ``intersect_tile`` / ``intersect_offset``: gsplat's tile lists with its 64-bit keys
  ``image | tile | float32 depth bits``, sorted stably (gsplat's radix sort is stable);
- ``rasterize_to_pixels_3dgs_fwd`` / ``_bwd``: front-to-back compositing per 16x16 tile with gsplat's
  rules (pixel centres at +0.5, ``alpha = min(0.999, o exp(-sigma))``, skip ``sigma < 0`` or
  ``alpha < 1/255``, stop before the Gaussian that would bring the transmittance to 1e-4 or below); the
  backward re-runs it under autograd with one copy of ``means2d`` per (pixel, Gaussian) pair, so that
  ``absgrad`` is the per-pixel sum of absolute gradients as in gsplat's kernel.

It is slow (Python loops over tiles) and meant for tiny test scenes and the CPU half of
``python -m flow3d.benchmarks.gpu_check``. Only the gsplat versions in :data:`SUPPORTED_GSPLAT` are
accepted: the op signatures are gsplat internals.
"""

from __future__ import annotations

import contextlib
import math
from typing import Iterator

import torch
from torch import Tensor

from flow3d.render.projection import ALPHA_THRESHOLD, project_gaussians, quat_scale_to_covar

SUPPORTED_GSPLAT = ("1.5.3",)
"""gsplat versions whose internal op signatures these stand-ins follow."""

TRANSMITTANCE_MIN = 1e-4
"""A pixel stops before the Gaussian that would bring its transmittance to this or below (gsplat)."""
MAX_ALPHA = 0.999


def unsupported_reason() -> str | None:
    """None when the stand-ins can be installed for the installed gsplat, else why not."""
    try:
        import gsplat
        import gsplat.cuda._wrapper  # noqa: F401
    except Exception as e:  # noqa: BLE001 - any import failure is a reason to skip
        return f"gsplat does not import ({type(e).__name__}: {e})"
    if gsplat.__version__ not in SUPPORTED_GSPLAT:
        return (
            f"gsplat {gsplat.__version__} is installed; the CPU stand-ins follow the internal op signatures "
            f"of gsplat {', '.join(SUPPORTED_GSPLAT)} only"
        )
    return None


# ---------------------------------------------------------------------------------------------- projection


def _no_batch_dims(means: Tensor) -> None:
    if means.dim() != 2:
        raise NotImplementedError(
            f"gsplat CPU stand-ins: batch dimensions are not supported (means {tuple(means.shape)})"
        )


def _covars(covars, quats, scales) -> Tensor:
    if covars is not None:
        raise NotImplementedError("gsplat CPU stand-ins: pass quats and scales, not covars")
    return quat_scale_to_covar(quats, scales)


def projection_fwd(
    means,
    covars,
    quats,
    scales,
    opacities,
    viewmats,
    Ks,
    width,
    height,
    eps2d,
    near_plane,
    far_plane,
    radius_clip,
    calc_compensations,
    camera_model,
):
    """``projection_ewa_3dgs_fused_fwd``: (radii (C, N, 2) int32, means2d, depths, conics, compensations)."""
    _no_batch_dims(means)
    if camera_model != "PINHOLE":
        raise NotImplementedError(f"gsplat CPU stand-ins: camera model {camera_model} (pinhole only)")
    opac = opacities if opacities is not None else means.new_ones(means.shape[0])
    with torch.no_grad():
        p = project_gaussians(
            means,
            _covars(covars, quats, scales),
            opac,
            viewmats,
            Ks,
            width,
            height,
            eps2d=eps2d,
            near_plane=near_plane,
            far_plane=far_plane,
            radius_clip=radius_clip,
            antialiased=bool(calc_compensations),
        )
    comp = p["compensations"] if calc_compensations else means.new_zeros(0)
    return p["radii"].contiguous(), p["means2d"].contiguous(), p["depths"].contiguous(), p["conics"].contiguous(), comp


def projection_bwd(
    means,
    covars,
    quats,
    scales,
    viewmats,
    Ks,
    width,
    height,
    eps2d,
    camera_model,
    radii,
    conics,
    compensations,
    v_means2d,
    v_depths,
    v_conics,
    v_compensations,
    viewmats_requires_grad,
):
    """``projection_ewa_3dgs_fused_bwd``: (v_means, v_covars, v_quats, v_scales, v_viewmats)."""
    valid = (radii > 0).all(dim=-1)  # (C, N): gsplat's kernel returns early for culled entries
    with torch.enable_grad():
        leaves = [
            means.detach().requires_grad_(),
            quats.detach().requires_grad_(),
            scales.detach().requires_grad_(),
            viewmats.detach().requires_grad_(bool(viewmats_requires_grad)),
        ]
        m, q, s, vm = leaves
        p = project_gaussians(
            m,
            quat_scale_to_covar(q, s),
            m.new_ones(m.shape[0]),
            vm,
            Ks,
            width,
            height,
            eps2d=eps2d,
            near_plane=1e-9,
            far_plane=math.inf,
            antialiased=compensations is not None,
        )
        outs = [p["means2d"], p["depths"], p["conics"]]
        grads = [v_means2d * valid[..., None], v_depths * valid, v_conics * valid[..., None]]
        if compensations is not None and v_compensations is not None:
            outs.append(p["compensations"])
            grads.append(v_compensations * valid)
        wrt = leaves if viewmats_requires_grad else leaves[:3]
        g = torch.autograd.grad(outs, wrt, grads, allow_unused=True)
    g = [torch.zeros_like(x) if gi is None else gi for gi, x in zip(g, wrt)]
    v_viewmats = g[3] if viewmats_requires_grad else torch.zeros_like(viewmats)
    return g[0], None, g[1], g[2], v_viewmats


# ---------------------------------------------------------------------------------------------- tile lists


def intersect_tile(
    means2d, radii, depths, image_ids, gaussian_ids, n_images, tile_size, tile_width, tile_height, sort, segmented
):
    """``intersect_tile``: (tiles_per_gauss int32 (..., N), isect_ids int64 (n,), flatten_ids int32 (n,))."""
    if image_ids is not None or gaussian_ids is not None:
        raise NotImplementedError("gsplat CPU stand-ins: packed mode is not supported")
    N = means2d.shape[-2]
    m = means2d.reshape(-1, N, 2).float()
    r = radii.reshape(-1, N, 2).float()
    d = depths.reshape(-1, N).float().contiguous()
    visible = (r > 0).all(dim=-1)  # (I, N)
    t = m / tile_size
    tr = r / tile_size
    lo = torch.floor(t - tr)
    hi = torch.ceil(t + tr)
    lo_x, hi_x = lo[..., 0].clamp(0, tile_width).long(), hi[..., 0].clamp(0, tile_width).long()
    lo_y, hi_y = lo[..., 1].clamp(0, tile_height).long(), hi[..., 1].clamp(0, tile_height).long()
    count = ((hi_x - lo_x) * (hi_y - lo_y)) * visible  # (I, N)
    tile_n_bits = int(math.floor(math.log2(tile_width * tile_height))) + 1
    depth_bits = d.view(torch.int32).to(torch.int64) & 0xFFFFFFFF  # zero-extended float32 bits
    cnt = count.reshape(-1)
    total = int(cnt.sum())
    pair = torch.repeat_interleave(torch.arange(cnt.numel()), cnt)  # flat (image, Gaussian) index per intersection
    local = torch.arange(total) - torch.repeat_interleave(torch.cumsum(cnt, 0) - cnt, cnt)
    box_w = (hi_x - lo_x).reshape(-1)[pair]
    ty = lo_y.reshape(-1)[pair] + torch.div(local, box_w.clamp_min(1), rounding_mode="floor")
    tx = lo_x.reshape(-1)[pair] + local % box_w.clamp_min(1)  # row-major over the box, as the kernel's loops
    image = torch.div(pair, N, rounding_mode="floor")
    isect_ids = (image << (32 + tile_n_bits)) | ((ty * tile_width + tx) << 32) | depth_bits.reshape(-1)[pair]
    flatten_ids = pair.to(torch.int32)
    if sort and isect_ids.numel():
        isect_ids, order = torch.sort(isect_ids, stable=True)
        flatten_ids = flatten_ids[order]
    dev = means2d.device
    return count.reshape(radii.shape[:-1]).to(torch.int32).to(dev), isect_ids.to(dev), flatten_ids.to(dev)


def intersect_offset(isect_ids, n_images, tile_width, tile_height):
    """``intersect_offset``: (I, tile_height, tile_width) int32, the first intersection of each tile."""
    n_tiles = tile_width * tile_height
    tile_n_bits = int(math.floor(math.log2(n_tiles))) + 1
    image_tile = isect_ids >> 32
    flat = (image_tile >> tile_n_bits) * n_tiles + (image_tile & ((1 << tile_n_bits) - 1))
    counts = torch.bincount(flat, minlength=n_images * n_tiles)[: n_images * n_tiles]
    offsets = torch.cumsum(counts, 0) - counts
    return offsets.reshape(n_images, tile_height, tile_width).to(torch.int32)


# ---------------------------------------------------------------------------------------------- compositing


def _composite(
    means2d,
    conics,
    colors,
    opacities,
    backgrounds,
    width,
    height,
    tile_size,
    isect_offsets,
    flatten_ids,
    pair_leaves: list | None = None,
):
    """Differentiable gsplat compositing. Returns colours (I, H, W, D), alphas (I, H, W, 1), last_ids (I, H, W).

    With ``pair_leaves`` (a list), each tile reads ``means2d`` through a fresh leaf of shape (P, K, 2),
    appended as (image, flat Gaussian ids, leaf): autograd then gives per-pixel gradients (absgrad).
    """
    N, D = means2d.shape[-2], colors.shape[-1]
    m2d = means2d.reshape(-1, N, 2)
    con = conics.reshape(-1, N, 3)
    col = colors.reshape(-1, N, D)
    opa = opacities.reshape(-1, N)
    n_img = m2d.shape[0]
    tile_h, tile_w = isect_offsets.shape[-2:]
    offs = isect_offsets.reshape(n_img, tile_h * tile_w).long()
    n_isects = flatten_ids.numel()
    bg = None if backgrounds is None else backgrounds.reshape(n_img, D)
    out_c, out_a, out_last = [], [], []
    for i in range(n_img):
        img_c = col.new_zeros(height, width, D) if bg is None else bg[i].expand(height, width, D).clone()
        img_a = col.new_zeros(height, width, 1)
        last = torch.zeros(height, width, dtype=torch.int32)
        for tid in range(tile_h * tile_w):
            start = int(offs[i, tid])
            nxt = i * tile_h * tile_w + tid + 1
            end = int(offs.reshape(-1)[nxt]) if nxt < offs.numel() else n_isects
            ty, tx = divmod(tid, tile_w)
            y0, x0 = ty * tile_size, tx * tile_size
            y1, x1 = min(y0 + tile_size, height), min(x0 + tile_size, width)
            if y0 >= height or x0 >= width or end <= start:
                continue
            gids = flatten_ids[start:end].long() % N  # depth order
            ys, xs = torch.meshgrid(torch.arange(y0, y1), torch.arange(x0, x1), indexing="ij")
            px = torch.stack([xs.reshape(-1), ys.reshape(-1)], dim=-1).to(m2d.dtype) + 0.5  # (P, 2)
            if pair_leaves is not None:
                leaf = m2d[i, gids].detach()[None].expand(px.shape[0], -1, -1).clone().requires_grad_()
                pair_leaves.append((i, gids, leaf))
                delta = leaf - px[:, None, :]
            else:
                delta = m2d[i, gids][None] - px[:, None, :]  # (P, K, 2)
            a, b, c = con[i, gids].unbind(-1)  # (K,)
            sigma = 0.5 * (a * delta[..., 0] ** 2 + c * delta[..., 1] ** 2) + b * delta[..., 0] * delta[..., 1]
            alpha = torch.clamp_max(opa[i, gids] * torch.exp(-sigma), MAX_ALPHA)  # (P, K)
            keep = (sigma >= 0) & (alpha >= ALPHA_THRESHOLD)
            alpha = torch.where(keep, alpha, torch.zeros_like(alpha))
            trans = torch.cumprod(1.0 - alpha, dim=1)  # transmittance after each Gaussian
            before = torch.cat([torch.ones_like(trans[:, :1]), trans[:, :-1]], dim=1)
            with torch.no_grad():
                done = keep & (trans <= TRANSMITTANCE_MIN)  # this Gaussian and every later one are not drawn
                used = (torch.cumsum(done.int(), dim=1) == 0) & keep
                k = torch.arange(gids.numel()).expand_as(used)
                last_k = torch.where(used, k, torch.full_like(k, -1)).max(dim=1).values
                last[y0:y1, x0:x1] = (
                    torch.where(last_k >= 0, start + last_k, torch.zeros_like(last_k))
                    .reshape(y1 - y0, x1 - x0)
                    .to(torch.int32)
                )
            w = alpha * before * used  # (P, K)
            t_final = torch.prod(torch.where(used, 1.0 - alpha, torch.ones_like(alpha)), dim=1, keepdim=True)  # (P, 1)
            pix = w @ col[i, gids]  # (P, D)
            if bg is not None:
                pix = pix + t_final * bg[i]
            img_c = img_c.index_put((ys.reshape(-1), xs.reshape(-1)), pix)
            img_a = img_a.index_put((ys.reshape(-1), xs.reshape(-1)), 1.0 - t_final)
        out_c.append(img_c)
        out_a.append(img_a)
        out_last.append(last)
    shape = isect_offsets.shape[:-2]
    return (
        torch.stack(out_c).reshape(*shape, height, width, D),
        torch.stack(out_a).reshape(*shape, height, width, 1),
        torch.stack(out_last).reshape(*shape, height, width),
    )


def rasterize_fwd(
    means2d, conics, colors, opacities, backgrounds, masks, width, height, tile_size, isect_offsets, flatten_ids
):
    """``rasterize_to_pixels_3dgs_fwd``: (render_colors, render_alphas, last_ids)."""
    if masks is not None:
        raise NotImplementedError("gsplat CPU stand-ins: tile masks are not supported")
    with torch.no_grad():
        return _composite(
            means2d, conics, colors, opacities, backgrounds, width, height, tile_size, isect_offsets, flatten_ids
        )


def rasterize_bwd(
    means2d,
    conics,
    colors,
    opacities,
    backgrounds,
    masks,
    width,
    height,
    tile_size,
    isect_offsets,
    flatten_ids,
    render_alphas,
    last_ids,
    v_render_colors,
    v_render_alphas,
    absgrad,
):
    """``rasterize_to_pixels_3dgs_bwd``: (v_means2d_abs, v_means2d, v_conics, v_colors, v_opacities)."""
    with torch.enable_grad():
        leaves = [x.detach().requires_grad_() for x in (conics, colors, opacities)]
        pairs: list = []
        bg = None if backgrounds is None else backgrounds.detach()
        rc, ra, _ = _composite(
            means2d.detach(),
            *leaves[:2],
            leaves[2],
            bg,
            width,
            height,
            tile_size,
            isect_offsets,
            flatten_ids,
            pair_leaves=pairs,
        )
        wrt = leaves + [p[2] for p in pairs]
        g = torch.autograd.grad(
            [rc, ra], wrt, [v_render_colors.to(rc.dtype), v_render_alphas.to(ra.dtype)], allow_unused=True
        )
    g = [torch.zeros_like(x) if gi is None else gi for gi, x in zip(g, wrt)]
    v_conics, v_colors, v_opacities = g[:3]
    N = means2d.shape[-2]
    v_m = torch.zeros_like(means2d).reshape(-1, N, 2)
    v_abs = torch.zeros_like(v_m)
    for (i, gids, _), gp in zip(pairs, g[3:]):
        v_m[i].index_add_(0, gids, gp.sum(0))
        v_abs[i].index_add_(0, gids, gp.abs().sum(0))
    v_abs = v_abs.reshape(means2d.shape) if absgrad else torch.zeros(0)
    return v_abs, v_m.reshape(means2d.shape), v_conics, v_colors, v_opacities


OPS = {
    "projection_ewa_3dgs_fused_fwd": projection_fwd,
    "projection_ewa_3dgs_fused_bwd": projection_bwd,
    "intersect_tile": intersect_tile,
    "intersect_offset": intersect_offset,
    "rasterize_to_pixels_3dgs_fwd": rasterize_fwd,
    "rasterize_to_pixels_3dgs_bwd": rasterize_bwd,
}


def _lazy_func(name: str):
    if name not in OPS:

        def missing(*args, **kwargs):
            raise NotImplementedError(f"gsplat CPU stand-ins: no CPU version of gsplat's CUDA op {name!r}")

        return missing
    return OPS[name]


def _lazy_obj(name: str):
    if name.startswith("CameraModelType."):
        return name.split(".", 1)[1]
    raise NotImplementedError(f"gsplat CPU stand-ins: no CPU version of gsplat's CUDA object {name!r}")


_active = 0


def cpu_ops_active() -> bool:
    """True while :func:`gsplat_cpu_ops` is installed (the gsplat backend then accepts CPU tensors)."""
    return _active > 0


@contextlib.contextmanager
def gsplat_cpu_ops() -> Iterator[None]:
    """Install the CPU stand-ins in ``gsplat.cuda._wrapper`` for the duration of the ``with`` block."""
    reason = unsupported_reason()
    if reason is not None:
        raise RuntimeError(reason)
    import gsplat.cuda._wrapper as w

    global _active
    old = w._make_lazy_cuda_func, w._make_lazy_cuda_obj
    w._make_lazy_cuda_func, w._make_lazy_cuda_obj = _lazy_func, _lazy_obj
    _active += 1
    try:
        yield
    finally:
        _active -= 1
        w._make_lazy_cuda_func, w._make_lazy_cuda_obj = old
