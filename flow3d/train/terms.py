"""Loss assembly: one declarative table of the loss terms, checked against the config at start-up.

Each row of :data:`TERMS` names a term, the function that computes it (``term(ctx) -> scalar``,
unweighted, from a :class:`flow3d.train.context.StepContext`), the :class:`flow3d.config.LossConfig`
field that holds its weight, and what the trainer must prepare for it:

* ``tracks``          render the Gaussians' positions at the batch's target times (track channels);
* ``flow``            flows of the training frames to their neighbours (computed once, cached);
* ``neighbor_render`` render each frame's flow neighbour every step;
* ``k_obj``           calibrate the depth-aware scale constant once from the training frames.

:func:`check_weights` pairs the table with the config's ``w_*`` fields: a field without a term, or a term
whose weight field does not exist, is a ``ValueError`` (a misspelt weight can never silently be 0). A term
with weight 0 is not computed, and its needs are not prepared. Adding a loss is: write the function, add
a row here and a ``w_<name>`` field (default 0) to ``LossConfig``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Callable, Literal

import torch
from torch import Tensor

from flow3d.train import depth_order as D
from flow3d.train import hidden_surface as HS
from flow3d.train import som_terms as S
from flow3d.train.context import StepContext

Need = Literal["tracks", "flow", "neighbor_render", "k_obj"]
NEEDS: tuple[str, ...] = ("tracks", "flow", "neighbor_render", "k_obj")


@dataclass(frozen=True)
class Term:
    """One row of the table: a loss term, its weight field and what it needs."""

    name: str
    fn: Callable[[StepContext], Tensor]
    weight: str  # the LossConfig field holding the weight
    needs: frozenset[str] = field(default_factory=frozenset)


def _term(name: str, fn: Callable[[StepContext], Tensor], *needs: Need) -> Term:
    return Term(name, fn, f"w_{name}", frozenset(needs))


TERMS: tuple[Term, ...] = (
    # Shape of Motion (flow3d.train.som_terms)
    _term("rgb", S.rgb_term),
    _term("mask", S.mask_term),
    _term("depth_reg", S.depth_reg_term),
    _term("depth_grad", S.depth_grad_term),
    _term("track", S.track_term, "tracks"),
    _term("mapped_depth", S.mapped_depth_term, "tracks"),
    _term("smooth_bases", S.smooth_bases_term),
    _term("smooth_tracks", S.smooth_tracks_term),
    _term("z_accel", S.z_accel_term),
    _term("scale_var", S.scale_var_term),
    # depth order and the design documents' depth losses (flow3d.train.depth_order)
    _term("hinge_ordinal", D.hinge_ordinal_term, "flow", "neighbor_render"),
    _term("modgs_ordinal", D.modgs_ordinal_term),
    _term("pearson", D.pearson_term),
    _term("depth_consistency", D.depth_consistency_term, "flow"),
    _term("g2_monodepth", D.g2_monodepth_term),
    _term("scale_adaptive", D.scale_adaptive_term),
    _term("depth_aware_scale", D.depth_aware_scale_term, "k_obj"),
    # endoscopy: the tissue behind instruments stays a smooth surface (flow3d.train.hidden_surface)
    _term("hidden_surface", HS.hidden_surface_term),
)


def term(name: str, terms: tuple[Term, ...] = TERMS) -> Term:
    """The row named ``name``; ``ValueError`` listing the names otherwise."""
    for t in terms:
        if t.name == name:
            return t
    raise ValueError(f"unknown loss term {name!r}; terms are {[t.name for t in terms]}")


def check_weights(loss_cfg, terms: tuple[Term, ...] = TERMS) -> dict[str, float]:
    """Term name -> weight from ``loss_cfg`` (a LossConfig), after checking that the table's weight fields
    and the config's ``w_*`` fields match one to one."""
    names = [t.name for t in terms]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"loss terms listed twice in the table: {dup}")
    fields = {f.name for f in dataclasses.fields(loss_cfg) if f.name.startswith("w_")}
    wanted = {t.weight for t in terms}
    missing = sorted(t.name for t in terms if t.weight not in fields)
    if missing:
        raise ValueError(
            f"loss terms {missing} have no weight field in {type(loss_cfg).__name__} "
            f"(expected {[term(n, terms).weight for n in missing]})"
        )
    unused = sorted(fields - wanted)
    if unused:
        raise ValueError(
            f"{type(loss_cfg).__name__} has weight fields {unused} that no loss term reads; terms are {names}"
        )
    for t in terms:
        bad = sorted(t.needs - set(NEEDS))
        if bad:
            raise ValueError(f"loss term {t.name!r} needs unknown inputs {bad}; known: {list(NEEDS)}")
    return {t.name: float(getattr(loss_cfg, t.weight)) for t in terms}


def active_terms(weights: dict[str, float], terms: tuple[Term, ...] = TERMS) -> tuple[Term, ...]:
    """The rows whose weight is non-zero (only these are computed and prepared for)."""
    return tuple(t for t in terms if weights.get(t.name, 0.0) != 0.0)


def needs_of(terms: tuple[Term, ...]) -> frozenset[str]:
    """Everything the given terms need, together."""
    return frozenset().union(*(t.needs for t in terms))


def compute_terms(ctx: StepContext, terms: tuple[Term, ...]) -> dict[str, Tensor]:
    """Unweighted values of ``terms`` (normally :func:`active_terms`)."""
    return {t.name: t.fn(ctx) for t in terms}


def weighted_total(values: dict[str, Tensor], weights: dict[str, float]) -> Tensor:
    """sum_k weights[k] * values[k]: the one place where the weights are applied."""
    vals = [weights[name] * value for name, value in values.items()]
    if not vals:
        raise ValueError("every loss weight is zero: nothing to optimise")
    return torch.stack(vals).sum()
