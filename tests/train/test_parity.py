"""Parity of ``som_baseline`` with Shape of Motion (trainer ``compute_losses`` and ``loss_utils.py`` at commit
697d462f) and of the MoDGS term with MoDGS (``get_depth_order_loss``, "tanh_threshold", commit 245be17d).

Every expected value is computed by hand from the sources' formulas (written out in each test), on inputs
small enough to check on paper; the README's convention table lists the same conventions.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from flow3d.config import LossConfig, TrainConfig, apply_overrides, load_preset
from flow3d.scene.gaussians import GaussianParams
from flow3d.scene.model import SceneModel
from flow3d.scene.motion import MotionBases, matrix_to_rot6d
from flow3d.train import terms as T
from flow3d.train.context import StepContext

# Shape of Motion's LossesConfig (flow3d/configs.py) -> our weight fields
SOM_WEIGHTS = {
    "w_rgb": 1.0,
    "w_depth_reg": 0.5,
    "w_mapped_depth": 0.1,  # SoM: w_depth_const
    "w_depth_grad": 1.0,
    "w_track": 2.0,
    "w_mask": 1.0,
    "w_smooth_bases": 0.1,
    "w_smooth_tracks": 2.0,
    "w_scale_var": 0.01,
    "w_z_accel": 1.0,
}


def _val(x: torch.Tensor) -> float:
    return float(x.detach())


def _ctx(batch=None, out=None, model=None, cfg=None, **kw) -> StepContext:
    return StepContext(batch, out, model, cfg or LossConfig(), torch.Generator().manual_seed(0), **kw)


def test_som_baseline_preset_is_shape_of_motions_published_configuration():
    cfg = apply_overrides(TrainConfig(), load_preset("som_baseline")).losses
    weights = T.check_weights(cfg)
    for t in T.TERMS:
        assert weights[t.name] == SOM_WEIGHTS.get(t.weight, 0.0), t.name
    assert cfg.depth_trim_quantile == 0.98 and cfg.track_trim_quantile == 0.98  # SoM's masked_l1_loss calls
    assert cfg.depth_grad_trim_quantile == 0.95  # SoM's trainer passes 0.95 to compute_gradient_loss
    assert cfg.z_accel_form == "ray_velocity"  # SoM's shipped compute_z_acc_loss
    # MoDGS's published setting (configs/*.ini): lambda_depthOderLoss = 0.1, Alpha_tanh = 100, pairs 200000
    modgs = apply_overrides(TrainConfig(), load_preset("ordinal")).losses
    assert modgs.w_modgs_ordinal == 0.1 and modgs.order.modgs_alpha == 100.0 and modgs.order.modgs_num_pairs == 200000
    assert modgs.order.modgs_min_gap_frac == 0.1  # interval = (max - min) / 10


def test_track_term_averages_the_two_coordinates_and_trims_like_som():
    # rendered position (1, 2, 4) in the target camera everywhere; K = [[10, 0, 5], [0, 10, 5]] -> (7.5, 10)
    H, W = 10, 20
    out = SimpleNamespace(tracks_3d=torch.tensor([1.0, 2.0, 4.0]).expand(1, H, W, 1, 3), alpha=torch.ones(1, H, W, 1))
    K = torch.tensor([[[10.0, 0, 5], [0, 10.0, 5], [0, 0, 1]]])
    target_xy = torch.tensor([[[[10.5, 9.0]], [[9.5, 16.0]]]])  # errors (3, 1) and (2, 6): means 2 and 4
    batch = SimpleNamespace(
        query_xy=torch.tensor([[[3.0, 4.0], [5.0, 6.0]]]),
        target_Ks=K,
        target_xy=target_xy,
        img_wh=(W, H),
        target_weight=torch.tensor([[[1.0], [0.5]]]),
        ts=torch.tensor([0]),
        target_ts=torch.tensor([2]),
    )
    cfg = LossConfig(track_trim_quantile=1.0)
    # SoM: masked_l1_loss(pred, gt, mask=w) = sum(mean(|dx|, |dy|) * w) / sum(w), then / max(H, W)
    want = (2.0 * 1.0 + 4.0 * 0.5) / 1.5 / 20
    assert _val(T.term("track").fn(_ctx(batch, out, cfg=cfg))) == pytest.approx(want)
    # SoM's quantile 0.98 of [2, 4] is 3.96: the point with error 4 is trimmed
    assert _val(T.term("track").fn(_ctx(batch, out))) == pytest.approx(2.0 / 20)


def _model(transls: list[list[float]], means: list[list[float]], log_scales_fg=None, log_scales_bg=None) -> SceneModel:
    """One motion basis with identity rotations and the given translations (T, 3)."""
    tr = torch.tensor(transls, dtype=torch.float32)[None]  # (1, T, 3)
    Tn = tr.shape[1]
    bases = MotionBases(matrix_to_rot6d(torch.eye(3).expand(1, Tn, 3, 3)), tr)
    N = len(means)
    scales = torch.exp(torch.tensor(log_scales_fg)) if log_scales_fg is not None else torch.full((N, 3), 0.1)
    fg = GaussianParams(
        torch.tensor(means, dtype=torch.float32),
        torch.tensor([1.0, 0, 0, 0]).expand(N, 4),
        scales,
        torch.full((N,), 0.5),
        torch.full((N, 3), 0.5),
        torch.zeros(N, 1),
    )
    bg = None
    if log_scales_bg is not None:
        M = len(log_scales_bg)
        bg = GaussianParams(
            torch.zeros(M, 3),
            torch.tensor([1.0, 0, 0, 0]).expand(M, 4),
            torch.exp(torch.tensor(log_scales_bg)),
            torch.full((M,), 0.5),
            torch.full((M, 3), 0.5),
        )
    return SceneModel(fg, bases, bg)


def test_track_smoothness_has_soms_half():
    # x(t) = x0 + (0, 0, 0), (1, 0, 0), (4, 0, 0): acceleration (2, 0, 0); SoM: 0.5 * ||2 x1 - x0 - x2||
    model = _model([[0, 0, 0], [1, 0, 0], [4, 0, 0]], [[0.0, 0, 3], [1.0, 1, 4]])
    assert _val(T.term("smooth_tracks").fn(_ctx(model=model))) == pytest.approx(0.5 * 2.0)


@pytest.mark.parametrize("cam_z", [0.0, 2.0])
def test_z_accel_is_soms_shipped_ray_velocity(cam_z):
    # a Gaussian at (3, 0, 4) moving (0, 0, 0) -> (0, 0, 1) -> (0, 0, 3); middle position (3, 0, 5)
    model = _model([[0, 0, 0], [0, 0, 1], [0, 0, 3]], [[3.0, 0, 4]])
    w2c = torch.eye(4)
    w2c[2, 3] = cam_z  # the camera moved back along z: the ray to (3, 0, 5) changes
    r = torch.tensor([3.0, 0.0, 5.0 + cam_z]) / math.hypot(3.0, 5.0 + cam_z)
    # SoM compute_z_acc_loss: mean(((x1 - x0) . r)^2) + mean(((x2 - x1) . r)^2), r from the camera centre to x1
    want = float(r[2]) ** 2 * (1.0**2 + 2.0**2)
    ctx = _ctx(model=model, all_w2cs=w2c.expand(3, 4, 4))
    assert _val(T.term("z_accel").fn(ctx)) == pytest.approx(want)
    accel = _ctx(model=model, all_w2cs=w2c.expand(3, 4, 4), cfg=LossConfig(z_accel_form="ray_acceleration"))
    assert _val(T.term("z_accel").fn(accel)) == pytest.approx(float(r[2]) * 1.0)  # |(0, 0, 1) . r|


def test_depth_gradient_trims_at_soms_095():
    # one row of 101 pixels: x-differences of the residual are 0, 1, ..., 99 (prior flat)
    pred = torch.cumsum(torch.cat([torch.zeros(1), torch.arange(100.0)]), 0)[None, None]  # (1, 1, 101)
    pred_disp = pred.double()
    batch = SimpleNamespace(
        prior_disp=torch.zeros_like(pred_disp),
        prior_valid=torch.ones(1, 1, 101, dtype=torch.bool),
        valid_masks=torch.ones(1, 1, 101, dtype=torch.bool),
    )
    ctx = _ctx(batch, SimpleNamespace(alpha=torch.ones(1, 1, 101, 1)))
    ctx.cache["pred_disp"] = pred_disp
    # quantile 0.95 of 0..99 is 94.05: SoM keeps residuals < 94.05 -> mean of 0..94 = 47 (0.98 would give 48.5)
    assert _val(T.term("depth_grad").fn(ctx)) == pytest.approx(47.0)


def test_scale_variance_is_on_log_scales_of_both_groups():
    # SoM: var(fg.params["scales"], -1).mean() + var(bg.params["scales"], -1).mean() (unbiased variance)
    model = _model(
        [[0.0, 0, 0]] * 3,
        [[0.0, 0, 1], [0.0, 0, 2]],
        log_scales_fg=[[0.0, 1, 2], [1.0, 1, 1]],
        log_scales_bg=[[0.0, 0, 3]],
    )
    want = (1.0 + 0.0) / 2 + 3.0
    assert _val(T.term("scale_var").fn(_ctx(model=model))) == pytest.approx(want)


def test_modgs_term_rules_on_prior_depth_over_all_masked_pixels():
    """Prior depth 2 (left), 5 (right) and 100 (a 2 x 5 patch). MoDGS: interval = (100 - 2) / 10 = 9.8 on
    DEPTH, so 2-5 pairs (gap 3) are dropped and only pairs with the patch count. (On disparity 0.5 / 0.2 /
    0.01 the 2-5 pairs would pass: gap 0.3 > 0.049.) Rendered depth 3 everywhere, 3.01 on the patch:
    each kept pair costs |tanh(100 * 0.01) - 1|."""
    H, W = 12, 16
    depth = torch.full((H, W), 2.0)
    depth[:, W // 2 :] = 5.0
    depth[:2, :5] = 100.0
    rendered = torch.full((H, W), 3.0, dtype=torch.float64)
    rendered[:2, :5] = 3.01
    batch = SimpleNamespace(
        ts=torch.tensor([0]),
        prior_disp=(1.0 / depth)[None],
        prior_valid=torch.ones(1, H, W, dtype=torch.bool),
        valid_masks=torch.ones(1, H, W, dtype=torch.bool),
        fg_masks=torch.zeros(1, H, W),
    )
    out = SimpleNamespace(depth=rendered[None, ..., None])
    loss = T.term("modgs_ordinal").fn(_ctx(batch, out))
    assert float(loss) == pytest.approx(1 - math.tanh(100 * (3.01 - 3.0)), rel=1e-9)
