"""Differentiable tile rasterizer on the CPU in plain PyTorch, with gsplat 1.5.3's compositing rules.

Rules (gsplat's ``rasterize_to_pixels_3dgs_fwd`` kernel): pixel (i, j) is sampled at
``(j + 0.5, i + 0.5)``; Gaussians are composited front to back in depth order per 16x16 tile;
``sigma = 0.5 (A dx^2 + C dy^2) + B dx dy`` with ``(A, B, C)`` the conic and ``d = mean2d - pixel``;
``alpha = min(0.999, opacity exp(-sigma))``; a Gaussian is skipped when ``sigma < 0`` or
``alpha < 1/255``; a pixel stops at the first Gaussian whose ``T (1 - alpha)`` would be ``<= 1e-4``,
and that Gaussian is *not* included (gsplat: "this pixel is done: exclusive"). Output colour
``sum_i c_i alpha_i T_i + T_final * background``, alpha ``1 - T_final``.

How it runs: the tile lists (which Gaussians touch which tile, depth-sorted) are built with
``repeat_interleave`` and a stable sort. Tiles are ordered by list length (longest first) and composited
in rounds of ``chunk`` Gaussians: in round r only the tiles with more than ``r * chunk`` Gaussians take
part (a prefix of that order), each as a dense ``(tiles, chunk, 256)`` block where the termination rule
is exact through a cumulative product. The backward pass (a custom ``torch.autograd.Function``) replays
the rounds in reverse from the saved per-round transmittance, recomputing each block and applying the
closed-form vector-Jacobian product, so memory is bounded by the block size plus one transmittance per
(tile, round) -- it does not grow with the number of Gaussians per pixel.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from flow3d.render.projection import ALPHA_THRESHOLD

MAX_ALPHA = 0.999
"""Upper clamp of a Gaussian's alpha (gsplat 1.5.3 uses 0.999 in its CUDA kernels)."""
T_EPS = 1e-4
"""A pixel stops before the Gaussian that would bring its transmittance to this value or below."""


@dataclass
class TilePlan:
    """Per-tile, depth-sorted Gaussian lists for I images (no gradient).

    ``flat_ids`` (M,) int64 indices into the flattened ``(I * N)`` Gaussian table, grouped by tile
    (tiles in ``order``) and depth-sorted within a tile; ``starts``/``counts`` (n_tiles,) locate each
    tile's list in ``flat_ids``, indexed in ``order`` (longest list first); ``order`` (n_tiles,) global
    tile ids ``image * tiles_per_image + ty * tile_width + tx``.
    """

    flat_ids: Tensor
    starts: Tensor
    counts: Tensor
    order: Tensor
    n_images: int
    tile_width: int
    tile_height: int
    tile_size: int
    width: int
    height: int

    @property
    def n_isects(self) -> int:
        return int(self.flat_ids.numel())


@torch.no_grad()
def build_tile_plan(
    means2d: Tensor,  # (I, N, 2) pixels
    radii: Tensor,  # (I, N, 2) int, 0 when culled
    depths: Tensor,  # (I, N)
    width: int,
    height: int,
    tile_size: int = 16,
) -> TilePlan:
    """Intersect Gaussians' bounding boxes with tiles and sort each tile's list by depth.

    Ties in depth keep the Gaussians' index order (gsplat sorts with a stable radix sort).
    """
    I, N = depths.shape
    device = means2d.device
    tw, th = math.ceil(width / tile_size), math.ceil(height / tile_size)
    n_tiles = I * tw * th

    valid = (radii > 0).all(dim=-1).reshape(-1)  # (I*N,)
    ids = valid.nonzero().squeeze(1)
    d = depths.detach().reshape(-1)[ids]
    o = torch.argsort(d, stable=True)
    o = o[torch.argsort(torch.div(ids[o], N, rounding_mode="floor"), stable=True)]
    ids = ids[o]  # sorted by (image, depth, index)
    img = torch.div(ids, N, rounding_mode="floor")

    m = means2d.detach().reshape(-1, 2)[ids]
    r = radii.reshape(-1, 2)[ids].to(m.dtype)
    tx0 = torch.floor((m[:, 0] - r[:, 0]) / tile_size).clamp(0, tw).long()
    tx1 = torch.ceil((m[:, 0] + r[:, 0]) / tile_size).clamp(0, tw).long()
    ty0 = torch.floor((m[:, 1] - r[:, 1]) / tile_size).clamp(0, th).long()
    ty1 = torch.ceil((m[:, 1] + r[:, 1]) / tile_size).clamp(0, th).long()
    nx = tx1 - tx0
    cnt = nx * (ty1 - ty0)  # (V,) tiles per Gaussian

    rep = torch.repeat_interleave(torch.arange(ids.numel(), device=device), cnt)
    local = torch.arange(rep.numel(), device=device) - torch.repeat_interleave(torch.cumsum(cnt, 0) - cnt, cnt)
    nxr = nx[rep]
    tile_x = tx0[rep] + local % nxr.clamp(min=1)
    tile_y = ty0[rep] + torch.div(local, nxr.clamp(min=1), rounding_mode="floor")
    gtile = img[rep] * (tw * th) + tile_y * tw + tile_x
    s = torch.argsort(gtile, stable=True)
    flat_ids = ids[rep][s]

    counts = torch.bincount(gtile, minlength=n_tiles)  # (n_tiles,) by global tile id
    starts = torch.cumsum(counts, 0) - counts
    order = torch.argsort(counts, descending=True, stable=True)
    return TilePlan(
        flat_ids=flat_ids,
        starts=starts[order],
        counts=counts[order],
        order=order,
        n_images=I,
        tile_width=tw,
        tile_height=th,
        tile_size=tile_size,
        width=width,
        height=height,
    )


