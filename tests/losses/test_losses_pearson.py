"""Pearson correlation depth loss (seed 004)."""

from __future__ import annotations

import pytest
import torch

from flow3d.losses import PearsonDepthLoss, pearson_depth_loss


def _maps(B=2, H=9, W=11, dtype=torch.float64):
    g = torch.Generator().manual_seed(1)
    return torch.rand(B, H, W, generator=g, dtype=dtype), torch.rand(B, H, W, generator=g, dtype=dtype)


def _corr_numpy_style(x, y):
    """Plain textbook Pearson correlation of two 1-D tensors."""
    xc, yc = x - x.mean(), y - y.mean()
    return float((xc * yc).sum() / torch.sqrt((xc**2).sum() * (yc**2).sum()))


class TestPearsonDepthLoss:
    def test_identical_is_zero(self, dtype):
        pred, _ = _maps(dtype=dtype)
        assert float(pearson_depth_loss(pred, pred.clone())) == pytest.approx(0.0, abs=1e-5)

    def test_hand_value(self):
        # pred [1,2,3] vs prior [1,3,2]: centred [-1,0,1] and [-1,1,0] -> cov 1, var 2 and 2 -> corr 0.5.
        pred = torch.tensor([[[1.0, 2.0, 3.0]]])
        prior = torch.tensor([[[1.0, 3.0, 2.0]]])
        assert float(pearson_depth_loss(pred, prior)) == pytest.approx(0.5, abs=1e-6)
        assert float(pearson_depth_loss(pred, -prior)) == pytest.approx(1.5, abs=1e-6)

    def test_matches_textbook_per_image_mean(self):
        pred, prior = _maps()
        mask = torch.rand(pred.shape, generator=torch.Generator().manual_seed(3)) > 0.3
        want = sum(1 - _corr_numpy_style(pred[b][mask[b]], prior[b][mask[b]]) for b in range(2)) / 2
        assert float(pearson_depth_loss(pred, prior, mask)) == pytest.approx(want, abs=1e-10)

    def test_affine_invariance(self):
        pred, prior = _maps()
        base = pearson_depth_loss(pred, prior)
        torch.testing.assert_close(pearson_depth_loss(3.5 * pred - 2.0, prior), base)
        torch.testing.assert_close(pearson_depth_loss(pred, 0.2 * prior + 7.0), base)
        # A negative scale is not an invariance: it flips the correlation.
        torch.testing.assert_close(pearson_depth_loss(-pred, prior), 2.0 - base)

    def test_masked_out_errors_do_not_count(self):
        pred, prior = _maps()
        mask = torch.zeros_like(pred, dtype=torch.bool)
        mask[:, 2:7, 3:9] = True
        other = pred.clone()
        other[~mask] = 1e3 * torch.randn(int((~mask).sum()), dtype=pred.dtype)
        torch.testing.assert_close(pearson_depth_loss(other, prior, mask), pearson_depth_loss(pred, prior, mask))

    def test_nonfinite_prior_ignored(self):
        pred, prior = _maps()
        mask = torch.ones_like(pred, dtype=torch.bool)
        mask[0, 0, :4] = False
        bad = prior.clone()
        bad[0, 0, :4] = float("nan")
        torch.testing.assert_close(pearson_depth_loss(pred, bad), pearson_depth_loss(pred, prior, mask))

    def test_empty_mask_finite_value_and_grad(self):
        pred, prior = _maps()
        pred.requires_grad_(True)
        loss = pearson_depth_loss(pred, prior, torch.zeros_like(pred))
        loss.backward()
        assert loss.item() == 0.0
        assert torch.isfinite(pred.grad).all()

    def test_image_with_one_valid_pixel_is_excluded(self):
        pred, prior = _maps()
        mask = torch.ones_like(pred)
        mask[1] = 0
        mask[1, 0, 0] = 1
        want = 1 - _corr_numpy_style(pred[0].flatten(), prior[0].flatten())
        assert float(pearson_depth_loss(pred, prior, mask)) == pytest.approx(want, abs=1e-10)

    def test_constant_pred_finite_grad(self):
        _, prior = _maps()
        pred = torch.full_like(prior, 2.0, requires_grad=True)
        loss = pearson_depth_loss(pred, prior)
        loss.backward()
        assert loss.item() == pytest.approx(1.0)
        assert torch.isfinite(pred.grad).all()

    def test_float_mask_is_weighted_correlation(self):
        pred, prior = _maps(B=1)
        w = torch.zeros_like(pred)
        w[..., :5] = 2.0  # a uniform weight on a subset equals the boolean mask of that subset
        torch.testing.assert_close(pearson_depth_loss(pred, prior, w), pearson_depth_loss(pred, prior, w > 0))

    def test_grid_patches_match_per_patch_loop(self):
        pred, prior = _maps(B=2, H=8, W=12)
        p = 4
        want = []
        for b in range(2):
            per = [
                1 - _corr_numpy_style(pred[b, i : i + p, j : j + p].flatten(), prior[b, i : i + p, j : j + p].flatten())
                for i in range(0, 8, p)
                for j in range(0, 12, p)
            ]
            want.append(sum(per) / len(per))
        got = pearson_depth_loss(pred, prior, patch_size=p, patch_mode="grid")
        assert float(got) == pytest.approx(sum(want) / 2, abs=1e-10)

    def test_random_patches_reproducible_and_invariant(self):
        pred, prior = _maps(H=16, W=16)
        a = pearson_depth_loss(pred, prior, patch_size=5, num_patches=8, generator=torch.Generator().manual_seed(0))
        b = pearson_depth_loss(
            2 * pred + 1, prior, patch_size=5, num_patches=8, generator=torch.Generator().manual_seed(0)
        )
        torch.testing.assert_close(a, b)
        assert 0.0 < float(a) < 2.0

    def test_shape_mismatch_raises(self):
        pred, prior = _maps()
        with pytest.raises(ValueError, match=r"prior has shape \(2, 9, 10\).*pred has shape \(2, 9, 11\)"):
            pearson_depth_loss(pred, prior[..., :10])
        with pytest.raises(ValueError, match="mask"):
            pearson_depth_loss(pred, prior, torch.ones(2, 9, 10, dtype=torch.bool))
        with pytest.raises(ValueError, match="pred must have 3 dimensions"):
            pearson_depth_loss(pred[0], prior[0])
        with pytest.raises(ValueError, match="patch_mode"):
            pearson_depth_loss(pred, prior, patch_size=3, patch_mode="tiles")

    def test_gradcheck(self):
        pred, prior = _maps(B=2, H=3, W=4)
        pred.requires_grad_(True)
        mask = torch.ones_like(pred)
        mask[0, 0, 0] = 0.0
        assert torch.autograd.gradcheck(lambda x: pearson_depth_loss(x, prior, mask), (pred,))

    def test_module_matches_function(self):
        pred, prior = _maps(H=12, W=12)
        mod = PearsonDepthLoss(patch_size=4, patch_mode="grid")
        torch.testing.assert_close(mod(pred, prior), pearson_depth_loss(pred, prior, patch_size=4, patch_mode="grid"))
