"""Pearson-correlation depth loss (seed 004): ``1 - Corr(pred, prior)`` per image, mean over the batch.

The loss is invariant to ``a * pred + b`` (a > 0) and to ``a * prior + b`` (a > 0), so it compares a
rendering with a monocular prior of unknown scale and shift. It does NOT make depth and disparity
comparable: a disparity prior must be compared with the rendered *disparity* (``1 / depth``) and a depth
prior with the rendered depth; correlating depth with disparity rewards the wrong sign of structure.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from flow3d.losses.reduce import as_weight, check_same, check_tensor, mean_over_valid

_FN = "pearson_depth_loss"


def weighted_pearson_corr(x: Tensor, y: Tensor, w: Tensor) -> tuple[Tensor, Tensor]:
    """Weighted Pearson correlation over the last dimension.

    x, y, w: (..., N); ``w >= 0`` are weights (0 = excluded, entries there may hold any finite value).
    Returns ``corr`` (...,) and ``valid`` (...,) bool: at least 2 entries with ``w > 0``. Where the
    correlation is undefined (fewer than 2 entries, or one input constant up to round-off) ``corr`` is 0
    with a zero, finite gradient.
    """
    n_valid = (w > 0).sum(-1)
    sw = w.sum(-1, keepdim=True)
    sw_safe = torch.where(sw > 0, sw, torch.ones_like(sw))
    mx = (w * x).sum(-1, keepdim=True) / sw_safe
    my = (w * y).sum(-1, keepdim=True) / sw_safe
    xc, yc = x - mx, y - my
    vx = (w * xc * xc).sum(-1) / sw_safe[..., 0]
    vy = (w * yc * yc).sum(-1) / sw_safe[..., 0]
    cov = (w * xc * yc).sum(-1) / sw_safe[..., 0]
    # A constant input has a variance of pure round-off, ~(eps * |x|)^2: treat it as zero. The scale is
    # the weighted mean square mean^2 + var (already at hand).
    tol = (64 * torch.finfo(x.dtype).eps) ** 2
    mx2, my2 = mx[..., 0].detach() ** 2, my[..., 0].detach() ** 2
    ok = (n_valid >= 2) & (vx > tol * (mx2 + vx.detach())) & (vy > tol * (my2 + vy.detach()))
    prod = torch.where(ok, vx * vy, torch.ones_like(vx))
    corr = torch.where(ok, cov / torch.sqrt(prod), torch.zeros_like(cov))
    return corr, n_valid >= 2


def _patch_index(B: int, H: int, W: int, patch_size: int, num_patches: int, mode: str, generator, device) -> Tensor:
    """(B, Np, p*p) flat pixel indices of square patches."""
    p = patch_size
    ar = torch.arange(p, device=device)
    if mode == "grid":
        nh, nw = H // p, W // p
        y0 = (torch.arange(nh, device=device) * p)[:, None].expand(nh, nw).reshape(1, -1).expand(B, -1)
        x0 = (torch.arange(nw, device=device) * p)[None, :].expand(nh, nw).reshape(1, -1).expand(B, -1)
    else:
        gdev = generator.device if generator is not None else torch.device("cpu")
        y0 = torch.randint(0, H - p + 1, (B, num_patches), generator=generator, device=gdev).to(device)
        x0 = torch.randint(0, W - p + 1, (B, num_patches), generator=generator, device=gdev).to(device)
    idx = (y0[..., None, None] + ar[:, None]) * W + (x0[..., None, None] + ar[None, :])  # (B, Np, p, p)
    return idx.flatten(2)


def pearson_depth_loss(
    pred: Tensor,  # (B, H, W)
    prior: Tensor,  # (B, H, W)
    mask: Tensor | None = None,  # (B, H, W) bool or float weights
    *,
    patch_size: int | None = None,
    num_patches: int = 64,
    patch_mode: Literal["random", "grid"] = "random",
    generator: torch.Generator | None = None,
) -> Tensor:
    """``1 - Corr(pred, prior)`` over the valid pixels of each image, then the mean over the batch.

    Args:
        pred: (B, H, W) rendered depth or disparity.
        prior: (B, H, W) prior of the SAME kind (disparity prior <-> rendered disparity). Non-finite
            prior pixels are ignored. Cast to ``pred``'s dtype.
        mask: (B, H, W) bool, or float weights >= 0 (a weighted correlation); None = every pixel.
        patch_size: if given, the loss is the mean of per-patch ``1 - Corr`` over square patches of this
            side (pixels) -- local structure instead of the global one. Patches with < 2 valid pixels
            are skipped.
        num_patches: patches per image for ``patch_mode="random"`` (corners uniform, with replacement).
        patch_mode: ``"random"`` or ``"grid"`` (every non-overlapping tile; ``num_patches`` ignored).
        generator: torch.Generator for the random patches (reproducible sampling).

    Returns:
        Scalar in [0, 2]; 0 when pred is a positive affine map of prior. Images (or patches) with fewer
        than 2 valid pixels are excluded from the mean; if none is left the result is a differentiable 0.
        Where one input is constant the correlation is undefined and counted as 0 (loss 1).
    """
    check_tensor("pred", pred, fn=_FN, ndims=(3,))
    check_same("prior", prior, "pred", pred, fn=_FN)
    if patch_mode not in ("random", "grid"):
        raise ValueError(f"{_FN}: patch_mode must be 'random' or 'grid', got {patch_mode!r}")
    w = as_weight(mask, pred, fn=_FN)
    prior = prior.to(pred.dtype)
    finite = torch.isfinite(prior)
    if not bool(finite.all()):
        w = torch.where(finite, w, torch.zeros_like(w))
        prior = torch.where(finite, prior, torch.zeros_like(prior))
    B, H, W = pred.shape

    if patch_size is None:
        corr, valid = weighted_pearson_corr(pred.reshape(B, -1), prior.reshape(B, -1), w.reshape(B, -1))
        return mean_over_valid(1.0 - corr, valid)

    if not (1 < patch_size <= min(H, W)):
        raise ValueError(f"{_FN}: patch_size must be in [2, min(H, W)={min(H, W)}], got {patch_size}")
    if patch_mode == "random" and num_patches < 1:
        raise ValueError(f"{_FN}: num_patches must be >= 1, got {num_patches}")
    idx = _patch_index(B, H, W, patch_size, num_patches, patch_mode, generator, pred.device)
    Np = idx.shape[1]
    flat = idx.reshape(B, -1)

    def take(x: Tensor) -> Tensor:
        return torch.gather(x.reshape(B, -1), 1, flat).reshape(B, Np, -1)

    corr, valid = weighted_pearson_corr(take(pred), take(prior), take(w))  # (B, Np)
    vf = valid.to(pred.dtype)
    n_img = vf.sum(1)
    per_image = ((1.0 - corr) * vf).sum(1) / torch.where(n_img > 0, n_img, torch.ones_like(n_img))
    return mean_over_valid(per_image, n_img > 0)


class PearsonDepthLoss(nn.Module):
    """Stores the options of :func:`pearson_depth_loss` and calls it."""

    def __init__(self, patch_size: int | None = None, num_patches: int = 64, patch_mode: str = "random"):
        super().__init__()
        self.patch_size, self.num_patches, self.patch_mode = patch_size, num_patches, patch_mode

    def forward(self, pred: Tensor, prior: Tensor, mask: Tensor | None = None, generator=None) -> Tensor:
        return pearson_depth_loss(
            pred,
            prior,
            mask,
            patch_size=self.patch_size,
            num_patches=self.num_patches,
            patch_mode=self.patch_mode,
            generator=generator,
        )
