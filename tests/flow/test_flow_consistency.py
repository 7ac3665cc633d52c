import math

import numpy as np
import pytest
import torch

from flow3d.flow import fb_confidence, fb_consistency_mask


def _bilinear(img, x, y):
    """Reference bilinear sample of img (H, W, C) at (x, y), border-clamped, written out by hand."""
    H, W = img.shape[:2]
    x, y = min(max(x, 0.0), W - 1.0), min(max(y, 0.0), H - 1.0)
    x0, y0 = int(math.floor(x)), int(math.floor(y))
    x1, y1 = min(x0 + 1, W - 1), min(y0 + 1, H - 1)
    ax, ay = x - x0, y - y0
    return (
        (1 - ax) * (1 - ay) * img[y0, x0]
        + ax * (1 - ay) * img[y0, x1]
        + (1 - ax) * ay * img[y1, x0]
        + ax * ay * img[y1, x1]
    )


def _naive(fw, bw, rule, **c):
    """Pixel-by-pixel loop version of the fb check, straight from the formulas in the issue."""
    H, W = fw.shape[:2]
    mask = np.zeros((H, W), bool)
    conf = np.zeros((H, W))
    for i in range(H):
        for j in range(W):
            f = fw[i, j].astype(np.float64)
            tx, ty = j + f[0], i + f[1]
            if not (0 <= tx <= W - 1 and 0 <= ty <= H - 1):
                continue
            b = _bilinear(bw.astype(np.float64), tx, ty)
            s = f + b
            if rule == "squared":
                r, tau = s @ s, c.get("alpha", 0.01) * (f @ f + b @ b) + c.get("beta", 0.5)
            elif rule == "lenient":
                r = np.linalg.norm(s)
                tau = c.get("alpha", 0.5) * (np.linalg.norm(f) + np.linalg.norm(b)) + c.get("beta", 0.5)
            else:
                r, tau = np.linalg.norm(s), c.get("threshold", 3.0)
            mask[i, j] = r < tau
            conf[i, j] = min(max(1 - r / tau, 0.0), 1.0)
    return mask, conf


def _random_pair(seed=0, H=13, W=17):
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:H, 0:W]
    fw = np.stack([1.5 + 0.3 * np.sin(xs / 3.0), -0.7 + 0.3 * np.cos(ys / 4.0)], axis=-1)  # smooth motion
    noise = rng.normal(size=(H, W, 2)) * rng.choice([0.05, 0.4, 1.5], size=(H, W, 1))  # mostly close, some not
    bw = -fw + noise
    return fw.astype(np.float64), bw.astype(np.float64)


@pytest.mark.parametrize(
    "rule, coeffs",
    [
        ("squared", {}),
        ("lenient", {}),
        ("fixed", {}),
        ("squared", {"alpha": 0.05, "beta": 0.2}),
        ("lenient", {"alpha": 0.1, "beta": 1.0}),
        ("fixed", {"threshold": 0.7}),
    ],
)
def test_matches_naive_loop(rule, coeffs):
    fw, bw = _random_pair()
    ref_mask, ref_conf = _naive(fw, bw, rule, **coeffs)
    mask = fb_consistency_mask(fw, bw, rule, **coeffs)
    conf = fb_confidence(fw, bw, rule, **coeffs)
    assert isinstance(mask, np.ndarray) and mask.dtype == bool and mask.shape == fw.shape[:2]
    np.testing.assert_array_equal(mask, ref_mask)
    np.testing.assert_allclose(conf, ref_conf, atol=1e-9)
    assert 0.2 < ref_mask.mean() < 0.95  # the random pair exercises both outcomes


def test_torch_in_torch_out_and_batched():
    fw, bw = _random_pair(1)
    tfw, tbw = torch.from_numpy(fw).float(), torch.from_numpy(bw).float()
    m = fb_consistency_mask(tfw, tbw)
    c = fb_confidence(tfw, tbw)
    assert torch.is_tensor(m) and m.dtype == torch.bool and torch.is_tensor(c) and c.dtype == torch.float32
    ref_mask, _ = _naive(fw, bw, "squared")
    assert (m.numpy() != ref_mask).sum() <= 1  # float32 vs float64 may flip a pixel sitting on the bound
    mb = fb_consistency_mask(torch.stack([tfw, tfw]), torch.stack([tbw, tbw]))
    assert mb.shape == (2, *fw.shape[:2]) and torch.equal(mb[0], m) and torch.equal(mb[1], m)


def test_translation_hand_computed():
    """Exact opposite translations: everything closes, only targets that leave the image are rejected."""
    H, W = 6, 8
    fw = np.zeros((H, W, 2), np.float32)
    fw[..., 0], fw[..., 1] = 2.0, 1.0
    mask = fb_consistency_mask(fw, -fw)
    expected = np.zeros((H, W), bool)
    expected[: H - 1, : W - 2] = True  # x + 2 <= 7 and y + 1 <= 5
    np.testing.assert_array_equal(mask, expected)
    conf = fb_confidence(fw, -fw)
    np.testing.assert_array_equal(conf, expected.astype(np.float32))


def test_rules_differ_on_small_motion_error():
    """A 0.8 px round-trip error on a 1 px motion: squared rejects (0.64 > 0.52), lenient keeps (0.8 < 1.4)."""
    fw = np.zeros((4, 4, 2), np.float32)
    bw = np.zeros((4, 4, 2), np.float32)
    fw[..., 0], bw[..., 0] = 1.0, -0.2
    assert not fb_consistency_mask(fw, bw, "squared")[:, :3].any()
    assert fb_consistency_mask(fw, bw, "lenient")[:, :3].all()
    assert fb_consistency_mask(fw, bw, "fixed", threshold=1.0)[:, :3].all()
    assert not fb_consistency_mask(fw, bw, "fixed", threshold=0.5)[:, :3].any()


def test_bad_arguments():
    fw = np.zeros((4, 4, 2), np.float32)
    with pytest.raises(ValueError, match="unknown fb rule"):
        fb_consistency_mask(fw, fw, "strict")
    with pytest.raises(ValueError, match="threshold"):
        fb_consistency_mask(fw, fw, "squared", threshold=1.0)
    with pytest.raises(ValueError, match="same shape"):
        fb_consistency_mask(fw, np.zeros((4, 5, 2), np.float32))
    with pytest.raises(ValueError, match="flow_fw"):
        fb_confidence(np.zeros((4, 4, 3)), np.zeros((4, 4, 3)))
