"""Depth and disparity: the one conversion between them, the one validity rule, the one depth-order sign.

Conventions (see the glossary in :mod:`flow3d`): ``depth`` is z along the camera's optical axis in scene
units; ``disp`` (disparity) is 1 / z, up to an unknown scale and shift when it comes from a monocular
prior. The order of depths is the reverse of the order of disparities.

The validity rule
    A depth or disparity value is *valid* when it is finite and greater than :data:`EPS`. Every
    conversion here applies it, and a :class:`flow3d.data.VideoSequence` applies it to its prior when it
    is constructed (the last step of every loader), so code downstream of loading never decides again
    which prior pixels count: it reads ``prior_valid``. Invalid entries are 0 in every output.

Every inversion divides only valid values (``torch.where`` before the division), so gradients are finite
everywhere, also where the input is 0, negative or NaN.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

EPS = 1e-6
"""Smallest valid depth (scene units) or disparity (1 / scene units). Small enough that no usable value of
a normalised scene or of a monocular prior is lost; large enough that an inverse stays below 1e6."""

Kind = Literal["depth", "disparity"]
_KIND_SIGN = {"depth": 1, "disparity": -1}

__all__ = ["EPS", "Kind", "depth_order_sign", "depth_to_disp", "disp_to_depth", "invert", "is_valid", "kind_sign"]


def is_valid(x: Tensor) -> Tensor:
    """Bool (...,): ``x`` is finite and > :data:`EPS` (the project's one validity rule)."""
    return torch.isfinite(x) & (x > EPS)


def invert(x: Tensor, valid: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """``(1 / x, ok)`` where ``ok = is_valid(x) & valid``; 0 elsewhere. x: (...,); valid: (...,) bool or None."""
    ok = is_valid(x)
    if valid is not None:
        ok = ok & valid.to(torch.bool)
    inv = 1.0 / torch.where(ok, x, torch.ones_like(x))
    return torch.where(ok, inv, torch.zeros_like(x)), ok


def disp_to_depth(disp: Tensor, valid: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """z-depth (...,) = 1 / ``disp`` where valid, 0 elsewhere; returns ``(depth, valid)``.

    A monocular prior's shift is NOT removed: the result is depth up to scale only if the shift is 0.
    """
    return invert(disp, valid)


def depth_to_disp(depth: Tensor, valid: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Disparity (...,) = 1 / ``depth`` where valid, 0 elsewhere; returns ``(disp, valid)``."""
    return invert(depth, valid)


def kind_sign(kind: str, arg: str = "kind", fn: str = "kind_sign") -> int:
    """+1 for ``"depth"``, -1 for ``"disparity"`` (larger disparity = nearer); ``ValueError`` naming
    ``arg`` of ``fn`` otherwise."""
    if kind not in _KIND_SIGN:
        raise ValueError(f"{fn}: {arg} must be 'depth' or 'disparity', got {kind!r}")
    return _KIND_SIGN[kind]


def depth_order_sign(
    values_a: Tensor,  # (...,)
    values_b: Tensor,  # (...,)
    kind: Kind,
    min_rel_diff: float = 0.0,
) -> Tensor:
    """Sign of the DEPTH difference ``depth(a) - depth(b)`` as int8: +1 a farther, -1 a nearer, 0 unknown.

    Args:
        values_a, values_b: (...,) depths or disparities (same shape), e.g. a prior sampled at pairs.
        kind: ``"depth"`` or ``"disparity"``; for disparity the sign of ``a - b`` is flipped.
        min_rel_diff: pairs with ``|a - b| / max(|a|, |b|) < min_rel_diff`` get 0 (unreliable). This
            ratio is the same whether computed on depths or on their inverses, so the rule does not
            depend on ``kind``.

    Exact ties and pairs with a non-finite value get 0. No gradient. Every depth-order comparison of
    the project (pair sampling, the ordinal losses, the ordinal-accuracy metric) goes through here.
    """
    fn = "depth_order_sign"
    if not isinstance(values_a, Tensor) or not isinstance(values_b, Tensor):
        raise ValueError(f"{fn}: values_a and values_b must be torch.Tensors")
    if values_a.shape != values_b.shape or values_a.device != values_b.device:
        raise ValueError(
            f"{fn}: values_b has shape {tuple(values_b.shape)} on {values_b.device} but values_a "
            f"has shape {tuple(values_a.shape)} on {values_a.device}; they must match"
        )
    s = kind_sign(kind, "kind", fn)
    if min_rel_diff < 0:
        raise ValueError(f"{fn}: min_rel_diff must be >= 0, got {min_rel_diff}")
    a, b = values_a.detach(), values_b.detach()
    if not a.is_floating_point():
        a, b = a.double(), b.double()
    diff = a - b
    sign = torch.sign(diff) * s
    keep = torch.isfinite(a) & torch.isfinite(b)
    if min_rel_diff > 0:
        scale = torch.maximum(a.abs(), b.abs())
        keep &= diff.abs() >= min_rel_diff * scale
    return torch.where(keep, sign, torch.zeros_like(sign)).to(torch.int8)
