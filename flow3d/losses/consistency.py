"""Depth consistency loss (seed 001): inside-mask, sure-outside and boundary-gradient SmoothL1 terms.

``L = w_inside * L_in + w_outside * L_out + w_edge * L_edge`` with, for a weighted mean ``mean_w`` over
the whole batch (every pixel of every image pooled, as in the seed) and ``rho`` the SmoothL1 with
threshold ``beta``:

* ``L_in   = mean_w rho(d_pred - d_tgt)``, ``w = M * V * C`` (M the soft mask clamped to [0, 1]);
* ``L_out  = mean_w rho(d_pred - d_tgt)``, ``w = (1 - dilate(M > 0.5, outside_dilate_r)) * V * C``;
* ``L_edge = (mean_w rho(dx_pred - dx_tgt) + mean_w rho(dy_pred - dy_tgt)) / 2`` with forward
  differences (zero-padded at the last column / row, as in the seed) and
  ``w = (dilate(M_bin, r) - erode(M_bin, r)) * V * C`` on the boundary band of radius ``edge_band_r``;

V marks pixels where both maps are finite (NaN/Inf pixels are ignored, also as neighbours of a
difference), C is the optional confidence in [0, 1]. Optionally the prediction is first aligned to the
target per image by least squares over the valid pixels (``align``), since monocular priors carry an
unknown scale (and shift).
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from flow3d.losses.reduce import check_tensor, masked_mean, safe_div

_FN = "depth_consistency_loss"


class DepthConsistencyTerms(NamedTuple):
    """Scalars: ``total`` (weighted sum) and the unweighted terms ``inside``, ``outside``, ``edge``."""

    total: Tensor
    inside: Tensor
    outside: Tensor
    edge: Tensor


def _as_4d(x: Tensor, name: str, like_shape: torch.Size | None) -> Tensor:
    """(H, W) / (B, H, W) / (B, 1, H, W) -> (B, 1, H, W); batch 1 expands to ``like_shape``'s batch."""
    check_tensor(name, x, fn=_FN, ndims=(2, 3, 4), floating=False)
    orig = tuple(x.shape)
    if x.dim() == 2:
        x = x[None, None]
    elif x.dim() == 3:
        x = x[:, None]
    if x.shape[1] != 1:
        raise ValueError(f"{_FN}: {name} must be (B, 1, H, W), (B, H, W) or (H, W), got shape {orig}")
    if like_shape is not None:
        if x.shape[0] == 1 and like_shape[0] != 1:
            x = x.expand(like_shape[0], -1, -1, -1)
        if x.shape != like_shape:
            raise ValueError(
                f"{_FN}: {name} has shape {orig} but d_pred is {tuple(like_shape)} as (B, 1, H, W); they must match"
            )
    return x


def dilate(mask01: Tensor, r: int) -> Tensor:
    """Binary/soft dilation with a (2r+1)^2 square: max-pool. (B, 1, H, W) -> same."""
    if r <= 0:
        return mask01
    return F.max_pool2d(mask01, kernel_size=2 * r + 1, stride=1, padding=r)


def erode(mask01: Tensor, r: int) -> Tensor:
    """Erosion with a (2r+1)^2 square; the outside of the image does not erode. (B, 1, H, W) -> same."""
    if r <= 0:
        return mask01
    return 1.0 - F.max_pool2d(1.0 - mask01, kernel_size=2 * r + 1, stride=1, padding=r)


def boundary_band(mask_bin: Tensor, r: int) -> Tensor:
    """``dilate - erode`` of a binary mask: the band of half-width r around its boundary (0 if r <= 0)."""
    if r <= 0:
        return torch.zeros_like(mask_bin)
    return (dilate(mask_bin, r) - erode(mask_bin, r)).clamp(0.0, 1.0)


def depth_gradients(depth: Tensor) -> tuple[Tensor, Tensor]:
    """Forward differences (dx, dy) of (..., H, W), zero-padded at the last column / row."""
    dx = F.pad(depth[..., :, 1:] - depth[..., :, :-1], (0, 1, 0, 0))
    dy = F.pad(depth[..., 1:, :] - depth[..., :-1, :], (0, 0, 0, 1))
    return dx, dy


