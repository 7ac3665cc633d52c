"""The hidden_surface loss term (issue 26): what it asks of the render on ignored pixels, and that it reads
nothing of the input there."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from flow3d.depth import depth_to_disp
from flow3d.train.hidden_surface import hidden_surface_term


def _ctx(valid, depth, alpha, img, fg=None):
    out = SimpleNamespace(depth=depth[..., None], alpha=alpha[..., None], img=img)
    fg = valid.float() if fg is None else fg
    return SimpleNamespace(
        batch=SimpleNamespace(valid_masks=valid, fg_masks=fg), out=out, pred_disp=lambda: depth_to_disp(depth)[0]
    )


B, H, W = 2, 24, 32


def _scene():
    valid = torch.ones(B, H, W, dtype=torch.bool)
    valid[:, 8:16, 10:20] = False
    return valid, torch.full((B, H, W), 2.0), torch.ones(B, H, W), torch.full((B, H, W, 3), 0.4)


def test_zero_on_a_covered_smooth_surface_and_without_ignored_pixels():
    valid, depth, alpha, img = _scene()
    assert float(hidden_surface_term(_ctx(valid, depth, alpha, img))) == pytest.approx(0.0, abs=1e-6)
    depth2 = depth.clone()
    depth2[:, 10, 12] = 1.0  # anything at all, but nothing is ignored
    assert float(hidden_surface_term(_ctx(torch.ones_like(valid), depth2, alpha * 0.3, img))) == 0.0


def test_holes_bumps_and_colour_edges_cost_and_are_pulled_back():
    valid, depth, alpha, img = _scene()
    a = alpha.clone()
    a[:, 8:16, 10:20] = 0.5
    a[:, 0:2, 0:5] = 0.8  # on visible tissue
    # the tissue setting (every valid pixel foreground): coverage over every pixel
    n = B * H * W
    expect = (0.5 * B * 80 + 0.2 * B * 10) / n
    assert float(hidden_surface_term(_ctx(valid, depth, a, img))) == pytest.approx(expect, abs=1e-6)
    # with a background in view: coverage over the ignored pixels only
    fg = valid.float()
    fg[:, 20:, :] = 0.0
    assert float(hidden_surface_term(_ctx(valid, depth, a, img, fg))) == pytest.approx(0.5, abs=1e-6)
    d = depth.clone().requires_grad_(True)
    bump = torch.zeros(B, H, W)
    bump[:, 11:13, 14:16] = -0.5  # the tissue pulled towards the camera under the instrument
    loss = hidden_surface_term(_ctx(valid, d + bump, alpha, img))
    assert float(loss.detach()) > 0.01
    loss.backward()
    assert (d.grad[:, 11:13, 14:16] < 0).all()  # a descent step increases it: back out to the surrounding depth
    assert float(d.grad[valid].abs().max()) < 1e-6  # the target is detached: visible pixels are not pulled
    c = img.clone()
    c[:, 8:16, 10:15] = 0.9  # a colour edge inside the ignored region
    assert float(hidden_surface_term(_ctx(valid, depth, alpha, c))) > 0.01
