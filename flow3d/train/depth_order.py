"""Depth-order supervision: flow neighbours, pixel pairs, and the depth-order loss terms.

Per training frame t (train split only) the neighbour is the training frame ``stride`` places later in the
split (earlier at the end): held-out images never enter the flow. Flow t -> neighbour and its
forward-backward mask come from :class:`flow3d.flow.FlowCache`, computed once when training starts.

Terms (registered in :mod:`flow3d.train.terms`; weight 0 = not computed):

* ``hinge_ordinal`` — pairs sampled in frame t among fb-consistent pixels, order from the prior of t (or
  the detached rendering of t), carried by flow into the neighbour, hinge on the neighbour's rendered depth
  at the sub-pixel positions (seed 004 "Ours").
* ``modgs_ordinal`` — same-frame pairs, order from the prior, tanh loss on rendered depth (MoDGS).
* ``pearson`` — 1 - Pearson correlation of rendered and prior disparity per frame.
* ``depth_consistency`` (seed 001), ``g2_monodepth`` (seed 002), ``scale_adaptive`` (seed 003), all on
  rendered vs prior disparity; ``depth_aware_scale`` (seed 000) on the rendered foreground mask.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from flow3d import losses as L
from flow3d.data import safe_inverse
from flow3d.flow import FlowCache, sample_pixel_pairs
from flow3d.geometry import bilinear_sample
from flow3d.log import get_logger

logger = get_logger(__name__)


@dataclass
class DepthOrderConfig:
    """Options of the depth-order terms (their weights are the ``w_*`` fields of the loss config)."""

    num_pairs: int = 4096
    """Pixel pairs sampled per frame for the hinge and MoDGS terms."""
    strategy: Literal["global", "local"] = "global"
    """'global': both points uniform over the valid pixels; 'local': the second within ``local_radius``."""
    local_radius: int = 16
    """Radius in pixels of the 'local' strategy."""
    region: Literal["all", "fg", "bg"] = "all"
    """Where pairs are drawn: every valid pixel, the foreground mask or the background."""
    min_rel_diff: float = 0.05
    """Pairs whose prior values differ by less than this fraction (|a-b| / max(|a|, |b|)) are dropped:
    their order is unreliable."""
    neighbor_stride: int = 1
    """k: the neighbour of a training frame is the training frame k places later in the split."""
    flow_backend: Literal["dis", "farneback", "raft"] = "dis"
    """Optical-flow backend for the neighbour flows (raft needs ``flow_options`` with local weights)."""
    fb_rule: Literal["squared", "lenient", "fixed"] = "squared"
    """Forward-backward consistency rule that decides which pixels carry pairs."""
    flow_cache_dir: str = ""
    """Where flows are cached ('' = WORK_DIR/flow_cache)."""
    order_source: Literal["prior", "render"] = "prior"
    """Hinge: order of each pair from the prior of frame t, or from the detached rendering of frame t."""
    hinge_margin: float = 0.01
    """Hinge margin on depth differences divided by the median rendered depth of the sampled points
    (scale-free); a negative value is the seed's tolerance form |min(0, eps + s * diff)| with eps = -margin."""
    hinge_normalize: Literal["median", "none"] = "median"
    """Divide depth differences by the median rendered depth of the pairs' points ('none': raw units)."""
    modgs_alpha: float = 100.0
    """MoDGS: tanh sharpness on raw rendered depth differences."""
    modgs_min_gap_frac: float = 0.1
    """MoDGS: pairs whose prior depths differ by less than this fraction of the prior depth's range (max -
    min over every allowed pixel of the frame, as MoDGS) are dropped."""
    modgs_num_pairs: int = 200000
    """MoDGS: pixel pairs per frame, at most one per allowed pixel (MoDGS pairs two random permutations of
    the masked pixels, truncated to 200000)."""
    pearson_patch_size: int = 0
    """Pearson: 0 = whole image; otherwise the mean over random square patches of this size."""
    pearson_num_patches: int = 64
    """Pearson: number of patches when patch_size > 0."""
    consistency_align: Literal["none", "scale", "scale_shift"] = "scale_shift"
    """Depth consistency: per-image least-squares alignment of rendered to prior disparity first (the prior
    has an unknown scale and shift)."""
    depth_aware_warmup: int = 100
    """Depth-aware scale: switched on after this many steps (the seed's warm-up)."""


