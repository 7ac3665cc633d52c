"""The tissue scene (data:synthetic --data.scene tissue): static camera, deforming tissue, instruments as
ignored pixels; its ground truth checked against the rendered images and against its own definitions."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from flow3d.data import SyntheticDataConfig, make_synthetic_sequence
from flow3d.data.tissue import build_tissue_scene, invert, lateral, render_tissue_frame
from flow3d.geometry import bilinear_sample, pixel_grid, project_points, transform_points, unproject_pixels

SMALL = dict(scene="tissue", num_frames=12, width=96, height=72)


@pytest.fixture(scope="module")
def seq():
    return make_synthetic_sequence(SyntheticDataConfig(**SMALL))


def test_shapes_masks_and_static_camera(seq):
    T, H, W = 12, 72, 96
    assert seq.images.shape == (T, H, W, 3) and seq.name == "tissue_s0"
    assert torch.equal(seq.w2cs, seq.w2cs[:1].expand_as(seq.w2cs)) and torch.equal(seq.Ks, seq.Ks[:1].expand_as(seq.Ks))
    assert not torch.allclose(seq.w2cs[0], torch.eye(4))  # a static but non-trivial pose exercises the conventions
    inst = ~seq.valid_masks
    assert torch.equal(seq.fg_masks, seq.valid_masks.float())  # all tissue is foreground, instruments are not
    frac = inst.float().mean((1, 2))
    assert (frac > 0.03).all() and (frac < 0.35).all(), frac
    # the instruments move: their masks change between frames
    assert (inst[0] ^ inst[-1]).float().mean() > 0.05
    assert seq.gt_points is None and seq.gt_object_ids is None and seq.gt_object_poses is None
    assert seq.gt_depth_source == "ground truth"


def test_depth_changes_by_10_to_25_percent_with_lateral_motion(seq):
    """Per tissue point (GT tracks in camera coordinates) and per pixel (gt_depth)."""
    cam = transform_points(seq.w2cs[0], seq.gt_tracks_3d)  # (M, T, 3) camera frame
    z = cam[..., 2]
    rel = ((z - z[:, :1]).abs() / z[:, :1]).amax()
    assert 0.10 <= rel <= 0.25, rel
    rel_px = ((seq.gt_depth - seq.gt_depth[:1]).abs() / seq.gt_depth[:1]).amax()
    assert 0.10 <= rel_px <= 0.25, rel_px
    # pulled and released: the last frame is back near the first
    assert ((z[:, -1] - z[:, 0]).abs() / z[:, 0]).max() < 0.02
    # lateral motion of several pixels, not only in depth
    xy = seq.tracks_xy
    assert (xy - xy[:, :1]).norm(dim=-1).amax() > 4.0


def test_gt_depth_is_the_tissue_also_under_instruments(seq):
    """The same seed without instruments renders the same tissue: identical GT depth and identical pixels
    wherever the instruments are not."""
    without = make_synthetic_sequence(SyntheticDataConfig(**SMALL, num_instruments=0))
    assert without.valid_masks.all()
    assert torch.equal(seq.gt_depth, without.gt_depth)
    v = seq.valid_masks
    assert torch.equal(seq.images[v], without.images[v])
    assert not torch.equal(seq.images[~v], without.images[~v])


def test_prior_drifts_as_gt_prior_affine_and_is_invalid_on_instruments():
    """Blur and noise off: the prior is a_t / z + b_t of what the camera sees; on tissue pixels z is
    gt_depth (so the documented affine holds there). On instruments the prior is the instrument's, not the
    tissue's: the sequence marks it invalid there (0, prior_valid False), as every ignored pixel."""
    cfg = SyntheticDataConfig(**SMALL, prior_blur_px=0.0, prior_noise=0.0, prior_scale_drift=0.4, prior_shift_drift=0.3)
    seq = make_synthetic_sequence(cfg)
    a, b = seq.gt_prior_affine[:, 0], seq.gt_prior_affine[:, 1]
    s = torch.linspace(0, 1, 12)
    torch.testing.assert_close(a, 1 + 0.4 * (s - 0.5), rtol=1e-6, atol=1e-6)
    v = seq.valid_masks
    expected = a[:, None, None] / seq.gt_depth + b[:, None, None]
    torch.testing.assert_close(seq.prior_disp[v], expected[v], rtol=1e-5, atol=1e-6)
    assert not seq.prior_valid[~v].any() and (seq.prior_disp[~v] == 0).all()


