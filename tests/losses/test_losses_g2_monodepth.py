"""G2-MonoDepth loss (seed 002), checked against a per-pixel loop written from the seed."""

from __future__ import annotations

import pytest
import torch
from losses_reference import g2_reference

from flow3d.losses import G2MonoDepthLoss, g2_monodepth_loss


def _inputs(B=2, H=16, W=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    gt = 1.0 + 3.0 * torch.rand(B, 1, H, W, generator=g, dtype=torch.float64)
    pred = gt + 0.5 * torch.randn(B, 1, H, W, generator=g, dtype=torch.float64)
    mask = (torch.rand(B, 1, H, W, generator=g) > 0.25).to(torch.float64)
    return pred, gt, mask


class TestG2MonoDepthLoss:
    def test_matches_seed_reference(self):
        pred, gt, mask = _inputs()
        mask[1] = 0.0  # an empty image: counted as 0 in the batch mean, as in the seed
        total, terms = g2_monodepth_loss(pred, gt, mask)
        want = g2_reference(pred, gt, mask)
        assert float(total) == pytest.approx(want[0], rel=1e-9)
        for key, w in zip(("adepth", "rdepth", "rgrad"), want[1:]):
            assert float(terms[key]) == pytest.approx(w, rel=1e-9, abs=1e-12)

    def test_odd_size_reference(self):
        pred, gt, mask = _inputs(B=1, H=11, W=13, seed=2)
        total, _ = g2_monodepth_loss(pred[:, 0], gt[:, 0], mask[:, 0] > 0)  # (B, H, W) and bool mask
        assert float(total) == pytest.approx(g2_reference(pred, gt, mask)[0], rel=1e-9)

    def test_identical_is_zero(self, dtype):
        pred, _, mask = _inputs()
        pred = pred.to(dtype)
        total, _ = g2_monodepth_loss(pred, pred.clone(), mask)
        assert float(total) == 0.0

    def test_hand_value_offset(self):
        # pred = gt + c: L_adepth = c, standardised maps are identical, so the other terms vanish.
        _, gt, mask = _inputs()
        total, terms = g2_monodepth_loss(gt + 0.25, gt, mask)
        assert float(terms["adepth"]) == pytest.approx(0.25)
        assert float(terms["rdepth"]) == pytest.approx(0.0, abs=1e-9)
        assert float(terms["rgrad"]) == pytest.approx(0.0, abs=1e-8)
        assert float(total) == pytest.approx(0.25, abs=1e-8)

    def test_relative_terms_scale_invariant(self):
        pred, gt, mask = _inputs()
        _, a = g2_monodepth_loss(pred, gt, mask)
        _, b = g2_monodepth_loss(4.0 * pred, gt, mask)
        assert float(b["rdepth"]) == pytest.approx(float(a["rdepth"]), rel=1e-5)
        assert float(b["rgrad"]) == pytest.approx(float(a["rgrad"]), rel=1e-5)
        assert float(b["adepth"]) > 2 * float(a["adepth"])

    def test_masked_out_errors_do_not_count_in_data_terms(self):
        pred, gt, mask = _inputs()
        other = pred.clone()
        other[mask == 0] += 100.0
        _, a = g2_monodepth_loss(other, gt, mask)
        _, b = g2_monodepth_loss(pred, gt, mask)
        # adepth and rdepth only see masked pixels (rgrad's Sobel stencil reaches neighbours, as in the seed)
        torch.testing.assert_close(a["adepth"], b["adepth"])
        torch.testing.assert_close(a["rdepth"], b["rdepth"])

    def test_empty_mask_and_nan_gt(self):
        pred, gt, _ = _inputs()
        pred.requires_grad_(True)
        total, _ = g2_monodepth_loss(pred, gt, torch.zeros_like(gt))
        total.backward()
        assert total.item() == 0.0 and torch.isfinite(pred.grad).all()
        bad = gt.clone()
        bad[0, 0, 0, :5] = float("nan")
        total, _ = g2_monodepth_loss(pred, bad, torch.ones_like(gt))
        assert torch.isfinite(total)

    def test_errors(self):
        pred, gt, mask = _inputs()
        with pytest.raises(ValueError, match=r"gt has shape \(2, 1, 16, 15\) but pred has shape \(2, 1, 16, 16\)"):
            g2_monodepth_loss(pred, gt[..., :15], mask)
        with pytest.raises(ValueError, match="mask"):
            g2_monodepth_loss(pred, gt, mask[:1])

    def test_gradcheck(self):
        pred, gt, mask = _inputs(B=1, H=8, W=8)
        pred.requires_grad_(True)
        assert torch.autograd.gradcheck(lambda x: g2_monodepth_loss(x, gt, mask, scales=(1, 2))[0], (pred,))

    def test_module_matches_function(self):
        pred, gt, mask = _inputs()
        torch.testing.assert_close(G2MonoDepthLoss()(pred, gt, mask)[0], g2_monodepth_loss(pred, gt, mask)[0])