def neighbor_map(train_ids: Tensor, stride: int) -> dict[int, int]:
    """frame -> its neighbour frame, both in the training split."""
    ids = train_ids.tolist()
    n = len(ids)
    out = {}
    for i, t in enumerate(ids):
        j = i + stride if i + stride < n else i - stride
        if 0 <= j < n and j != i:
            out[t] = ids[j]
    return out


@dataclass
class NeighborFlow:
    """Flow of one training frame to its neighbour, kept on the CPU: pairs are sampled there with the
    trainer's CPU generator (the same pairs on any device), then moved to the renders' device."""

    next_t: int
    flow: Tensor  # (H, W, 2) pixels t -> next_t
    valid: Tensor  # (H, W) bool, fb-consistent
    conf: Tensor  # (H, W) float in [0, 1]


def prepare_neighbor_flows(seq, cfg: DepthOrderConfig, work_dir: Path) -> dict[int, NeighborFlow]:
    cache_dir = Path(cfg.flow_cache_dir) if cfg.flow_cache_dir else Path(work_dir) / "flow_cache"
    cache = FlowCache(cache_dir, backend=cfg.flow_backend, fb_rule=cfg.fb_rule)
    images = (seq.images.clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    out = {}
    kept = []
    for t, n in tqdm(neighbor_map(seq.train_ids, cfg.neighbor_stride).items(), desc="flow", leave=False):
        res = cache.get(t, n, images[t], images[n])
        out[t] = NeighborFlow(
            n,
            torch.from_numpy(np.ascontiguousarray(res.flow)),
            torch.from_numpy(np.ascontiguousarray(res.valid)),
            torch.from_numpy(np.ascontiguousarray(res.conf)).float(),
        )
        kept.append(float(res.valid.mean()))
    if kept:
        logger.info("neighbour flows: %d pairs, fb-consistent pixels %.1f%% on average (min %.1f%%)",
                    len(kept), 100 * np.mean(kept), 100 * np.min(kept))
    return out


def region_mask(fg_mask: Tensor, region: str) -> Tensor | None:
    if region == "all":
        return None
    return fg_mask > 0.5 if region == "fg" else fg_mask <= 0.5


def _values_at(img: Tensor, xy: Tensor) -> Tensor:
    """img (H, W) at integer pixels xy (P, 2) long (moved to the image's device)."""
    xy = xy.to(img.device)
    return img[xy[:, 1], xy[:, 0]]


def _note_empty(ctx, term: str, t: int) -> None:
    seen = ctx.extras.setdefault("empty_pairs_logged", set())
    if (term, t) not in seen:
        seen.add((term, t))
        logger.warning("%s: frame %d has no valid pixel pairs (no fb-consistent pixels with a reliable prior "
                       "order in the region); it is skipped", term, t)


def hinge_ordinal_term(ctx) -> Tensor:
    b, cfg = ctx.batch, ctx.cfg.order
    flows, next_out = ctx.extras["neighbor_flows"], ctx.extras["next_out"]
    pa, pb, order = [], [], []
    for i, t in enumerate(b.ts.tolist()):
        nf = flows.get(t)
        if nf is None:
            continue
        valid = nf.valid & b.prior_valid[i].cpu() & b.valid_masks[i].cpu()
        pairs = sample_pixel_pairs(
            valid, cfg.num_pairs, strategy=cfg.strategy, radius=cfg.local_radius,
            region=region_mask(b.fg_masks[i].cpu(), cfg.region), prior=b.prior_disp[i].cpu(), prior_kind="disparity",
            min_rel_diff=cfg.min_rel_diff, flow=nf.flow, generator=ctx.generator,
        )
        if len(pairs) == 0:
            _note_empty(ctx, "hinge_ordinal", t)
            continue
        if cfg.order_source == "render":
            d_t = ctx.out.depth[i, ..., 0].detach()
            o = L.depth_order_sign(_values_at(d_t, pairs.xy_a), _values_at(d_t, pairs.xy_b), "depth", cfg.min_rel_diff)
        else:
            o = pairs.order
        d_next = next_out.depth[i, ..., 0][None, None]
        pa.append(bilinear_sample(d_next, pairs.xy_a_next[None].to(d_next))[0, :, 0])
        pb.append(bilinear_sample(d_next, pairs.xy_b_next[None].to(d_next))[0, :, 0])
        order.append(o.to(device=d_next.device, dtype=torch.int8))
    if not pa:
        return next_out.depth.sum() * 0.0
    return L.hinge_ordinal_loss(torch.cat(pa), torch.cat(pb), torch.cat(order),
                                margin=cfg.hinge_margin, normalize=cfg.hinge_normalize)


def modgs_ordinal_term(ctx) -> Tensor:
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
            allowed, min(n, cfg.modgs_num_pairs), strategy=cfg.strategy, radius=cfg.local_radius,
            generator=ctx.generator,
        )
        if len(pairs) == 0:
            _note_empty(ctx, "modgs_ordinal", t)
            continue
        d = ctx.out.depth[i, ..., 0]
        prior_depth, _ = safe_inverse(b.prior_disp[i])
        allowed_depth = prior_depth[allowed.to(prior_depth.device)]
        vals.append(L.modgs_ordinal_loss(
            _values_at(d, pairs.xy_a), _values_at(d, pairs.xy_b),
            _values_at(prior_depth, pairs.xy_a), _values_at(prior_depth, pairs.xy_b),
            prior_kind="depth", pred_kind="depth", alpha=cfg.modgs_alpha, min_gap_frac=cfg.modgs_min_gap_frac,
            prior_range=allowed_depth.max() - allowed_depth.min(),
        ))
    if not vals:
        return ctx.out.depth.sum() * 0.0
    return torch.stack(vals).mean()


