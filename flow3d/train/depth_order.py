"""The depth-order loss terms, each ``term(ctx) -> scalar`` (unweighted; listed in the table of
:mod:`flow3d.train.terms`, with what each needs; weight 0 = not computed). Flow neighbours come from
:mod:`flow3d.train.neighbors`, options from :class:`flow3d.config.DepthOrderConfig`.

* ``hinge_ordinal`` — pairs sampled in frame t among fb-consistent valid pixels, order from the prior of t
  (or the detached rendering of t), carried by flow into the neighbour (a pair landing on an ignored pixel
  of the neighbour is dropped), hinge on the neighbour's rendered depth at the sub-pixel positions (seed
  004 "Ours").
* ``modgs_ordinal`` — same-frame pairs, order from the prior, tanh loss on rendered depth (MoDGS).
* ``pearson`` — 1 - Pearson correlation of rendered and prior disparity per frame.
* ``depth_consistency`` (seed 001), ``g2_monodepth`` (seed 002), ``scale_adaptive`` (seed 003), all on
  rendered vs prior disparity; ``depth_aware_scale`` (seed 000) on the rendered foreground mask.
"""

from __future__ import annotations

import torch
from torch import Tensor

from flow3d import losses as L
from flow3d.data import touches_ignored
from flow3d.depth import depth_order_sign, disp_to_depth
from flow3d.flow import sample_pixel_pairs
from flow3d.geometry import bilinear_sample
from flow3d.log import get_logger
from flow3d.train.context import StepContext

logger = get_logger(__name__)


def region_mask(fg_mask: Tensor, region: str) -> Tensor | None:
    if region == "all":
        return None
    return fg_mask > 0.5 if region == "fg" else fg_mask <= 0.5


def _values_at(img: Tensor, xy: Tensor) -> Tensor:
    """Img (H, W) at integer pixels xy (P, 2) long (moved to the image's device)."""
    xy = xy.to(img.device)
    return img[xy[:, 1], xy[:, 0]]


def _note_empty(ctx: StepContext, term: str, t: int) -> None:
    if (term, t) not in ctx.reported:
        ctx.reported.add((term, t))
        logger.warning(
            "%s: frame %d has no valid pixel pairs (no fb-consistent pixels with a reliable prior "
            "order in the region); it is skipped",
            term,
            t,
        )


def _drop_pairs_landing_on_ignored(pairs, next_valid: Tensor | None):
    """Pairs whose flow-carried points both land clear of the neighbour's ignored pixels (the bilinear read
    of the neighbour's rendered depth touches none: :func:`flow3d.data.touches_ignored`)."""
    if next_valid is None or len(pairs) == 0 or bool(next_valid.all()):
        return pairs
    xy = torch.stack([pairs.xy_a_next, pairs.xy_b_next])[:, :, None]  # (2, P, 1, 2)
    hit = touches_ignored(~next_valid[None], xy.reshape(-1, 1, 2)).reshape(2, -1)  # (2, P)
    return pairs.subset(~hit.any(0))


def hinge_ordinal_term(ctx: StepContext) -> Tensor:
    b, cfg = ctx.batch, ctx.cfg.order
    flows, next_out = ctx.neighbor_flows, ctx.next_out
    pa, pb, order = [], [], []
    for i, t in enumerate(b.ts.tolist()):
        nf = flows.get(t)
        if nf is None:
            continue
        valid = nf.valid & b.prior_valid[i].cpu() & b.valid_masks[i].cpu()
        pairs = sample_pixel_pairs(
            valid,
            cfg.num_pairs,
            strategy=cfg.strategy,
            radius=cfg.local_radius,
            region=region_mask(b.fg_masks[i].cpu(), cfg.region),
            prior=b.prior_disp[i].cpu(),
            prior_kind="disparity",
            min_rel_diff=cfg.min_rel_diff,
            flow=nf.flow,
            generator=ctx.generator,
        )
        pairs = _drop_pairs_landing_on_ignored(pairs, nf.next_valid)
        if len(pairs) == 0:
            _note_empty(ctx, "hinge_ordinal", t)
            continue
        if cfg.order_source == "render":
            d_t = ctx.out.depth[i, ..., 0].detach()
            o = depth_order_sign(_values_at(d_t, pairs.xy_a), _values_at(d_t, pairs.xy_b), "depth", cfg.min_rel_diff)
        else:
            o = pairs.order
        d_next = next_out.depth[i, ..., 0][None, None]
        pa.append(bilinear_sample(d_next, pairs.xy_a_next[None].to(d_next))[0, :, 0])
        pb.append(bilinear_sample(d_next, pairs.xy_b_next[None].to(d_next))[0, :, 0])
        order.append(o.to(device=d_next.device, dtype=torch.int8))
    if not pa:
        return next_out.depth.sum() * 0.0
    return L.hinge_ordinal_loss(
        torch.cat(pa), torch.cat(pb), torch.cat(order), margin=cfg.hinge_margin, normalize=cfg.hinge_normalize
    )


