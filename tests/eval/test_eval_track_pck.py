"""run_val's PCK on ground-truth tracks (Shape of Motion's metric), against hand-counted pairs."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from flow3d.eval.validate import _track_pck


def test_track_pck_counts_soms_pairs_by_hand():
    # W, H = 100, 50: threshold 0.05 * 100 = 5 px. Tracks 0, 1 queried at frame 0; track 2 at frame 2.
    seq = SimpleNamespace(tracks_query_t=torch.tensor([0, 0, 2]), img_wh=(100, 50))
    ids = torch.tensor([0, 1, 2])
    scored = [0, 1, 2]
    gt = torch.zeros(3, 3, 2)
    err = torch.tensor(
        [
            [0.0, 1.0, 9.0],  # track 0 at frames 0, 1, 2 (frame 0 is its query)
            [0.0, 6.0, 4.9],  # track 1
            [5.0, 2.0, 0.0],
        ]
    )  # track 2 (frame 2 is its query)
    pred = gt + torch.stack([err, torch.zeros_like(err)], -1)
    vis = torch.ones(3, 3, dtype=torch.bool)
    vis[1, 2] = False  # track 1 not visible at frame 2
    pck, note = _track_pck(ids, pred, gt, vis, seq, scored)
    # pairs: (q0 -> f1): tracks 0, 1: 1 < 5 yes, 6 no -> 1/2; (q0 -> f2): track 0 only (9 no) -> 0/1;
    # (q2 -> f0): 5 < 5 no -> 0; (q2 -> f1): 2 yes -> 1. Mean over the 4 pairs.
    assert pck == pytest.approx((0.5 + 0.0 + 0.0 + 1.0) / 4)
    assert "5.00 px" in note and "4 frame pairs" in note


def test_track_pck_without_a_pair_is_nan():
    seq = SimpleNamespace(tracks_query_t=torch.tensor([0]), img_wh=(10, 10))
    pck, note = _track_pck(
        torch.tensor([0]), torch.zeros(1, 1, 2), torch.zeros(1, 1, 2), torch.ones(1, 1, dtype=torch.bool), seq, [0]
    )
    assert pck != pck and "no (query, target)" in note