def pearson_term(ctx) -> Tensor:
    cfg = ctx.cfg.order
    patch = cfg.pearson_patch_size if cfg.pearson_patch_size > 0 else None
    return L.pearson_depth_loss(ctx.pred_disp(), ctx.batch.prior_disp, ctx.depth_mask(), patch_size=patch,
                                num_patches=cfg.pearson_num_patches, generator=ctx.generator)


def depth_consistency_term(ctx) -> Tensor:
    b = ctx.batch
    flows = ctx.extras.get("neighbor_flows", {})
    conf = torch.stack([
        flows[t].conf.to(b.prior_disp) if t in flows else torch.ones_like(b.prior_disp[0]) for t in b.ts.tolist()
    ])[:, None]
    valid = ctx.depth_mask()[:, None]
    d_tgt = torch.where(valid, b.prior_disp[:, None], torch.full_like(b.prior_disp[:, None], float("nan")))
    terms = L.depth_consistency_loss(
        ctx.pred_disp()[:, None], d_tgt, b.fg_masks[:, None], conf * valid, align=ctx.cfg.order.consistency_align,
    )
    return terms.total


def g2_monodepth_term(ctx) -> Tensor:
    total, _ = L.g2_monodepth_loss(ctx.pred_disp()[:, None], ctx.batch.prior_disp[:, None], ctx.depth_mask()[:, None].float())
    return total


def scale_adaptive_term(ctx) -> Tensor:
    total, _ = L.scale_adaptive_loss(ctx.pred_disp()[:, None], ctx.batch.prior_disp[:, None],
                                     ctx.depth_mask()[:, None].float(), use_inv_depth=True)
    return total


def calibrate_k_obj(seq) -> float:
    """Seed 000: k_obj from the training frames' foreground masks and prior disparity (inv_depth mode)."""
    ids = seq.train_ids
    masks = seq.fg_masks[ids][:, None]
    disp = torch.where(seq.prior_valid[ids], seq.prior_disp[ids], torch.zeros_like(seq.prior_disp[ids]))[:, None]
    k = L.estimate_k_obj_from_dataset(masks, disp, seq.Ks[ids, 0, 0], depth_mode="inv_depth")
    logger.info("depth-aware scale: k_obj = %.4g calibrated on %d training frames", float(k), len(ids))
    return float(k)


def depth_aware_scale_term(ctx) -> Tensor:
    b = ctx.batch
    if ctx.extras.get("step", 0) < ctx.cfg.order.depth_aware_warmup:
        return ctx.out.fg.sum() * 0.0
    disp = torch.where(b.prior_valid, b.prior_disp, torch.zeros_like(b.prior_disp))[:, None]
    loss, _ = L.depth_aware_scale_loss(ctx.out.fg.permute(0, 3, 1, 2), disp, b.Ks[:, 0, 0], ctx.extras["k_obj"],
                                       depth_mode="inv_depth")
    return loss


TERMS = {
    "hinge_ordinal": hinge_ordinal_term,
    "modgs_ordinal": modgs_ordinal_term,
    "pearson": pearson_term,
    "depth_consistency": depth_consistency_term,
    "g2_monodepth": g2_monodepth_term,
    "scale_adaptive": scale_adaptive_term,
    "depth_aware_scale": depth_aware_scale_term,
}
NEEDS_FLOW = {"hinge_ordinal", "depth_consistency"}
NEEDS_NEIGHBOR_RENDER = {"hinge_ordinal"}
