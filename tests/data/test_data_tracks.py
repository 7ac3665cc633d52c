"""TAPIR logits -> visibility/confidence (Shape of Motion's rule), dense assembly, split, safe inversion."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from flow3d.data import split_frames, tapir_to_visibility, visibility_to_tapir
from flow3d.data.normalize import compute_scene_norm, rotation_between
from flow3d.data.tracks import dense_tracks_from_pairs


def _sig(x):
    return 1 / (1 + math.exp(-x))


def test_tapir_conversion_hand_values():
    rows = torch.tensor([[1.0, 2.0, 0.0, 0.0], [3.0, 4.0, -2.0, -3.0], [5.0, 6.0, 3.0, -3.0], [7.0, 8.0, -3.0, 1.0]])
    xy, vis, conf = tapir_to_visibility(rows)
    assert torch.equal(xy, rows[:, :2])
    assert vis.tolist() == [False, True, False, False]
    expected = [0.0, 1 - _sig(-3.0), 1 - _sig(-3.0), 0.0]  # row 2 is confidently occluded, rows 0 and 3 unsure
    torch.testing.assert_close(conf, torch.tensor(expected))
    with pytest.raises(ValueError, match=r"\(\.\.\., 4\)"):
        tapir_to_visibility(torch.zeros(3, 3))


def test_tapir_roundtrip():
    xy = torch.rand(10, 2) * 50
    vis = torch.rand(10) > 0.5
    conf = torch.rand(10) * 0.45 + 0.55
    xy2, vis2, conf2 = tapir_to_visibility(visibility_to_tapir(xy, vis, conf))
    assert torch.equal(xy2, xy) and torch.equal(vis2, vis)
    torch.testing.assert_close(conf2, conf)
    _, v3, c3 = tapir_to_visibility(visibility_to_tapir(xy, vis))
    assert torch.equal(v3, vis) and (c3 == 1).all()


def test_dense_tracks_from_pairs_subsets_and_gaps():
    P, T = 6, 3
    pairs = {
        (0, t): np.concatenate([np.arange(P)[:, None] + t * 0.5, np.zeros((P, 1)), np.full((P, 2), -20.0)], 1)
        for t in range(T)
    }
    del pairs[(0, 2)]  # missing target: unknown entries
    xy, vis, conf, q = dense_tracks_from_pairs(pairs, T, [0], max_per_query=4, seed=3)
    assert xy.shape == (4, T, 2) and q.tolist() == [0] * 4
    rows = xy[:, 0, 0].long()
    assert len(set(rows.tolist())) == 4 and torch.equal(rows, rows.sort().values)
    torch.testing.assert_close(xy[:, 1, 0], rows.float() + 0.5)
    assert vis[:, :2].all() and not vis[:, 2].any() and (conf[:, 2] == 0).all()
    with pytest.raises(ValueError, match=r"query frame 1 has no \(1, 1\) entry"):
        dense_tracks_from_pairs(pairs, T, [1])


def test_split_endonerf():
    tr, va = split_frames(17, 8)
    assert va.tolist() == [1, 9] and 0 in tr.tolist() and len(tr) + len(va) == 17
    assert split_frames(5, 0)[1].numel() == 0
    with pytest.raises(ValueError, match="val_every"):
        split_frames(5, 1)


def test_scene_norm_recipe():
    g = torch.Generator().manual_seed(0)
    pts = torch.randn(2000, 3, generator=g) * torch.tensor([1.0, 2.0, 0.5]) + torch.tensor([3.0, -1.0, 5.0])
    w2cs = torch.eye(4).expand(4, 4, 4).clone()  # cameras' y axis = world y: up = -y
    scale, T = compute_scene_norm(pts, w2cs)
    X = pts - pts.mean(0)
    expected = float(((X.quantile(0.95, 0) - X.quantile(0.05, 0)).max()) / 2)
    assert abs(scale - expected) < 1e-4
    torch.testing.assert_close(T[:3, :3] @ torch.tensor([0.0, -1.0, 0.0]), torch.tensor([0.0, 0.0, 1.0]))
    torch.testing.assert_close(T[:3, :3] @ pts.mean(0) + T[:3, 3], torch.zeros(3), atol=1e-4, rtol=0)
    # opposite vectors are handled
    R = rotation_between(torch.tensor([0.0, 0.0, -1.0]), torch.tensor([0.0, 0.0, 1.0]))
    torch.testing.assert_close(R @ torch.tensor([0.0, 0.0, -1.0]), torch.tensor([0.0, 0.0, 1.0]))
    torch.testing.assert_close(R @ R.T, torch.eye(3), atol=1e-6, rtol=0)
