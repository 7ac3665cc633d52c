"""Shape of Motion's track loss in ``som_baseline``: the gap weight exp(-2|dt|/T) and SoM's normalisation.

SoM's trainer (commit 697d462f): ``w_interval = exp(-2 * frame_intervals / num_frames)``, ``track_weights =
confidences * w_interval``, ``masked_l1_loss(pred, gt, mask=track_weights, quantile=0.98) / max(H, W)``
with ``masked_l1_loss = sum(mean_xy|pred - gt| * w) / sum(w)`` over the kept rows. Expected values below are
written out from those formulas.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from flow3d.config import LossConfig, TrainConfig, apply_overrides, load_preset
from flow3d.train import terms as T
from flow3d.train.context import StepContext

H, W = 10, 20


def _track_value(cfg: LossConfig, num_frames: int = 8) -> float:
    # rendered target positions (1, 2, 4) and (2, 2, 4) in the target cameras; K f=10, c=5 -> (7.5, 10), (10, 10)
    tracks = torch.tensor([[1.0, 2.0, 4.0], [2.0, 2.0, 4.0]]).expand(1, H, W, 2, 3)
    out = SimpleNamespace(tracks_3d=tracks, alpha=torch.ones(1, H, W, 1))
    K = torch.tensor([[10.0, 0, 5], [0, 10.0, 5], [0, 0, 1]]).expand(2, 3, 3)
    # one query point, targets at t=2 (error mean(|3|, |1|) = 2) and t=6 (error mean(|1|, |7|) = 4)
    batch = SimpleNamespace(
        query_xy=torch.tensor([[[3.0, 4.0]]]), target_Ks=K, target_xy=torch.tensor([[[[10.5, 9.0], [11.0, 17.0]]]]),
        img_wh=(W, H), target_weight=torch.tensor([[[1.0, 0.5]]]), ts=torch.tensor([0]), target_ts=torch.tensor([2, 6]),
    )
    ctx = StepContext(batch, out, SimpleNamespace(num_frames=num_frames), cfg, torch.Generator().manual_seed(0))
    return float(T.term("track").fn(ctx))


def test_som_baseline_weights_tracks_by_soms_gap_weight():
    cfg = apply_overrides(TrainConfig(), load_preset("som_baseline")).losses
    assert cfg.track_gap_tau == 0.0 and cfg.track_gap_tau_rel == 0.5
    cfg = apply_overrides(TrainConfig(), {"losses": {**load_preset("som_baseline")["losses"], "track_trim_quantile": 1.0}}).losses
    w1, w2 = 1.0 * math.exp(-2 * 2 / 8), 0.5 * math.exp(-2 * 6 / 8)  # confidence x exp(-2|dt|/T), T = 8
    want = (2.0 * w1 + 4.0 * w2) / (w1 + w2) / max(H, W)
    assert _track_value(cfg) == pytest.approx(want, rel=1e-6)
    # T enters: with 16 frames the far target weighs more
    w1, w2 = math.exp(-4 / 16), 0.5 * math.exp(-12 / 16)
    assert _track_value(cfg, num_frames=16) == pytest.approx((2.0 * w1 + 4.0 * w2) / (w1 + w2) / 20, rel=1e-6)


def test_gap_tau_in_frames_is_a_weighted_mean():
    """--losses.track-gap-tau: divided by the gap-weighted weights (before: by the un-gapped ones)."""
    cfg = LossConfig(track_trim_quantile=1.0, track_gap_tau=3.0)
    w1, w2 = math.exp(-2 / 3), 0.5 * math.exp(-6 / 3)
    assert _track_value(cfg) == pytest.approx((2.0 * w1 + 4.0 * w2) / (w1 + w2) / 20, rel=1e-6)
    # no gap weight by default: the confidence-weighted mean
    assert _track_value(LossConfig(track_trim_quantile=1.0)) == pytest.approx((2.0 + 4.0 * 0.5) / 1.5 / 20, rel=1e-6)
