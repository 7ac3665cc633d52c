"""Depth-aware scale loss (seed 000)."""

from __future__ import annotations

import math

import pytest
import torch

from flow3d.losses import depth_aware_scale_loss, estimate_k_obj_from_dataset, focal_mm_to_px


def _block_mask(B=2, H=12, W=12, side=(4, 6), dtype=torch.float64):
    m = torch.zeros(B, 1, H, W, dtype=dtype)
    for b in range(B):
        m[b, 0, 1 : 1 + side[b], 2 : 2 + side[b]] = 1.0
    return m


class TestFocal:
    def test_hand_value(self):
        assert float(focal_mm_to_px(35.0, 1920, 36.0)) == pytest.approx(35.0 / 36.0 * 1920)
        f = focal_mm_to_px(torch.tensor([24.0, 50.0]), torch.tensor([1000.0, 2000.0]), 36.0)
        torch.testing.assert_close(f, torch.tensor([24.0 / 36 * 1000, 50.0 / 36 * 2000]))

    def test_bad_sensor(self):
        with pytest.raises(ValueError, match="sensor_width_mm must be > 0"):
            focal_mm_to_px(35.0, 1920, 0.0)


class TestDepthAwareScaleLoss:
    def test_hand_value_inv_depth(self):
        # 4x4 block: s_pred = 4; inverse depth 0.5, f = 100, k = 0.1 -> s_exp = 5.
        m = _block_mask(B=1, side=(4,))
        depth = torch.full_like(m, 0.5)
        loss, info = depth_aware_scale_loss(m, depth, 100.0, 0.1)
        eps = 1e-6
        assert float(loss) == pytest.approx(math.log((4 + eps) / (5 + eps)) ** 2, rel=1e-9)
        assert info.s_pred.shape == (1, 1, 1, 1) and float(info.s_pred) == pytest.approx(4.0)
        assert float(info.s_exp) == pytest.approx(5.0) and float(info.depth_stat) == pytest.approx(0.5)

    def test_hand_value_depth_mode_and_median(self):
        m = _block_mask(B=1, side=(4,))
        depth = torch.full_like(m, 100.0)  # outside the object: ignored
        vals = torch.arange(16, dtype=torch.float64).reshape(4, 4) + 1.0  # 1..16, lower median 8
        depth[0, 0, 1:5, 2:6] = vals
        _, info = depth_aware_scale_loss(m, depth, 100.0, 0.1, depth_mode="depth")
        assert float(info.depth_stat) == 8.0
        assert float(info.s_exp) == pytest.approx(0.1 * 100.0 / (8.0 + 1e-6))
        _, info = depth_aware_scale_loss(m, depth, 100.0, 0.1, depth_mode="depth", depth_stat="mean")
        assert float(info.depth_stat) == pytest.approx(8.5)

    def test_consistent_size_is_zero_and_calibration_recovers_k(self):
        m = _block_mask()
        inv = torch.empty_like(m)
        f = torch.tensor([80.0, 120.0], dtype=torch.float64)
        k = 0.05
        # choose the inverse depth so that s = k f d exactly: d = side / (k f)
        for b, side in enumerate((4, 6)):
            inv[b] = side / (k * float(f[b]))
        k_est = estimate_k_obj_from_dataset(m, inv, f)
        assert float(k_est) == pytest.approx(k)
        loss, _ = depth_aware_scale_loss(m, inv, f, k_est)
        assert float(loss) == pytest.approx(0.0, abs=1e-12)
        # metric depth version
        depth = 1.0 / inv
        assert float(estimate_k_obj_from_dataset([m, m], [depth, depth], [f, f], depth_mode="depth")) == pytest.approx(
            k
        )

    def test_soft_mask_median_uses_half_threshold(self):
        m = _block_mask(B=1, side=(4,))
        m[0, 0, 8:, :] = 0.4  # soft tail below 0.5: counts in the area, not in the depth statistic
        depth = torch.full_like(m, 9.0)
        depth[0, 0, 1:5, 2:6] = 2.0
        loss, info = depth_aware_scale_loss(m, depth, 10.0, 1.0)
        assert float(info.depth_stat) == 2.0
        assert float(info.s_pred) == pytest.approx(math.sqrt(16 + 0.4 * 4 * 12))

    def test_empty_mask_excluded_and_finite(self):
        m = _block_mask()
        m[1] = 0.0
        m.requires_grad_(True)
        depth = torch.rand_like(m) + 0.5
        loss, info = depth_aware_scale_loss(m, depth, 100.0, 0.02)
        loss.backward()
        assert info.valid.tolist() == [True, False]
        single, _ = depth_aware_scale_loss(m[:1], depth[:1], 100.0, 0.02)
        torch.testing.assert_close(loss, single)
        assert torch.isfinite(m.grad).all()
        zero = torch.zeros_like(m, requires_grad=True)
        loss, _ = depth_aware_scale_loss(zero, depth, 100.0, 0.02)
        loss.backward()
        assert loss.item() == 0.0 and torch.isfinite(zero.grad).all()

    def test_depth_detached_by_default(self):
        m = _block_mask()
        depth = (torch.rand_like(m) + 0.5).requires_grad_(True)
        loss, _ = depth_aware_scale_loss(m, depth, 100.0, 0.02)
        assert not loss.requires_grad or depth.grad is None
        loss, _ = depth_aware_scale_loss(m, depth, 100.0, 0.02, detach_depth=False)
        loss.backward()
        assert depth.grad is not None and torch.isfinite(depth.grad).all()

    def test_errors(self):
        m = _block_mask()
        with pytest.raises(ValueError, match=r"pred_mask01 and depth_map must both be \(B, 1, H, W\)"):
            depth_aware_scale_loss(m, m[:, :, :5], 100.0, 0.1)
        with pytest.raises(ValueError, match="f_px must be a scalar or have B=2"):
            depth_aware_scale_loss(m, m, torch.ones(3), 0.1)
        with pytest.raises(ValueError, match="depth_mode"):
            depth_aware_scale_loss(m, m, 100.0, 0.1, depth_mode="disparity")
        with pytest.raises(ValueError, match="no usable sample"):
            estimate_k_obj_from_dataset(torch.zeros_like(m), m, 100.0)

    def test_gradcheck(self):
        m = (0.2 + 0.6 * _block_mask(B=2, H=5, W=5, side=(2, 3))).requires_grad_(True)  # away from clamp and 0.5
        depth = torch.rand(2, 1, 5, 5, dtype=torch.float64) + 0.5
        assert torch.autograd.gradcheck(lambda x: depth_aware_scale_loss(x, depth, 30.0, 0.1)[0], (m,))
