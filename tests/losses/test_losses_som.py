"""Shape-of-Motion base terms: masked / trimmed L1 and MSE, disparity gradients, accelerations."""

from __future__ import annotations

import pytest
import torch

from flow3d.losses import (
    disparity_gradient_loss,
    masked_l1_loss,
    masked_mse_loss,
    motion_acceleration_loss,
    ray_velocity_loss,
    rgb_loss,
    se3_smoothness_loss,
    ssim_map,
    z_acceleration_loss,
)


class TestMaskedL1MSE:
    def test_hand_values(self):
        pred = torch.tensor([[1.0], [2.0], [3.0], [100.0]])
        gt = torch.zeros(4, 1)
        assert float(masked_l1_loss(pred, gt)) == pytest.approx(26.5)
        # 0.75-quantile of [1, 2, 3, 100] (linear) = 3 + 0.25 * 97 = 27.25 -> keep 1, 2, 3 -> mean 2
        assert float(masked_l1_loss(pred, gt, quantile=0.75)) == pytest.approx(2.0)
        assert float(masked_mse_loss(pred, gt, quantile=0.75)) == pytest.approx(14.0 / 3)
        w = torch.tensor([1.0, 0.0, 1.0, 0.0])
        assert float(masked_l1_loss(pred, gt, w)) == pytest.approx(2.0)
        # a per-row mask: rows are trimmed on their mean residual (row means 2, 0, 10; median 2 -> keep 2
        # rows: (1 + 3 + 0 + 0) / 4)
        p2 = torch.tensor([[1.0, 3.0], [0.0, 0.0], [10.0, 10.0]])
        assert float(masked_l1_loss(p2, torch.zeros(3, 2), torch.ones(3), quantile=0.5)) == pytest.approx(1.0)
        # no mask (or a full-shape one): each entry is trimmed (median of [1,3,0,0,10,10] = 2 -> keep 1,0,0)
        assert float(masked_l1_loss(p2, torch.zeros(3, 2), quantile=0.5)) == pytest.approx(1.0 / 3)
        assert float(masked_l1_loss(p2, torch.zeros(3, 2), torch.ones(3, 2), quantile=0.5)) == pytest.approx(1.0 / 3)

    def test_disparity_map_trimmed_per_pixel(self):
        # A (B, H, W) map with a (B, H, W) mask: the outlier pixel is dropped, not its whole image row.
        pred = torch.zeros(1, 4, 5)
        pred[0, 1, 2] = 100.0
        pred[0, 1, 3] = 1.0
        got = masked_l1_loss(pred, torch.zeros(1, 4, 5), torch.ones(1, 4, 5), quantile=0.96)  # threshold 24.76
        assert float(got) == pytest.approx(1.0 / 19)

    def test_trimmed_equal_residuals_not_nan(self):
        # Shape of Motion's `loss < quantile` keeps nothing when every residual is equal -> NaN.
        pred = torch.full((10, 3), 2.0, requires_grad=True)
        loss = masked_l1_loss(pred, torch.ones(10, 3), quantile=0.9)
        loss.backward()
        assert loss.item() == pytest.approx(1.0)
        assert torch.isfinite(pred.grad).all()
        loss = masked_l1_loss(pred, pred.detach().clone(), quantile=0.98)
        assert loss.item() == 0.0

    def test_quantile_over_valid_rows_only(self):
        pred = torch.tensor([[1.0], [2.0], [3.0], [4.0], [500.0]])
        mask = torch.tensor([True, True, True, True, False])
        # the invalid 500 must not shift the threshold: 0.5-quantile of [1,2,3,4] = 2.5 -> mean(1, 2)
        assert float(masked_l1_loss(pred, torch.zeros(5, 1), mask, quantile=0.5)) == pytest.approx(1.5)

    def test_mask_shapes_no_silent_broadcast(self):
        pred = torch.rand(2, 4, 5, 3)
        gt = torch.rand(2, 4, 5, 3)
        m = (torch.rand(2, 4, 5) > 0.5).float()
        a = masked_l1_loss(pred, gt, m)
        torch.testing.assert_close(masked_l1_loss(pred, gt, m[..., None]), a)
        torch.testing.assert_close(masked_l1_loss(pred, gt, m[..., None].expand(2, 4, 5, 3)), a)
        want = ((pred - gt).abs() * m[..., None]).sum() / (3 * m.sum())
        torch.testing.assert_close(a, want)
        with pytest.raises(ValueError, match=r"mask has shape \(4, 5\) but pred has shape \(2, 4, 5, 3\)"):
            masked_l1_loss(pred, gt, m[0])
        with pytest.raises(ValueError, match=r"gt has shape \(2, 4, 5, 1\)"):
            masked_l1_loss(pred, gt[..., :1])
        with pytest.raises(ValueError, match="quantile"):
            masked_l1_loss(pred, gt, quantile=0.0)

    def test_empty_mask_and_nan_gt(self):
        pred = torch.rand(6, 2, requires_grad=True)
        gt = torch.rand(6, 2)
        loss = masked_mse_loss(pred, gt, torch.zeros(6), quantile=0.9)
        loss.backward()
        assert loss.item() == 0.0 and torch.isfinite(pred.grad).all()
        bad = gt.clone()
        bad[0, 0] = float("nan")
        ok = torch.ones(6, 2)
        ok[0, 0] = 0
        torch.testing.assert_close(masked_l1_loss(pred, bad), masked_l1_loss(pred, gt, ok))

    def test_gradcheck(self):
        pred = torch.rand(5, 2, dtype=torch.float64, requires_grad=True)
        gt = torch.rand(5, 2, dtype=torch.float64)
        w = torch.rand(5, dtype=torch.float64)
        assert torch.autograd.gradcheck(lambda x: masked_l1_loss(x, gt, w, quantile=0.8), (pred,))
        assert torch.autograd.gradcheck(lambda x: masked_mse_loss(x, gt, w), (pred,))