def _tile_pixels(plan: TilePlan, dtype: torch.dtype, device) -> tuple[Tensor, Tensor]:
    """Pixel-centre coordinates (n_tiles, P) x and y of every tile, in ``plan.order``."""
    ts, tw, th = plan.tile_size, plan.tile_width, plan.tile_height
    local = torch.arange(ts, device=device, dtype=dtype) + 0.5
    tile_in_img = plan.order % (tw * th)
    ox = (tile_in_img % tw).to(dtype) * ts  # (n_tiles,)
    oy = torch.div(tile_in_img, tw, rounding_mode="floor").to(dtype) * ts
    px = (ox[:, None, None] + local[None, None, :]).expand(-1, ts, ts).reshape(-1, ts * ts)
    py = (oy[:, None, None] + local[None, :, None]).expand(-1, ts, ts).reshape(-1, ts * ts)
    return px.contiguous(), py.contiguous()


def _images_to_tiles(x: Tensor, plan: TilePlan) -> Tensor:
    """(I, H, W, D) images -> (n_tiles, P, D) in ``plan.order`` (zero padding past the border)."""
    I, H, W, D = x.shape
    ts, tw, th = plan.tile_size, plan.tile_width, plan.tile_height
    x = torch.nn.functional.pad(x, (0, 0, 0, tw * ts - W, 0, th * ts - H))
    x = x.reshape(I, th, ts, tw, ts, D).permute(0, 1, 3, 2, 4, 5).reshape(I * th * tw, ts * ts, D)
    return x[plan.order]


def _tiles_to_images(x: Tensor, plan: TilePlan) -> Tensor:
    """(n_tiles, P, D) in ``plan.order`` -> (I, H, W, D)."""
    D = x.shape[-1]
    ts, tw, th = plan.tile_size, plan.tile_width, plan.tile_height
    out = torch.empty_like(x)
    out[plan.order] = x
    out = out.reshape(plan.n_images, th, tw, ts, ts, D).permute(0, 1, 3, 2, 4, 5)
    return out.reshape(plan.n_images, th * ts, tw * ts, D)[:, : plan.height, : plan.width]


def _round_ids(plan: TilePlan, r: int, chunk: int, t0: int, t1: int, dummy: int) -> Tensor:
    """Gaussian table rows (t1 - t0, chunk) for tiles [t0, t1) in round r; ``dummy`` pads short lists."""
    k = torch.arange(chunk, device=plan.flat_ids.device) + r * chunk
    valid = k[None, :] < plan.counts[t0:t1, None]
    pos = (plan.starts[t0:t1, None] + k[None, :]).clamp(max=max(plan.n_isects - 1, 0))
    return torch.where(valid, plan.flat_ids[pos], torch.full_like(pos, dummy))


def _alpha_floor(dtype: torch.dtype) -> float:
    """Largest value below ALPHA_THRESHOLD in ``dtype``: ``x > floor`` is ``x >= 1/255`` exactly."""
    thr = torch.tensor(ALPHA_THRESHOLD, dtype=dtype)
    return float(torch.nextafter(thr, torch.zeros((), dtype=dtype)))


