"""Depth-order losses (seed 004): order signs, MoDGS tanh loss, hinge loss across frames, accuracy."""

from __future__ import annotations

import math

import pytest
import torch

from flow3d.losses import (
    HingeOrdinalLoss,
    ModgsOrdinalLoss,
    depth_order_sign,
    hinge_ordinal_loss,
    modgs_ordinal_loss,
    ordinal_accuracy,
)


def _pairs(P=200, B=None, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    shape = (P,) if B is None else (B, P)
    depth_a = 1.0 + 4.0 * torch.rand(shape, generator=g, dtype=dtype)
    depth_b = 1.0 + 4.0 * torch.rand(shape, generator=g, dtype=dtype)
    pred_a = depth_a + 0.5 * torch.randn(shape, generator=g, dtype=dtype)
    pred_b = depth_b + 0.5 * torch.randn(shape, generator=g, dtype=dtype)
    return pred_a, pred_b, depth_a, depth_b


def _modgs_loop(pred_a, pred_b, prior_depth_a, prior_depth_b, alpha, min_gap_frac):
    """Per-pair loop from the seed's formula on a 1-D set of pairs; prior given as depth."""
    vals = [float(v) for v in prior_depth_a] + [float(v) for v in prior_depth_b]
    rng = max(vals) - min(vals)
    losses = []
    for pa, pb, da, db in zip(pred_a.tolist(), pred_b.tolist(), prior_depth_a.tolist(), prior_depth_b.tolist()):
        if da == db or abs(da - db) < min_gap_frac * rng:
            continue
        R = 1.0 if da > db else -1.0
        losses.append(abs(math.tanh(alpha * (pa - pb)) - R))
    return sum(losses) / len(losses)


class TestDepthOrderSign:
    def test_depth_and_disparity(self):
        a = torch.tensor([2.0, 1.0, 3.0, 3.0])
        b = torch.tensor([1.0, 2.0, 3.0, 2.9])
        assert depth_order_sign(a, b, "depth").tolist() == [1, -1, 0, 1]
        assert depth_order_sign(a, b, "disparity").tolist() == [-1, 1, 0, -1]
        # The same scene as depth and as disparity gives the same depth order.
        torch.testing.assert_close(depth_order_sign(1 / a, 1 / b, "disparity"), depth_order_sign(a, b, "depth"))
        assert depth_order_sign(a, b, "depth").dtype == torch.int8

    def test_min_rel_diff_same_in_both_kinds(self):
        a = torch.tensor([2.0, 1.0, 3.0, 10.0])
        b = torch.tensor([1.9, 2.0, 2.0, 9.0])  # relative differences 0.05, 0.5, 0.333, 0.1
        want = [0, -1, 1, 1]
        assert depth_order_sign(a, b, "depth", min_rel_diff=0.08).tolist() == want
        assert depth_order_sign(1 / a, 1 / b, "disparity", min_rel_diff=0.08).tolist() == want

    def test_nonfinite_is_unknown(self):
        a = torch.tensor([float("nan"), 1.0, float("inf")])
        b = torch.tensor([1.0, 2.0, 1.0])
        assert depth_order_sign(a, b, "depth").tolist() == [0, -1, 0]

    def test_bad_kind_raises(self):
        with pytest.raises(ValueError, match="kind must be 'depth' or 'disparity'"):
            depth_order_sign(torch.ones(3), torch.ones(3), "inverse")
        with pytest.raises(ValueError, match=r"values_b has shape \(2,\)"):
            depth_order_sign(torch.ones(3), torch.ones(2), "depth")


class TestModgsOrdinalLoss:
    def test_hand_value(self):
        pred_a = torch.tensor([1.01, 2.0], dtype=torch.float64)
        pred_b = torch.tensor([1.00, 2.005], dtype=torch.float64)
        prior_a = torch.tensor([5.0, 1.0])  # pair 0: a farther (R=+1); pair 1: a nearer (R=-1)
        prior_b = torch.tensor([4.0, 3.0])
        want = (abs(math.tanh(1.0) - 1) + abs(math.tanh(-0.5) + 1)) / 2
        got = modgs_ordinal_loss(pred_a, pred_b, prior_a, prior_b, prior_kind="depth", alpha=100.0)
        assert float(got) == pytest.approx(want, abs=1e-6)

    def test_matches_pair_loop_with_gap_rule(self):
        pred_a, pred_b, da, db = _pairs(P=300)
        for frac in (0.0, 0.1, 0.3):
            want = _modgs_loop(pred_a, pred_b, da, db, alpha=3.0, min_gap_frac=frac)
            got = modgs_ordinal_loss(pred_a, pred_b, da, db, prior_kind="depth", alpha=3.0, min_gap_frac=frac)
            assert float(got) == pytest.approx(want, abs=1e-10)

    def test_prior_range_from_all_masked_pixels(self):
        # MoDGS takes the gap threshold from the depth range of ALL masked pixels, not of the sampled pairs.
        pred_a = torch.tensor([1.0, 1.0, 1.0], dtype=torch.float64)
        pred_b = torch.tensor([1.02, 0.99, 1.0], dtype=torch.float64)
        prior_a = torch.tensor([2.0, 3.0, 2.5], dtype=torch.float64)
        prior_b = torch.tensor([2.4, 2.0, 2.45], dtype=torch.float64)
        # sampled range 3 - 2 = 1 -> threshold 0.1 keeps pairs 0 and 1 (gaps 0.4, 1.0), drops pair 2 (0.05)
        keep01 = (abs(math.tanh(-2.0) + 1) + abs(math.tanh(1.0) - 1)) / 2
        got = modgs_ordinal_loss(pred_a, pred_b, prior_a, prior_b, prior_kind="depth", alpha=100.0)
        assert float(got) == pytest.approx(keep01)
        # the frame's depths span 0.5 .. 8.5: threshold 0.8 keeps pair 1 only
        got = modgs_ordinal_loss(pred_a, pred_b, prior_a, prior_b, prior_kind="depth", alpha=100.0, prior_range=8.0)
        assert float(got) == pytest.approx(abs(math.tanh(1.0) - 1))
        # per row for (B, P) inputs
        two = lambda x: torch.stack([x, x])  # noqa: E731
        got = modgs_ordinal_loss(
            two(pred_a),
            two(pred_b),
            two(prior_a),
            two(prior_b),
            prior_kind="depth",
            alpha=100.0,
            prior_range=torch.tensor([[1.0], [8.0]], dtype=torch.float64),
        )
        assert float(got) == pytest.approx((2 * keep01 + abs(math.tanh(1.0) - 1)) / 3)

    def test_correct_order_near_zero(self):
        _, _, da, db = _pairs()
        got = modgs_ordinal_loss(da, db, da, db, prior_kind="depth", alpha=1e4, min_gap_frac=0.1)
        assert float(got) < 1e-6  # documented minimum: tanh saturates at +-1

    def test_disparity_prior_equals_depth_prior(self):
        pred_a, pred_b, da, db = _pairs()
        as_depth = modgs_ordinal_loss(pred_a, pred_b, da, db, prior_kind="depth", alpha=2.0, min_gap_frac=0.0)
        as_disp = modgs_ordinal_loss(
            pred_a, pred_b, 1 / da, 1 / db, prior_kind="disparity", alpha=2.0, min_gap_frac=0.0
        )
        torch.testing.assert_close(as_disp, as_depth)
        # A disparity prior mislabelled as depth compares the reversed order: a different, worse loss.
        wrong = modgs_ordinal_loss(pred_a, pred_b, 1 / da, 1 / db, prior_kind="depth", alpha=2.0, min_gap_frac=0.0)
        assert float(wrong) > float(as_depth) + 0.5
        # With the default gap rule the kept pairs may differ (the rule is measured on the values given),
        # but when every pair is far from a tie in both spaces the two kinds agree exactly.
        a = torch.tensor([1.0, 2.0, 4.0, 8.0])
        b = torch.tensor([8.0, 1.0, 2.0, 4.0])
        pa, pb = a + torch.tensor([0.1, -0.2, 0.3, 0.0]), b
        torch.testing.assert_close(
            modgs_ordinal_loss(pa, pb, 1 / a, 1 / b, prior_kind="disparity", alpha=1.0),
            modgs_ordinal_loss(pa, pb, a, b, prior_kind="depth", alpha=1.0),
        )

    def test_pred_kind_disparity(self):
        pred_a, pred_b, da, db = _pairs()
        pred_a, pred_b = pred_a.clamp_min(0.1), pred_b.clamp_min(0.1)
        a = modgs_ordinal_loss(pred_a, pred_b, da, db, prior_kind="depth", alpha=1.0, min_gap_frac=0.0)
        b = modgs_ordinal_loss(
            -pred_a, -pred_b, da, db, prior_kind="depth", pred_kind="disparity", alpha=1.0, min_gap_frac=0.0
        )
        torch.testing.assert_close(a, b)

    def test_monotone_prior_invariance(self):
        pred_a, pred_b, da, db = _pairs()
        base = modgs_ordinal_loss(pred_a, pred_b, da, db, prior_kind="depth", min_gap_frac=0.0)
        # Any increasing map (exp, cube) keeps the order; with the gap rule, positive affine maps do.
        for f in (torch.exp, lambda x: x**3, lambda x: torch.log(x) - 3):
            torch.testing.assert_close(
                modgs_ordinal_loss(pred_a, pred_b, f(da), f(db), prior_kind="depth", min_gap_frac=0.0), base
            )
        base_gap = modgs_ordinal_loss(pred_a, pred_b, da, db, prior_kind="depth", min_gap_frac=0.2)
        torch.testing.assert_close(
            modgs_ordinal_loss(pred_a, pred_b, 7 * da + 3, 7 * db + 3, prior_kind="depth", min_gap_frac=0.2), base_gap
        )

    def test_batched_rows_have_own_range_and_mask(self):
        pred_a, pred_b, da, db = _pairs(P=50, B=2)
        da[1] *= 100.0  # row 1 has a far larger range: the gap rule is per row
        db[1] *= 100.0
        mask = torch.ones_like(pred_a, dtype=torch.bool)
        mask[0, :10] = False
        got = modgs_ordinal_loss(pred_a, pred_b, da, db, prior_kind="depth", alpha=1.0, mask=mask)
        per_pair = []
        for r in range(2):
            keep = mask[r]
            vals = torch.cat([da[r][keep], db[r][keep]])
            rng = float(vals.max() - vals.min())
            for i in range(50):
                if not keep[i] or abs(float(da[r, i] - db[r, i])) < 0.1 * rng:
                    continue
                R = 1.0 if da[r, i] > db[r, i] else -1.0
                per_pair.append(abs(math.tanh(float(pred_a[r, i] - pred_b[r, i])) - R))
        assert float(got) == pytest.approx(sum(per_pair) / len(per_pair), abs=1e-10)

    def test_masked_out_errors_do_not_count(self):
        pred_a, pred_b, da, db = _pairs()
        mask = torch.arange(200) % 3 != 0
        other = pred_a.clone()
        other[~mask] = -100.0
        torch.testing.assert_close(
            modgs_ordinal_loss(other, pred_b, da, db, prior_kind="depth", mask=mask, min_gap_frac=0.0),
            modgs_ordinal_loss(pred_a, pred_b, da, db, prior_kind="depth", mask=mask, min_gap_frac=0.0),
        )

    def test_empty_finite_value_and_grad(self):
        pred_a, pred_b, da, db = _pairs()
        pred_a.requires_grad_(True)
        for kw in (dict(mask=torch.zeros(200, dtype=torch.bool)), dict(min_gap_frac=2.0)):
            loss = modgs_ordinal_loss(pred_a, pred_b, da, db, prior_kind="depth", **kw)
            loss.backward()
            assert loss.item() == 0.0 and torch.isfinite(pred_a.grad).all()
        loss = modgs_ordinal_loss(pred_a, pred_b, da, da.clone(), prior_kind="depth")  # all ties
        assert loss.item() == 0.0

    def test_errors(self):
        pred_a, pred_b, da, db = _pairs()
        with pytest.raises(ValueError, match=r"prior_b has shape \(199,\) but pred_a has shape \(200,\)"):
            modgs_ordinal_loss(pred_a, pred_b, da, db[:199], prior_kind="depth")
        with pytest.raises(ValueError, match="prior_kind must be 'depth' or 'disparity'"):
            modgs_ordinal_loss(pred_a, pred_b, da, db, prior_kind="inv_depth")
        with pytest.raises(TypeError):
            modgs_ordinal_loss(pred_a, pred_b, da, db)  # prior_kind has no default on purpose

    def test_gradcheck(self):
        pred_a, pred_b, da, db = _pairs(P=12)
        pred_a.requires_grad_(True)
        pred_b.requires_grad_(True)
        assert torch.autograd.gradcheck(
            lambda a, b: modgs_ordinal_loss(a, b, da, db, prior_kind="disparity", alpha=2.0), (pred_a, pred_b)
        )

    def test_module_matches_function(self):
        pred_a, pred_b, da, db = _pairs()
        mod = ModgsOrdinalLoss(prior_kind="disparity", alpha=5.0)
        torch.testing.assert_close(
            mod(pred_a, pred_b, da, db), modgs_ordinal_loss(pred_a, pred_b, da, db, prior_kind="disparity", alpha=5.0)
        )


class TestHingeOrdinalLoss:
    def test_hand_value(self):
        pred_a = torch.tensor([2.05, 1.0, 5.0])
        pred_b = torch.tensor([2.0, 0.7, 1.0])
        s = torch.tensor([1, -1, 0], dtype=torch.int8)
        # relu(0.1 - 0.05) = 0.05 and relu(0.1 + 0.3) = 0.4; the sign-0 pair is ignored.
        got = hinge_ordinal_loss(pred_a, pred_b, s, margin=0.1, normalize="none")
        assert float(got) == pytest.approx(0.225, abs=1e-6)
        # Median of the valid rendered values {2.05, 2.0, 1.0, 0.7} = 1.0 (lower median, as torch.median).
        got = hinge_ordinal_loss(pred_a, pred_b, s, margin=0.1, normalize="median")
        assert float(got) == pytest.approx(0.225, abs=1e-6)
        got = hinge_ordinal_loss(2 * pred_a, 2 * pred_b, s, margin=0.1, normalize="median")
        assert float(got) == pytest.approx(0.225, abs=1e-6)

    def test_seed_literal_form(self):
        # |min(0, eps + s * diff)| == relu(-eps - s * diff) == margin -eps.
        pred_a, pred_b, da, db = _pairs()
        s = depth_order_sign(da, db, "depth")
        eps = 0.05
        want = (torch.clamp(eps + s * (pred_a - pred_b), max=0.0).abs()).mean()
        got = hinge_ordinal_loss(pred_a, pred_b, s, margin=-eps, normalize="none")
        torch.testing.assert_close(got, want)

    def test_zero_when_order_kept_with_margin(self):
        _, _, da, db = _pairs()
        s = depth_order_sign(da, db, "depth", min_rel_diff=0.1)
        got = hinge_ordinal_loss(3 * da, 3 * db, s, margin=0.05, normalize="median")
        assert float(got) == 0.0

    def test_monotone_prior_invariance_and_kinds(self):
        pred_a, pred_b, da, db = _pairs()
        base = hinge_ordinal_loss(pred_a, pred_b, depth_order_sign(da, db, "depth"))
        torch.testing.assert_close(
            hinge_ordinal_loss(pred_a, pred_b, depth_order_sign(da**2 + 1, db**2 + 1, "depth")), base
        )
        torch.testing.assert_close(
            hinge_ordinal_loss(pred_a, pred_b, depth_order_sign(1 / da, 1 / db, "disparity")), base
        )
        wrong = hinge_ordinal_loss(pred_a, pred_b, depth_order_sign(1 / da, 1 / db, "depth"))
        assert float(wrong) > float(base)

    def test_masked_and_empty(self):
        pred_a, pred_b, da, db = _pairs()
        s = depth_order_sign(da, db, "depth")
        mask = torch.arange(200) < 100
        other = pred_a.clone()
        other[100:] = 1e4
        torch.testing.assert_close(
            hinge_ordinal_loss(other, pred_b, s, mask=mask), hinge_ordinal_loss(pred_a, pred_b, s, mask=mask)
        )
        pred_a.requires_grad_(True)
        loss = hinge_ordinal_loss(pred_a, pred_b, torch.zeros_like(s))
        loss.backward()
        assert loss.item() == 0.0 and torch.isfinite(pred_a.grad).all()
        # A zero median (all rendered depths 0) must not produce NaN either.
        z = torch.zeros(5, requires_grad=True)
        loss = hinge_ordinal_loss(z, z.detach(), torch.ones(5, dtype=torch.int8))
        loss.backward()
        assert torch.isfinite(loss) and torch.isfinite(z.grad).all()

    def test_batched_median_per_row(self):
        pred_a, pred_b, da, db = _pairs(P=40, B=2)
        s = depth_order_sign(da, db, "depth")
        scaled_a, scaled_b = pred_a.clone(), pred_b.clone()
        scaled_a[1] *= 10
        scaled_b[1] *= 10
        torch.testing.assert_close(hinge_ordinal_loss(scaled_a, scaled_b, s), hinge_ordinal_loss(pred_a, pred_b, s))

    def test_errors_and_gradcheck(self):
        pred_a, pred_b, da, db = _pairs(P=10)
        s = depth_order_sign(da, db, "depth")
        with pytest.raises(ValueError, match=r"order_sign has shape \(9,\)"):
            hinge_ordinal_loss(pred_a, pred_b, s[:9])
        with pytest.raises(ValueError, match="normalize"):
            hinge_ordinal_loss(pred_a, pred_b, s, normalize="mean")
        pred_a.requires_grad_(True)
        assert torch.autograd.gradcheck(lambda a: hinge_ordinal_loss(a, pred_b, s, margin=0.3), (pred_a,))

    def test_module_matches_function(self):
        pred_a, pred_b, da, db = _pairs()
        s = depth_order_sign(da, db, "depth")
        torch.testing.assert_close(
            HingeOrdinalLoss(margin=0.2)(pred_a, pred_b, s), hinge_ordinal_loss(pred_a, pred_b, s, margin=0.2)
        )


class TestOrdinalAccuracy:
    def test_values(self):
        pred_a = torch.tensor([2.0, 1.0, 3.0, 1.0, 4.0])
        pred_b = torch.tensor([1.0, 2.0, 1.0, 1.0, 5.0])
        s = torch.tensor([1, 1, 0, -1, -1], dtype=torch.int8)
        # counted pairs 0, 1, 3, 4: agree, disagree, tie (disagree), agree -> 0.5
        assert float(ordinal_accuracy(pred_a, pred_b, s)) == 0.5
        assert float(ordinal_accuracy(1 / pred_a, 1 / pred_b, s, pred_kind="disparity")) == 0.5
        assert float(ordinal_accuracy(pred_a, pred_b, s, mask=torch.tensor([1, 0, 1, 0, 1]) > 0)) == 1.0
        assert torch.isnan(ordinal_accuracy(pred_a, pred_b, torch.zeros_like(s)))

    def test_no_grad(self):
        pred_a = torch.rand(10, requires_grad=True)
        acc = ordinal_accuracy(pred_a, torch.rand(10), torch.ones(10, dtype=torch.int8))
        assert not acc.requires_grad
