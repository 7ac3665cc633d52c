"""The embedded synthetic scene: ground truth is self-consistent and the prior drifts as asked."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from flow3d.data import SyntheticDataConfig, make_synthetic_sequence
from flow3d.geometry import bilinear_sample, project_points, unproject_pixels


@pytest.fixture(scope="module")
def seq():
    return make_synthetic_sequence(SyntheticDataConfig())


def test_shapes_and_ranges(seq):
    T, H, W = 24, 96, 128
    assert seq.images.shape == (T, H, W, 3) and seq.images.dtype == torch.float32
    assert 0 <= seq.images.min() and seq.images.max() <= 1
    assert seq.img_wh == (W, H) and seq.num_frames == T
    M = seq.tracks_xy.shape[0]
    assert M == T * (H // 8) * (W // 8)
    assert seq.tracks_visible.shape == (M, T) and seq.tracks_visible.dtype == torch.bool
    assert seq.gt_tracks_3d.shape == (M, T, 3)
    fg = seq.fg_masks.mean().item()
    assert 0.03 < fg < 0.5, fg  # objects are visible but do not fill the frame
    # every query point is visible in its own query frame
    assert seq.tracks_visible[torch.arange(M), seq.tracks_query_t].all()
    # some points get occluded or leave the image
    assert 0.5 < seq.tracks_visible.float().mean() < 0.98


def test_deterministic_from_seed():
    a = make_synthetic_sequence(SyntheticDataConfig(num_frames=4, width=48, height=32))
    b = make_synthetic_sequence(SyntheticDataConfig(num_frames=4, width=48, height=32))
    c = make_synthetic_sequence(SyntheticDataConfig(num_frames=4, width=48, height=32, seed=1))
    assert torch.equal(a.images, b.images) and torch.equal(a.prior_disp, b.prior_disp)
    assert not torch.equal(a.images, c.images)


def test_gt_depth_backprojects_onto_gt_tracks(seq):
    """The GT depth at a query pixel, back-projected with the cameras, is the track's GT 3D point."""
    q = seq.tracks_query_t
    M = q.shape[0]
    xy = seq.tracks_xy[torch.arange(M), q]  # integer pixel centres
    assert torch.equal(xy, xy.round())
    z = seq.gt_depth[q, xy[:, 1].long(), xy[:, 0].long()]
    X = unproject_pixels(xy[:, None], z[:, None], seq.Ks[q], seq.c2ws[q])[:, 0]
    torch.testing.assert_close(X, seq.gt_tracks_3d[torch.arange(M), q], atol=1e-4, rtol=1e-4)


def test_visible_gt_track_reprojects_onto_pixel_with_matching_depth(seq):
    """In every frame, a visible GT 3D track point projects to the 2D track, and the GT depth at that
    pixel (away from depth edges) equals the point's depth: the z-buffer agrees with the visibility."""
    T = seq.num_frames
    xy, z = project_points(seq.gt_tracks_3d.transpose(0, 1), seq.Ks, seq.w2cs)  # (T, M, 2), (T, M)
    vis = seq.tracks_visible.T
    torch.testing.assert_close(xy[vis], seq.tracks_xy.transpose(0, 1)[vis], atol=2e-3, rtol=0)
    d = seq.gt_depth
    lo = -torch.nn.functional.max_pool2d(-d[:, None], 3, 1, 1)[:, 0]
    hi = torch.nn.functional.max_pool2d(d[:, None], 3, 1, 1)[:, 0]
    smooth = (hi - lo) < 0.05 * d  # (T, H, W) away from depth discontinuities
    W, H = seq.img_wh
    inside = (xy[..., 0] > 1) & (xy[..., 0] < W - 2) & (xy[..., 1] > 1) & (xy[..., 1] < H - 2)
    sel = vis & inside
    t_idx = torch.arange(T)[:, None].expand_as(vis)[sel]
    xs, ys = xy[sel][:, 0].round().long(), xy[sel][:, 1].round().long()
    ok = smooth[t_idx, ys, xs]
    zb = bilinear_sample(d[:, None], xy)[..., 0][sel][ok]
    rel = (zb - z[sel][ok]).abs() / z[sel][ok]
    assert ok.sum() > 1000
    assert rel.median() < 2e-3 and rel.quantile(0.99) < 0.03
    # invisible in-image points lie behind the surface the camera sees
    occl = (~vis) & inside
    t_o = torch.arange(T)[:, None].expand_as(vis)[occl]
    zb_o = d[t_o, xy[occl][:, 1].round().long(), xy[occl][:, 0].round().long()]
    assert occl.sum() > 100
    assert (zb_o < z[occl] * 0.999).float().mean() > 0.95


