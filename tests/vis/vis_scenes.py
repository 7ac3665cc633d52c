"""A hand-made scene whose motion is known exactly (for the export and camera tests)."""

from __future__ import annotations

import torch


def moving_blob_scene(T: int = 4, step: float = 0.4):
    """A scene whose answer is known: 150 opaque dynamic Gaussians in a ball of radius 0.15 around
    (-0.6, 0, 3) that translate by (``step`` t, 0, 0) at frame t (both bases, identity rotation), in front
    of a static wall of Gaussians at z = 5. Returns (model, w2c (4, 4) identity, K (3, 3), (W, H))."""
    from flow3d.scene.gaussians import GaussianParams
    from flow3d.scene.model import SceneModel
    from flow3d.scene.motion import MotionBases, matrix_to_rot6d

    g = torch.Generator().manual_seed(0)
    n = 150
    d = torch.nn.functional.normalize(torch.randn(n, 3, generator=g), dim=-1)
    means = torch.tensor([-0.6, 0.0, 3.0]) + d * 0.15 * torch.rand(n, 1, generator=g) ** (1 / 3)
    fg = GaussianParams(
        means,
        torch.tensor([1.0, 0, 0, 0]).repeat(n, 1),
        torch.full((n, 3), 0.04),
        torch.full((n,), 0.95),
        torch.tensor([0.9, 0.2, 0.1]).repeat(n, 1),
        torch.zeros(n, 2),
    )
    transl = torch.zeros(2, T, 3)
    transl[:, :, 0] = step * torch.arange(T, dtype=torch.float32)
    bases = MotionBases(matrix_to_rot6d(torch.eye(3).expand(2, T, 3, 3)), transl)
    ys, xs = torch.meshgrid(torch.linspace(-2.5, 2.5, 40), torch.linspace(-3.5, 3.5, 56), indexing="ij")
    wall = torch.stack([xs.reshape(-1), ys.reshape(-1), torch.full((xs.numel(),), 5.0)], -1)
    m = wall.shape[0]
    bg = GaussianParams(
        wall,
        torch.tensor([1.0, 0, 0, 0]).repeat(m, 1),
        torch.full((m, 3), 0.08),
        torch.full((m,), 0.95),
        torch.tensor([0.2, 0.3, 0.8]).repeat(m, 1),
    )
    W, H = 64, 48
    K = torch.tensor([[50.0, 0.0, (W - 1) / 2], [0.0, 50.0, (H - 1) / 2], [0.0, 0.0, 1.0]])
    return SceneModel(fg, bases, bg).eval(), torch.eye(4), K, (W, H)