# The block maths below uses only float arithmetic (F.threshold, sign, products): on the CPU, torch.where,
# masked_fill and bool->float conversions cost 10-40x more per element than a multiply.


def _block_alpha(prm: Tensor, px: Tensor, py: Tensor, alpha_floor: float):
    """Alpha of a block. prm (A, K, 6) = (mx, my, A, B, C, opacity); px, py (A, P) pixel centres.

    Returns dx, dy, raw = opacity exp(-sigma) and alpha (A, K, P): ``min(0.999, raw)``, and 0 where
    gsplat skips the pair (``sigma < 0`` or ``alpha < 1/255``).
    """
    dx = prm[:, :, 0, None] - px[:, None, :]  # (A, K, P)
    dy = prm[:, :, 1, None] - py[:, None, :]
    # sigma = dx (A/2 dx + B dy) + dy (C/2 dy)
    sigma = dx * (0.5 * prm[:, :, 2, None])
    sigma.addcmul_(dy, prm[:, :, 3, None]).mul_(dx)
    sigma.addcmul_(dy * (0.5 * prm[:, :, 4, None]), dy)
    F.threshold_(sigma, -torch.finfo(sigma.dtype).tiny, math.inf)  # sigma < 0 -> inf -> alpha 0
    raw = sigma.neg_().exp_().mul_(prm[:, :, 5, None])
    alpha = raw.clamp(max=MAX_ALPHA)
    F.threshold_(alpha, alpha_floor, 0.0)
    return dx, dy, raw, alpha


def _block_composite(alpha: Tensor, T: Tensor, live: Tensor):
    """Termination-aware compositing of a block, shared by forward and backward.

    alpha (A, K, P) front to back; T (A, P) transmittance before the block; live (A, P) 1.0 for pixels
    not yet stopped, else 0.0. A pixel stops before the Gaussian that would bring T to <= 1e-4 (that
    Gaussian is not drawn) and draws nothing after. Returns q = 1 - alpha, Tth (A, K, P) = T after each
    drawn Gaussian and 0 for the ones not drawn, the weights w = alpha T_before (A, K, P), T after the
    block and live after the block (A, P).
    """
    Teff = T * live  # 0 for stopped pixels: their products stay 0 <= 1e-4, so nothing is drawn
    q = 1.0 - alpha
    Tafter = torch.cumprod(q, dim=1).mul_(Teff[:, None, :])  # (A, K, P)
    Tth = F.threshold(Tafter, T_EPS, 0.0)  # drawn iff T after it stays > 1e-4 (a prefix along K)
    w = alpha * Tth / q  # alpha * T_before for drawn Gaussians (q >= 0.001), else 0
    T_next = torch.minimum(T, F.threshold_(Tafter, T_EPS, math.inf).amin(dim=1))  # last drawn, else T
    live_next = torch.sign(Tth[:, -1])
    return q, Tth, w, T_next, live_next


