"""Shape of Motion's track loss in ``som_baseline`` (the gap weight exp(-2|dt|/T) and SoM's normalisation),
and the depth_reg differences the README's parity table states (rendered alpha > 0.5, trim population).

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
        query_xy=torch.tensor([[[3.0, 4.0]]]),
        target_Ks=K,
        target_xy=torch.tensor([[[[10.5, 9.0], [11.0, 17.0]]]]),
        img_wh=(W, H),
        target_weight=torch.tensor([[[1.0, 0.5]]]),
        ts=torch.tensor([0]),
        target_ts=torch.tensor([2, 6]),
    )
    ctx = StepContext(batch, out, SimpleNamespace(num_frames=num_frames), cfg, torch.Generator().manual_seed(0))
    return float(T.term("track").fn(ctx))


def test_som_baseline_weights_tracks_by_soms_gap_weight():
    cfg = apply_overrides(TrainConfig(), load_preset("som_baseline")).losses
    assert cfg.track_gap_tau == 0.0 and cfg.track_gap_tau_rel == 0.5
    cfg = apply_overrides(
        TrainConfig(), {"losses": {**load_preset("som_baseline")["losses"], "track_trim_quantile": 1.0}}
    ).losses
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


def _depth_reg(residuals: torch.Tensor, valid: torch.Tensor, alpha: torch.Tensor) -> float:
    """depth_reg on one row of pixels: rendered disparity = prior + residual (prior 1)."""
    from flow3d.train import som_terms

    prior = torch.ones(1, 1, residuals.numel(), dtype=torch.float64)
    batch = SimpleNamespace(
        prior_disp=prior, prior_valid=valid[None, None], valid_masks=torch.ones_like(valid)[None, None]
    )
    ctx = StepContext(
        batch, SimpleNamespace(alpha=alpha[None, None, :, None]), None, LossConfig(), torch.Generator().manual_seed(0)
    )
    ctx.cache["pred_disp"] = prior + residuals[None, None]
    return float(som_terms.depth_reg_term(ctx))


def test_depth_reg_differs_from_som_alpha_and_trim_population():
    """Stated in the parity table: ours needs rendered alpha > 0.5 and trims over the masked pixels only;
    SoM uses every masked pixel whatever its alpha and takes the 0.98 quantile over ALL pixels."""
    r = torch.cat([torch.arange(100.0), torch.full((100,), 1000.0)]).double()
    valid = torch.cat([torch.ones(100, dtype=torch.bool), torch.zeros(100, dtype=torch.bool)])
    ones = torch.ones(200, dtype=torch.float64)
    # ours: quantile 0.98 of 0..99 = 97.02 -> mean of 0..97 = 48.5; SoM: quantile over all 200 residuals is
    # 1000, so 0..99 all stay -> 49.5
    assert _depth_reg(r, valid, ones) == pytest.approx(48.5)
    # a masked pixel with rendered alpha 0.4 (residual 99) does not count for us (SoM counts it)
    alpha = ones.clone()
    alpha[99] = 0.4
    assert _depth_reg(r, valid, alpha) == pytest.approx(sum(range(97)) / 97)  # 0..98 left, 0.98-q 96.04
