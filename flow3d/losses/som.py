"""Shape-of-Motion base terms: masked (trimmed) L1 / MSE, disparity-gradient loss, motion-basis and
z-acceleration smoothness.

Fixes relative to Shape of Motion's ``loss_utils.py``:

* trimming keeps residuals ``<=`` the quantile (not ``<``), computed over the valid entries only, so
  equal residuals (e.g. a perfect fit) give their value instead of the mean of an empty set (NaN);
* a mask must have the loss's shape (``pred.shape``, ``pred.shape[:-1]`` or ``pred.shape[:-1] + (1,)``),
  it never broadcasts silently into another shape;
* the acceleration norms use a square root with a finite gradient at zero acceleration.
"""

from __future__ import annotations

import torch
from torch import Tensor

from flow3d.losses.reduce import check_same, check_tensor, masked_mean, quantile_threshold, safe_norm, zero_like_loss


def _row_weights(mask: Tensor | None, pred: Tensor, fn: str) -> Tensor:
    """Weights of ``pred``'s shape from a mask of shape pred.shape, pred.shape[:-1] or pred.shape[:-1]+(1,)."""
    if mask is None:
        return torch.ones_like(pred)
    if not isinstance(mask, Tensor):
        raise ValueError(f"{fn}: mask must be a torch.Tensor, got {type(mask).__name__}")
    if mask.device != pred.device:
        raise ValueError(f"{fn}: mask is on {mask.device} but pred is on {pred.device}")
    if mask.shape == pred.shape:
        w = mask
    elif pred.dim() >= 1 and mask.shape in (pred.shape[:-1], pred.shape[:-1] + (1,)):
        w = mask.reshape(pred.shape[:-1] + (1,)).expand_as(pred)
    else:
        raise ValueError(
            f"{fn}: mask has shape {tuple(mask.shape)} but pred has shape {tuple(pred.shape)}; the mask must be "
            f"{tuple(pred.shape)}, {tuple(pred.shape[:-1])} or {tuple(pred.shape[:-1]) + (1,)}"
        )
    return w.to(pred.dtype).clamp_min(0.0)


def _is_row_mask(mask: Tensor | None, pred: Tensor) -> bool:
    """True when ``mask`` weights whole rows (shape (...,) or (..., 1)) of a multi-channel ``pred``."""
    return (
        mask is not None
        and pred.dim() >= 1
        and pred.shape[-1] > 1
        and mask.shape in (pred.shape[:-1], pred.shape[:-1] + (1,))
    )


def _masked_trimmed(
    err: Tensor, pred: Tensor, mask: Tensor | None, quantile: float, fn: str, trim_rows: bool = False
) -> Tensor:
    if not (0.0 < quantile <= 1.0):
        raise ValueError(f"{fn}: quantile must be in (0, 1], got {quantile}")
    w = _row_weights(mask, pred, fn)
    if quantile < 1.0:
        if trim_rows:  # the channels of one pixel / point trimmed together, like Shape of Motion
            unit_err, unit_used = err.mean(-1), (w > 0).any(-1)
        else:
            unit_err, unit_used = err, w > 0
        if bool(unit_used.any()):
            thr = quantile_threshold(unit_err[unit_used], quantile)
            keep = (unit_err.detach() <= thr).to(w.dtype)
            w = w * (keep.unsqueeze(-1) if trim_rows else keep)
    return masked_mean(err, w)


def masked_l1_loss(
    pred: Tensor,  # (..., D)
    gt: Tensor,  # (..., D)
    mask: Tensor | None = None,  # (..., D), (...,) or (..., 1); bool or float weights
    quantile: float = 1.0,
) -> Tensor:
    """Weighted mean of ``|pred - gt|``; with ``quantile < 1`` the residuals above the ``quantile`` of
    the valid ones are dropped (trimmed L1; ties at the threshold are kept, so equal residuals never
    leave an empty set).

    The trimming unit follows the mask: a mask of shape (...,) or (..., 1) for a multi-channel pred
    (..., D), D > 1, weights whole rows -- e.g. 2-D track points (N, T, 2) with a (N, T) visibility -- and
    rows are trimmed on their mean residual over D, as in Shape of Motion. A mask of pred's shape, or
    no mask, weights and trims each entry (so a (B, H, W) disparity map is trimmed per pixel).

    Non-finite ``gt`` entries get weight 0. Returns a scalar; a differentiable 0 for an empty mask.
    """
    fn = "masked_l1_loss"
    check_tensor("pred", pred, fn=fn)
    check_same("gt", gt, "pred", pred, fn=fn)
    rows = _is_row_mask(mask, pred)
    gt, mask = _drop_nonfinite(gt.to(pred.dtype), mask, pred, fn)
    err = (pred - gt).abs()
    return _masked_trimmed(err, pred, mask, quantile, fn, trim_rows=rows)


