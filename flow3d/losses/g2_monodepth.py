"""G2-MonoDepth loss (seed 002): absolute L1 + robust-standardised L1 + multi-scale Sobel gradient L1.

``total = L_adepth + L_rdepth + 0.5 * L_rgrad`` where, with M the valid mask:

* ``L_adepth``: per image ``sum(M |d - g|) / sum(M)``, then the mean over the batch (an image with an
  empty mask contributes 0 to that mean, as in the seed);
* ``L_rdepth``: the same on the robustly standardised maps ``(x - mean_M(x)) / (MAD_M(x) + 1e-6)``
  (masked mean, masked mean absolute deviation; pred and gt standardised separately);
* ``L_rgrad``: for each scale s in (1, 2, 4, 8): standardised maps average-pooled by s (mask pooled and
  re-binarised at 0.5), Sobel x / y with zero padding, ``(sum M|gx_d - gx_g| + sum M|gy_d - gy_g|) /
  (sum M + 1e-6)`` over the whole batch; mean over scales.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from flow3d.losses.reduce import check_same, check_tensor, safe_div

_FN = "g2_monodepth_loss"
_STD_EPS = 1e-6
_SCALES = (1, 2, 4, 8)


def sobel_xy(x: Tensor, padding_mode: str = "zeros") -> tuple[Tensor, Tensor]:
    """Sobel gradients (cross-correlation, as ``F.conv2d``) of (B, 1, H, W) -> two (B, 1, H, W).

    ``padding_mode``: ``"zeros"`` (G2-MonoDepth) or ``"replicate"`` (PackNet's scale-adaptive loss).
    """
    kx = x.new_tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]]).view(1, 1, 3, 3)
    ky = kx.transpose(-1, -2)
    if padding_mode == "zeros":
        xp = F.pad(x, (1, 1, 1, 1))
    else:
        xp = F.pad(x, (1, 1, 1, 1), mode=padding_mode)
    return F.conv2d(xp, kx), F.conv2d(xp, ky)


def robust_standardize(x: Tensor, mask: Tensor, eps: float = _STD_EPS) -> Tensor:
    """``(x - mean_M x) / (MAD_M x + eps)`` per image; x, mask (B, 1, H, W) -> (B, 1, H, W).

    Mean and mean absolute deviation are weighted by ``mask``; an image with an empty mask gets mean 0
    and MAD 0 (so it is divided by ``eps`` but every term that uses it is masked out).
    """
    n = mask.sum((1, 2, 3), keepdim=True)
    mean = safe_div((x * mask).sum((1, 2, 3), keepdim=True), n)
    mad = safe_div(((x - mean) * mask).abs().sum((1, 2, 3), keepdim=True), n)
    return (x - mean) / (mad + eps)


def _per_image_l1(a: Tensor, b: Tensor, mask: Tensor) -> Tensor:
    """Per-image masked mean of |a - b|, then the batch mean (empty images count as 0)."""
    per = safe_div(((a - b).abs() * mask).sum((1, 2, 3)), mask.sum((1, 2, 3)))
    return per.mean()


def _to_4d(x: Tensor, name: str) -> Tensor:
    if x.dim() == 3:
        return x[:, None]
    if x.dim() == 4 and x.shape[1] == 1:
        return x
    raise ValueError(f"{_FN}: {name} must be (B, H, W) or (B, 1, H, W), got shape {tuple(x.shape)}")


def g2_monodepth_loss(
    pred: Tensor,  # (B, 1, H, W) or (B, H, W) predicted depth
    gt: Tensor,  # same shape, target depth (non-finite pixels are treated as invalid)
    mask: Tensor,  # same shape, bool or {0, 1} float valid mask
    *,
    scales: tuple[int, ...] = _SCALES,
    grad_weight: float = 0.5,
) -> tuple[Tensor, dict[str, Tensor]]:
    """G2-MonoDepth's loss (seed 002); see the module docstring for the formulas and reductions.

    Returns ``(total, {"adepth", "rdepth", "rgrad"})``: scalars, still attached to the graph (detach
    them before logging). Units: ``adepth`` in the units of the maps, the others dimensionless.
    Non-finite ``gt`` pixels are removed from the mask and replaced by 0 (they still enter the Sobel
    stencil of their neighbours, as invalid zero-depth pixels do in the seed).
    """
    check_tensor("pred", pred, fn=_FN, ndims=(3, 4))
    check_same("gt", gt, "pred", pred, fn=_FN)
    check_same("mask", mask, "pred", pred, fn=_FN)
    d = _to_4d(pred, "pred")
    g = _to_4d(gt, "gt").to(d.dtype)
    m = _to_4d(mask, "mask").to(d.dtype)
    finite = torch.isfinite(g)
    m = torch.where(finite, m, torch.zeros_like(m))
    g = torch.where(finite, g, torch.zeros_like(g))

    l_a = _per_image_l1(d, g, m)
    sd, sg = robust_standardize(d, m), robust_standardize(g, m)
    l_r = _per_image_l1(sd, sg, m)

    l_g = d.new_zeros(())
    for s in scales:
        if s > 1:
            ds, gs = F.avg_pool2d(sd, s, s), F.avg_pool2d(sg, s, s)
            ms = (F.avg_pool2d(m, s, s) > 0.5).to(m.dtype)
        else:
            ds, gs, ms = sd, sg, m
        gx_d, gy_d = sobel_xy(ds)
        gx_g, gy_g = sobel_xy(gs)
        num = ((gx_d - gx_g).abs() * ms).sum() + ((gy_d - gy_g).abs() * ms).sum()
        l_g = l_g + num / (ms.sum() + _STD_EPS)
    l_g = l_g / len(scales)

    total = l_a + l_r + grad_weight * l_g
    return total, {"adepth": l_a, "rdepth": l_r, "rgrad": l_g}


class G2MonoDepthLoss(nn.Module):
    """Stores the options of :func:`g2_monodepth_loss` and calls it."""

    def __init__(self, scales: tuple[int, ...] = _SCALES, grad_weight: float = 0.5):
        super().__init__()
        self.scales, self.grad_weight = tuple(scales), grad_weight

    def forward(self, pred: Tensor, gt: Tensor, mask: Tensor):
        return g2_monodepth_loss(pred, gt, mask, scales=self.scales, grad_weight=self.grad_weight)
