"""One rendering interface, three backends: gsplat (CUDA), a compiled CPU tile rasterizer and its PyTorch reference.

``rasterization`` takes and returns what ``gsplat.rasterization`` does (gsplat 1.5.3, classic
pinhole mode, no spherical harmonics) so that a GPU run and a CPU run of the same model render the
same images. See :mod:`flow3d.render.projection` and :mod:`flow3d.render.tile_raster` for the maths,
and :mod:`flow3d.render.compiled` for the compiled kernel (built on first use).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from flow3d.log import get_logger
from flow3d.render import compiled, gsplat_backend
from flow3d.render.projection import project_gaussians, quat_scale_to_covar
from flow3d.render.tile_raster import build_tile_plan, rasterize_tiles

logger = get_logger(__name__)

RENDER_MODES = ("RGB", "D", "ED", "RGB+D", "RGB+ED")
BACKENDS = ("auto", "gsplat", "cpu", "torch")
# gsplat keywords the CPU backends ("cpu" and "torch") understand, with the values it supports (None: any value).
_TORCH_KWARGS = {
    "radius_clip": None,
    "rasterize_mode": ("classic", "antialiased"),
    "sh_degree": (None,),
    "camera_model": ("pinhole",),
    "sparse_grad": (False,),
    "distributed": (False,),
    "with_ut": (False,),
    "with_eval3d": (False,),
    "covars": (None,),
    "channel_chunk": None,
    "segmented": None,
}
# Tuning knobs of the torch backend only (dropped before calling gsplat, ignored by "cpu").
_TORCH_ONLY_KWARGS = ("torch_chunk", "torch_block_elems")


def _check_shape(name: str, x: Tensor, expected: tuple) -> None:
    ok = x.dim() == len(expected) and all(e is None or s == e for s, e in zip(x.shape, expected))
    if not ok:
        exp = "(" + ", ".join("?" if e is None else str(e) for e in expected) + ")"
        raise ValueError(f"{name} must have shape {exp}, got {tuple(x.shape)}")


def _validate(
    means, quats, scales, opacities, colors, viewmats, Ks, width, height, backgrounds, render_mode, backend, tile_size
):
    if render_mode not in RENDER_MODES:
        raise ValueError(f"render_mode must be one of {RENDER_MODES}, got {render_mode!r}")
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    _check_shape("means", means, (None, 3))
    N = means.shape[0]
    _check_shape("quats", quats, (N, 4))
    _check_shape("scales", scales, (N, 3))
    _check_shape("opacities", opacities, (N,))
    _check_shape("viewmats", viewmats, (None, 4, 4))
    C = viewmats.shape[0]
    _check_shape("Ks", Ks, (C, 3, 3))
    if colors.dim() == 2:
        _check_shape("colors", colors, (N, None))
    else:
        _check_shape("colors", colors, (C, N, None))
    if render_mode in ("RGB", "RGB+D", "RGB+ED") and colors.shape[-1] == 0:
        raise ValueError(
            f"colors must have at least one channel for render_mode={render_mode!r}, got {tuple(colors.shape)}"
        )
    if backgrounds is not None:
        _check_shape("backgrounds", backgrounds, (C, colors.shape[-1]))
    if int(width) != width or int(height) != height or width <= 0 or height <= 0:
        raise ValueError(f"width and height must be positive integers, got width={width}, height={height}")
    if int(tile_size) != tile_size or tile_size <= 0:
        raise ValueError(f"tile_size must be a positive integer, got {tile_size}")
    named = {
        "means": means,
        "quats": quats,
        "scales": scales,
        "opacities": opacities,
        "colors": colors,
        "viewmats": viewmats,
        "Ks": Ks,
    }
    if backgrounds is not None:
        named["backgrounds"] = backgrounds
    dtypes = {k: v.dtype for k, v in named.items()}
    if len(set(dtypes.values())) != 1:
        raise ValueError(f"all tensors must share one floating dtype, got {dtypes}")


_fallback_warned = False


def _resolve_cpu_backend(x: Tensor, backend: str) -> str:
    """The backend for tensors like ``x``: "cpu" where the compiled rasterizer runs, else "torch" ("auto") or an error."""
    if backend == "cpu" and x.device.type != "cpu":
        raise ValueError(f"backend='cpu' needs CPU tensors, got means on {x.device}; use 'auto', 'gsplat' or 'torch'")
    if x.device.type != "cpu":
        return "torch"
    if x.dtype not in (torch.float32, torch.float64):
        if backend == "cpu":
            raise ValueError(f"backend='cpu' supports float32 and float64, got {x.dtype}; use backend='torch'")
        return "torch"
    if compiled.load_extension():
        return "cpu"
    if backend == "cpu":
        raise RuntimeError(f"backend='cpu': the compiled CPU rasterizer is unavailable ({compiled.load_error()})")
    global _fallback_warned
    if not _fallback_warned:
        _fallback_warned = True
        logger.warning(
            "compiled CPU rasterizer unavailable (%s); using the PyTorch backend (%s)",
            compiled.load_error(),
            compiled.FALLBACK_SLOWDOWN,
        )
    return "torch"


def rasterization(
    means: Tensor,  # (N, 3) world
    quats: Tensor,  # (N, 4) wxyz, need not be normalised
    scales: Tensor,  # (N, 3) activated, scene units
    opacities: Tensor,  # (N,) activated, in (0, 1)
    colors: Tensor,  # (N, D) or (C, N, D), any D (no spherical harmonics)
    viewmats: Tensor,  # (C, 4, 4) world -> camera (OpenCV axes)
    Ks: Tensor,  # (C, 3, 3) gsplat pixel convention (see flow3d.geometry.opencv_to_gsplat_Ks)
    width: int,
    height: int,
    *,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
    eps2d: float = 0.3,
    backgrounds: Tensor | None = None,  # (C, D)
    render_mode: Literal["RGB", "D", "ED", "RGB+D", "RGB+ED"] = "RGB",
    backend: Literal["auto", "gsplat", "cpu", "torch"] = "auto",
    absgrad: bool = False,
    packed: bool = False,
    tile_size: int = 16,
    **gsplat_kwargs,
) -> tuple[Tensor, Tensor, dict]:
    """Render Gaussians into C cameras, with gsplat's conventions and rules.

    Returns ``render_colors`` (C, H, W, X), ``render_alphas`` (C, H, W, 1) and ``meta``. X is D for
    "RGB", 1 for "D"/"ED", D + 1 for "RGB+D"/"RGB+ED" (depth last). "D" is the accumulated depth
    ``sum_i w_i z_i``; "ED" is it divided by ``alpha.clamp(min=1e-10)`` (gsplat). ``backgrounds``
    (C, D) are composited as ``color + (1 - alpha) * bg`` (the depth channel gets background 0).

    ``meta`` holds (CPU backends, gsplat's non-packed layout): ``means2d`` (C, N, 2) projected centres
    in pixels -- a non-leaf tensor in the graph: call ``meta["means2d"].retain_grad()`` before backward
    to read its ``.grad`` (with ``absgrad=True`` the backward also sets ``meta["means2d"].absgrad``);
    ``radii`` (C, N, 2) int32 bounding-box half sizes in pixels, 0 where culled; ``depths`` (C, N)
    camera z; ``conics`` (C, N, 3); ``opacities`` (C, N); ``width``, ``height``, ``n_cameras``,
    ``n_batches`` (1), ``tile_size``, ``tile_width``, ``tile_height``, ``n_isects``, ``gaussian_ids``
    / ``camera_ids`` (None: not packed), ``packed`` and ``backend`` (the one that ran).

    backend: "gsplat" calls ``gsplat.rasterization`` (CUDA tensors only; ``packed``, ``absgrad`` and any
    extra gsplat keyword are passed through); "cpu" runs the compiled C++/OpenMP tile rasterizer
    (CPU tensors, float32/float64; built on first use, see :mod:`flow3d.render.compiled`); "torch" runs
    the same tile rasterizer in plain PyTorch (any device; the readable reference). Both CPU backends
    follow gsplat's classic mode and return the non-packed layout (``meta["packed"] = False``). "auto"
    picks gsplat for CUDA tensors when CUDA is available, else "cpu" for CPU tensors, falling back to
    "torch" with one warning when the compiled rasterizer cannot be built or loaded. The CPU backends
    accept ``radius_clip``, ``rasterize_mode`` ("classic" or "antialiased") and, as tuning knobs of
    "torch" ignored by the others, ``torch_chunk`` (Gaussians per tile per step, default 32) and
    ``torch_block_elems`` ((Gaussian, pixel) pairs per block, default 2**20, the memory bound).
    """
    _validate(
        means,
        quats,
        scales,
        opacities,
        colors,
        viewmats,
        Ks,
        width,
        height,
        backgrounds,
        render_mode,
        backend,
        tile_size,
    )
    width, height = int(width), int(height)
    if backend == "auto":
        backend = "gsplat" if gsplat_backend.gsplat_available_for(means) else _resolve_cpu_backend(means, "auto")
    elif backend == "cpu":
        _resolve_cpu_backend(means, "cpu")
    torch_only = {k: gsplat_kwargs.pop(k) for k in _TORCH_ONLY_KWARGS if k in gsplat_kwargs}
    if backend == "gsplat":
        return gsplat_backend.rasterization_gsplat(
            means,
            quats,
            scales,
            opacities,
            colors,
            viewmats,
            Ks,
            width,
            height,
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
    if packed:
        logger.debug("backend=%r has no packed mode: returning gsplat's dense (C, N) layout", backend)
    return _rasterization_tiles(
        means,
        quats,
        scales,
        opacities,
        colors,
        viewmats,
        Ks,
        width,
        height,
        near_plane=near_plane,
        far_plane=far_plane,
        eps2d=eps2d,
        backgrounds=backgrounds,
        render_mode=render_mode,
        absgrad=absgrad,
        tile_size=tile_size,
        backend=backend,
        chunk=int(torch_only.get("torch_chunk", 32)),
        block_elems=int(torch_only.get("torch_block_elems", 1 << 20)),
        **gsplat_kwargs,
    )


def _rasterization_tiles(
    means,
    quats,
    scales,
    opacities,
    colors,
    viewmats,
    Ks,
    width,
    height,
    *,
    near_plane,
    far_plane,
    eps2d,
    backgrounds,
    render_mode,
    absgrad,
    tile_size,
    backend,
    chunk,
    block_elems,
    **kwargs,
):
    """The CPU backends: projection, tile lists and compositing compiled ("cpu") or in PyTorch ("torch")."""
    for k, v in kwargs.items():
        if k not in _TORCH_KWARGS:
            raise ValueError(
                f"backend={backend!r} does not support the gsplat keyword {k!r}; supported: {sorted(_TORCH_KWARGS)}"
            )
        allowed = _TORCH_KWARGS[k]
        if allowed is not None and v not in allowed:
            raise ValueError(f"backend={backend!r} supports {k} in {allowed}, got {v!r}")
    radius_clip = float(kwargs.get("radius_clip", 0.0))
    antialiased = kwargs.get("rasterize_mode", "classic") == "antialiased"

    C = viewmats.shape[0]
    compiled_projection = backend == "cpu" and not (viewmats.requires_grad or Ks.requires_grad)
    if compiled_projection:
        proj = compiled.project_compiled(
            means,
            quats,
            scales,
            opacities,
            viewmats,
            Ks,
            width,
            height,
            eps2d=eps2d,
            near_plane=near_plane,
            far_plane=far_plane,
            radius_clip=radius_clip,
            antialiased=antialiased,
        )
    else:  # the PyTorch projection (also the one that passes gradients to the cameras)
        covars = quat_scale_to_covar(quats, scales)  # (N, 3, 3)
        proj = project_gaussians(
            means,
            covars,
            opacities,
            viewmats,
            Ks,
            width,
            height,
            eps2d=eps2d,
            near_plane=near_plane,
            far_plane=far_plane,
            radius_clip=radius_clip,
            antialiased=antialiased,
        )
    means2d, conics, depths, radii, opac = (
        proj["means2d"],
        proj["conics"],
        proj["depths"],
        proj["radii"],
        proj["opacities"],
    )

    feats = colors if colors.dim() == 3 else colors[None].expand(C, -1, -1)  # (C, N, D)
    bgs = backgrounds
    if render_mode in ("RGB+D", "RGB+ED"):
        feats = torch.cat([feats, depths[..., None].to(feats.dtype)], dim=-1)
        if bgs is not None:
            bgs = torch.cat([bgs, bgs.new_zeros(C, 1)], dim=-1)
    elif render_mode in ("D", "ED"):
        feats = depths[..., None].to(means.dtype)
        bgs = None if bgs is None else bgs.new_zeros(C, 1)

    if backend == "cpu":
        plan = compiled.build_tile_plan_compiled(means2d, radii, depths, width, height, tile_size)
    else:
        plan = build_tile_plan(means2d, radii, depths, width, height, tile_size)
    if backend == "cpu":
        render_colors, render_alphas = compiled.rasterize_tiles_compiled(
            means2d, conics, opac, feats, plan, backgrounds=bgs, absgrad=absgrad
        )
    else:
        render_colors, render_alphas = rasterize_tiles(
            means2d, conics, opac, feats, plan, backgrounds=bgs, chunk=chunk, block_elems=block_elems, absgrad=absgrad
        )
    if render_mode in ("ED", "RGB+ED"):
        render_colors = torch.cat(
            [render_colors[..., :-1], render_colors[..., -1:] / render_alphas.clamp(min=1e-10)], dim=-1
        )
    meta = {
        "means2d": means2d,
        "radii": radii,
        "depths": depths,
        "conics": conics,
        "opacities": opac,
        "width": width,
        "height": height,
        "n_cameras": C,
        "n_batches": 1,
        "tile_size": tile_size,
        "tile_width": plan.tile_width,
        "tile_height": plan.tile_height,
        "n_isects": plan.n_isects,
        "batch_ids": None,
        "camera_ids": None,
        "gaussian_ids": None,
        "packed": False,
        "backend": backend,
    }
    return render_colors, render_alphas, meta