def masked_mse_loss(
    pred: Tensor,  # (..., D)
    gt: Tensor,  # (..., D)
    mask: Tensor | None = None,  # (..., D), (...,) or (..., 1)
    quantile: float = 1.0,
) -> Tensor:
    """Weighted mean of ``(pred - gt)^2``, trimmed like :func:`masked_l1_loss`."""
    fn = "masked_mse_loss"
    check_tensor("pred", pred, fn=fn)
    check_same("gt", gt, "pred", pred, fn=fn)
    rows = _is_row_mask(mask, pred)
    gt, mask = _drop_nonfinite(gt.to(pred.dtype), mask, pred, fn)
    err = (pred - gt) ** 2
    return _masked_trimmed(err, pred, mask, quantile, fn, trim_rows=rows)


def _drop_nonfinite(gt: Tensor, mask: Tensor | None, pred: Tensor, fn: str) -> tuple[Tensor, Tensor | None]:
    """Give non-finite ``gt`` entries weight 0 (and a harmless value); a no-op when all are finite."""
    finite = torch.isfinite(gt)
    if bool(finite.all()):
        return gt, mask
    gt = torch.where(finite, gt, pred.detach())
    return gt, _row_weights(mask, pred, fn) * finite.to(pred.dtype)


def disparity_gradient_loss(
    pred_disp: Tensor,  # (B, H, W)
    prior_disp: Tensor,  # (B, H, W)
    mask: Tensor | None = None,  # (B, H, W) bool or float
    quantile: float = 0.98,
) -> Tensor:
    """L1 between forward differences of rendered and prior disparity (Shape of Motion's gradient loss).

    x- and y-differences are compared where both pixels of the difference are in the mask (their weights
    multiplied), each trimmed at ``quantile`` and averaged; the two directions are summed. Invariant to a
    shift of the prior, not to its scale. Returns a scalar (differentiable 0 for an empty mask).
    """
    fn = "disparity_gradient_loss"
    check_tensor("pred_disp", pred_disp, fn=fn, ndims=(3,))
    check_same("prior_disp", prior_disp, "pred_disp", pred_disp, fn=fn)
    w = torch.ones_like(pred_disp) if mask is None else None
    if mask is not None:
        check_same("mask", mask, "pred_disp", pred_disp, fn=fn)
        w = mask.to(pred_disp.dtype).clamp_min(0.0)
    prior = prior_disp.to(pred_disp.dtype)
    finite = torch.isfinite(prior)
    w = w * finite.to(w.dtype)
    prior = torch.where(finite, prior, torch.zeros_like(prior))
    wx = w[:, :, 1:] * w[:, :, :-1]
    wy = w[:, 1:, :] * w[:, :-1, :]
    gx_p, gy_p = pred_disp[:, :, 1:] - pred_disp[:, :, :-1], pred_disp[:, 1:, :] - pred_disp[:, :-1, :]
    gx_t, gy_t = prior[:, :, 1:] - prior[:, :, :-1], prior[:, 1:, :] - prior[:, :-1, :]
    lx = _masked_trimmed((gx_p - gx_t).abs()[..., None], gx_p[..., None], wx, quantile, fn)
    ly = _masked_trimmed((gy_p - gy_t).abs()[..., None], gy_p[..., None], wy, quantile, fn)
    return lx + ly


def motion_acceleration_loss(x: Tensor) -> Tensor:  # x: (..., T, D)
    """Mean over (..., T-2) of the norm of the second difference ``x[t-1] - 2 x[t] + x[t+1]``.

    For motion bases: translations (K, T, 3) or 6D rotations (K, T, 6). Units of x per frame^2. A
    trajectory with T < 3 has no acceleration: a differentiable 0.
    """
    check_tensor("x", x, fn="motion_acceleration_loss")
    if x.dim() < 2:
        raise ValueError(f"motion_acceleration_loss: x must be (..., T, D), got shape {tuple(x.shape)}")
    if x.shape[-2] < 3:
        return zero_like_loss(x)
    acc = x[..., :-2, :] - 2.0 * x[..., 1:-1, :] + x[..., 2:, :]
    return safe_norm(acc, dim=-1).mean()


def se3_smoothness_loss(
    rots: Tensor,  # (K, T, 6) or (K, T, 4)
    transls: Tensor,  # (K, T, 3)
    weight_rot: float = 1.0,
    weight_transl: float = 2.0,
) -> Tensor:
    """Acceleration smoothness of SE(3) motion bases: ``weight_rot * acc(rots) + weight_transl * acc(transls)``
    with :func:`motion_acceleration_loss` (Shape of Motion's weights 1 and 2)."""
    fn = "se3_smoothness_loss"
    check_tensor("rots", rots, fn=fn, ndims=(3,))
    check_tensor("transls", transls, fn=fn, ndims=(3,))
    if rots.shape[:2] != transls.shape[:2] or transls.shape[-1] != 3:
        raise ValueError(
            f"{fn}: rots (K, T, 6|4) and transls (K, T, 3) disagree: {tuple(rots.shape)} vs {tuple(transls.shape)}"
        )
    return weight_rot * motion_acceleration_loss(rots) + weight_transl * motion_acceleration_loss(transls)


