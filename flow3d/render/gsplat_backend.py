"""Thin wrapper around ``gsplat.rasterization`` (CUDA only): the users' main path on GPU machines.

Every keyword this module passes must exist in the installed ``gsplat.rasterization`` signature;
``tests/render/test_render_gsplat_wrapper.py`` checks it against gsplat itself, since no machine here
can run gsplat's CUDA kernels; ``tests/render/test_render_gsplat_cpu.py`` runs the real
``gsplat.rasterization`` on CPU through this wrapper, with :mod:`flow3d.render.gsplat_cpu`'s stand-ins for
the CUDA ops.
"""

from __future__ import annotations

from torch import Tensor


def gsplat_available_for(x: Tensor) -> bool:
    """True when gsplat can rasterize tensors like ``x``: a CUDA tensor with a CUDA runtime present, or a CPU
    tensor while :func:`flow3d.render.gsplat_cpu.gsplat_cpu_ops` (the tests' CPU stand-ins) is active."""
    import torch

    from flow3d.render import gsplat_cpu

    if gsplat_cpu.cpu_ops_active() and x.device.type == "cpu":
        return True
    return bool(x.is_cuda and torch.cuda.is_available())


def rasterization_gsplat(
    means: Tensor,  # (N, 3)
    quats: Tensor,  # (N, 4) wxyz
    scales: Tensor,  # (N, 3)
    opacities: Tensor,  # (N,)
    colors: Tensor,  # (N, D) or (C, N, D)
    viewmats: Tensor,  # (C, 4, 4)
    Ks: Tensor,  # (C, 3, 3)
    width: int,
    height: int,
    *,
    near_plane: float,
    far_plane: float,
    eps2d: float,
    backgrounds: Tensor | None,
    render_mode: str,
    absgrad: bool,
    packed: bool,
    tile_size: int,
    **gsplat_kwargs,
) -> tuple[Tensor, Tensor, dict]:
    """Call ``gsplat.rasterization`` with keyword arguments; see :func:`flow3d.render.rasterization`."""
    if not gsplat_available_for(means):
        raise ValueError(
            f"backend='gsplat' needs CUDA tensors and a CUDA runtime (gsplat has no CPU rasterizer); got means on "
            f"{means.device}. Use backend='torch' (or 'auto', which picks it on the CPU)."
        )
    import gsplat

    colors_out, alphas, meta = gsplat.rasterization(
        means=means,
        quats=quats,
        scales=scales,
        opacities=opacities,
        colors=colors,
        viewmats=viewmats,
        Ks=Ks,
        width=width,
        height=height,
        near_plane=near_plane,
        far_plane=far_plane,
        eps2d=eps2d,
        backgrounds=backgrounds,
        render_mode=render_mode,
        absgrad=absgrad,
        packed=packed,
        tile_size=tile_size,
        **gsplat_kwargs,
    )
    # the keys the CPU backends also set, so that callers (benchmarks, logs) read one layout
    meta.setdefault("backend", "gsplat")
    meta.setdefault("packed", bool(packed))
    if "isect_ids" in meta:
        meta.setdefault("n_isects", int(meta["isect_ids"].numel()))
    return colors_out, alphas, meta
