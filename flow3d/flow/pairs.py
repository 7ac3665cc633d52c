"""Pixel pairs for depth-order losses, drawn among trustworthy pixels and carried to another frame by flow.

Rendered depth at the sub-pixel positions ``xy_*_next`` is read with
:func:`flow3d.geometry.bilinear_sample` (differentiable in the depth map).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from flow3d.depth import depth_order_sign

STRATEGIES = ("global", "local")
PRIOR_KINDS = ("disparity", "depth")
_LOCAL_ROUNDS = 16


@dataclass
class PixelPairs:
    """P pixel pairs (a, b) in frame t (P may be smaller than asked: see :func:`sample_pixel_pairs`)."""

    xy_a: Tensor  # (P, 2) long, (x, y) pixel of a in frame t
    xy_b: Tensor  # (P, 2) long
    xy_a_next: Tensor | None = None  # (P, 2) float, xy_a + flow(xy_a) in frame t+k (when flow given)
    xy_b_next: Tensor | None = None  # (P, 2) float
    order: Tensor | None = None  # (P,) prior's dtype: +1 a farther than b (larger depth), -1 nearer, 0 tie

    def __len__(self) -> int:
        return int(self.xy_a.shape[0])

    def subset(self, keep: Tensor) -> "PixelPairs":
        """The pairs where ``keep`` (P,) bool is True (every field that is set)."""
        pick = lambda x: None if x is None else x[keep.to(x.device)]  # noqa: E731
        return PixelPairs(
            self.xy_a[keep], self.xy_b[keep], pick(self.xy_a_next), pick(self.xy_b_next), pick(self.order)
        )


def _check_map(x: Tensor | None, name: str, shape: tuple, bool_required: bool = False) -> None:
    if x is None:
        return
    if not torch.is_tensor(x) or tuple(x.shape) != shape or (bool_required and x.dtype != torch.bool):
        got = f"{getattr(x, 'dtype', type(x).__name__)} {tuple(getattr(x, 'shape', ()))}"
        want = "bool " if bool_required else ""
        raise ValueError(f"{name} must be a {want}tensor of shape {shape}, got {got}")


def _randint(high: Tensor | int, size: int, generator, device) -> Tensor:
    """Uniform integers in [0, high) (``high`` may be a tensor of per-element bounds)."""
    u = torch.rand(size, generator=generator, device=device, dtype=torch.float64)
    return (u * high).long().clamp_max(torch.as_tensor(high, device=device) - 1)


def sample_pixel_pairs(
    valid: Tensor,
    num_pairs: int,
    *,
    strategy: str = "global",
    radius: int = 16,
    region: Tensor | None = None,
    prior: Tensor | None = None,
    prior_kind: str = "disparity",
    min_rel_diff: float = 0.0,
    flow: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> PixelPairs:
    """Draw pixel pairs among ``valid & region`` pixels of one frame.

    valid: (H, W) bool, e.g. the fb-consistency mask toward frame t+k (or all True for same-frame pairs).
    num_pairs: P pairs asked for.
    strategy: "global" (a and b uniform over the allowed set, a != b) or "local" (a uniform; b uniform
        among allowed pixels within Euclidean ``radius`` px of a, b != a, by vectorised rejection
        sampling with 16 rounds; a pair whose a finds no partner is dropped).
    region: (H, W) bool or None, restricts both points (foreground, background...).
    prior: (H, W) depth or disparity prior (``prior_kind`` says which) or None. When given, ``order``
        is :func:`flow3d.depth.depth_order_sign` of the prior at (a, b) (+1: a farther), and pairs whose
        order is unknown (``|p_a - p_b| / max(|p_a|, |p_b|) < min_rel_diff``, an exact tie or a
        non-finite prior value) are dropped.
    flow: (H, W, 2) flow t -> t+k or None; when given, ``xy_*_next = xy + flow(xy)`` (float).
    generator: torch.Generator on ``valid.device`` for reproducible draws (same seed, same pairs).

    Returns :class:`PixelPairs`. Fewer than P pairs come back when pairs are dropped (prior filter,
    local partners not found), and none when fewer than two pixels are allowed.
    """
    if not torch.is_tensor(valid) or valid.dim() != 2 or valid.dtype != torch.bool:
        raise ValueError(
            f"valid must be an (H, W) bool tensor, got {getattr(valid, 'dtype', type(valid))} "
            f"{tuple(getattr(valid, 'shape', ()))}"
        )
    H, W = valid.shape
    _check_map(region, "region", (H, W), bool_required=True)
    _check_map(prior, "prior", (H, W))
    _check_map(flow, "flow", (H, W, 2))
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    if prior_kind not in PRIOR_KINDS:
        raise ValueError(f"prior_kind must be one of {PRIOR_KINDS}, got {prior_kind!r}")
    if int(num_pairs) < 0 or (strategy == "local" and int(radius) < 1):
        raise ValueError(f"num_pairs must be >= 0 and radius >= 1, got num_pairs={num_pairs} radius={radius}")
    device = valid.device
    allowed = valid if region is None else valid & region.to(device)
    idx = allowed.reshape(-1).nonzero().squeeze(1)  # (M,) flat indices of allowed pixels
    M, P = idx.numel(), int(num_pairs)
    if M < 2 or P == 0:
        a = b = torch.zeros(0, dtype=torch.long, device=device)
    elif strategy == "global":
        ia = _randint(M, P, generator, device)
        ib = (ia + 1 + _randint(M - 1, P, generator, device)) % M  # uniform over the others: b != a
        a, b = idx[ia], idx[ib]
    else:
        a, b = _local_partners(allowed, idx[_randint(M, P, generator, device)], int(radius), generator)
    xy_a = torch.stack([a % W, a // W], dim=-1)
    xy_b = torch.stack([b % W, b // W], dim=-1)
    out = PixelPairs(xy_a, xy_b)
    if prior is not None:
        pa, pb = prior.reshape(-1)[a], prior.reshape(-1)[b]
        order = depth_order_sign(pa, pb, prior_kind, min_rel_diff)  # 0: tie, near-tie or non-finite
        keep = order != 0
        out = PixelPairs(xy_a[keep], xy_b[keep], order=order[keep].to(pa.dtype))
    if flow is not None:
        f = flow.reshape(-1, 2)
        out.xy_a_next = out.xy_a.to(f.dtype) + f[out.xy_a[:, 1] * W + out.xy_a[:, 0]]
        out.xy_b_next = out.xy_b.to(f.dtype) + f[out.xy_b[:, 1] * W + out.xy_b[:, 0]]
    return out


def _local_partners(allowed: Tensor, a: Tensor, radius: int, generator) -> tuple[Tensor, Tensor]:
    """For flat indices ``a`` (P,), draw b uniform among allowed pixels in the disc of ``radius`` (b != a)."""
    H, W = allowed.shape
    device = a.device
    flat = allowed.reshape(-1)
    b = torch.full_like(a, -1)
    todo = torch.arange(a.numel(), device=device)
    side = 2 * radius + 1
    for _ in range(_LOCAL_ROUNDS):
        if todo.numel() == 0:
            break
        off = _randint(side * side, todo.numel(), generator, device)
        dx, dy = off % side - radius, off // side - radius
        x, y = a[todo] % W + dx, a[todo] // W + dy
        ok = (dx * dx + dy * dy <= radius * radius) & ((dx != 0) | (dy != 0))
        ok &= (x >= 0) & (x < W) & (y >= 0) & (y < H)
        cand = (y * W + x).clamp(0, H * W - 1)
        ok &= flat[cand]
        b[todo[ok]] = cand[ok]
        todo = todo[~ok]
    found = b >= 0
    return a[found], b[found]
