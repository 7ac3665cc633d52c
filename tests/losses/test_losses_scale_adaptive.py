"""Scale-adaptive loss (seed 003), checked against a per-pixel loop written from the seed."""

from __future__ import annotations

import pytest
import torch
from losses_reference import scale_adaptive_reference

from flow3d.losses import ScaleAdaptiveLoss, scale_adaptive_loss


def _inputs(B=2, H=16, W=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    gt_inv = 0.1 + torch.rand(B, 1, H, W, generator=g, dtype=torch.float64)
    pred_inv = (gt_inv * (1 + 0.3 * torch.randn(B, 1, H, W, generator=g, dtype=torch.float64))).abs() + 0.01
    mask = (torch.rand(B, 1, H, W, generator=g) > 0.3).to(torch.float64)
    return pred_inv, gt_inv, mask


class TestScaleAdaptiveLoss:
    @pytest.mark.parametrize("use_inv_depth", [False, True])
    @pytest.mark.parametrize("with_mask", [False, True])
    def test_matches_seed_reference(self, use_inv_depth, with_mask):
        pred, gt, mask = _inputs()
        m = mask if with_mask else None
        total, terms = scale_adaptive_loss(pred, gt, m, use_inv_depth=use_inv_depth)
        want = scale_adaptive_reference(pred, gt, m, use_inv_depth=use_inv_depth)
        assert float(total) == pytest.approx(want[0], rel=1e-9)
        assert float(terms["relative"]) == pytest.approx(want[1], rel=1e-9)
        assert float(terms["absolute"]) == pytest.approx(want[2], rel=1e-9, abs=1e-15)
        assert float(terms["sg"]) == pytest.approx(want[3], rel=1e-9)

    def test_odd_size_three_scales(self):
        pred, gt, mask = _inputs(B=1, H=13, W=10, seed=4)
        total, _ = scale_adaptive_loss(pred[:, 0], gt[:, 0], mask[:, 0], num_scales=3, lambda_sg=0.7)
        want = scale_adaptive_reference(pred, gt, mask, num_scales=3, lambda_sg=0.7)
        assert float(total) == pytest.approx(want[0], rel=1e-9)

    def test_identical_is_zero(self, dtype):
        pred, _, mask = _inputs()
        pred = pred.to(dtype)
        total, _ = scale_adaptive_loss(pred, pred.clone(), mask)
        assert float(total) == pytest.approx(0.0, abs=1e-5)

    def test_hand_value(self):
        # use_inv_depth: gt = 1 everywhere, pred = 2 everywhere -> both normalise to 0 (relative = 0,
        # gradient = 0); absolute = mean |2 - 1| = 1 over the full mask.
        gt = torch.ones(2, 1, 8, 8, dtype=torch.float64)
        total, terms = scale_adaptive_loss(2 * gt, gt, torch.ones_like(gt), use_inv_depth=True)
        assert float(terms["relative"]) == 0.0 and float(terms["sg"]) == 0.0
        assert float(total) == pytest.approx(1.0, rel=1e-9)

    def test_relative_terms_scale_invariant(self):
        pred, gt, mask = _inputs()
        _, a = scale_adaptive_loss(pred, gt, mask)
        _, b = scale_adaptive_loss(5.0 * pred, gt, mask)  # 5x inverse depth = depth / 5
        assert float(b["relative"]) == pytest.approx(float(a["relative"]), rel=1e-6)
        assert float(b["sg"]) == pytest.approx(float(a["sg"]), rel=1e-6)

    def test_mask_all_terms(self):
        pred, gt, mask = _inputs()
        other = pred.clone()
        other[mask == 0] = 1e-3  # garbage where invalid
        a, _ = scale_adaptive_loss(other, gt, mask, mask_all_terms=True, use_absolute=True, lambda_sg=0.0)
        b, _ = scale_adaptive_loss(pred, gt, mask, mask_all_terms=True, use_absolute=True, lambda_sg=0.0)
        torch.testing.assert_close(a, b)
        pred.requires_grad_(True)
        total, _ = scale_adaptive_loss(pred, gt, torch.zeros_like(gt), mask_all_terms=True)
        total.backward()
        assert total.item() == 0.0 and torch.isfinite(pred.grad).all()

    def test_zero_inverse_depth_finite(self):
        pred, gt, mask = _inputs()
        pred = pred.clone()
        pred[0, 0, 0, :3] = 0.0
        pred.requires_grad_(True)
        total, _ = scale_adaptive_loss(pred, gt, mask)
        total.backward()
        assert torch.isfinite(total) and torch.isfinite(pred.grad).all()

    def test_errors(self):
        pred, gt, mask = _inputs()
        with pytest.raises(ValueError, match=r"gt has shape \(2, 1, 16, 23\) but pred"):
            scale_adaptive_loss(pred, gt[..., :23], mask)
        with pytest.raises(ValueError, match="mask has shape"):
            scale_adaptive_loss(pred, gt, mask[0])
        with pytest.raises(ValueError, match="num_scales"):
            scale_adaptive_loss(pred, gt, num_scales=0)

    def test_gradcheck(self):
        pred, gt, mask = _inputs(B=1, H=8, W=8)
        pred.requires_grad_(True)
        assert torch.autograd.gradcheck(lambda x: scale_adaptive_loss(x, gt, mask, num_scales=2)[0], (pred,))

    def test_module_matches_function(self):
        pred, gt, mask = _inputs()
        torch.testing.assert_close(
            ScaleAdaptiveLoss(lambda_sg=0.3)(pred, gt, mask)[0], scale_adaptive_loss(pred, gt, mask, lambda_sg=0.3)[0]
        )