def z_acceleration_loss(
    points_cam: Tensor,  # (..., T, 3)
    mask: Tensor | None = None,  # (..., T-2) or (..., T) bool/float weights of the middle frames
) -> Tensor:
    """Acceleration of points along their camera rays: mean of ``|a_t . r_t|``.

    ``points_cam`` (..., T, 3) holds each point's positions at T consecutive times, all expressed in the
    SAME camera frame (OpenCV axes, camera centre at the origin), e.g. the Gaussians' means at t-1, t,
    t+1 mapped by ``w2cs[t]`` as Shape of Motion's ``z_acc`` term does. ``a_t = x[t-1] - 2 x[t] + x[t+1]``
    and ``r_t = x[t] / |x[t]|`` is the viewing ray at the middle time (safe at the origin). Only the
    acceleration along the ray (the depth direction a monocular video does not constrain) is penalised.
    (Shape of Motion's shipped code squares the ray components of the two velocities instead, see
    :func:`ray_velocity_loss`; its commented-out line is this acceleration form.) Units: scene units per
    frame^2. T < 3: a differentiable 0.
    """
    fn = "z_acceleration_loss"
    check_tensor("points_cam", points_cam, fn=fn)
    if points_cam.dim() < 2 or points_cam.shape[-1] != 3:
        raise ValueError(f"{fn}: points_cam must be (..., T, 3), got shape {tuple(points_cam.shape)}")
    T = points_cam.shape[-2]
    if T < 3:
        return zero_like_loss(points_cam)
    mid = points_cam[..., 1:-1, :]
    acc = points_cam[..., :-2, :] - 2.0 * mid + points_cam[..., 2:, :]
    nrm = safe_norm(mid, dim=-1)[..., None]
    ray = mid / torch.where(nrm > 0, nrm, torch.ones_like(nrm))
    along = (acc * ray).sum(-1).abs()  # (..., T-2)
    if mask is None:
        return along.mean()
    if mask.shape == points_cam.shape[:-1]:
        mask = mask[..., 1:-1]
    if mask.shape != along.shape:
        raise ValueError(
            f"{fn}: mask has shape {tuple(mask.shape)}; expected {tuple(along.shape)} (middle frames) "
            f"or {tuple(points_cam.shape[:-1])} for points_cam {tuple(points_cam.shape)}"
        )
    return masked_mean(along, mask.to(along.dtype).clamp_min(0.0))


def _unit_rays(points_cam: Tensor) -> Tensor:
    """Unit viewing rays x / |x| (..., 3) of camera-frame points (a zero vector stays zero, finite gradient)."""
    nrm = safe_norm(points_cam, dim=-1)[..., None]
    return points_cam / torch.where(nrm > 0, nrm, torch.ones_like(nrm))


def ray_velocity_loss(points_cam: Tensor) -> Tensor:  # (..., T, 3)
    """Shape of Motion's shipped ``compute_z_acc_loss``: squared velocity along the viewing ray.

    ``points_cam`` (..., T, 3): each point's positions at T consecutive times, all in the SAME camera
    frame (OpenCV axes, camera centre at the origin), as for :func:`z_acceleration_loss`. For every middle
    time t, ``r_t = x[t] / |x[t]|`` and

        loss = mean_t (((x[t] - x[t-1]) . r_t)^2) + mean_t (((x[t+1] - x[t]) . r_t)^2),

    the means running over the points and the T-2 middle times. It penalises motion in depth (not only
    its change), which is what SoM trains with although its name says acceleration. Units: scene
    units^2 per frame^2. T < 3: a differentiable 0.
    """
    fn = "ray_velocity_loss"
    check_tensor("points_cam", points_cam, fn=fn)
    if points_cam.dim() < 2 or points_cam.shape[-1] != 3:
        raise ValueError(f"{fn}: points_cam must be (..., T, 3), got shape {tuple(points_cam.shape)}")
    if points_cam.shape[-2] < 3:
        return zero_like_loss(points_cam)
    mid = points_cam[..., 1:-1, :]
    ray = _unit_rays(mid)
    before = ((mid - points_cam[..., :-2, :]) * ray).sum(-1)  # (..., T-2)
    after = ((points_cam[..., 2:, :] - mid) * ray).sum(-1)
    return (before**2).mean() + (after**2).mean()
