"""Evaluation metrics against hand values and slow, obviously-correct references written here."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from flow3d.depth import disp_to_depth
from flow3d.eval.metrics import (
    LpipsScorer,
    Unavailable,
    depth_metrics,
    depth_order_accuracy,
    image_metrics,
    keypoint_pck,
    masked_psnr,
    masked_ssim,
    mssim_som,
    prior_depth_metrics,
    temporal_consistency,
    tracking_metrics,
)

# ---------------------------------------------------------------------------------------------- PSNR


def test_psnr_hand_value():
    pred = torch.zeros(1, 4, 4, 3)
    target = torch.full((1, 4, 4, 3), 0.1)  # MSE 0.01 -> 20 dB
    torch.testing.assert_close(masked_psnr(pred, target), torch.tensor([20.0]))


def test_masked_psnr_ignores_masked_out_pixels_and_empty_mask_is_nan():
    pred = torch.zeros(2, 4, 4, 3)
    target = torch.zeros(2, 4, 4, 3)
    target[:, :2] = 0.1  # error only in the top half
    target[:, 2:] = 0.9  # large error in the bottom half, masked out
    mask = torch.zeros(2, 4, 4)
    mask[0, :2] = 1
    out = masked_psnr(pred, target, mask)
    torch.testing.assert_close(out[0], torch.tensor(20.0))
    assert math.isnan(out[1].item())


def test_psnr_shape_mismatch_raises():
    with pytest.raises(ValueError, match="mask must be"):
        masked_psnr(torch.zeros(1, 4, 4, 3), torch.zeros(1, 4, 4, 3), torch.ones(1, 4, 5))
    with pytest.raises(ValueError, match=r"\(B, H, W, 3\)"):
        masked_psnr(torch.zeros(1, 3, 4, 4), torch.zeros(1, 3, 4, 4))


# ---------------------------------------------------------------------------------------------- SSIM


def _gauss(size=11, sigma=1.5):
    x = np.arange(size) - (size - 1) / 2
    g = np.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


def _ssim_map_loop(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """SSIM map of two (H, W) images, Gaussian 11x11 window, zero padding outside, pixel by pixel."""
    H, W = a.shape
    g = _gauss()
    w2 = np.outer(g, g)
    r = 5
    c1, c2 = 0.01**2, 0.03**2
    out = np.zeros((H, W))
    for i in range(H):
        for j in range(W):
            mu_a = mu_b = saa = sbb = sab = 0.0
            for di in range(-r, r + 1):
                for dj in range(-r, r + 1):
                    y, x = i + di, j + dj
                    if 0 <= y < H and 0 <= x < W:
                        wt = w2[di + r, dj + r]
                        mu_a += wt * a[y, x]
                        mu_b += wt * b[y, x]
                        saa += wt * a[y, x] ** 2
                        sbb += wt * b[y, x] ** 2
                        sab += wt * a[y, x] * b[y, x]
            va, vb, cov = saa - mu_a**2, sbb - mu_b**2, sab - mu_a * mu_b
            out[i, j] = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (va + vb + c2))
    return out


def test_ssim_identical_images_is_one():
    img = torch.rand(2, 16, 16, 3)
    torch.testing.assert_close(masked_ssim(img, img), torch.ones(2))
    torch.testing.assert_close(masked_ssim(img, img, torch.rand(2, 16, 16) > 0.5), torch.ones(2))


def test_ssim_matches_loop_reference_and_masking():
    a = torch.rand(1, 9, 12, 3, dtype=torch.float64)
    b = (a + 0.2 * torch.rand_like(a)).clamp(0, 1)
    ref = np.stack([_ssim_map_loop(a[0, ..., c].numpy(), b[0, ..., c].numpy()) for c in range(3)])  # (3, H, W)
    torch.testing.assert_close(masked_ssim(a, b), torch.tensor([ref.mean()], dtype=torch.float64))
    mask = torch.zeros(1, 9, 12, dtype=torch.bool)
    mask[0, 2:6, 3:10] = True
    want = ref[:, mask[0].numpy()].mean()
    torch.testing.assert_close(masked_ssim(a, b, mask), torch.tensor([want], dtype=torch.float64))


def _som_blur_loop(z: np.ndarray, m: np.ndarray) -> np.ndarray:
    """DyCheck/SoM masked separable blur of one (H, W) channel: x pass, then y pass, 'valid'."""
    g = _gauss()
    n = len(g)

    def one_pass(z, m):  # along axis 1
        H, W = z.shape
        out = np.zeros((H, W - n + 1))
        mout = np.zeros((H, W - n + 1))
        for i in range(H):
            for j in range(W - n + 1):
                cnt = m[i, j : j + n].sum()
                if cnt > 0:
                    out[i, j] = (g * z[i, j : j + n] * m[i, j : j + n]).sum() * n / cnt
                    mout[i, j] = 1.0
        return out, mout

    zx, mx = one_pass(z, m)
    zy, _ = one_pass(zx.T, mx.T)
    return zy.T


def _mssim_som_loop(a: np.ndarray, b: np.ndarray, m: np.ndarray) -> float:
    vals = []
    for c in range(3):
        x, y = a[..., c], b[..., c]
        mu0, mu1 = _som_blur_loop(x, m), _som_blur_loop(y, m)
        s00 = np.maximum(_som_blur_loop(x * x, m) - mu0**2, 0)
        s11 = np.maximum(_som_blur_loop(y * y, m) - mu1**2, 0)
        s01 = _som_blur_loop(x * y, m) - mu0 * mu1
        s01 = np.sign(s01) * np.minimum(np.sqrt(s00 * s11), np.abs(s01))
        c1, c2 = 0.01**2, 0.03**2
        vals.append(((2 * mu0 * mu1 + c1) * (2 * s01 + c2)) / ((mu0**2 + mu1**2 + c1) * (s00 + s11 + c2)))
    return float(np.mean(vals))


def test_mssim_som_full_mask_equals_valid_region_of_standard_ssim():
    a = torch.rand(1, 16, 18, 3, dtype=torch.float64)
    b = (a + 0.3 * torch.rand_like(a)).clamp(0, 1)
    ref = np.stack([_ssim_map_loop(a[0, ..., c].numpy(), b[0, ..., c].numpy()) for c in range(3)])
    want = ref[:, 5:-5, 5:-5].mean()  # windows fully inside the image
    torch.testing.assert_close(mssim_som(a, b), torch.tensor([want], dtype=torch.float64))
    torch.testing.assert_close(
        mssim_som(a, b, torch.ones(1, 16, 18, dtype=torch.float64)), torch.tensor([want], dtype=torch.float64)
    )


def test_mssim_som_partial_mask_matches_loop_reference():
    a = torch.rand(1, 14, 15, 3, dtype=torch.float64)
    b = (a + 0.3 * torch.rand_like(a)).clamp(0, 1)
    m = torch.zeros(1, 14, 15, dtype=torch.float64)
    m[0, 3:12, 2:9] = 1
    want = _mssim_som_loop(a[0].numpy(), b[0].numpy(), m[0].numpy())
    torch.testing.assert_close(mssim_som(a, b, m), torch.tensor([want], dtype=torch.float64))
    # pixels outside the mask do not matter at all
    b2 = b.clone()
    b2[0, m[0] == 0] = 0.0
    torch.testing.assert_close(mssim_som(a, b2, m), mssim_som(a, b, m))


def test_image_metrics_keys_and_lpips_unavailable():
    pred, target = torch.rand(2, 16, 16, 3), torch.rand(2, 16, 16, 3)
    fg = torch.zeros(2, 16, 16)
    fg[:, 4:10, 4:10] = 1
    out = image_metrics(pred, target, fg_mask=fg, covisible_mask=torch.ones(2, 16, 16))
    for k in ("psnr", "ssim", "mpsnr", "mssim", "fg_psnr", "fg_ssim", "bg_psnr", "bg_ssim"):
        assert out[k].shape == (2,)
    torch.testing.assert_close(out["fg_psnr"], masked_psnr(pred, target, fg))
    torch.testing.assert_close(out["bg_ssim"], masked_ssim(pred, target, 1 - fg))
    assert isinstance(out["lpips"], Unavailable) and isinstance(out["fg_lpips"], Unavailable)


# ---------------------------------------------------------------------------------------------- LPIPS


def test_lpips_without_weights_reports_unavailable(tmp_path):
    s = LpipsScorer()
    assert not s.available and "local weights" in s.reason
    r = s(torch.rand(1, 64, 64, 3), torch.rand(1, 64, 64, 3))
    assert isinstance(r, Unavailable) and r.reason == s.reason
    missing = LpipsScorer(tmp_path / "alex.pth", tmp_path / "alexnet.pth")
    assert not missing.available and "does not exist" in missing.reason
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    corrupt = LpipsScorer(bad, bad)
    assert not corrupt.available and "could not be loaded" in corrupt.reason


def _fake_lpips_files(tmp_path, wrong_shape=False):
    convs = [(0, 3, 64, 11), (3, 64, 192, 5), (6, 192, 384, 3), (8, 384, 256, 3), (10, 256, 256, 3)]
    backbone = {}
    for idx, cin, cout, k in convs:
        backbone[f"features.{idx}.weight"] = torch.randn(cout, cin, k, k) / math.sqrt(cin * k * k)
        backbone[f"features.{idx}.bias"] = torch.zeros(cout)
    if wrong_shape:
        backbone["features.3.weight"] = torch.zeros(1, 1, 1, 1)
    lin = {f"lin{i}.model.1.weight": torch.rand(1, c[2], 1, 1) for i, c in enumerate(convs)}
    torch.save(backbone, tmp_path / "alexnet.pth")
    torch.save(lin, tmp_path / "alex.pth")
    return tmp_path / "alex.pth", tmp_path / "alexnet.pth"


def test_lpips_with_local_weights_identical_zero_and_mask_as_som(tmp_path):
    s = LpipsScorer(*_fake_lpips_files(tmp_path))
    assert s.available, s.reason
    a = torch.rand(1, 64, 64, 3)
    b = torch.rand(1, 64, 64, 3)
    assert s(a, a).abs().max() < 1e-6
    assert s(a, b).item() > 0
    # With a mask the images are multiplied by it (as SoM's mLPIPS), so changes outside it are invisible.
    mask = torch.zeros(1, 64, 64)
    mask[:, 10:40, 10:40] = 1
    b_out = a.clone()
    b_out[:, 50:] = 1.0 - b_out[:, 50:]
    assert s(a, b_out, mask).abs().max() < 1e-6
    assert s(a, b_out).item() > 0
    wrong = LpipsScorer(*_fake_lpips_files(tmp_path, wrong_shape=True))
    assert not wrong.available and "features.3.weight" in wrong.reason


# ---------------------------------------------------------------------------------------------- depth


def test_depth_metrics_scaled_prediction_is_perfect_after_sequence_alignment():
    gt = 1.0 + torch.rand(3, 8, 9, dtype=torch.float64)
    gt[0, 0, :4] = 0.0  # invalid pixels
    gt[1, 2, 2] = float("nan")
    pred = 0.5 * gt.nan_to_num(3.0)
    pred[0, 0, :4] = 123.0  # garbage where gt is invalid must not matter
    r = depth_metrics(pred, gt)
    torch.testing.assert_close(r.per_frame["abs_rel"], torch.zeros(3, dtype=torch.float64), atol=1e-12, rtol=0)
    torch.testing.assert_close(r.per_frame["rmse"], torch.zeros(3, dtype=torch.float64), atol=1e-12, rtol=0)
    torch.testing.assert_close(r.per_frame["delta1"], torch.ones(3, dtype=torch.float64))
    assert r.aggregate["scale"] == pytest.approx(2.0)
    assert r.per_frame["num_valid"].tolist() == [72 - 4, 72 - 1, 72]


def test_depth_metrics_per_frame_scales_hand_value():
    # Two frames of 1 pixel each: gt = 1, pred = 1 and 0.5 (frame 2 is off by a factor 2).
    gt = torch.ones(2, 1, 1, dtype=torch.float64)
    pred = torch.tensor([1.0, 0.5], dtype=torch.float64).reshape(2, 1, 1)
    seq = depth_metrics(pred, gt, alignment="sequence")
    s = (1.0 + 0.5) / (1.0 + 0.25)  # sum(p g) / sum(p^2) = 1.2
    assert seq.aggregate["scale"] == pytest.approx(s)
    torch.testing.assert_close(seq.per_frame["abs_rel"], torch.tensor([s - 1, 1 - 0.5 * s], dtype=torch.float64))
    torch.testing.assert_close(seq.per_frame["rmse"], torch.tensor([s - 1, 1 - 0.5 * s], dtype=torch.float64))
    torch.testing.assert_close(
        seq.per_frame["delta1"], torch.tensor([1.0, 0.0], dtype=torch.float64)
    )  # ratios 1.2 and 1/0.6
    assert seq.aggregate["abs_rel"] == pytest.approx(((s - 1) + (1 - 0.5 * s)) / 2)
    fr = depth_metrics(pred, gt, alignment="frame")
    torch.testing.assert_close(fr.per_frame["abs_rel"], torch.zeros(2, dtype=torch.float64))
    torch.testing.assert_close(fr.per_frame["scale"], torch.tensor([1.0, 2.0], dtype=torch.float64))
    none = depth_metrics(pred, gt, alignment="none")
    torch.testing.assert_close(none.per_frame["abs_rel"], torch.tensor([0.0, 0.5], dtype=torch.float64))
    torch.testing.assert_close(none.per_frame["delta1"], torch.tensor([1.0, 0.0], dtype=torch.float64))


def test_depth_metrics_different_scales_per_frame_and_bad_input():
    gt = 1.0 + torch.rand(4, 6, 7)
    pred = gt * torch.tensor([1.0, 2.0, 3.0, 4.0])[:, None, None]
    assert depth_metrics(pred, gt, alignment="sequence").aggregate["abs_rel"] > 0.1
    assert depth_metrics(pred, gt, alignment="frame").aggregate["abs_rel"] < 1e-6
    with pytest.raises(ValueError, match="alignment"):
        depth_metrics(pred, gt, alignment="median")
    with pytest.raises(ValueError, match=r"\(T, H, W\)"):
        depth_metrics(pred[0], gt[0])


def _lstsq_disp_absrel(pred: np.ndarray, gt: np.ndarray, per_frame: bool) -> tuple[list[float], list, list]:
    """Slow reference: numpy lstsq of [1/pred, 1] onto 1/gt (over all frames, or per frame), AbsRel per frame."""
    frames = [np.arange(len(gt))] if not per_frame else [[t] for t in range(len(gt))]
    absrel, fits = [None] * len(gt), [None] * len(gt)
    for ids in frames:
        ok = gt[ids] > 0
        A = np.stack([1.0 / pred[ids][ok], np.ones(ok.sum())], -1)
        (s, t), *_ = np.linalg.lstsq(A, 1.0 / gt[ids][ok], rcond=None)
        for i in ids:
            m = gt[i] > 0
            d = 1.0 / (s / pred[i][m] + t)
            absrel[i] = float(np.mean(np.abs(d - gt[i][m]) / gt[i][m]))
            fits[i] = (s, t)
    return absrel, [f[0] for f in fits], [f[1] for f in fits]


def test_depth_metrics_scale_shift_of_disparity_against_lstsq_reference():
    g = torch.Generator().manual_seed(0)
    gt = 1.0 + torch.rand(3, 6, 7, generator=g, dtype=torch.float64)
    gt[0, 0, :3] = 0.0  # invalid
    pred = gt * (1.0 + 0.1 * torch.rand(3, 6, 7, generator=g, dtype=torch.float64))
    for alignment, per_frame in (("sequence_scale_shift", False), ("frame_scale_shift", True)):
        r = depth_metrics(pred, gt, alignment=alignment)
        absrel, s, t = _lstsq_disp_absrel(pred.numpy(), gt.numpy(), per_frame)
        np.testing.assert_allclose(r.per_frame["abs_rel"].numpy(), absrel, rtol=1e-9)
        np.testing.assert_allclose(r.per_frame["scale"].numpy(), s, rtol=1e-9)
        np.testing.assert_allclose(r.per_frame["shift"].numpy(), t, rtol=1e-9, atol=1e-12)
    assert r.per_frame["num_valid"].tolist() == [42 - 3, 42, 42]


def test_depth_metrics_scale_shift_separates_shape_from_offset():
    gt = 1.0 + torch.rand(4, 6, 7, dtype=torch.float64)
    # A disparity-affine copy of the truth (stretched range, right shape): perfect after a scale and shift of
    # disparity, wrong after a depth scale.
    stretched = 1.0 / (2.0 / gt - 0.6)
    assert depth_metrics(stretched, gt, alignment="sequence").aggregate["abs_rel"] > 0.05
    r = depth_metrics(stretched, gt, alignment="sequence_scale_shift")
    assert r.aggregate["abs_rel"] < 1e-9
    assert r.aggregate["scale"] == pytest.approx(0.5) and r.aggregate["shift"] == pytest.approx(0.3)
    # A depth whose disparity drifts per frame: one scale-and-shift per sequence cannot undo it, one per frame can.
    a = torch.tensor([0.8, 0.9, 1.1, 1.2], dtype=torch.float64)[:, None, None]
    drifting = 1.0 / (a / gt + (a - 1.0) * 0.5)
    assert depth_metrics(drifting, gt, alignment="sequence_scale_shift").aggregate["abs_rel"] > 0.03
    assert depth_metrics(drifting, gt, alignment="frame_scale_shift").aggregate["abs_rel"] < 1e-9
    # The raw prior is scored the same way, on its own disparity.
    p = prior_depth_metrics(2.0 / gt - 0.6, gt, alignment="sequence_scale_shift")
    assert p.aggregate["abs_rel"] < 1e-9 and p.aggregate["scale"] == pytest.approx(0.5)


def test_depth_metrics_scale_shift_clamps_negative_aligned_disparity():
    gt = torch.tensor([1.0, 1.0, 1.0, 2.0], dtype=torch.float64).reshape(1, 1, 4)
    pred = torch.tensor([1.0, 1.0, 1.0, 0.1], dtype=torch.float64).reshape(1, 1, 4)  # 1/pred: 1, 1, 1, 10
    r = depth_metrics(pred, gt, alignment="sequence_scale_shift")
    # lstsq of (1, 1, 1, 10) onto (1, 1, 1, 0.5): s = -1/18, t = 19/18, so pixel 4's aligned disparity is
    # 19/18 - 10/18 = 0.5 exactly and the others 1: perfect
    assert r.aggregate["abs_rel"] == pytest.approx(0.0, abs=1e-12)
    # true disparities 5..1 (ten pixels each) and one of 1; predicted disparities 1..5 and 8: the fit has a
    # negative scale (about -0.88, shift 5.69) and sends the last pixel to disparity -1.36 < 0
    gt_disp = torch.tensor([5.0, 4.0, 3.0, 2.0, 1.0] * 10 + [1.0], dtype=torch.float64)
    pred_disp = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0] * 10 + [8.0], dtype=torch.float64)
    r2 = depth_metrics(
        (1 / pred_disp).reshape(1, 1, -1), (1 / gt_disp).reshape(1, 1, -1), alignment="sequence_scale_shift"
    )
    assert math.isfinite(r2.aggregate["abs_rel"]) and math.isfinite(r2.aggregate["rmse"])
    s, t = r2.aggregate["scale"], r2.aggregate["shift"]
    assert s == pytest.approx(-0.88188976) and s * 8 + t < 0
    # the pixel sent to disparity <= 0 is clamped at 0.1 x the smallest true disparity (depth 10 here)
    d = 1.0 / (s * pred_disp + t).clamp_min(0.1 * 1.0)
    assert d[-1] == pytest.approx(10.0)
    ref = float(((d - 1 / gt_disp).abs() * gt_disp).mean())
    assert r2.aggregate["abs_rel"] == pytest.approx(ref, rel=1e-9)


def test_depth_metrics_no_valid_pixels_is_nan_with_note():
    r = depth_metrics(torch.ones(2, 3, 3), torch.zeros(2, 3, 3))
    assert math.isnan(r.aggregate["abs_rel"]) and "no valid" in r.notes["abs_rel"]
    assert torch.isnan(r.per_frame["abs_rel"]).all()


def test_prior_disparity_conversion_and_metrics():
    disp = torch.tensor([[[0.5, 0.0, -1.0, float("inf")]]])
    depth, ok = disp_to_depth(disp)
    assert ok.tolist() == [[[True, False, False, False]]]
    assert depth.tolist() == [[[2.0, 0.0, 0.0, 0.0]]]
    gt = 1.0 + torch.rand(2, 5, 5, dtype=torch.float64)
    prior_disp = 3.0 / gt  # disparity up to scale
    prior_disp[0, 0, 0] = 0.0  # unusable prior pixel: excluded
    r = prior_depth_metrics(prior_disp, gt)
    assert r.aggregate["abs_rel"] < 1e-12
    assert r.aggregate["scale"] == pytest.approx(3.0)
    assert r.per_frame["num_valid"].tolist() == [24, 25]


def test_depth_metrics_on_real_rgbd_depth(real_data):
    cv2 = pytest.importorskip("cv2")
    d = cv2.imread(str(real_data / "7scenes_tsdf_fusion" / "frame-000050.depth.png"), cv2.IMREAD_UNCHANGED)
    gt = torch.from_numpy(d.astype(np.float64) / 1000.0)[None]  # metres, 0 = invalid
    assert (gt == 0).any() and (gt > 0).any()
    pred = torch.where(gt > 0, 0.37 * gt, torch.full_like(gt, 50.0))  # garbage where invalid
    r = depth_metrics(pred, gt)
    assert r.aggregate["abs_rel"] < 1e-9 and r.aggregate["delta1"] == 1.0
    assert r.aggregate["scale"] == pytest.approx(1 / 0.37)
    # a 10 % relative error on every valid pixel, uniform: AbsRel = 0.1 with no alignment
    r2 = depth_metrics(torch.where(gt > 0, 1.1 * gt, gt), gt, alignment="none")
    assert r2.aggregate["abs_rel"] == pytest.approx(0.1)


# ---------------------------------------------------------------------------------------------- order


def test_ordinal_accuracy_monotone_reversed_and_kind():
    gt = torch.linspace(1.0, 5.0, 400).reshape(1, 20, 20)
    pred_good = 2.0 * gt**2  # monotone in gt
    pred_bad = 10.0 - gt  # reversed
    assert depth_order_accuracy(pred_good, gt, "depth", num_pairs=2000).aggregate["accuracy"] == 1.0
    assert depth_order_accuracy(pred_bad, gt, "depth", num_pairs=2000).aggregate["accuracy"] == 0.0
    disp = 1.0 / gt  # disparity of the same scene: a correct depth agrees with it under kind="disparity"
    assert depth_order_accuracy(pred_good, disp, "disparity", num_pairs=2000).aggregate["accuracy"] == 1.0
    assert depth_order_accuracy(pred_good, disp, "depth", num_pairs=2000).aggregate["accuracy"] == 0.0
    with pytest.raises(ValueError, match="kind"):
        depth_order_accuracy(pred_good, gt, "inverse_depth")


def test_ordinal_accuracy_skips_near_ties_seeded_and_partial():
    ref = torch.ones(1, 10, 10)
    ref[0, :5] = 2.0  # two flat regions: within-region pairs are ties
    pred = torch.rand(1, 10, 10) + torch.where(ref > 1.5, 5.0, 0.0)  # correct across regions, random within
    r = depth_order_accuracy(pred, ref, "depth", num_pairs=3000, tie_threshold=0.05, seed=3)
    assert r.aggregate["accuracy"] == 1.0  # all within-region (random-order) pairs were ties, skipped
    assert 1000 < r.aggregate["num_pairs"] < 2000  # about half the pairs cross regions
    r2 = depth_order_accuracy(pred, ref, "depth", num_pairs=3000, tie_threshold=0.05, seed=3)
    assert r2.aggregate["num_pairs"] == r.aggregate["num_pairs"]
    # half of the reference swapped: about half of the cross pairs are wrong
    ref2 = ref.clone()
    ref2[0, :5, :5] = 0.5
    acc = depth_order_accuracy(pred, ref2, "depth", num_pairs=4000).aggregate["accuracy"]
    assert 0.3 < acc < 0.8
    none = depth_order_accuracy(pred, torch.ones(1, 10, 10), "depth")
    assert math.isnan(none.aggregate["accuracy"]) and "near-tie" in none.notes["accuracy"]


# ---------------------------------------------------------------------------------------------- temporal


def test_temporal_consistency_static_zero_flow():
    d = 1.0 + torch.rand(2, 8, 10)
    r = temporal_consistency(d, d.clone(), torch.zeros(2, 8, 10, 2))
    torch.testing.assert_close(r.per_frame["value"], torch.zeros(2))
    assert r.per_frame["num_valid"].tolist() == [80.0, 80.0]


def test_temporal_consistency_translated_ramp_known_value():
    # Depth ramp d_t(x, y) = 1 + 0.1 x. Frame t+1 is the scene moved 2 px right and 0.05 farther:
    # d_{t+1}(x, y) = 1.05 + 0.1 (x - 2). With flow (+2, 0), d_{t+1}(x + 2) = d_t(x) + 0.05.
    H, W = 6, 12
    xs = torch.arange(W, dtype=torch.float64).expand(H, W)
    d0 = (1.0 + 0.1 * xs)[None]
    d1 = (1.05 + 0.1 * (xs - 2))[None]
    flow = torch.zeros(1, H, W, 2, dtype=torch.float64)
    flow[..., 0] = 2.0
    r = temporal_consistency(d0, d1, flow)
    inside = xs[0, : W - 2]  # targets x + 2 <= W - 1
    want = (0.05 / (1.0 + 0.1 * inside)).mean()
    torch.testing.assert_close(r.per_frame["value"], want[None])
    assert r.per_frame["num_valid"].item() == H * (W - 2)
    # the fb mask restricts the pixels; an empty one is NaN
    valid = torch.zeros(1, H, W, dtype=torch.bool)
    valid[0, :, 0] = True
    r2 = temporal_consistency(d0, d1, flow, valid)
    torch.testing.assert_close(r2.per_frame["value"], torch.tensor([0.05], dtype=torch.float64))
    r3 = temporal_consistency(d0, d1, flow, torch.zeros_like(valid))
    assert math.isnan(r3.aggregate["value"])


def test_temporal_consistency_subpixel_flow_and_bad_shape():
    H, W = 5, 8
    xs = torch.arange(W, dtype=torch.float64).expand(H, W)
    d = (2.0 + 0.2 * xs)[None]
    flow = torch.zeros(1, H, W, 2, dtype=torch.float64)
    flow[..., 0] = 0.5  # bilinear read of a linear ramp is exact: d(x + 0.5) - d(x) = 0.1
    r = temporal_consistency(d, d, flow)
    want = (0.1 / (2.0 + 0.2 * xs[:, : W - 1])).mean()
    torch.testing.assert_close(r.aggregate["value"], want.item())
    with pytest.raises(ValueError, match="flow must be"):
        temporal_consistency(d, d, flow.permute(0, 3, 1, 2))


# ---------------------------------------------------------------------------------------------- tracking


def test_tracking_metrics_hand_values():
    gt = torch.zeros(2, 3, 2)
    pred = gt.clone()
    pred[0, 0] = torch.tensor([3.0, 4.0])  # 5 px
    pred[0, 1] = torch.tensor([0.5, 0.0])  # 0.5 px
    pred[0, 2] = torch.tensor([100.0, 0.0])  # not visible: ignored
    pred[1, 0] = torch.tensor([0.0, 2.0])  # exactly 2 px: not within 2 (strict <)
    pred[1, 1] = torch.tensor([0.0, 12.0])
    pred[1, 2] = torch.tensor([0.0, 0.0])
    vis = torch.tensor([[True, True, False], [True, True, True]])
    r = tracking_metrics(pred, gt, vis)
    dists = [5.0, 0.5, 2.0, 12.0, 0.0]
    assert r.aggregate["epe"] == pytest.approx(sum(dists) / 5)
    want = {1: 2 / 5, 2: 2 / 5, 4: 3 / 5, 8: 4 / 5, 16: 5 / 5}
    for d, f in want.items():
        assert r.aggregate[f"within_{d}"] == pytest.approx(f)
    assert r.aggregate["delta_avg"] == pytest.approx(sum(want.values()) / 5)
    torch.testing.assert_close(r.per_frame["epe"], torch.tensor([3.5, 6.25, 0.0]))
    # excluding each track's query frame (track 0 queried at t=0, track 1 at t=2)
    rq = tracking_metrics(pred, gt, vis, query_t=torch.tensor([0, 2]))
    assert rq.aggregate["epe"] == pytest.approx((0.5 + 2.0 + 12.0) / 3)


def test_keypoint_pck_hand_values():
    # img 100 x 60 -> threshold 0.05 * 100 = 5 px
    gt = torch.zeros(2, 3, 2)
    pred = torch.tensor([[[4.9, 0.0], [5.0, 0.0], [0.0, 1.0]], [[10.0, 0.0], [0.0, 0.0], [0.0, 0.0]]])
    vis = torch.tensor([[True, True, True], [True, False, False]])
    r = keypoint_pck(pred, gt, vis, img_wh=(100, 60))
    assert r.aggregate["threshold_px"] == pytest.approx(5.0)
    torch.testing.assert_close(r.per_frame["pck"], torch.tensor([2 / 3, 0.0]))
    assert r.aggregate["pck"] == pytest.approx((2 / 3 + 0.0) / 2)
    # Shape of Motion counts a pair without visible keypoints as 0 (correct / clamp(total, 1e-8)), in the mean
    vis3 = torch.cat([vis, torch.zeros(1, 3, dtype=torch.bool)])
    r3 = keypoint_pck(torch.cat([pred, pred[:1]]), torch.cat([gt, gt[:1]]), vis3, img_wh=(100, 60))
    torch.testing.assert_close(r3.per_frame["pck"], torch.tensor([2 / 3, 0.0, 0.0]))
    assert r3.aggregate["pck"] == pytest.approx((2 / 3 + 0.0 + 0.0) / 3)
    assert r3.aggregate["num_empty_pairs"] == 1 and "count as 0" in r3.notes["pck"]
    empty = keypoint_pck(pred, gt, torch.zeros(2, 3, dtype=torch.bool), img_wh=(100, 60))
    assert empty.aggregate["pck"] == 0.0 and empty.aggregate["num_empty_pairs"] == 2
    with pytest.raises(ValueError, match="visible"):
        keypoint_pck(pred, gt, vis[:, :2], img_wh=(100, 60))


def _instrument_mask(B: int = 2, H: int = 24, W: int = 20) -> Tensor:
    valid = torch.ones(B, H, W)
    valid[:, 6:14, 5:11] = 0  # an "instrument" inside the image
    valid[1, :, -3:] = 0  # and one touching the border
    return valid


def test_image_metrics_ignore_invalid_pixels_of_both_images():
    """Ignored pixels (valid_mask 0) change no metric, whatever either image holds there (SSIM windows
    included); the control without the mask shows those values do matter otherwise."""
    g = torch.Generator().manual_seed(0)
    pred, target = torch.rand(2, 24, 20, 3, generator=g), torch.rand(2, 24, 20, 3, generator=g)
    valid = _instrument_mask()
    pred2, target2 = pred.clone(), target.clone()
    noise = torch.rand(2, 24, 20, 3, generator=g)
    pred2[valid == 0] = noise[valid == 0]
    target2[valid == 0] = noise.flip(0)[valid == 0]
    a = image_metrics(pred, target, fg_mask=valid, valid_mask=valid)
    b = image_metrics(pred2, target2, fg_mask=valid, valid_mask=valid)
    for k in ("psnr", "ssim", "ssim_endo", "fg_psnr", "fg_ssim"):
        assert torch.equal(a[k], b[k]), k
    c = image_metrics(pred, target, fg_mask=valid)
    d = image_metrics(pred2, target2, fg_mask=valid)
    assert not torch.equal(c["ssim"], d["ssim"]) and not torch.equal(c["psnr"], d["psnr"])
    assert not torch.equal(c["fg_ssim"], d["fg_ssim"])  # the SSIM windows see the ignored pixels


def test_image_metrics_endonerf_protocol_against_hand_reference():
    """PSNR over valid pixels = EndoGaussian's masked PSNR (MSE over the mask's pixels); ssim_endo = the
    whole-image mean SSIM of both images times the mask (checked with a per-pixel loop over the window)."""
    g = torch.Generator().manual_seed(1)
    pred, target = (
        torch.rand(1, 14, 13, 3, generator=g, dtype=torch.float64),
        torch.rand(1, 14, 13, 3, generator=g, dtype=torch.float64),
    )
    valid = torch.ones(1, 14, 13, dtype=torch.float64)
    valid[0, 3:8, 4:9] = 0
    out = image_metrics(pred, target, valid_mask=valid)
    m = valid[0].bool()
    mse = ((pred[0][m] - target[0][m]) ** 2).mean()
    torch.testing.assert_close(out["psnr"][0], -10 * torch.log10(mse))
    # slow reference SSIM: 11x11 Gaussian window (sigma 1.5), zero padding, C1 = 0.01^2, C2 = 0.03^2
    x, y = (pred[0] * valid[0, ..., None]).permute(2, 0, 1), (target[0] * valid[0, ..., None]).permute(2, 0, 1)
    k = torch.exp(-((torch.arange(11, dtype=torch.float64) - 5) ** 2) / (2 * 1.5**2))
    k = k / k.sum()
    w2 = k[:, None] * k[None, :]
    xp, yp = F.pad(x, (5, 5, 5, 5)), F.pad(y, (5, 5, 5, 5))
    vals = []
    for c in range(3):
        for i in range(14):
            for j in range(13):
                px, py = xp[c, i : i + 11, j : j + 11], yp[c, i : i + 11, j : j + 11]
                mx, my = (w2 * px).sum(), (w2 * py).sum()
                vx, vy = (w2 * px * px).sum() - mx**2, (w2 * py * py).sum() - my**2
                cxy = (w2 * px * py).sum() - mx * my
                vals.append(((2 * mx * my + 1e-4) * (2 * cxy + 9e-4)) / ((mx**2 + my**2 + 1e-4) * (vx + vy + 9e-4)))
    torch.testing.assert_close(out["ssim_endo"][0], torch.stack(vals).mean())
    assert isinstance(out["lpips_endo"], Unavailable)
