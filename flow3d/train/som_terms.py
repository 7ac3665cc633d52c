"""Shape of Motion's loss terms, each ``term(ctx) -> scalar`` (unweighted; the weights are applied by
:mod:`flow3d.train.terms`). Where a term follows SoM's trainer (``compute_losses`` at commit 697d462f) and
where it deliberately does not is listed in the README's convention table."""

from __future__ import annotations

import torch
from torch import Tensor

from flow3d import losses as L
from flow3d.depth import depth_to_disp
from flow3d.geometry import bilinear_sample, project_points, transform_points
from flow3d.train.context import StepContext


def rgb_term(ctx: StepContext) -> Tensor:
    """0.8 L1 + 0.2 (1 - SSIM) over the valid pixels (:func:`flow3d.losses.rgb_loss`)."""
    return L.rgb_loss(ctx.out.img, ctx.batch.imgs, ctx.batch.valid_masks)


def mask_term(ctx: StepContext) -> Tensor:
    b = ctx.batch
    return L.masked_mse_loss(ctx.out.fg[..., 0], b.fg_masks, b.valid_masks.to(b.fg_masks.dtype))


def depth_reg_term(ctx: StepContext) -> Tensor:
    mask = ctx.depth_mask().to(ctx.batch.prior_disp.dtype)
    return L.masked_l1_loss(ctx.pred_disp(), ctx.batch.prior_disp, mask, quantile=ctx.cfg.depth_trim_quantile)


def depth_grad_term(ctx: StepContext) -> Tensor:
    return L.disparity_gradient_loss(
        ctx.pred_disp(), ctx.batch.prior_disp, ctx.depth_mask(), quantile=ctx.cfg.depth_grad_trim_quantile
    )


def _tracks_at_queries(ctx: StepContext) -> Tensor:
    """(B, P, B_t, 3) rendered target positions (target camera frame) at the query pixels, per unit alpha."""
    if "tracks" not in ctx.cache:
        out, b = ctx.out, ctx.batch
        B, H, W, Bt, _ = out.tracks_3d.shape
        maps = torch.cat([out.tracks_3d.reshape(B, H, W, Bt * 3), out.alpha], dim=-1).permute(0, 3, 1, 2)
        vals = bilinear_sample(maps, b.query_xy)  # (B, P, Bt*3 + 1)
        alpha = vals[..., -1:].clamp_min(1e-3)
        ctx.cache["tracks"] = (vals[..., :-1] / alpha).reshape(B, -1, Bt, 3)
    return ctx.cache["tracks"]


def _gap_weight(ctx: StepContext) -> Tensor:
    """(B, 1, B_t) exp(-|t_query - t_target| / tau): tau = ``track_gap_tau`` frames, else
    ``track_gap_tau_rel`` x the number of frames (Shape of Motion: exp(-2|dt|/T), rel 0.5), else ones."""
    b = ctx.batch
    gaps = (b.ts[:, None] - b.target_ts[None, :]).abs().to(b.target_weight.dtype)  # (B, B_t)
    tau = ctx.cfg.track_gap_tau
    if tau <= 0 and ctx.cfg.track_gap_tau_rel > 0:
        tau = ctx.cfg.track_gap_tau_rel * ctx.model.num_frames
    if tau <= 0:
        return torch.ones_like(gaps)[:, None]
    return torch.exp(-gaps / tau)[:, None]


