"""``SceneModel.render(depth_only=True)``: the hinge's neighbour render composites depth alone (issue 23).

Against the full render (colours, foreground and depth channels) of the same random scene: the same
depth, alpha, screen-space means and radii, and the same gradients of a loss on the depth. Bit for bit with
the compiled backend (each channel is composited on its own, and the colour channels carry zero
gradient); with the PyTorch backend to float32 rounding (its per-tile sums over Gaussians are matrix
products whose summation order depends on the channel count: differences of about one unit in the last
place).
"""

from __future__ import annotations

import pytest
import torch

from flow3d.scene.gaussians import GaussianParams
from flow3d.scene.model import SceneModel
from flow3d.scene.motion import MotionBases, matrix_to_rot6d


def _random_model(seed: int = 0) -> SceneModel:
    g = torch.Generator().manual_seed(seed)
    T, K = 3, 4

    def gaussians(n, z0, motion):
        means = torch.cat(
            [(torch.rand(n, 2, generator=g) - 0.5) * 2.0 * z0 * 0.6, z0 + torch.rand(n, 1, generator=g)], -1
        )
        return GaussianParams(
            means,
            torch.randn(n, 4, generator=g),
            torch.rand(n, 3, generator=g) * 0.08 + 0.01,
            torch.rand(n, generator=g) * 0.85 + 0.1,
            torch.rand(n, 3, generator=g) * 0.8 + 0.1,
            torch.randn(n, K, generator=g) if motion else None,
        )

    rots = matrix_to_rot6d(torch.eye(3).expand(K, T, 3, 3)) + 0.05 * torch.randn(K, T, 6, generator=g)
    bases = MotionBases(rots, 0.1 * torch.randn(K, T, 3, generator=g))
    return SceneModel(gaussians(300, 2.0, True), bases, gaussians(200, 3.5, False))


def _render(model, depth_only, backend):
    W, H = 48, 40
    Ks = torch.tensor([[40.0, 0.0, W / 2], [0.0, 40.0, H / 2], [0.0, 0.0, 1.0]]).expand(2, 3, 3)
    w2cs = torch.eye(4).repeat(2, 1, 1)
    w2cs[1, 0, 3] = 0.1
    model.zero_grad(set_to_none=True)
    out = model.render(torch.tensor([0, 2]), w2cs, Ks, (W, H), backend=backend, depth_only=depth_only)
    for m in out.means2d:
        m.retain_grad()
    weights = torch.randn(out.depth.shape, generator=torch.Generator().manual_seed(1))
    (out.depth * weights).sum().backward()
    grads = {n: (p.grad if p.grad is not None else torch.zeros_like(p)) for n, p in model.named_parameters()}
    return out, grads


@pytest.mark.parametrize("backend", ["torch", pytest.param("cpu", marks=pytest.mark.compiled)])
def test_depth_only_render_equals_the_full_render(backend):
    if backend == "cpu":
        import sys
        from pathlib import Path

        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "render"))
        from render_reference import require_compiled

        require_compiled()

    def same(a, b, name):
        if backend == "cpu":
            assert torch.equal(a, b), name
        else:
            scale = max(float(b.detach().abs().max()), 1e-30) if b.numel() else 1.0
            torch.testing.assert_close(a, b, rtol=0, atol=2e-6 * scale, msg=lambda m: f"{name}: {m}")

    model = _random_model()
    full, g_full = _render(model, False, backend)
    only, g_only = _render(model, True, backend)
    assert only.img is None and only.fg is None and full.img is not None
    assert (full.alpha > 0.5).float().mean() > 0.2  # a scene that covers the frames
    same(only.depth, full.depth, "depth")
    same(only.alpha, full.alpha, "alpha")
    for a, b in zip(only.means2d + only.radii, full.means2d + full.radii):
        assert torch.equal(a, b)  # the projection is the same computation
    for a, b in zip(only.means2d, full.means2d):
        same(a.grad, b.grad, "means2d grad")  # what the densification statistics see
    assert g_full.keys() == g_only.keys()
    for name in g_full:
        same(g_only[name], g_full[name], name)
    assert all(g_full[n].abs().sum() > 0 for n in g_full if not n.endswith("colors"))


def test_depth_only_refuses_track_channels():
    model = _random_model()
    with pytest.raises(ValueError, match="depth_only"):
        model.render(
            torch.tensor([0]),
            torch.eye(4)[None],
            torch.eye(3)[None],
            (8, 8),
            target_ts=torch.tensor([1]),
            target_w2cs=torch.eye(4)[None],
            depth_only=True,
        )