class _RasterizeTiles(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx,
        means2d,
        conics,
        opacities,
        colors,
        backgrounds,
        plan: TilePlan,
        chunk: int,
        block_elems: int,
        absgrad: bool,
    ):
        # means2d (I, N, 2), conics (I, N, 3), opacities (I, N), colors (I, N, D), backgrounds (I, D) or None
        I, N, D = colors.shape
        dtype, device = colors.dtype, colors.device
        n_tiles = I * plan.tile_width * plan.tile_height
        P = plan.tile_size**2
        table = torch.cat([means2d.reshape(-1, 2), conics.reshape(-1, 3), opacities.reshape(-1, 1)], dim=1)
        table = torch.cat([table, table.new_zeros(1, 6)], dim=0)  # last row: dummy with opacity 0
        ctab = torch.cat([colors.reshape(-1, D), colors.new_zeros(1, D)], dim=0)
        px, py = _tile_pixels(plan, dtype, device)
        floor = _alpha_floor(dtype)

        T = torch.ones(n_tiles, P, dtype=dtype, device=device)
        live = torch.ones(n_tiles, P, dtype=dtype, device=device)
        out = torch.zeros(n_tiles, D, P, dtype=dtype, device=device)  # channel-major: bmm is fast for small D
        n_rounds = int(math.ceil(int(plan.counts[0]) / chunk)) if n_tiles > 0 and plan.n_isects > 0 else 0
        actives = [int((plan.counts > r * chunk).sum()) for r in range(n_rounds)]
        step = max(1, block_elems // (chunk * P))
        T_hist, live_hist = [], []
        for r, A in enumerate(actives):
            T_hist.append(T[:A].clone())
            live_hist.append(live[:A].clone())
            for t0 in range(0, A, step):
                t1 = min(A, t0 + step)
                ids = _round_ids(plan, r, chunk, t0, t1, table.shape[0] - 1)
                alpha = _block_alpha(table[ids], px[t0:t1], py[t0:t1], floor)[3]
                _, _, w, T_next, live_next = _block_composite(alpha, T[t0:t1], live[t0:t1])
                out[t0:t1] += torch.bmm(ctab[ids].transpose(1, 2), w)
                T[t0:t1] = T_next
                live[t0:t1] = live_next

        if backgrounds is not None:
            bg_t = backgrounds.repeat_interleave(plan.tile_width * plan.tile_height, dim=0)[plan.order]  # (n_tiles, D)
            out = out + bg_t[:, :, None] * T[:, None, :]
        render_colors = _tiles_to_images(out.transpose(1, 2), plan)
        render_alphas = _tiles_to_images((1.0 - T)[:, :, None], plan)

        ctx.plan, ctx.chunk, ctx.step, ctx.actives, ctx.absgrad = plan, chunk, step, actives, absgrad
        ctx.T_hist, ctx.live_hist = T_hist, live_hist
        ctx.has_bg = backgrounds is not None
        ctx.shape = (I, N, D)
        ctx.save_for_backward(means2d, table, ctab, T, backgrounds if backgrounds is not None else colors.new_zeros(0))
        return render_colors, render_alphas

    @staticmethod
    def backward(ctx, g_colors, g_alphas):
        means2d, table, ctab, T_final, backgrounds = ctx.saved_tensors
        plan, chunk, step = ctx.plan, ctx.chunk, ctx.step
        I, N, D = ctx.shape
        dtype, device = table.dtype, table.device
        px, py = _tile_pixels(plan, dtype, device)
        floor = _alpha_floor(dtype)
        tri = torch.ones(chunk, chunk, dtype=dtype, device=device).triu_(1)  # R = tri @ U: sum over later k

        G = _images_to_tiles(g_colors, plan).transpose(1, 2).contiguous()  # (n_tiles, D, P)
        gT = -_images_to_tiles(g_alphas.contiguous(), plan)[..., 0]  # (n_tiles, P) dL/dT_final
        g_bg = None
        if ctx.has_bg:
            bg_t = backgrounds.repeat_interleave(plan.tile_width * plan.tile_height, dim=0)[plan.order]
            gT = gT + (G * bg_t[:, :, None]).sum(1)
            if ctx.needs_input_grad[4]:
                per_tile = (G * T_final[:, None, :]).sum(2)  # (n_tiles, D)
                g_bg = backgrounds.new_zeros(I * plan.tile_width * plan.tile_height, D)
                g_bg[plan.order] = per_tile
                g_bg = g_bg.reshape(I, -1, D).sum(1)

        g_table = torch.zeros_like(table)
        g_ctab = torch.zeros_like(ctab)
        g_abs = torch.zeros(table.shape[0], 2, dtype=dtype, device=device) if ctx.absgrad else None
        dummy = table.shape[0] - 1
        for r in reversed(range(len(ctx.actives))):
            A = ctx.actives[r]
            T_in_all, live_all = ctx.T_hist[r], ctx.live_hist[r]
            for t0 in range(0, A, step):
                t1 = min(A, t0 + step)
                ids = _round_ids(plan, r, chunk, t0, t1, dummy)
                prm = table[ids]  # (A, K, 6)
                T_in = T_in_all[t0:t1]
                dx, dy, raw, alpha = _block_alpha(prm, px[t0:t1], py[t0:t1], floor)
                q, Tth, w, T_out, _ = _block_composite(alpha, T_in, live_all[t0:t1])
                Gb = G[t0:t1]  # (A, D, P)
                gTo = gT[t0:t1]  # (A, P)
                g_ctab.index_add_(0, ids.reshape(-1), torch.bmm(Gb, w.transpose(1, 2)).transpose(1, 2).reshape(-1, D))
                Gc = torch.bmm(ctab[ids], Gb)  # (A, K, P) dL/dcolour . c_k
                U = w * Gc  # each drawn Gaussian's share of dL/dT_in * T_in
                R = torch.matmul(tri, U)  # sum_{j>k} U_j
                R += (gTo * T_out)[:, None, :]
                # dL/dalpha_k = T_k (G.c_k) - R_k / (1 - alpha_k) = (Tth_k G.c_k - R_k) / q_k for drawn k
                g_a = Tth.mul(Gc).sub_(R).div_(q)
                # dL/d(-sigma) = dL/dalpha * raw, only for drawn (Tth > 0, alpha > 0) unclamped pairs
                g_nsig = g_a.mul_(torch.sign(Tth)).mul_(alpha)
                op = prm[..., 5]
                if bool((op > MAX_ALPHA).any()):  # raw <= opacity: only these can be clamped
                    g_nsig.mul_((raw <= MAX_ALPHA).to(dtype))
                cA, cB, cC = prm[..., 2], prm[..., 3], prm[..., 4]
                # dL/dopacity = sum_p dL/draw * exp(-sigma) = sum_p g_nsig / opacity
                g_op = g_nsig.sum(-1) / torch.where(op > 0, op, torch.ones_like(op))
                hx = g_nsig * dx  # (A, K, P)
                hy = g_nsig.mul_(dy)
                if g_abs is not None:  # per-pixel dL/dmean2d = -(conic @ d) * g_nsig
                    vx = (cA[..., None] * hx).addcmul_(cB[..., None], hy).abs_().sum(-1)
                    vy = (cB[..., None] * hx).addcmul_(cC[..., None], hy).abs_().sum(-1)
                    g_abs.index_add_(0, ids.reshape(-1), torch.stack([vx, vy], -1).reshape(-1, 2))
                Sx, Sy = hx.sum(-1), hy.sum(-1)  # (A, K)
                Sxx = (hx * dx).sum(-1)
                Sxy = hx.mul_(dy).sum(-1)
                Syy = hy.mul_(dy).sum(-1)
                g_prm = torch.stack(
                    [-(cA * Sx + cB * Sy), -(cB * Sx + cC * Sy), -0.5 * Sxx, -Sxy, -0.5 * Syy, g_op], dim=-1
                )  # (A, K, 6)
                g_table.index_add_(0, ids.reshape(-1), g_prm.reshape(-1, 6))
                # dL/dT_in = (sum_k U_k + gT T_out) / T_in  (T_in > 1e-4 always)
                gT[t0:t1] = (U.sum(1) + gTo * T_out) / T_in

        g_table = g_table[:-1]
        g_means2d = g_table[:, :2].reshape(I, N, 2)
        g_conics = g_table[:, 2:5].reshape(I, N, 3)
        g_opac = g_table[:, 5].reshape(I, N)
        g_colors = g_ctab[:-1].reshape(I, N, D)
        if g_abs is not None:
            means2d.absgrad = g_abs[:-1].reshape(means2d.shape)
        return g_means2d.reshape(means2d.shape), g_conics, g_opac, g_colors, g_bg, None, None, None, None


def rasterize_tiles(
    means2d: Tensor,  # (I, N, 2) pixels (gsplat convention)
    conics: Tensor,  # (I, N, 3) inverse 2D covariance (xx, xy, yy)
    opacities: Tensor,  # (I, N)
    colors: Tensor,  # (I, N, D)
    plan: TilePlan,
    backgrounds: Tensor | None = None,  # (I, D)
    chunk: int = 32,
    block_elems: int = 1 << 20,
    absgrad: bool = False,
) -> tuple[Tensor, Tensor]:
    """Composite projected Gaussians into I images of the plan's size.

    Returns ``render_colors`` (I, H, W, D) and ``render_alphas`` (I, H, W, 1). Differentiable with
    respect to means2d, conics, opacities, colors and backgrounds; with ``absgrad`` the backward also
    sets ``means2d.absgrad`` (I, N, 2), the sum over pixels of the absolute per-pixel gradients.
    ``chunk`` Gaussians per tile are composited per step, in blocks of about ``block_elems``
    (Gaussian, pixel) pairs (the memory bound of forward and backward).
    """
    return _RasterizeTiles.apply(means2d, conics, opacities, colors, backgrounds, plan, chunk, block_elems, absgrad)
