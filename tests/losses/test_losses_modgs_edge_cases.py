"""MoDGS ordinal term, the two edge cases where ours deliberately differs from MoDGS (README parity table).

MoDGS's ``get_depth_order_loss`` ("tanh_threshold"): on a frame whose prior is constant every pair has
R = sign(0) = 0 and the gap threshold (max - min) / 10 = 0 keeps them all, so the loss is the mean of
|tanh(alpha (d_a - d_b))| (0.99 for rendered depths 0.1 apart); when no pair passes the threshold its mean
over an empty set is NaN. Ours: a tie carries no order, so both cases keep no pair and give a
differentiable 0.
"""

from __future__ import annotations

import torch

from flow3d import losses as L


def test_constant_prior_frame_gives_zero_not_modgs_099():
    pred_a = torch.tensor([1.0, 2.0, 3.0], requires_grad=True)
    pred_b = torch.tensor([1.1, 2.1, 3.1])
    prior = torch.full((3,), 2.5)
    loss = L.modgs_ordinal_loss(
        pred_a, pred_b, prior, prior, prior_kind="depth", alpha=100.0, prior_range=torch.tensor(0.0)
    )
    modgs = torch.tanh(100.0 * (pred_a.detach() - pred_b)).abs().mean()  # MoDGS: every pair kept with R = 0
    assert float(modgs) > 0.99 and float(loss.detach()) == 0.0
    loss.backward()
    assert torch.equal(pred_a.grad, torch.zeros(3))


def test_no_pair_kept_gives_zero_not_nan():
    pred_a = torch.tensor([1.0, 2.0], requires_grad=True)
    pred_b = torch.tensor([2.0, 1.0])
    # gaps 0.05 and 0.05 below the threshold 0.1 * range 1.0: nothing kept (MoDGS: mean of an empty set)
    loss = L.modgs_ordinal_loss(
        pred_a,
        pred_b,
        torch.tensor([1.0, 2.0]),
        torch.tensor([1.05, 1.95]),
        prior_kind="depth",
        prior_range=torch.tensor(1.0),
    )
    assert float(loss.detach()) == 0.0 and torch.isnan(torch.tensor([]).mean())
    loss.backward()
    assert torch.isfinite(pred_a.grad).all()
