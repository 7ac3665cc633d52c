"""The maths of flow3d.cameras on synthetic correspondences with known poses: Jacobian, bundle
adjustment, two-view pose and focal length, multi-view reconstruction with moving outliers, trajectory
errors, the depth cue's mask."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize._numdiff import approx_derivative
from scipy.spatial.transform import Rotation

from flow3d.cameras import StaticTracks, geometric_depth, reconstruct_from_tracks, trajectory_errors
from flow3d.cameras import init as cinit
from flow3d.cameras.bundle import Observations, _Problem, bundle_adjust, points_from_world, project
from flow3d.cameras.metrics import align_similarity

W, H = 320, 240
CENTER = np.array([(W - 1) / 2.0, (H - 1) / 2.0])
FOCAL = 260.0  # 63.2 deg horizontal field of view


def camera_path(T: int, seed: int = 0) -> np.ndarray:
    """(T, 4, 4) w2cs of a hand-held-like path: sideways and forward motion, yaw and pitch (not looking at
    one point, which would make the focal length ambiguous)."""
    rng = np.random.default_rng(seed)
    s = np.linspace(0, 1, T)
    c2w = np.tile(np.eye(4), (T, 1, 1))
    rotvec = np.stack([0.10 * np.sin(2 * s), 0.35 * s - 0.1, 0.05 * s], 1) + rng.normal(0, 0.005, (T, 3))
    c2w[:, :3, :3] = Rotation.from_rotvec(rotvec).as_matrix()
    c2w[:, :3, 3] = np.stack([1.2 * s, 0.2 * np.sin(3 * s), 0.5 * s], 1)
    return np.linalg.inv(c2w)


def scene_tracks(w2cs, n=400, noise_px=0.3, seed=0, drop=0.15):
    """Random static points in front of the cameras -> StaticTracks (noisy pixels) and the points."""
    rng = np.random.default_rng(seed)
    X = np.stack([rng.uniform(-3, 4, n), rng.uniform(-1.5, 1.5, n), rng.uniform(3.0, 8.0, n)], 1)
    T = len(w2cs)
    xy = np.stack([project(w2cs, FOCAL, CENTER, X, np.full(n, t))[0] for t in range(T)], 1)
    xy = xy + rng.normal(0, noise_px, xy.shape)
    inside = (xy[..., 0] >= 0) & (xy[..., 0] <= W - 1) & (xy[..., 1] >= 0) & (xy[..., 1] <= H - 1)
    vis = inside & (rng.random((n, T)) > drop)
    keep = vis.sum(1) >= 2
    return StaticTracks(xy[keep], vis[keep], np.argmax(vis[keep], 1)), X[keep]


# ------------------------------------------------------------------------------------------------ bundle
def test_analytic_jacobian_matches_finite_differences():
    w2cs = camera_path(5)
    tracks, X = scene_tracks(w2cs, n=60)
    obs = Observations.from_tracks(tracks.xy, tracks.visible)
    anchor_t = np.argmax(tracks.visible, 1)
    anchor_xy = tracks.xy[np.arange(len(X)), anchor_t]
    rho = points_from_world(w2cs, FOCAL, CENTER, X, anchor_t, anchor_xy)
    prob = _Problem(obs, w2cs, FOCAL, CENTER, rho, anchor_t, anchor_xy, [0], True, 0.01)
    x = prob.pack(prob.base, FOCAL, rho) + np.random.default_rng(1).normal(0, 1e-3, 6 * 4 + 1 + len(rho))
    J = prob.jacobian(x).toarray()
    J_fd = approx_derivative(prob.residuals, x, method="3-point")
    np.testing.assert_allclose(J, J_fd, atol=1e-5 * np.abs(J_fd).max())
    pattern = prob.sparsity().toarray() != 0
    assert not np.any(J[~pattern]), "the analytic Jacobian has entries outside the declared sparsity"


@pytest.mark.parametrize("jacobian", ["analytic", "sparse_fd"])
def test_bundle_adjustment_recovers_poses_focal_and_reduces_error(jacobian):
    w2cs = camera_path(8)
    tracks, X = scene_tracks(w2cs, n=200, noise_px=0.3)
    rng = np.random.default_rng(2)
    pert = np.tile(np.eye(4), (8, 1, 1))
    pert[1:, :3, :3] = Rotation.from_rotvec(rng.normal(0, np.radians(1.0), (7, 3))).as_matrix()
    pert[1:, :3, 3] = rng.normal(0, 0.05, (7, 3))
    w2cs0 = pert @ w2cs
    anchor_t = np.argmax(tracks.visible, 1)
    anchor_xy = tracks.xy[np.arange(len(X)), anchor_t]
    rho0 = points_from_world(w2cs, FOCAL, CENTER, X, anchor_t, anchor_xy) * rng.uniform(0.9, 1.1, len(X))
    obs = Observations.from_tracks(tracks.xy, tracks.visible)
    res = bundle_adjust(
        obs, w2cs0, FOCAL * 1.08, CENTER, rho0, anchor_t, anchor_xy, loss="linear", max_nfev=100, jacobian=jacobian
    )
    rms0 = np.sqrt(2 * res.cost_init / (2 * len(obs.p)))
    rms = np.sqrt(np.mean(np.sum(res.residuals**2, -1)))
    assert rms < 0.5 < rms0, (rms0, rms)  # noise is 0.3 px per coordinate
    err = trajectory_errors(np.linalg.inv(res.w2cs), np.linalg.inv(w2cs), res.focal, FOCAL)
    assert err["focal_rel_err"] < 0.01
    assert err["ate_rmse"] < 0.01 * err["trajectory_length"]
    assert err["rel_rot_err_deg_all_pairs"] < 0.1


# ------------------------------------------------------------------------------------------------ two view
def test_two_view_focal_and_relative_pose():
    w2cs = camera_path(2)
    tracks, _ = scene_tracks(w2cs, n=300, noise_px=0.2, drop=0.0)
    f = cinit.estimate_focal(tracks.xy, tracks.visible, W, H, pairs=[(0, 1)])
    assert abs(f - FOCAL) / FOCAL < 0.05, f
    K = cinit.intrinsics(FOCAL, CENTER)
    a, b, w2c_b, ids, Xab = cinit.initial_pair(tracks.xy, tracks.visible, K, ransac_px=1.0, min_angle_deg=1.0)
    assert (a, b) == (0, 1) and len(ids) > 80
    rel = w2cs[1] @ np.linalg.inv(w2cs[0])  # camera 0 -> camera 1
    rot_err = np.degrees(np.linalg.norm(Rotation.from_matrix(w2c_b[:3, :3] @ rel[:3, :3].T).as_rotvec()))
    t_true = rel[:3, 3] / np.linalg.norm(rel[:3, 3])
    dir_err = np.degrees(np.arccos(np.clip(w2c_b[:3, 3] @ t_true, -1, 1)))
    assert rot_err < 1.0 and dir_err < 3.0, (rot_err, dir_err)  # two views only, no refinement


def test_rotation_only_init_recovers_a_pure_pan():
    rots = Rotation.from_rotvec(np.stack([np.zeros(6), np.linspace(0, 0.3, 6), np.zeros(6)], 1)).as_matrix()
    w2cs = np.tile(np.eye(4), (6, 1, 1))
    w2cs[:, :3, :3] = rots
    tracks, _ = scene_tracks(w2cs, n=300, noise_px=0.2, drop=0.0)
    est = cinit.rotation_only_init(tracks.xy, tracks.visible, cinit.intrinsics(FOCAL, CENTER), 1.0)
    err = np.degrees(
        [np.linalg.norm(Rotation.from_matrix(e[:3, :3] @ g[:3, :3].T).as_rotvec()) for e, g in zip(est, w2cs)]
    )
    assert err.max() < 0.3, err


# ------------------------------------------------------------------------------------------------ multi view
def test_reconstruct_from_tracks_multi_view_with_moving_outliers():
    T = 10
    w2cs = camera_path(T)
    tracks, _ = scene_tracks(w2cs, n=300, noise_px=0.3)
    # 40 "moving" tracks the masks missed: random walks in the image
    rng = np.random.default_rng(5)
    mv_xy = rng.uniform([40, 40], [W - 40, H - 40], (40, 1, 2)) + np.cumsum(rng.normal(0, 4.0, (40, T, 2)), 1)
    all_tracks = StaticTracks(
        np.concatenate([tracks.xy, mv_xy]),
        np.concatenate([tracks.visible, np.ones((40, T), bool)]),
        np.concatenate([tracks.query_t, np.zeros(40, int)]),
    )
    est = reconstruct_from_tracks(all_tracks, W, H)
    err = trajectory_errors(np.linalg.inv(est.w2cs), np.linalg.inv(w2cs), est.K[0, 0], FOCAL)
    assert err["focal_rel_err"] < 0.03, err
    assert err["ate_rmse"] < 0.01 * err["trajectory_length"], err
    assert err["rel_rot_err_deg_all_pairs"] < 0.2, err
    n_static = tracks.num_tracks
    kept = est.tracks.subset(est.point_ok)
    moving_kept = (kept.xy[:, None] == mv_xy[None]).all(-1).all(-1).any(-1).sum()
    assert moving_kept <= 2 and est.point_ok.sum() > 0.8 * n_static
    # without a prior the median static depth is 1
    p, t = np.nonzero(est.obs_visible)
    z = np.einsum("oij,oj->oi", est.w2cs[t, :3, :3], est.points[p])[:, 2] + est.w2cs[t, 2, 3]
    assert abs(np.median(z) - 1.0) < 1e-6


def test_depth_prior_sets_the_scale():
    w2cs = camera_path(6)
    tracks, X = scene_tracks(w2cs, n=300, noise_px=0.2)
    # a prior that is exactly 1/z (metric): the reconstruction comes out in metres
    zmap = np.zeros((6, H, W))
    for t in range(6):
        Xc = X @ w2cs[t, :3, :3].T + w2cs[t, :3, 3]
        xi = np.clip(np.round(tracks.xy[:, t, 0]).astype(int), 0, W - 1)
        yi = np.clip(np.round(tracks.xy[:, t, 1]).astype(int), 0, H - 1)
        zmap[t, yi, xi] = Xc[:, 2]
    disp = np.where(zmap > 0, 1 / np.maximum(zmap, 1e-9), 0.0)
    est = reconstruct_from_tracks(tracks, W, H, prior_disp=disp, prior_valid=disp > 0, focal=FOCAL)
    err = trajectory_errors(np.linalg.inv(est.w2cs), np.linalg.inv(w2cs))
    assert abs(err["sim3_scale"] - 1.0) < 0.02, err


# ------------------------------------------------------------------------------------------------ metrics
def test_trajectory_errors_invariant_to_a_similarity_and_hand_values():
    c2w = np.linalg.inv(camera_path(6))
    S = np.eye(4)
    S[:3, :3] = Rotation.from_rotvec([0.3, -0.2, 0.5]).as_matrix()
    S[:3, 3] = [1.0, 2.0, -3.0]
    moved = S @ c2w
    moved[:, :3, 3] *= 2.5  # c' = 2.5 (R c + t); rotations are unaffected by the scale
    e = trajectory_errors(moved, c2w, 300.0, 250.0)
    assert (
        e["ate_rmse"] < 1e-9 and e["rel_rot_err_deg_all_pairs"] < 1e-5 and e["rel_trans_dir_err_deg_all_pairs"] < 1e-5
    )
    assert abs(e["sim3_scale"] - 1 / 2.5) < 1e-9 and abs(e["focal_rel_err"] - 0.2) < 1e-12
    s, R, t = align_similarity(moved[:, :3, 3], c2w[:, :3, 3])
    np.testing.assert_allclose(s * moved[:, :3, 3] @ R.T + t, c2w[:, :3, 3], atol=1e-9)
    # one frame rotated by 2 deg about its own axis: that frame's pairs are off by 2 deg, the others by 0
    bad = c2w.copy()
    bad[3, :3, :3] = bad[3, :3, :3] @ Rotation.from_rotvec([0, np.radians(2.0), 0]).as_matrix()
    e = trajectory_errors(bad, c2w)
    assert abs(e["rel_rot_err_deg_all_pairs"] - 2.0 * 5 / 15) < 1e-6  # 5 of the 15 pairs involve frame 3


# ------------------------------------------------------------------------------------------------ depth cue
def test_geometric_depth_exact_on_a_plane_and_masked_elsewhere():
    T = 6
    w2cs = camera_path(T)
    rng = np.random.default_rng(3)
    n = 300  # points on the plane z = 6 (world), a wall
    X = np.stack([rng.uniform(-2, 4, n), rng.uniform(-1.2, 1.2, n), np.full(n, 6.0)], 1)
    xy = np.stack([project(w2cs, FOCAL, CENTER, X, np.full(n, t))[0] for t in range(T)], 1)
    vis = (xy[..., 0] >= 0) & (xy[..., 0] <= W - 1) & (xy[..., 1] >= 0) & (xy[..., 1] <= H - 1)
    tracks = StaticTracks(xy, vis, np.argmax(vis, 1))
    est = reconstruct_from_tracks(tracks, W, H, focal=FOCAL)
    # express the estimate in the true frame and scale, so the cue can be compared with the true plane
    s, R, t = align_similarity(np.linalg.inv(est.w2cs)[:, :3, 3], np.linalg.inv(w2cs)[:, :3, 3])
    est.w2cs, est.points = w2cs.copy(), s * est.points @ R.T + t
    fg = np.zeros((T, H, W), bool)
    fg[:, 100:140, 140:180] = True
    disp, valid = geometric_depth(est, fg)
    assert not valid[:, 96:144, 140:180].any() and not valid[:, 100:140, 136:184].any()  # the dilated foreground
    assert (disp[~valid] == 0).all()
    ys, xs = np.nonzero(valid[2])
    rays = np.stack([(xs - CENTER[0]) / FOCAL, (ys - CENTER[1]) / FOCAL, np.ones_like(xs, float)], 1)
    c2w = np.linalg.inv(w2cs[2])
    d_w = rays @ c2w[:3, :3].T  # ray directions in the world per unit camera z
    z_true = (6.0 - c2w[2, 3]) / d_w[:, 2]
    np.testing.assert_allclose(1 / disp[2][ys, xs], z_true, rtol=2e-3)
    # outside the convex hull of the frame's points: invalid
    pts = est.tracks.xy[est.obs_visible[:, 2], 2]
    assert not valid[2][: int(pts[:, 1].min()) - 1].any()