def test_inversion_recovers_material_coordinates():
    """Fixed-point inversion against the forward map: q = m + L(m) for random m gives back m."""
    cfg = SyntheticDataConfig(**SMALL, tissue_pull=0.25)
    sc = build_tissue_scene(cfg, np.random.default_rng(3))
    m = np.random.default_rng(1).uniform([-5, -5], [101, 77], size=(500, 2))
    for s in (0.25, 0.5, 0.8):
        q = m + lateral(sc, m, s)
        np.testing.assert_allclose(invert(sc, q, s), m, atol=1e-6)


def test_gt_tracks_reproject_and_back_project(seq):
    xy, z = project_points(seq.gt_tracks_3d.transpose(0, 1), seq.Ks, seq.w2cs)  # (T, M, 2), (T, M)
    torch.testing.assert_close(xy, seq.tracks_xy.transpose(0, 1), atol=2e-3, rtol=0)
    # GT depth at the query pixels back-projects onto the tracks' 3D points
    M = seq.tracks_query_t.shape[0]
    q = seq.tracks_query_t
    qxy = seq.tracks_xy[torch.arange(M), q]
    assert torch.equal(qxy, qxy.round())
    zq = seq.gt_depth[q, qxy[:, 1].long(), qxy[:, 0].long()]
    X = unproject_pixels(qxy[:, None], zq[:, None], seq.Ks[q], seq.c2ws[q])[:, 0]
    torch.testing.assert_close(X, seq.gt_tracks_3d[torch.arange(M), q], atol=1e-4, rtol=1e-4)
    # queries start on tissue, never on an instrument
    assert seq.valid_masks[q, qxy[:, 1].long(), qxy[:, 0].long()].all()


def test_track_visibility_is_instrument_occlusion(seq):
    T = seq.num_frames
    W, H = seq.img_wh
    xy = seq.tracks_xy.transpose(0, 1)  # (T, M, 2)
    inside = (xy[..., 0] > 0) & (xy[..., 0] < W - 1) & (xy[..., 1] > 0) & (xy[..., 1] < H - 1)
    valid_at = bilinear_sample(seq.valid_masks[:, None].float(), xy)[..., 0]  # (T, M): 1 = all tissue around
    vis = seq.tracks_visible.T
    assert (~vis & inside).sum() > 50  # some tissue points hide behind the instruments
    assert (valid_at[vis & inside] > 0).all()  # a visible point is never inside an instrument's mask
    assert (valid_at[~vis & inside] < 1).all()  # a hidden one always touches it
    assert vis.shape == (T, seq.tracks_xy.shape[0])


@pytest.fixture(scope="module")
def diffuse(seq):
    """(T, H, W) bool: tissue pixels without specular highlight, from the renderer of the same scene."""
    cfg = SyntheticDataConfig(**SMALL)
    sc = build_tissue_scene(cfg, np.random.default_rng(cfg.seed))
    frames = [render_tissue_frame(sc, t) for t in range(seq.num_frames)]
    np.testing.assert_allclose(np.round(frames[3]["rgb"] * 255) / 255, seq.images[3].numpy(), atol=1e-6)  # same scene
    return torch.from_numpy(np.stack([f["specular"] < 0.01 for f in frames])) & seq.valid_masks


def _sample(img: torch.Tensor, xy: torch.Tensor) -> torch.Tensor:
    return bilinear_sample(img.permute(2, 0, 1)[None], xy.reshape(1, -1, 2))[0]  # (P, 3)


_SHIFTS = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0]])


def test_gt_tracks_are_photometrically_consistent_on_diffuse_tissue(seq, diffuse):
    """From each query frame to the next, the colour at a moving GT track's position matches its query
    pixel on tissue without specular highlight (the residual is the diffuse shading of the tilting tissue,
    texture interpolation and 8-bit levels), far better than not moving or being one pixel off."""
    err, still, off = [], [], []
    for q in range(seq.num_frames - 1):
        t = q + 1
        rows = (seq.tracks_query_t == q).nonzero().squeeze(1)
        qxy, xy = seq.tracks_xy[rows, q], seq.tracks_xy[rows, t]
        col_q = seq.images[q][qxy[:, 1].long(), qxy[:, 0].long()]  # (P, 3)
        ok = seq.tracks_visible[rows, t] & (bilinear_sample(diffuse[t, None, None].float(), xy[None])[0, :, 0] > 0.999)
        ok &= diffuse[q][qxy[:, 1].long(), qxy[:, 0].long()] & ((xy - qxy).norm(dim=-1) > 1.0)  # moving points
        e = lambda p: (_sample(seq.images[t], p) - col_q).abs().mean(-1)[ok]  # noqa: E731
        err.append(e(xy))
        still.append(e(qxy))
        off.append(torch.stack([e(xy + d) for d in _SHIFTS]).mean(0))
    err, still, off = torch.cat(err), torch.cat(still), torch.cat(off)
    assert err.numel() > 100
    assert err.median() < 0.015, err.median()
    assert err.median() < 0.5 * still.median() and err.median() < 0.5 * off.median(), (
        err.median(),
        still.median(),
        off.median(),
    )
    assert (err < off).float().mean() > 0.85