class TestDisparityGradientLoss:
    def test_hand_value(self):
        pred = torch.tensor([[[0.0, 1.0, 3.0]]])
        prior = torch.tensor([[[0.0, 2.0, 3.0]]])
        # x differences [1, 2] vs [2, 1] -> mean |.| = 1; no y differences (H = 1) -> 0
        assert float(disparity_gradient_loss(pred, prior, quantile=1.0)) == pytest.approx(1.0)

    def test_loop_reference_with_mask(self):
        g = torch.Generator().manual_seed(0)
        pred = torch.rand(2, 5, 6, generator=g, dtype=torch.float64)
        prior = torch.rand(2, 5, 6, generator=g, dtype=torch.float64)
        mask = torch.rand(2, 5, 6, generator=g) > 0.3
        ex, ey = [], []
        for b in range(2):
            for i in range(5):
                for j in range(6):
                    if j + 1 < 6 and mask[b, i, j] and mask[b, i, j + 1]:
                        ex.append(abs(float(pred[b, i, j + 1] - pred[b, i, j] - prior[b, i, j + 1] + prior[b, i, j])))
                    if i + 1 < 5 and mask[b, i, j] and mask[b, i + 1, j]:
                        ey.append(abs(float(pred[b, i + 1, j] - pred[b, i, j] - prior[b, i + 1, j] + prior[b, i, j])))
        want = sum(ex) / len(ex) + sum(ey) / len(ey)
        assert float(disparity_gradient_loss(pred, prior, mask, quantile=1.0)) == pytest.approx(want, rel=1e-10)

    def test_identical_shift_invariant_and_empty(self):
        pred = torch.rand(2, 6, 7, requires_grad=True)
        assert disparity_gradient_loss(pred, pred.detach() + 3.0).item() == pytest.approx(0.0, abs=1e-6)
        loss = disparity_gradient_loss(pred, torch.rand(2, 6, 7), torch.zeros(2, 6, 7))
        loss.backward()
        assert loss.item() == 0.0 and torch.isfinite(pred.grad).all()
        with pytest.raises(ValueError, match="prior_disp has shape"):
            disparity_gradient_loss(pred, torch.rand(2, 6, 6))

    def test_gradcheck(self):
        pred = torch.rand(1, 4, 4, dtype=torch.float64, requires_grad=True)
        prior = torch.rand(1, 4, 4, dtype=torch.float64)
        assert torch.autograd.gradcheck(lambda x: disparity_gradient_loss(x, prior, quantile=0.9), (pred,))