def track_term(ctx: StepContext) -> Tensor:
    """mean(|dx|, |dy|) / max(H, W) of the projected rendered tracks against the 2D tracks, trimmed."""
    b = ctx.batch
    pts = _tracks_at_queries(ctx)  # (B, P, B_t, 3) in target cameras
    B, P, Bt, _ = pts.shape
    eye = torch.eye(4, dtype=pts.dtype, device=pts.device).expand(Bt, 4, 4)
    xy, _ = project_points(pts.permute(2, 0, 1, 3).reshape(Bt, B * P, 3), b.target_Ks, eye)
    xy = xy.reshape(Bt, B, P, 2).permute(1, 2, 0, 3)  # (B, P, B_t, 2)
    W, H = b.img_wh
    # SoM's masked_l1_loss averages the two coordinates: mean(|dx|, |dy|) / max(H, W)
    err = (xy - b.target_xy).abs().mean(-1) / max(H, W)  # (B, P, B_t)
    w = b.target_weight
    if w.sum() == 0:
        return err.sum() * 0.0
    keep = torch.ones_like(w, dtype=torch.bool)
    if ctx.cfg.track_trim_quantile < 1:
        keep = err <= torch.quantile(err[w > 0].detach(), ctx.cfg.track_trim_quantile)
    # the weighted mean, normalised by the weights including the gap weight (SoM's masked_l1_loss): a gap
    # weight changes how the pairs are mixed, not the loss's scale
    w_eff = w * keep * _gap_weight(ctx)
    return (err * w_eff).sum() / w_eff.sum().clamp_min(1e-8)


def mapped_depth_term(ctx: StepContext) -> Tensor:
    b = ctx.batch
    pred_disp, z_ok = depth_to_disp(_tracks_at_queries(ctx)[..., 2])  # (B, P, B_t)
    ok = (b.target_weight > 0) & b.target_prior_valid & z_ok
    return L.masked_l1_loss(pred_disp, b.target_prior_disp, ok.to(pred_disp.dtype))


def smooth_bases_term(ctx: StepContext) -> Tensor:
    p = ctx.model.bases.params
    if p["transls"].shape[1] < 3:
        return p["transls"].sum() * 0.0
    return L.se3_smoothness_loss(p["rots"], p["transls"])


def _fg_sample_triplet(ctx: StepContext) -> tuple[Tensor, Tensor]:
    """Centres (S, 3, 3) of sampled foreground Gaussians at frames t-1, t, t+1, and those frames (3,)."""
    if "triplet" not in ctx.cache:
        model = ctx.model
        T = model.num_frames
        t = int(torch.randint(1, T - 1, (1,), generator=ctx.generator))
        ts = torch.arange(t - 1, t + 2, device=model.fg.get_means().device)
        n = model.num_fg
        sel = torch.randperm(n, generator=ctx.generator)[: ctx.cfg.num_smooth_samples].to(ts.device)
        R, tr = model.bases.compute_transforms(ts, model.fg.get_coefs()[sel])  # only the sampled Gaussians
        # R @ mean as a broadcast product (a batched matmul of S*3 3x3 matrices is slow on the CPU)
        means = (R * model.fg.get_means()[sel][:, None, None, :]).sum(-1) + tr  # (S, 3, 3)
        ctx.cache["triplet"] = (means, ts)
    return ctx.cache["triplet"]


def smooth_tracks_term(ctx: StepContext) -> Tensor:
    if ctx.model.num_frames < 3:
        return ctx.model.fg.get_means().sum() * 0.0
    means, _ = _fg_sample_triplet(ctx)
    return 0.5 * L.motion_acceleration_loss(means)  # SoM's trainer halves this term


def z_accel_term(ctx: StepContext) -> Tensor:
    if ctx.model.num_frames < 3:
        return ctx.model.fg.get_means().sum() * 0.0
    means, ts = _fg_sample_triplet(ctx)
    # all three positions in the middle frame's camera: camera motion is not depth motion
    pts_cam = transform_points(ctx.all_w2cs[ts[1]], means)  # (S, 3, 3)
    if ctx.cfg.z_accel_form == "ray_velocity":
        return L.ray_velocity_loss(pts_cam)
    return L.z_acceleration_loss(pts_cam)


def scale_var_term(ctx: StepContext) -> Tensor:
    # Shape of Motion: on the raw log-scales, foreground and background each averaged, then summed
    groups = [g for g in (ctx.model.fg, ctx.model.bg) if g is not None]
    return sum(g.params["scales"].var(dim=-1).mean() for g in groups)
