"""Scale-adaptive loss (seed 003, PackNet-SfM's take on G2-MonoDepth): ``total = L_sa + lambda_sg * L_sg``.

Inputs are INVERSE depths (disparity-like maps), as in the seed's ``forward(pred_inv_depth,
gt_inv_depth, mask)``. With ``use_inv_depth=False`` (default) both are first converted to depth with
the safe inversion ``1 / clamp(inv, min=1e-6)``; with ``use_inv_depth=True`` the terms are computed on
the inverse depths directly. On the chosen maps x (pred) and y (gt):

* ``normalize(z) = (z - mean z) / (mean |z - mean z| + epsilon)`` per image (MAD normalisation);
* ``L_rel = mean |normalize(x) - normalize(y)|`` over every pixel of the batch;
* ``L_abs = sum(M |x - y|) / (sum_b max(sum M_b, 1) + epsilon)`` -- only when ``use_absolute`` and a
  mask is given (the seed skips it otherwise); ``L_sa = L_rel + L_abs``;
* ``L_sg = mean_k mean(|Sobel_x r_k| + |Sobel_y r_k|)``, ``r = normalize(x) - normalize(y)`` resized
  bilinearly by ``1 / 2^(k-1)`` for k = 1..num_scales, Sobel with replicate padding.

As in the seed, the relative and gradient terms use every pixel; ``mask_all_terms=True`` restricts
them to the mask too (masked mean / MAD, masked relative mean, residual zeroed outside the mask before
the gradient) -- use it when invalid pixels hold garbage (e.g. sparse ground truth).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from flow3d.losses.g2_monodepth import sobel_xy
from flow3d.losses.reduce import check_same, check_tensor, masked_mean, safe_div

_FN = "scale_adaptive_loss"
_MIN_INV = 1e-6


def inv2depth(inv_depth: Tensor, min_inv: float = _MIN_INV) -> Tensor:
    """Depth from inverse depth with a floor on the inverse: finite value and gradient at 0."""
    return 1.0 / inv_depth.clamp(min=min_inv)


def mad_normalize(x: Tensor, mask: Tensor | None = None, epsilon: float = 1e-8) -> Tensor:
    """``(x - mean) / (mean |x - mean| + epsilon)`` per image over (H, W); (B, 1, H, W) -> same.

    With ``mask`` (B, 1, H, W) the mean and the MAD are masked (an empty mask gives mean 0, MAD 0).
    """
    if mask is None:
        mean = x.mean(dim=(2, 3), keepdim=True)
        mad = (x - mean).abs().mean(dim=(2, 3), keepdim=True)
    else:
        n = mask.sum((2, 3), keepdim=True)
        mean = safe_div((x * mask).sum((2, 3), keepdim=True), n)
        mad = safe_div(((x - mean).abs() * mask).sum((2, 3), keepdim=True), n)
    return (x - mean) / (mad + epsilon)


def scale_adaptive_loss(
    pred: Tensor,  # (B, 1, H, W) or (B, H, W) predicted INVERSE depth
    gt: Tensor,  # same, target INVERSE depth
    mask: Tensor | None = None,  # same, bool or float valid mask
    *,
    lambda_sg: float = 0.5,
    num_scales: int = 4,
    use_absolute: bool = True,
    use_inv_depth: bool = False,
    epsilon: float = 1e-8,
    mask_all_terms: bool = False,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Scale-adaptive loss (seed 003); see the module docstring for the formulas.

    Returns ``(total, terms)`` with ``terms`` = ``relative``, ``absolute``, ``sa``, ``sg`` and
    ``grad_scale_{k}`` for k = 1..num_scales: scalars attached to the graph (detach before logging).
    ``L_rel`` and ``L_sg`` are invariant to a common positive scale of pred (and of gt); ``L_abs`` is not.
    """
    check_tensor("pred", pred, fn=_FN, ndims=(3, 4))
    check_same("gt", gt, "pred", pred, fn=_FN)
    if mask is not None:
        check_same("mask", mask, "pred", pred, fn=_FN)
    if pred.dim() == 4 and pred.shape[1] != 1:
        raise ValueError(f"{_FN}: pred must be (B, H, W) or (B, 1, H, W), got shape {tuple(pred.shape)}")
    if num_scales < 1:
        raise ValueError(f"{_FN}: num_scales must be >= 1, got {num_scales}")
    if mask_all_terms and mask is None:
        raise ValueError(f"{_FN}: mask_all_terms=True needs a mask")
    x = pred if pred.dim() == 4 else pred[:, None]
    y = (gt if gt.dim() == 4 else gt[:, None]).to(x.dtype)
    m = None if mask is None else (mask if mask.dim() == 4 else mask[:, None]).to(x.dtype)
    if not use_inv_depth:
        x, y = inv2depth(x), inv2depth(y)

    m_rel = m if mask_all_terms else None
    xn, yn = mad_normalize(x, m_rel, epsilon), mad_normalize(y, m_rel, epsilon)
    if m_rel is None:
        relative = (xn - yn).abs().mean()
    else:
        relative = masked_mean((xn - yn).abs(), m_rel)

    absolute = x.new_zeros(())
    if use_absolute and m is not None:
        n_per = m.sum((1, 2, 3)).clamp(min=1.0)
        absolute = ((x * m - y * m).abs() * m).sum() / (n_per.sum() + epsilon)

    residual = xn - yn
    if m_rel is not None:
        residual = residual * m_rel
    terms: dict[str, Tensor] = {}
    sg = x.new_zeros(())
    for k in range(1, num_scales + 1):
        r_k = residual
        if k > 1:
            r_k = F.interpolate(residual, scale_factor=1.0 / 2 ** (k - 1), mode="bilinear", align_corners=False)
        gx, gy = sobel_xy(r_k, padding_mode="replicate")
        loss_k = (gx.abs() + gy.abs()).mean()
        terms[f"grad_scale_{k}"] = loss_k
        sg = sg + loss_k
    sg = sg / num_scales

    sa = relative + absolute
    total = sa + lambda_sg * sg
    terms.update(relative=relative, absolute=absolute, sa=sa, sg=sg)
    return total, terms


class ScaleAdaptiveLoss(nn.Module):
    """Stores the options of :func:`scale_adaptive_loss` and calls it. Prints nothing."""

    def __init__(
        self,
        lambda_sg: float = 0.5,
        num_scales: int = 4,
        use_absolute: bool = True,
        use_inv_depth: bool = False,
        epsilon: float = 1e-8,
        mask_all_terms: bool = False,
    ):
        super().__init__()
        self.options = dict(
            lambda_sg=lambda_sg,
            num_scales=num_scales,
            use_absolute=use_absolute,
            use_inv_depth=use_inv_depth,
            epsilon=epsilon,
            mask_all_terms=mask_all_terms,
        )

    def forward(self, pred_inv_depth: Tensor, gt_inv_depth: Tensor, mask: Tensor | None = None):
        return scale_adaptive_loss(pred_inv_depth, gt_inv_depth, mask, **self.options)
