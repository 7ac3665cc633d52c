"""flow3d.depth: the one depth <-> disparity conversion, its validity rule, and the depth-order sign."""

from __future__ import annotations

import pytest
import torch

from flow3d import depth as D


def test_inverse_values_validity_and_finite_gradient():
    x = torch.tensor([2.0, 0.0, -1.0, float("nan"), float("inf"), 0.5 * D.EPS, 2 * D.EPS], requires_grad=True)
    inv, valid = D.invert(x)
    assert valid.tolist() == [True, False, False, False, False, False, True]
    assert inv[:6].tolist() == [0.5, 0.0, 0.0, 0.0, 0.0, 0.0]
    assert float(inv[6].detach()) == pytest.approx(1 / (2 * D.EPS))
    inv[:6].sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad[0] == -0.25 and (x.grad[1:6] == 0).all()
    assert D.is_valid(x).tolist() == valid.tolist()


def test_depth_and_disparity_round_trip_and_given_mask():
    depth = torch.tensor([[1.0, 4.0], [0.0, 8.0]], dtype=torch.float64)
    disp, ok = D.depth_to_disp(depth)
    assert disp.tolist() == [[1.0, 0.25], [0.0, 0.125]] and ok.tolist() == [[True, True], [False, True]]
    back, ok2 = D.disp_to_depth(disp, valid=torch.tensor([[True, False], [True, True]]))
    assert back.tolist() == [[1.0, 0.0], [0.0, 8.0]] and ok2.tolist() == [[True, False], [False, True]]


def test_gradcheck():
    x = (torch.rand(5, dtype=torch.float64) + 0.5).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda v: D.disp_to_depth(v)[0], (x,))


def test_order_sign_kinds_and_rule():
    a = torch.tensor([2.0, 1.0, 3.0, 10.0, float("nan")])
    b = torch.tensor([1.9, 2.0, 2.0, 9.0, 1.0])  # relative differences 0.05, 0.5, 0.333, 0.1, -
    assert D.depth_order_sign(a, b, "depth").tolist() == [1, -1, 1, 1, 0]
    assert D.depth_order_sign(1 / a, 1 / b, "disparity", min_rel_diff=0.08).tolist() == [0, -1, 1, 1, 0]
    with pytest.raises(ValueError, match="kind must be 'depth' or 'disparity'"):
        D.depth_order_sign(a, b, "inverse")
    assert D.kind_sign("disparity") == -1


def test_one_rule_across_the_package():
    """The losses, the pair sampler and the eval metrics use these functions, not their own copies."""
    import flow3d.eval.metrics as M
    import flow3d.flow.pairs as P
    import flow3d.losses as L

    assert L.depth_order_sign is D.depth_order_sign
    assert P.depth_order_sign is D.depth_order_sign
    assert M.is_valid is D.is_valid and M.disp_to_depth is D.disp_to_depth
