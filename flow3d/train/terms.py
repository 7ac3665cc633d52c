"""Loss assembly: a registry of named terms, each computed only when its weight is non-zero.

Every term is a function ``term(ctx) -> scalar tensor`` (unweighted) registered under a name; its
weight is the field ``w_<name>`` of :class:`flow3d.config.LossConfig`. :func:`compute_terms` returns the
dict of the terms that are switched on and :func:`weighted_total` applies the weights in one place.
Values stay tensors; they become floats only when logged. Adding a loss is: write the function,
decorate it with ``@register_term("name")``, add ``w_name`` (default 0) to the config.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import Tensor

from flow3d import losses as L
from flow3d.geometry import bilinear_sample, project_points, transform_points
from flow3d.losses.photometric import ssim_map
from flow3d.train.batch import Batch

TermFn = Callable[["StepContext"], Tensor]
TERMS: dict[str, TermFn] = {}


def register_term(name: str) -> Callable[[TermFn], TermFn]:
    def deco(fn: TermFn) -> TermFn:
        if name in TERMS:
            raise ValueError(f"loss term {name!r} is registered twice")
        TERMS[name] = fn
        return fn

    return deco


@dataclass
class StepContext:
    """What a term may read: the batch, the renders, the model, the loss options, and a sampler."""

    batch: Batch
    out: object  # flow3d.scene.model.RenderOutput
    model: object  # flow3d.scene.model.SceneModel
    cfg: object  # flow3d.config.LossConfig
    generator: torch.Generator
    extras: dict = field(default_factory=dict)  # per-step inputs of optional terms (e.g. flow pairs)
    cache: dict = field(default_factory=dict)

    def pred_disp(self) -> Tensor:
        """(B, H, W) rendered disparity 1 / expected depth (0 where depth is not positive)."""
        if "pred_disp" not in self.cache:
            depth = self.out.depth[..., 0]
            ok = depth > 1e-6
            self.cache["pred_disp"] = torch.where(ok, 1.0 / torch.where(ok, depth, torch.ones_like(depth)), torch.zeros_like(depth))
        return self.cache["pred_disp"]

    def depth_mask(self) -> Tensor:
        """(B, H, W) pixels where rendered and prior disparity may be compared."""
        b = self.batch
        return b.prior_valid & b.valid_masks & (self.out.alpha[..., 0] > 0.5)


def weights_of(cfg) -> dict[str, float]:
    return {name: float(getattr(cfg, f"w_{name}", 0.0)) for name in TERMS}


def compute_terms(ctx: StepContext, weights: dict[str, float]) -> dict[str, Tensor]:
    """Unweighted values of the terms whose weight is non-zero."""
    return {name: fn(ctx) for name, fn in TERMS.items() if weights.get(name, 0.0) != 0.0}


def weighted_total(terms: dict[str, Tensor], weights: dict[str, float]) -> Tensor:
    vals = [weights[name] * value for name, value in terms.items()]
    if not vals:
        raise ValueError("every loss weight is zero: nothing to optimise")
    return torch.stack(vals).sum()


# ------------------------------------------------------------------------------------ Shape of Motion


@register_term("rgb")
def rgb_term(ctx: StepContext) -> Tensor:
    b, img = ctx.batch, ctx.out.img
    valid = b.valid_masks[..., None].to(img.dtype)
    l1 = L.masked_l1_loss(img, b.imgs, valid.expand_as(img))
    ssim = ssim_map(img.permute(0, 3, 1, 2), b.imgs.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
    dssim = ((1 - ssim) * valid).sum() / (valid.sum() * 3).clamp_min(1)
    return 0.8 * l1 + 0.2 * dssim


@register_term("mask")
def mask_term(ctx: StepContext) -> Tensor:
    b = ctx.batch
    return L.masked_mse_loss(ctx.out.fg[..., 0], b.fg_masks, b.valid_masks.to(b.fg_masks.dtype))


@register_term("depth_reg")
def depth_reg_term(ctx: StepContext) -> Tensor:
    mask = ctx.depth_mask().to(ctx.batch.prior_disp.dtype)
    return L.masked_l1_loss(ctx.pred_disp(), ctx.batch.prior_disp, mask, quantile=ctx.cfg.depth_trim_quantile)


@register_term("depth_grad")
def depth_grad_term(ctx: StepContext) -> Tensor:
    return L.disparity_gradient_loss(ctx.pred_disp(), ctx.batch.prior_disp, ctx.depth_mask(),
                                     quantile=ctx.cfg.depth_grad_trim_quantile)


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
    b = ctx.batch
    gaps = (b.ts[:, None] - b.target_ts[None, :]).abs().to(b.target_weight.dtype)  # (B, B_t)
    if ctx.cfg.track_gap_tau <= 0:
        return torch.ones_like(gaps)[:, None]
    return torch.exp(-gaps / ctx.cfg.track_gap_tau)[:, None]  # (B, 1, B_t)


@register_term("track")
def track_term(ctx: StepContext) -> Tensor:
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
    keep = err <= torch.quantile(err[w > 0].detach(), ctx.cfg.track_trim_quantile) if ctx.cfg.track_trim_quantile < 1 else torch.ones_like(w, dtype=torch.bool)
    w_eff = w * keep
    # divide by the visible weight, not the gap-weighted one, so the gap weight is not cancelled out
    return (err * w_eff * _gap_weight(ctx)).sum() / w_eff.sum().clamp_min(1e-8)


@register_term("mapped_depth")
def mapped_depth_term(ctx: StepContext) -> Tensor:
    b = ctx.batch
    z = _tracks_at_queries(ctx)[..., 2]
    ok = (b.target_weight > 0) & b.target_prior_valid & (z > 1e-3)
    pred_disp = 1.0 / torch.where(ok, z, torch.ones_like(z))
    return L.masked_l1_loss(pred_disp, b.target_prior_disp, ok.to(z.dtype))


@register_term("smooth_bases")
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
        R, tr = model.bases.compute_transforms(ts, model.fg.get_coefs())
        n = model.num_fg
        sel = torch.randperm(n, generator=ctx.generator)[: ctx.cfg.num_smooth_samples].to(ts.device)
        means = torch.einsum("nbij,nj->nbi", R[sel], model.fg.get_means()[sel]) + tr[sel]
        ctx.cache["triplet"] = (means, ts)
    return ctx.cache["triplet"]


@register_term("smooth_tracks")
def smooth_tracks_term(ctx: StepContext) -> Tensor:
    if ctx.model.num_frames < 3:
        return ctx.model.fg.get_means().sum() * 0.0
    means, _ = _fg_sample_triplet(ctx)
    return 0.5 * L.motion_acceleration_loss(means)  # SoM's trainer halves this term


@register_term("z_accel")
def z_accel_term(ctx: StepContext) -> Tensor:
    if ctx.model.num_frames < 3:
        return ctx.model.fg.get_means().sum() * 0.0
    means, ts = _fg_sample_triplet(ctx)
    # all three positions in the middle frame's camera: camera motion is not depth acceleration
    pts_cam = transform_points(ctx.extras["all_w2cs"][ts[1]], means)  # (S, 3, 3)
    if ctx.cfg.z_accel_form == "ray_velocity":
        return L.ray_velocity_loss(pts_cam)
    return L.z_acceleration_loss(pts_cam)


@register_term("scale_var")
def scale_var_term(ctx: StepContext) -> Tensor:
    # Shape of Motion: on the raw log-scales, foreground and background each averaged, then summed
    groups = [g for g in (ctx.model.fg, ctx.model.bg) if g is not None]
    return sum(g.params["scales"].var(dim=-1).mean() for g in groups)


# ------------------------------------------------------------------------- depth-order supervision

from flow3d.train import depth_order as _depth_order  # noqa: E402

for _name, _fn in _depth_order.TERMS.items():
    register_term(_name)(_fn)
