"""Rendering: one gsplat-compatible ``rasterization`` with a gsplat (CUDA) and a PyTorch (CPU) backend."""

from flow3d.render.rasterize import BACKENDS, RENDER_MODES, rasterization

__all__ = ["BACKENDS", "RENDER_MODES", "rasterization"]
