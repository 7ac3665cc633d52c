"""The real gsplat CUDA kernels against the CPU backend (``pytest -m gpu``; skipped without a CUDA device).

Run by ``python -m flow3d.benchmarks.gpu_check`` on a GPU machine. The same checks run on every machine
with gsplat's Python on CPU stand-ins (tests/render/test_render_gsplat_cpu.py); here nothing is replaced.
"""

from __future__ import annotations

import pytest
import torch
from render_reference import make_scene

from flow3d.render import rasterization

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (gsplat's kernels)"),
]
PARAMS = ("means", "quats", "scales", "opacities", "colors")


def _run(scene: dict, backend: str, device: str):
    leaves = {
        k: (v.detach().to(device).requires_grad_() if k in PARAMS else v.to(device) if torch.is_tensor(v) else v)
        for k, v in scene.items()
    }
    bg = torch.linspace(0, 1, 3, device=device)[None].repeat(2, 1)
    colors, alphas, meta = rasterization(**leaves, backgrounds=bg, render_mode="RGB+ED", backend=backend)
    meta["means2d"].retain_grad()
    gen = torch.Generator().manual_seed(1)
    wc, wa = torch.randn(colors.shape, generator=gen).to(device), torch.randn(alphas.shape, generator=gen).to(device)
    ((colors * wc).sum() + (alphas * wa).sum()).backward()
    grads = {k: leaves[k].grad.cpu() for k in PARAMS}
    grads["means2d"] = meta["means2d"].grad.cpu()
    return colors.detach().cpu(), alphas.detach().cpu(), meta["radii"].cpu(), grads


def test_gsplat_cuda_matches_the_cpu_backend():
    scene = make_scene(n=200, n_cams=2, width=64, height=48, n_behind=3, dtype=torch.float32)
    cg, ag, rg, gg = _run(scene, "gsplat", "cuda")
    cc, ac, rc, gc = _run(scene, "cpu", "cpu")
    tol = lambda ref: dict(rtol=0, atol=1e-4 * max(float(ref.abs().max()), 1.0))  # noqa: E731
    torch.testing.assert_close(cg, cc, **tol(cc))
    torch.testing.assert_close(ag, ac, **tol(ac))
    assert torch.equal(rg, rc)
    for k in gc:
        torch.testing.assert_close(gg[k], gc[k], **tol(gc[k]))
