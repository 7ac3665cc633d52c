"""Depth consistency loss (seed 001), checked against a per-pixel loop written from the seed."""

from __future__ import annotations

import pytest
import torch
from losses_reference import consistency_reference

from flow3d.losses import DepthConsistencyLoss, DepthConsistencyTerms, depth_consistency_loss


def _inputs(B=2, H=7, W=9, seed=0):
    g = torch.Generator().manual_seed(seed)
    d_tgt = 1.0 + torch.rand(B, 1, H, W, generator=g, dtype=torch.float64)
    d_pred = d_tgt + 0.3 * torch.randn(B, 1, H, W, generator=g, dtype=torch.float64)
    mask = torch.zeros(B, 1, H, W, dtype=torch.float64)
    mask[:, :, 2:5, 3:7] = 1.0
    mask[-1, :, 1, 1] = 0.7  # a soft value
    conf = torch.rand(B, 1, H, W, generator=g, dtype=torch.float64)
    return d_pred, d_tgt, mask, conf


class TestDepthConsistencyLoss:
    @pytest.mark.parametrize("with_conf", [False, True])
    @pytest.mark.parametrize("radii", [(1, 1), (0, 2), (2, 0)])
    def test_matches_seed_reference(self, with_conf, radii):
        d_pred, d_tgt, mask, conf = _inputs()
        c = conf if with_conf else None
        got = depth_consistency_loss(d_pred, d_tgt, mask, c, outside_dilate_r=radii[0], edge_r=radii[1], beta=0.2)
        want = consistency_reference(d_pred, d_tgt, mask, c, r_out=radii[0], r_edge=radii[1], beta=0.2)
        assert isinstance(got, DepthConsistencyTerms)
        for g_, w_ in zip(got, want):
            assert float(g_) == pytest.approx(w_, rel=1e-10, abs=1e-12)

    def test_identical_is_zero(self, dtype):
        d_pred, _, mask, _ = _inputs()
        d_pred = d_pred.to(dtype)
        terms = depth_consistency_loss(d_pred, d_pred.clone(), mask)
        assert all(float(t) == 0.0 for t in terms)

    def test_hand_value(self):
        # Mask everywhere, constant offset 0.05 < beta: inside = 0.5 * 0.05^2 / 0.1 = 0.0125; nothing is
        # "sure outside"; the band is empty (the image border does not erode), so edge = 0.
        d_tgt = torch.rand(1, 1, 4, 5, dtype=torch.float64)
        terms = depth_consistency_loss(d_tgt + 0.05, d_tgt, torch.ones(1, 1, 4, 5))
        assert float(terms.inside) == pytest.approx(0.0125)
        assert float(terms.outside) == 0.0 and float(terms.edge) == 0.0
        assert float(terms.total) == pytest.approx(0.0125)

    def test_shapes_2d_3d_4d_agree(self):
        d_pred, d_tgt, mask, _ = _inputs(B=1)
        a = depth_consistency_loss(d_pred, d_tgt, mask)
        b = depth_consistency_loss(d_pred[:, 0], d_tgt[:, 0], mask[:, 0])
        c = depth_consistency_loss(d_pred[0, 0], d_tgt[0, 0], mask[0, 0])
        torch.testing.assert_close(a.total, b.total)
        torch.testing.assert_close(a.total, c.total)

    def test_nonfinite_pixels_ignored(self):
        d_pred, d_tgt, mask, _ = _inputs()
        bad = d_tgt.clone()
        bad[0, 0, 3, 4] = float("nan")  # inside the mask
        bad[1, 0, 0, 0] = float("inf")  # outside
        d_pred.requires_grad_(True)
        terms = depth_consistency_loss(d_pred, bad, mask)
        terms.total.backward()
        assert all(torch.isfinite(t) for t in terms)
        assert torch.isfinite(d_pred.grad).all()
        # Same as giving those pixels zero confidence, except that the NaN also removes the differences
        # that reach it from its left / upper neighbours: compare only the inside / outside terms.
        conf = torch.ones_like(d_tgt)
        conf[0, 0, 3, 4] = 0
        conf[1, 0, 0, 0] = 0
        ref = depth_consistency_loss(d_pred, d_tgt, mask, conf)
        torch.testing.assert_close(terms.inside, ref.inside)
        torch.testing.assert_close(terms.outside, ref.outside)

    def test_masked_out_errors_do_not_count(self):
        d_pred, d_tgt, mask, _ = _inputs()
        conf = torch.ones_like(d_tgt)
        conf[:, :, :, 0] = 0.0
        other = d_pred.clone()
        other[:, :, :, 0] += 50.0  # zero confidence there, and column 0 is outside the edge band
        a = depth_consistency_loss(other, d_tgt, mask, conf)
        b = depth_consistency_loss(d_pred, d_tgt, mask, conf)
        torch.testing.assert_close(a.inside, b.inside)
        torch.testing.assert_close(a.outside, b.outside)

    def test_empty_weights_finite_grad(self):
        d_pred, d_tgt, _, _ = _inputs()
        d_pred.requires_grad_(True)
        terms = depth_consistency_loss(d_pred, d_tgt, torch.zeros_like(d_tgt), torch.zeros_like(d_tgt))
        terms.total.backward()
        assert terms.total.item() == 0.0
        assert torch.isfinite(d_pred.grad).all()

    @pytest.mark.parametrize("align", ["scale", "scale_shift"])
    def test_alignment_invariance(self, align):
        d_pred, d_tgt, mask, conf = _inputs()
        base = depth_consistency_loss(d_pred, d_tgt, mask, conf, align=align)
        moved = 3.0 * d_pred + (2.0 if align == "scale_shift" else 0.0)
        torch.testing.assert_close(depth_consistency_loss(moved, d_tgt, mask, conf, align=align).total, base.total)
        # An exactly scaled (and shifted) prediction aligns to zero error.
        t = depth_consistency_loss(0.5 * d_tgt + (1.0 if align == "scale_shift" else 0.0), d_tgt, mask, align=align)
        assert float(t.total) == pytest.approx(0.0, abs=1e-12)
        assert float(depth_consistency_loss(0.5 * d_tgt, d_tgt, mask).total) > 0.01

    def test_errors(self):
        d_pred, d_tgt, mask, _ = _inputs()
        with pytest.raises(ValueError, match=r"d_tgt has shape \(2, 1, 7, 8\) but d_pred is \(2, 1, 7, 9\)"):
            depth_consistency_loss(d_pred, d_tgt[..., :8], mask)
        with pytest.raises(ValueError, match="mask has shape"):
            depth_consistency_loss(d_pred, d_tgt, mask[:, :, :6])
        with pytest.raises(ValueError, match="align must be"):
            depth_consistency_loss(d_pred, d_tgt, mask, align="affine")

    def test_gradcheck(self):
        d_pred, d_tgt, mask, conf = _inputs(B=1, H=5, W=6)
        d_pred.requires_grad_(True)
        for align in ("none", "scale_shift"):
            assert torch.autograd.gradcheck(
                lambda x: depth_consistency_loss(x, d_tgt, mask, conf, beta=0.05, align=align).total, (d_pred,)
            )

    def test_module_and_seed_keyword(self):
        d_pred, d_tgt, mask, _ = _inputs()
        a = DepthConsistencyLoss(edge_r=2)(d_pred, d_tgt, mask)
        b = depth_consistency_loss(d_pred, d_tgt, mask, edge_band_r=2)
        torch.testing.assert_close(a.total, b.total)