def fit_scale_shift(
    pred: Tensor,
    tgt: Tensor,
    weight: Tensor,
    dims: tuple[int, ...],
    mode: str = "scale_shift",
) -> tuple[Tensor, Tensor, Tensor]:
    """Weighted least-squares ``s, t = argmin sum_dims weight * (s * pred + t - tgt)^2``.

    ``pred``, ``tgt``, ``weight`` share one shape; the sums run over ``dims`` (kept as size-1 dims, so the
    results broadcast against ``pred``). ``mode``: ``"scale"`` (t = 0) or ``"scale_shift"``. Closed form,
    differentiable. Returns ``(s, t, ok)``: where the system is degenerate (no weight, or a constant
    ``pred`` for ``"scale_shift"``) ``ok`` is False and ``s = 1, t = 0``.
    """
    if mode not in ("scale", "scale_shift"):
        raise ValueError(f"fit_scale_shift: mode must be 'scale' or 'scale_shift', got {mode!r}")
    a00 = (weight * pred * pred).sum(dims, keepdim=True)
    b0 = (weight * pred * tgt).sum(dims, keepdim=True)
    if mode == "scale":
        ok = a00 > 0
        return torch.where(ok, safe_div(b0, a00), torch.ones_like(a00)), torch.zeros_like(a00), ok
    a01 = (weight * pred).sum(dims, keepdim=True)
    a11 = weight.sum(dims, keepdim=True)
    b1 = (weight * tgt).sum(dims, keepdim=True)
    det = a00 * a11 - a01 * a01
    ok = det > 1e3 * torch.finfo(pred.dtype).eps * (a00 * a11).detach()
    det_safe = torch.where(ok, det, torch.ones_like(det))
    s = torch.where(ok, (a11 * b0 - a01 * b1) / det_safe, torch.ones_like(det))
    t = torch.where(ok, (a00 * b1 - a01 * b0) / det_safe, torch.zeros_like(det))
    return s, t, ok


def align_to_target(pred: Tensor, tgt: Tensor, weight: Tensor, mode: str) -> Tensor:
    """Per-image least-squares ``s * pred (+ t)`` fit to ``tgt`` under ``weight``; all (B, 1, H, W).

    ``mode``: ``"none"``, ``"scale"`` or ``"scale_shift"`` (:func:`fit_scale_shift`). Differentiable (closed
    form). Images whose system is degenerate (no valid pixel, or constant pred for scale_shift) are left
    unchanged.
    """
    if mode == "none":
        return pred
    s, t, _ = fit_scale_shift(pred, tgt, weight, (1, 2, 3), mode)
    return s * pred + t


def _smooth_l1_mean(a: Tensor, b: Tensor, w: Tensor, beta: float) -> Tensor:
    return masked_mean(F.smooth_l1_loss(a, b, reduction="none", beta=beta), w, sanitize=False)