def modgs_ordinal_term(ctx: StepContext) -> Tensor:
    """MoDGS's ``get_depth_order_loss`` ("tanh_threshold"): pairs over the allowed pixels, the rule and the
    order on the prior's DEPTH (1 / disparity), the gap threshold from its range over all allowed pixels."""
    b, cfg = ctx.batch, ctx.cfg.order
    vals = []
    for i, t in enumerate(b.ts.tolist()):
        allowed = (b.prior_valid[i] & b.valid_masks[i]).cpu()
        region = region_mask(b.fg_masks[i].cpu(), cfg.region)
        if region is not None:
            allowed = allowed & region
        n = int(allowed.sum())
        pairs = sample_pixel_pairs(
            allowed,
            min(n, cfg.modgs_num_pairs),
            strategy=cfg.strategy,
            radius=cfg.local_radius,
            generator=ctx.generator,
        )
        if len(pairs) == 0:
            _note_empty(ctx, "modgs_ordinal", t)
            continue
        d = ctx.out.depth[i, ..., 0]
        prior_depth, _ = disp_to_depth(b.prior_disp[i], b.prior_valid[i])
        allowed_depth = prior_depth[allowed.to(prior_depth.device)]
        vals.append(
            L.modgs_ordinal_loss(
                _values_at(d, pairs.xy_a),
                _values_at(d, pairs.xy_b),
                _values_at(prior_depth, pairs.xy_a),
                _values_at(prior_depth, pairs.xy_b),
                prior_kind="depth",
                pred_kind="depth",
                alpha=cfg.modgs_alpha,
                min_gap_frac=cfg.modgs_min_gap_frac,
                prior_range=allowed_depth.max() - allowed_depth.min(),
            )
        )
    if not vals:
        return ctx.out.depth.sum() * 0.0
    return torch.stack(vals).mean()


def pearson_term(ctx: StepContext) -> Tensor:
    cfg = ctx.cfg.order
    patch = cfg.pearson_patch_size if cfg.pearson_patch_size > 0 else None
    return L.pearson_depth_loss(
        ctx.pred_disp(),
        ctx.batch.prior_disp,
        ctx.depth_mask(),
        patch_size=patch,
        num_patches=cfg.pearson_num_patches,
        generator=ctx.generator,
    )


def depth_consistency_term(ctx: StepContext) -> Tensor:
    b = ctx.batch
    flows = ctx.neighbor_flows or {}
    conf = torch.stack(
        [flows[t].conf.to(b.prior_disp) if t in flows else torch.ones_like(b.prior_disp[0]) for t in b.ts.tolist()]
    )[:, None]
    valid = ctx.depth_mask()[:, None]
    d_tgt = torch.where(valid, b.prior_disp[:, None], torch.full_like(b.prior_disp[:, None], float("nan")))
    terms = L.depth_consistency_loss(
        ctx.pred_disp()[:, None],
        d_tgt,
        b.fg_masks[:, None],
        conf * valid,
        align=ctx.cfg.order.consistency_align,
    )
    return terms.total


def g2_monodepth_term(ctx: StepContext) -> Tensor:
    total, _ = L.g2_monodepth_loss(
        ctx.pred_disp()[:, None], ctx.batch.prior_disp[:, None], ctx.depth_mask()[:, None].float()
    )
    return total


def scale_adaptive_term(ctx: StepContext) -> Tensor:
    total, _ = L.scale_adaptive_loss(
        ctx.pred_disp()[:, None], ctx.batch.prior_disp[:, None], ctx.depth_mask()[:, None].float(), use_inv_depth=True
    )
    return total


def calibrate_k_obj(seq) -> float:
    """Seed 000: k_obj from the training frames' foreground masks and prior disparity (inv_depth mode)."""
    ids = seq.train_ids
    masks = (seq.fg_masks * seq.valid_masks)[ids][:, None]  # ignored pixels are not part of any object
    disp = seq.prior_disp[ids][:, None]  # 0 where the prior is invalid or ignored (VideoSequence)
    k = L.estimate_k_obj_from_dataset(masks, disp, seq.Ks[ids, 0, 0], depth_mode="inv_depth")
    logger.info("depth-aware scale: k_obj = %.4g calibrated on %d training frames", float(k), len(ids))
    return float(k)


def depth_aware_scale_term(ctx: StepContext) -> Tensor:
    b = ctx.batch
    if ctx.step < ctx.cfg.order.depth_aware_warmup:
        return ctx.out.fg.sum() * 0.0
    # the depth statistic reads only valid prior pixels (NaN elsewhere, also on ignored pixels)
    disp = torch.where(b.prior_valid, b.prior_disp, torch.full_like(b.prior_disp, float("nan")))[:, None]
    loss, _ = L.depth_aware_scale_loss(
        ctx.out.fg.permute(0, 3, 1, 2), disp, b.Ks[:, 0, 0], ctx.k_obj, depth_mode="inv_depth"
    )
    return loss