def test_objects_move_rotate_and_swap_depth_order(seq):
    poses = seq.gt_object_poses  # (O, T, 4, 4)
    O, T = poses.shape[:2]
    rot_change = (poses[:, 0, :3, :3] - poses[:, -1, :3, :3]).abs().amax(dim=(-1, -2))
    assert (rot_change > 0.3).any()
    centres_cam = project_points(poses[:, :, :3, 3].transpose(0, 1), seq.Ks, seq.w2cs)[1]  # (T, O)
    swapped = False
    for k in range(O):
        for m in range(k + 1, O):
            s = torch.sign(centres_cam[:, k] - centres_cam[:, m])
            swapped |= bool((s[0] != s[-1]) and s[0] != 0)
    assert swapped
    # the camera moves
    assert (seq.c2ws[0, :3, 3] - seq.c2ws[-1, :3, 3]).norm() > 0.5


def test_gt_flow_matches_tracks_and_images(seq):
    i, j = 5, 8  # ~3 px of motion
    flow = seq.gt_flow(i, j)  # (H, W, 2)
    vis = seq.gt_flow_visible(i, j)
    # flow at query pixels equals the GT track displacement
    rows = (seq.tracks_query_t == i).nonzero().squeeze(1)
    qxy = seq.tracks_xy[rows, i].long()
    disp = seq.tracks_xy[rows, j] - seq.tracks_xy[rows, i]
    torch.testing.assert_close(flow[qxy[:, 1], qxy[:, 0]], disp, atol=2e-3, rtol=0)
    # warping frame j with the flow reproduces frame i on co-visible pixels (independent of the tracks)
    W, H = seq.img_wh
    grid = torch.stack(torch.meshgrid(torch.arange(W), torch.arange(H), indexing="xy"), -1).float()
    warped = bilinear_sample(seq.images[j].permute(2, 0, 1)[None], (grid + flow).reshape(1, -1, 2))[0].reshape(H, W, 3)
    still = bilinear_sample(seq.images[j].permute(2, 0, 1)[None], grid.reshape(1, -1, 2))[0].reshape(H, W, 3)
    err_flow = (warped - seq.images[i]).abs().mean(-1)[vis]
    err_zero = (still - seq.images[i]).abs().mean(-1)[vis]
    assert vis.float().mean() > 0.8
    # residuals: aliasing of the textures and shading changes of rotating objects
    assert err_flow.median() < 0.2 * err_zero.median(), (err_flow.median(), err_zero.median())
    assert err_flow.mean() < 0.35 * err_zero.mean(), (err_flow.mean(), err_zero.mean())