def depth_consistency_loss(
    d_pred: Tensor,  # (B, 1, H, W), (B, H, W) or (H, W)
    d_tgt: Tensor,  # same as d_pred (batch 1 broadcasts)
    mask: Tensor,  # same; 1 inside the region, soft in [0, 1] or bool
    conf_pred: Tensor | None = None,  # same; confidence of d_pred in [0, 1]
    *,
    w_inside: float = 1.0,
    w_outside: float = 0.5,
    w_edge: float = 0.5,
    outside_dilate_r: int = 1,
    edge_r: int = 1,
    beta: float = 0.1,
    align: Literal["none", "scale", "scale_shift"] = "none",
    edge_band_r: int | None = None,
) -> DepthConsistencyTerms:
    """Depth consistency between a predicted and a target map (seed 001); see the module docstring.

    Args:
        d_pred: predicted depth or disparity. d_tgt: target of the same kind and preparation (cast to
            ``d_pred``'s dtype). mask: region of interest. conf_pred: optional confidence weights.
        w_inside, w_outside, w_edge: term weights (seed defaults 1.0, 0.5, 0.5).
        outside_dilate_r: pixels within this radius of the mask are not "sure outside".
        edge_r: half-width of the boundary band for the gradient term (the seed calls it
            ``edge_band_r``; that keyword is accepted too and wins when given).
        beta: SmoothL1 threshold (quadratic below, L1 above), in the units of the maps.
        align: ``"none"`` (seed), ``"scale"`` or ``"scale_shift"``: per-image least-squares alignment
            of ``d_pred`` to ``d_tgt`` over valid pixels (V * C) before the terms, for priors of unknown
            scale / shift. Gradients flow through the closed-form fit.

    Returns:
        ``DepthConsistencyTerms(total, inside, outside, edge)``, scalars. Each term is a weighted mean
        over all pixels of the batch; a term whose weights are all 0 is a differentiable 0.
    """
    if align not in ("none", "scale", "scale_shift"):
        raise ValueError(f"{_FN}: align must be 'none', 'scale' or 'scale_shift', got {align!r}")
    if edge_band_r is not None:
        edge_r = edge_band_r
    check_tensor("d_pred", d_pred, fn=_FN, ndims=(2, 3, 4))
    pred = _as_4d(d_pred, "d_pred", None)
    shape = pred.shape
    tgt = _as_4d(d_tgt, "d_tgt", shape).to(pred.dtype)
    m = _as_4d(mask, "mask", shape).to(pred.dtype).clamp(0.0, 1.0)
    for name, t in (("d_tgt", d_tgt), ("mask", mask), ("conf_pred", conf_pred)):
        if t is not None and t.device != d_pred.device:
            raise ValueError(f"{_FN}: {name} is on {t.device} but d_pred is on {d_pred.device}")

    finite = torch.isfinite(pred) & torch.isfinite(tgt)
    all_finite = bool(finite.all())
    if all_finite:
        pred_f = pred
        valid = torch.ones_like(pred)
    else:
        pred_f = torch.where(finite, pred, torch.zeros_like(pred))
        tgt = torch.where(finite, tgt, torch.zeros_like(tgt))
        valid = finite.to(pred.dtype)
    if conf_pred is not None:
        c = _as_4d(conf_pred, "conf_pred", shape).to(pred.dtype).clamp(0.0, 1.0)
        valid = valid * c
    pred_f = align_to_target(pred_f, tgt, valid, align)

    m_bin = (m > 0.5).to(m.dtype)
    w_in = m * valid
    dil_out = dilate(m_bin, outside_dilate_r)
    w_out = (1.0 - dil_out) * valid
    if edge_r <= 0:
        band = torch.zeros_like(m_bin)
    else:
        dil_edge = dil_out if edge_r == outside_dilate_r else dilate(m_bin, edge_r)
        band = (dil_edge - erode(m_bin, edge_r)).clamp(0.0, 1.0) * valid
    if all_finite:
        w_ex = w_ey = band
    else:
        # A difference is usable only if its right / lower neighbour is finite too (padding counts as finite).
        fin = finite.to(pred.dtype)
        w_ex = band * F.pad(fin[..., :, 1:], (0, 1, 0, 0), value=1.0)
        w_ey = band * F.pad(fin[..., 1:, :], (0, 0, 0, 1), value=1.0)

    L_in = _smooth_l1_mean(pred_f, tgt, w_in, beta)
    L_out = _smooth_l1_mean(pred_f, tgt, w_out, beta)
    dx_p, dy_p = depth_gradients(pred_f)
    dx_t, dy_t = depth_gradients(tgt)
    L_edge = 0.5 * (_smooth_l1_mean(dx_p, dx_t, w_ex, beta) + _smooth_l1_mean(dy_p, dy_t, w_ey, beta))
    total = w_inside * L_in + w_outside * L_out + w_edge * L_edge
    return DepthConsistencyTerms(total=total, inside=L_in, outside=L_out, edge=L_edge)


class DepthConsistencyLoss(nn.Module):
    """Stores the options of :func:`depth_consistency_loss` and calls it (returns the terms)."""

    def __init__(self, **options):
        super().__init__()
        self.options = options

    def forward(self, d_pred: Tensor, d_tgt: Tensor, mask: Tensor, conf_pred: Tensor | None = None):
        return depth_consistency_loss(d_pred, d_tgt, mask, conf_pred, **self.options)