class TestAccelerations:
    def test_motion_acceleration_hand(self):
        t = torch.arange(6, dtype=torch.float64)
        quad = torch.stack([t**2, torch.zeros_like(t)], -1)[None]  # (1, T, 2): second difference 2
        assert float(motion_acceleration_loss(quad)) == pytest.approx(2.0)
        lin = torch.stack([3 * t, -t, t + 1], -1)[None].requires_grad_(True)
        loss = motion_acceleration_loss(lin)
        loss.backward()
        assert loss.item() == 0.0 and torch.isfinite(lin.grad).all()  # finite at zero acceleration
        assert float(motion_acceleration_loss(torch.rand(3, 2, 4))) == 0.0

    def test_se3(self):
        t = torch.arange(5, dtype=torch.float64)
        transl = torch.stack([t**2, t, t], -1)[None].expand(2, 5, 3)
        rots = torch.zeros(2, 5, 6, dtype=torch.float64)
        assert float(se3_smoothness_loss(rots, transl)) == pytest.approx(4.0)
        with pytest.raises(ValueError, match="disagree"):
            se3_smoothness_loss(rots[:, :4], transl)

    def test_z_acceleration(self):
        t = torch.arange(5, dtype=torch.float64)
        along = torch.stack([torch.zeros_like(t), torch.zeros_like(t), 5 + t**2], -1)  # on the optical axis
        assert float(z_acceleration_loss(along)) == pytest.approx(2.0)
        across = torch.stack([t**2, torch.zeros_like(t), torch.full_like(t, 5.0)], -1)[None]
        # acceleration (2, 0, 0) at x_t = (t^2, 0, 5): component along the ray = 2 t^2 / sqrt(t^4 + 25)
        want = sum(2 * k**2 / (k**4 + 25) ** 0.5 for k in (1, 2, 3)) / 3
        assert float(z_acceleration_loss(across)) == pytest.approx(want)
        # uniform motion has no acceleration, and the camera centre is safe
        pts = torch.zeros(2, 4, 3, requires_grad=True)
        loss = z_acceleration_loss(pts)
        loss.backward()
        assert loss.item() == 0.0 and torch.isfinite(pts.grad).all()
        m = torch.tensor([1.0, 0.0, 0.0])
        assert float(z_acceleration_loss(across, m[None])) == pytest.approx(2 / 26**0.5)
        with pytest.raises(ValueError, match="mask has shape"):
            z_acceleration_loss(across, torch.ones(4))

    def test_ray_velocity_is_soms_shipped_z_acc(self):
        t = torch.arange(5, dtype=torch.float64)
        along = torch.stack([torch.zeros_like(t), torch.zeros_like(t), 5 + t**2], -1)  # on the optical axis
        # middle frames 1, 2, 3: velocities before 1, 3, 5 and after 3, 5, 7 (all along the ray)
        assert float(ray_velocity_loss(along)) == pytest.approx((1 + 9 + 25) / 3 + (9 + 25 + 49) / 3)
        across = torch.stack([t**2, torch.zeros_like(t), torch.full_like(t, 5.0)], -1)[None]
        # ray r_k = (k^2, 0, 5) / sqrt(k^4 + 25); velocity (2k - 1, 0, 0) before, (2k + 1, 0, 0) after
        before = [((2 * k - 1) * k**2) ** 2 / (k**4 + 25) for k in (1, 2, 3)]
        after = [((2 * k + 1) * k**2) ** 2 / (k**4 + 25) for k in (1, 2, 3)]
        assert float(ray_velocity_loss(across)) == pytest.approx(sum(before) / 3 + sum(after) / 3)
        # unlike the acceleration form, uniform motion in depth is penalised
        uniform = torch.stack([torch.zeros_like(t), torch.zeros_like(t), 5 + 2 * t], -1)
        assert float(z_acceleration_loss(uniform)) == pytest.approx(0.0, abs=1e-12)
        assert float(ray_velocity_loss(uniform)) == pytest.approx(8.0)
        side = torch.stack([t - 2, torch.zeros_like(t), torch.zeros_like(t)], -1)  # x[2] is the camera centre
        pts = side.clone().requires_grad_(True)
        loss = ray_velocity_loss(pts)
        loss.backward()
        assert torch.isfinite(loss) and torch.isfinite(pts.grad).all()
        assert float(ray_velocity_loss(along[:2])) == 0.0
        with pytest.raises(ValueError, match="points_cam must be"):
            ray_velocity_loss(along[..., :2])

    def test_gradcheck(self):
        x = torch.rand(2, 5, 3, dtype=torch.float64, requires_grad=True) + 1.0
        assert torch.autograd.gradcheck(motion_acceleration_loss, (x,))
        assert torch.autograd.gradcheck(z_acceleration_loss, (x,))
        assert torch.autograd.gradcheck(ray_velocity_loss, (x,))