@pytest.mark.parametrize("drift", ["linear", "sine"])
def test_prior_drift_equals_what_was_asked(drift):
    cfg = SyntheticDataConfig(
        num_frames=8,
        width=64,
        height=48,
        prior_drift=drift,
        prior_scale_drift=0.4,
        prior_shift_drift=0.3,
        prior_blur_px=0.0,
        prior_noise=0.0,
    )
    seq = make_synthetic_sequence(cfg)
    true_disp = 1.0 / seq.gt_depth.double()
    m = float(np.median(true_disp.numpy()))  # numpy's median, as documented (torch's takes the lower middle)
    s = torch.linspace(0, 1, 8, dtype=torch.float64)
    u = s - 0.5 if drift == "linear" else 0.5 * torch.sin(2 * torch.pi * s)
    for t in range(8):
        A = torch.stack([true_disp[t].reshape(-1), torch.ones(true_disp[t].numel(), dtype=torch.float64)], -1)
        a, b = torch.linalg.lstsq(A, seq.prior_disp[t].double().reshape(-1, 1)).solution[:, 0]
        assert abs(a - (1 + 0.4 * u[t])) < 1e-4
        assert abs(b - 0.3 * m * u[t]) < 1e-4
    assert seq.gt_prior_affine.shape == (8, 2)


def test_perfect_prior_is_inverse_gt_depth():
    seq = make_synthetic_sequence(SyntheticDataConfig(num_frames=3, width=48, height=32, prior_drift="perfect"))
    torch.testing.assert_close(seq.prior_disp, 1.0 / seq.gt_depth, rtol=1e-6, atol=0)
    assert seq.prior_valid.all()


def test_prior_blur_and_noise_corrupt_edges():
    base = dict(num_frames=3, width=64, height=48, prior_drift="none")
    clean = make_synthetic_sequence(SyntheticDataConfig(**base, prior_blur_px=0.0, prior_noise=0.0))
    blurred = make_synthetic_sequence(SyntheticDataConfig(**base, prior_blur_px=2.0, prior_noise=0.0))
    noisy = make_synthetic_sequence(SyntheticDataConfig(**base, prior_blur_px=0.0, prior_noise=0.05))
    torch.testing.assert_close(clean.prior_disp, 1.0 / clean.gt_depth, rtol=1e-6, atol=0)
    rel_noise = (noisy.prior_disp / clean.prior_disp - 1).std()
    assert 0.04 < rel_noise < 0.06
    edge = clean.fg_masks[:, 1:, :] != clean.fg_masks[:, :-1, :]
    diff = (blurred.prior_disp - clean.prior_disp).abs()[:, 1:, :]
    assert diff[edge].mean() > 10 * diff[~edge].median()


def test_scene_normalisation_keeps_projections():
    raw = make_synthetic_sequence(SyntheticDataConfig(num_frames=6, width=64, height=48))
    nrm = make_synthetic_sequence(SyntheticDataConfig(num_frames=6, width=64, height=48, normalize_scene=True))
    assert nrm.scene_scale != 1.0
    xy_raw = project_points(raw.gt_tracks_3d.transpose(0, 1), raw.Ks, raw.w2cs)[0]
    xy_nrm, z_nrm = project_points(nrm.gt_tracks_3d.transpose(0, 1), nrm.Ks, nrm.w2cs)
    torch.testing.assert_close(xy_nrm, xy_raw, atol=2e-3, rtol=0)
    torch.testing.assert_close(nrm.gt_depth * nrm.scene_scale, raw.gt_depth, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(nrm.prior_disp / nrm.scene_scale, raw.prior_disp, rtol=1e-5, atol=1e-6)
    # documented relation x_norm = (transform @ x)[:3] / scale
    X = raw.gt_tracks_3d[:5, 0]
    Xn = (X @ nrm.scene_transform[:3, :3].T + nrm.scene_transform[:3, 3]) / nrm.scene_scale
    torch.testing.assert_close(Xn, nrm.gt_tracks_3d[:5, 0], atol=1e-4, rtol=1e-4)
    # GT flow is unchanged by the normalisation
    torch.testing.assert_close(nrm.gt_flow(1, 3), raw.gt_flow(1, 3), atol=2e-3, rtol=0)
    # the mean camera "up" (-y) is +z after normalisation
    up = -nrm.w2cs[:, 1, :3].mean(0)
    torch.testing.assert_close(up / up.norm(), torch.tensor([0.0, 0.0, 1.0]), atol=1e-5, rtol=0)
