"""Validation and masked-reduction helpers shared by every loss in :mod:`flow3d.losses`.

Rules every loss follows (see also ``STYLE.md``):

* a shape / device / dtype mismatch raises one ``ValueError`` naming the argument and both shapes;
* an empty mask gives a *differentiable* zero (``x.sum() * 0.0``), never NaN;
* division is made safe by substituting a harmless value first (``torch.where(ok, x, ones)``), so that
  the gradient is finite as well as the value.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor


def check_tensor(name: str, x: Tensor, *, fn: str, ndims: Sequence[int] | None = None, floating: bool = True) -> None:
    """Raise ``ValueError`` unless ``x`` is a tensor (floating if asked) with one of ``ndims`` dimensions."""
    if not isinstance(x, Tensor):
        raise ValueError(f"{fn}: {name} must be a torch.Tensor, got {type(x).__name__}")
    if floating and not x.is_floating_point():
        raise ValueError(f"{fn}: {name} must be a floating-point tensor, got dtype {x.dtype}")
    if ndims is not None and x.dim() not in ndims:
        want = " or ".join(str(n) for n in ndims)
        raise ValueError(f"{fn}: {name} must have {want} dimensions, got shape {tuple(x.shape)}")


def check_same(name: str, x: Tensor, ref_name: str, ref: Tensor, *, fn: str) -> None:
    """Raise ``ValueError`` unless ``x`` has the shape and device of ``ref``."""
    if not isinstance(x, Tensor):
        raise ValueError(f"{fn}: {name} must be a torch.Tensor, got {type(x).__name__}")
    if x.shape != ref.shape:
        raise ValueError(
            f"{fn}: {name} has shape {tuple(x.shape)} but {ref_name} has shape {tuple(ref.shape)}; they must match"
        )
    if x.device != ref.device:
        raise ValueError(f"{fn}: {name} is on {x.device} but {ref_name} is on {ref.device}")


def as_weight(mask: Tensor | None, like: Tensor, *, name: str = "mask", fn: str) -> Tensor:
    """Turn a bool / float / int ``mask`` of ``like``'s shape into weights of ``like``'s dtype.

    ``None`` means all ones. Float masks are used as non-negative weights (negative values raise
    nothing but are clamped to 0). The shape must equal ``like.shape`` exactly: weights never broadcast
    silently (Shape of Motion's bug of a ``(B, H, W)`` mask against a ``(B, H, W, 1)`` loss).
    """
    if mask is None:
        return torch.ones_like(like)
    check_same(name, mask, "the loss input", like, fn=fn)
    if mask.dtype == torch.bool:
        return mask.to(like.dtype)
    if mask.is_complex():
        raise ValueError(f"{fn}: {name} must be bool or real, got dtype {mask.dtype}")
    return mask.to(like.dtype).clamp_min(0.0)


def safe_div(num: Tensor, den: Tensor) -> Tensor:
    """``num / den`` where ``den > 0``, else 0 -- with finite gradients everywhere."""
    ok = den > 0
    return torch.where(ok, num / torch.where(ok, den, torch.ones_like(den)), torch.zeros_like(num))


def safe_sqrt(x: Tensor) -> Tensor:
    """``sqrt(x)`` for ``x > 0`` and 0 elsewhere, with a zero (not infinite) gradient at 0."""
    ok = x > 0
    return torch.where(ok, torch.sqrt(torch.where(ok, x, torch.ones_like(x))), torch.zeros_like(x))


def safe_norm(x: Tensor, dim: int = -1) -> Tensor:
    """Euclidean norm over ``dim`` with a finite (zero) gradient at the zero vector."""
    return safe_sqrt((x * x).sum(dim))


def masked_mean(x: Tensor, weight: Tensor, dim: int | Sequence[int] | None = None, *, sanitize: bool = True) -> Tensor:
    """Weighted mean ``sum(w x) / sum(w)`` over ``dim`` (all dims if None).

    ``weight`` has ``x``'s shape (or broadcasts to it). Where the weights sum to 0 the result is a
    differentiable 0 (it still depends on ``x`` with zero gradient), never NaN. ``sanitize`` keeps
    NaN/Inf held at zero-weight entries out of the product; callers whose ``x`` is finite may skip it.
    """
    xw = (torch.where(weight > 0, x, torch.zeros_like(x)) if sanitize else x) * weight
    w = weight.expand_as(x)
    if dim is None:
        return safe_div(xw.sum(), w.sum())
    return safe_div(xw.sum(dim), w.sum(dim))


def zero_like_loss(*tensors: Tensor) -> Tensor:
    """A scalar 0 connected to the graph of every tensor given (``t.sum() * 0`` summed)."""
    out = None
    for t in tensors:
        if t is None or not t.is_floating_point():
            continue
        z = torch.where(torch.isfinite(t), t, torch.zeros_like(t)).sum() * 0.0
        out = z if out is None else out + z
    if out is None:
        raise ValueError("zero_like_loss needs at least one floating-point tensor")
    return out


def mean_over_valid(values: Tensor, valid: Tensor) -> Tensor:
    """Mean of ``values`` (B,) over entries where ``valid`` (B,) is True; differentiable 0 if none."""
    w = valid.to(values.dtype)
    return masked_mean(values, w)


def quantile_threshold(x: Tensor, q: float) -> Tensor:
    """The ``q``-quantile of a 1-D tensor with linear interpolation (as ``torch.quantile``).

    Uses ``kthvalue`` so that it also works above ``torch.quantile``'s 16M-element limit. No gradient.
    """
    x = x.detach().flatten()
    n = x.numel()
    if n == 0:
        raise ValueError("quantile_threshold: empty input")
    pos = q * (n - 1)
    lo = int(pos)
    hi = min(lo + 1, n - 1)
    v_lo = torch.kthvalue(x, lo + 1).values
    if hi == lo:
        return v_lo
    v_hi = torch.kthvalue(x, hi + 1).values
    return v_lo + (v_hi - v_lo) * (pos - lo)