class TestRgbLoss:
    def test_values(self):
        g = torch.Generator().manual_seed(0)
        a = torch.rand(2, 16, 16, 3, generator=g, dtype=torch.float64)
        b = torch.rand(2, 16, 16, 3, generator=g, dtype=torch.float64)
        assert float(rgb_loss(a, a.clone())) == pytest.approx(0.0, abs=1e-12)
        s = ssim_map(a.permute(0, 3, 1, 2), b.permute(0, 3, 1, 2)).mean()
        want = 0.8 * (a - b).abs().mean() + 0.2 * (1 - s)
        torch.testing.assert_close(rgb_loss(a, b), want)
        m = torch.zeros(2, 16, 16, dtype=torch.bool)
        m[:, :8] = True
        c = b.clone()
        c[:, 8:] = a[:, 8:]  # differ only in the masked-in half
        loss_full = rgb_loss(a, c)
        loss_m = rgb_loss(a, c, m)
        assert float(loss_m) > float(loss_full)
        x = a.clone().requires_grad_(True)
        loss = rgb_loss(x, b, torch.zeros(2, 16, 16))
        loss.backward()
        assert loss.item() == 0.0 and torch.isfinite(x.grad).all()
        with pytest.raises(ValueError, match="mask has shape"):
            rgb_loss(a, b, m[0])

    def test_pixels_outside_the_mask_never_matter_also_inside_ssim_windows(self):
        """An ignored pixel (mask False) acts as zero padding in both images: the loss and its gradient are
        bit-identical whatever either image holds there, including at valid pixels whose 11x11 SSIM window
        reaches into the ignored region; a slow reference (zero-filled images, mean over the mask) agrees."""
        g = torch.Generator().manual_seed(1)
        a = torch.rand(2, 20, 24, 3, generator=g, dtype=torch.float64)
        b = torch.rand(2, 20, 24, 3, generator=g, dtype=torch.float64)
        m = torch.ones(2, 20, 24, dtype=torch.bool)
        m[:, 6:12, 8:15] = False  # an "instrument" in the middle: many windows straddle it
        a2, b2 = a.clone(), b.clone()
        a2[~m] = torch.rand(int((~m).sum()), 3, generator=g, dtype=torch.float64)
        b2[~m] = 1e6  # absurd values under the mask
        grads = []
        for x0, y in ((a, b), (a2, b2)):
            x = x0.clone().requires_grad_(True)
            loss = rgb_loss(x, y, m)
            loss.backward()
            grads.append((loss.detach(), x.grad))
        assert torch.equal(grads[0][0], grads[1][0]) and torch.equal(grads[0][1], grads[1][1])
        assert (grads[0][1][~m] == 0).all()  # no gradient reaches a rendered ignored pixel
        af, bf = torch.where(m[..., None], a, 0.0), torch.where(m[..., None], b, 0.0)
        smap = ssim_map(af.permute(0, 3, 1, 2), bf.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        want = 0.8 * (af - bf).abs()[m].mean() + 0.2 * (1 - smap[m].mean())
        torch.testing.assert_close(grads[0][0], want)
        # control: without the mask the same change is visible
        assert not torch.equal(rgb_loss(a, b), rgb_loss(a2, b2))

    def test_masked_gradcheck(self):
        g = torch.Generator().manual_seed(2)
        a = torch.rand(1, 12, 12, 3, generator=g, dtype=torch.float64, requires_grad=True)
        b = torch.rand(1, 12, 12, 3, generator=g, dtype=torch.float64)
        m = torch.rand(1, 12, 12, generator=g, dtype=torch.float64) > 0.3
        assert torch.autograd.gradcheck(lambda x: rgb_loss(x, b, m), (a,))


def test_ssim_separable_blur_matches_the_2d_window_and_gradcheck():
    """The default (separable, five moments in one call) against the 2D 11x11 window applied per moment."""
    import torch.nn.functional as F

    from flow3d.losses.photometric import gaussian_kernel_1d

    g = torch.Generator().manual_seed(1)
    a = torch.rand(2, 3, 13, 17, generator=g, dtype=torch.float64)
    b = torch.rand(2, 3, 13, 17, generator=g, dtype=torch.float64)
    k = gaussian_kernel_1d(11, 1.5, dtype=torch.float64)
    win2d = (k[:, None] * k[None, :]).expand(1, 1, 11, 11)

    def blur_2d(z):  # each channel on its own, the 2D window with zero padding
        return torch.cat([F.conv2d(z[:, c : c + 1], win2d, padding=5) for c in range(z.shape[1])], dim=1)

    torch.testing.assert_close(ssim_map(a, b), ssim_map(a, b, blur=blur_2d))
    x = a[:1, :, :7, :9].clone().requires_grad_(True)
    y = b[:1, :, :7, :9].clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda p, q: ssim_map(p, q, window_size=5), (x, y))
