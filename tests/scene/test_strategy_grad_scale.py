"""Densification statistics: the screen-space gradient scaled to NDC and by the batch size (Shape of Motion)."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from flow3d.scene.strategy import DensifyConfig, DensifyStrategy


def _stats(batch_size, scale: bool) -> dict:
    """One step's statistics for 2 fg + 1 bg Gaussians over two renders (W=40, H=30) with given gradients."""
    strat = DensifyStrategy(DensifyConfig(refine_start=100, grad2d_batch_scale=scale), scene_extent=1.0)
    state = strat.initialize_state()
    model = SimpleNamespace(num_fg=2, num_bg=1)
    m2ds, radii = [], []
    for grad in ([[0.1, 0.2], [0.0, 0.0], [-0.3, 0.4]], [[0.1, -0.2], [0.5, 0.0], [0.0, 0.0]]):
        m = torch.zeros(1, 3, 2, requires_grad=True)
        m.grad = torch.tensor([grad])
        m2ds.append(m)
        radii.append(
            torch.tensor([[[3, 3], [2, 2], [0, 0]]], dtype=torch.int32)
            if len(m2ds) == 2
            else torch.full((1, 3, 2), 4, dtype=torch.int32)
        )
    info = {"means2d": m2ds, "radii": radii, "img_wh": (40, 30)}
    if batch_size is not None:
        info["batch_size"] = batch_size
    strat.step_post_backward(model, {}, state, step=1, info=info)
    return state


def test_gradient_scaled_by_half_image_size_and_batch_size():
    st = _stats(batch_size=2, scale=True)
    # render 1: fg0 (0.1*20, 0.2*15) = (2, 3); render 2: fg0 (2, -3), fg1 (10, 0); bg seen in render 1 only
    fg = torch.tensor([2 * math.hypot(2, 3) * 2, 2 * 10.0])  # x batch size 2
    torch.testing.assert_close(st["grad2d"]["fg"], fg)
    torch.testing.assert_close(st["count"]["fg"], torch.tensor([2.0, 2.0]))
    torch.testing.assert_close(st["grad2d"]["bg"], torch.tensor([2 * math.hypot(0.3 * 20, 0.4 * 15)]))
    torch.testing.assert_close(st["count"]["bg"], torch.tensor([1.0]))


@pytest.mark.parametrize("batch_size,scale", [(None, True), (4, False)], ids=["no-batch-size", "switched-off"])
def test_unscaled_without_batch_size_or_when_switched_off(batch_size, scale):
    st, ref = _stats(batch_size, scale), _stats(2, True)
    torch.testing.assert_close(st["grad2d"]["fg"] * 2, ref["grad2d"]["fg"])
    torch.testing.assert_close(st["count"]["fg"], ref["count"]["fg"])