def test_gt_flow_matches_tracks_and_warps_images(seq, diffuse):
    i, j = 2, 4
    flow = seq.gt_flow(i, j)  # (H, W, 2), the tissue's flow
    rows = (seq.tracks_query_t == i).nonzero().squeeze(1)
    qxy = seq.tracks_xy[rows, i].long()
    disp = seq.tracks_xy[rows, j] - seq.tracks_xy[rows, i]
    assert disp.norm(dim=-1).max() > 1.5
    torch.testing.assert_close(flow[qxy[:, 1], qxy[:, 0]], disp, atol=5e-3, rtol=0)
    # warping frame i+1 with the flow reproduces frame i on moving diffuse tissue (independent of the tracks)
    W, H = seq.img_wh
    grid = pixel_grid(H, W)
    err, still, off = [], [], []
    for i in range(seq.num_frames - 1):
        flow = seq.gt_flow(i, i + 1)
        p = grid + flow
        ok = seq.gt_flow_visible(i, i + 1) & diffuse[i] & (flow.norm(dim=-1) > 1.0)
        ok &= (bilinear_sample(diffuse[i + 1, None, None].float(), p.reshape(1, -1, 2))[0, :, 0] > 0.999).reshape(H, W)
        e = lambda xy: (_sample(seq.images[i + 1], xy).reshape(H, W, 3) - seq.images[i]).abs().mean(-1)[ok]  # noqa: E731, B023
        err.append(e(p))
        still.append(e(grid))
        off.append(torch.stack([e(p + d) for d in _SHIFTS]).mean(0))
    err, still, off = torch.cat(err), torch.cat(still), torch.cat(off)
    assert err.numel() > 1000
    assert err.median() < 0.5 * still.median() and err.median() < 0.5 * off.median(), (
        err.median(),
        still.median(),
        off.median(),
    )


def test_specular_highlights_exist_and_slide():
    cfg = SyntheticDataConfig(**SMALL)
    sc = build_tissue_scene(cfg, np.random.default_rng(0))
    spec = [render_tissue_frame(sc, t)["specular"] * ~render_tissue_frame(sc, t)["instrument"] for t in (0, 5)]
    assert spec[0].max() > 0.3 and spec[1].max() > 0.3
    bright = [s > 0.2 for s in spec]
    assert 0 < bright[0].mean() < 0.1
    assert (bright[0] ^ bright[1]).sum() > 0.5 * bright[0].sum()  # they move as the tissue deforms


def test_deterministic_and_normalisation_keeps_projections_and_flow(seq):
    n = make_synthetic_sequence(SyntheticDataConfig(**SMALL, normalize_scene=True))
    assert n.scene_scale != 1.0
    # the same images and prior from the same seed (normalisation rescales the prior by the scale only)
    assert torch.equal(n.images, seq.images)
    torch.testing.assert_close(n.prior_disp / n.scene_scale, seq.prior_disp, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(
        project_points(n.gt_tracks_3d.transpose(0, 1), n.Ks, n.w2cs)[0],
        project_points(seq.gt_tracks_3d.transpose(0, 1), seq.Ks, seq.w2cs)[0],
        atol=2e-3,
        rtol=0,
    )
    torch.testing.assert_close(n.gt_flow(1, 4), seq.gt_flow(1, 4), atol=2e-3, rtol=0)
    torch.testing.assert_close(n.gt_depth * n.scene_scale, seq.gt_depth, rtol=1e-5, atol=1e-5)


def test_bad_options():
    with pytest.raises(ValueError, match="num_instruments"):
        make_synthetic_sequence(SyntheticDataConfig(**{**SMALL, "num_instruments": 3}))
    with pytest.raises(ValueError, match="tissue_pull"):
        make_synthetic_sequence(SyntheticDataConfig(**SMALL, tissue_pull=0.7))
