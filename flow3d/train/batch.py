"""Sampling one training step's frames, target frames and track points from a loaded sequence."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from flow3d.geometry import bilinear_sample


@dataclass
class Batch:
    ts: Tensor  # (B,) frame indices
    w2cs: Tensor  # (B, 4, 4)
    Ks: Tensor  # (B, 3, 3)
    imgs: Tensor  # (B, H, W, 3)
    fg_masks: Tensor  # (B, H, W)
    valid_masks: Tensor  # (B, H, W) bool
    prior_disp: Tensor  # (B, H, W)
    prior_valid: Tensor  # (B, H, W) bool
    target_ts: Tensor  # (B_t,)
    target_w2cs: Tensor  # (B_t, 4, 4)
    target_Ks: Tensor  # (B_t, 3, 3)
    query_xy: Tensor  # (B, P, 2) track positions in frame ts[b]
    query_valid: Tensor  # (B, P) bool (False for padding)
    target_xy: Tensor  # (B, P, B_t, 2) the same tracks in the target frames
    target_weight: Tensor  # (B, P, B_t) visibility x confidence (0 where occluded or padding)
    target_prior_disp: Tensor  # (B, P, B_t) target frames' prior disparity at target_xy
    target_prior_valid: Tensor  # (B, P, B_t) bool

    @property
    def img_wh(self) -> tuple[int, int]:
        return self.imgs.shape[2], self.imgs.shape[1]


def _choice(ids: Tensor, n: int, generator: torch.Generator) -> Tensor:
    if n <= len(ids):
        return ids[torch.randperm(len(ids), generator=generator)[:n]]
    return ids[torch.randint(len(ids), (n,), generator=generator)]


@dataclass
class UsableTracks:
    """Which tracks a step may sample in each frame: visible there, with a query frame in the training split.

    Built once per sequence (:meth:`of`) and reused every step."""

    mask: Tensor  # (M, T) bool
    per_frame: list[Tensor]  # T entries: (n_t,) indices of the usable tracks in frame t

    @classmethod
    def of(cls, seq) -> "UsableTracks":
        train = torch.zeros(seq.tracks_visible.shape[1], dtype=torch.bool)
        train[seq.train_ids] = True
        mask = seq.tracks_visible & train[seq.tracks_query_t][:, None]  # query frame in the train split too
        return cls(mask=mask, per_frame=[torch.nonzero(mask[:, t])[:, 0] for t in range(mask.shape[1])])


def sample_batch(
    seq,
    batch_size: int,
    num_targets: int,
    num_track_samples: int,
    generator: torch.Generator,
    usable: UsableTracks | None = None,
) -> Batch:
    """Frames and targets are drawn from the training split; track points are the tracks visible in each
    frame (all query frames' tracks count), sampled without replacement where there are enough.

    ``usable``: :meth:`UsableTracks.of` ``(seq)``, built here when not given (pass it to avoid the rebuild)."""
    if usable is None:
        usable = UsableTracks.of(seq)
    ts = _choice(seq.train_ids, batch_size, generator)
    target_ts = _choice(seq.train_ids, num_targets, generator)
    P = num_track_samples
    qxy, qvalid = [], []
    for t in ts.tolist():
        vis = usable.per_frame[t]
        if len(vis) == 0:
            idx = torch.zeros(P, dtype=torch.long)
            ok = torch.zeros(P, dtype=torch.bool)
        else:
            idx = _choice(vis, P, generator)
            ok = torch.ones(P, dtype=torch.bool)
        qxy.append(idx)
        qvalid.append(ok)
    track_idx = torch.stack(qxy)  # (B, P)
    query_valid = torch.stack(qvalid)
    query_xy = seq.tracks_xy[track_idx, ts[:, None]]  # (B, P, 2)
    target_xy = seq.tracks_xy[track_idx][:, :, target_ts]  # (B, P, B_t, 2)
    vis = usable.mask[track_idx][:, :, target_ts] & query_valid[..., None]
    weight = seq.tracks_conf[track_idx][:, :, target_ts] * vis
    # prior disparity of each target frame at the tracked positions; valid where all four pixels are
    Bt = len(target_ts)
    xy_t = target_xy.permute(2, 0, 1, 3).reshape(Bt, -1, 2)  # (B_t, B*P, 2)
    disp = bilinear_sample(seq.prior_disp[target_ts][:, None], xy_t)[..., 0]
    dvalid = bilinear_sample(seq.prior_valid[target_ts][:, None].float(), xy_t)[..., 0] > 0.999
    unflat = lambda x: x.reshape(Bt, len(ts), P).permute(1, 2, 0)  # noqa: E731
    return Batch(
        ts=ts,
        w2cs=seq.w2cs[ts],
        Ks=seq.Ks[ts],
        imgs=seq.images[ts],
        fg_masks=seq.fg_masks[ts],
        valid_masks=seq.valid_masks[ts],
        prior_disp=seq.prior_disp[ts],
        prior_valid=seq.prior_valid[ts],
        target_ts=target_ts,
        target_w2cs=seq.w2cs[target_ts],
        target_Ks=seq.Ks[target_ts],
        query_xy=query_xy,
        query_valid=query_valid,
        target_xy=target_xy,
        target_weight=weight,
        target_prior_disp=unflat(disp),
        target_prior_valid=unflat(dvalid),
    )


def batch_to(batch: Batch, device: torch.device) -> Batch:
    return Batch(**{k: v.to(device) for k, v in batch.__dict__.items()})
