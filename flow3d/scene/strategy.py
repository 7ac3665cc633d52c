"""Adaptive density control (3DGS-style) for the foreground and background Gaussians.

A dataclass of thresholds plus a ``state`` dict that the caller owns (and checkpoints), as in gsplat's
``strategy`` module — nothing is stashed on the model. gsplat's own strategy handles one flat dict of
parameters; ours runs the same rules per group ("fg", "bg") because only the foreground carries motion
coefficients and the two groups are concatenated in every render.

Per step, as in gsplat's strategies, the caller passes ``info`` (the renders' ``means2d``, ``radii`` and
``img_wh``, and optionally ``valid``: each render's valid-pixel mask) twice:
:meth:`DensifyStrategy.step_pre_backward` asks autograd to keep ``means2d.grad``, and
:meth:`DensifyStrategy.step_post_backward` accumulates the screen-space gradient norm of each Gaussian's
projected centre (scaled to NDC-like units as gsplat does, and by the batch size as Shape of Motion does)
over the renders in which it was visible. A
render does not count for a Gaussian whose projected centre lies on an ignored pixel of that frame (an
instrument): no loss sees those pixels, so its zero gradient there must not dilute its mean. Every ``refine_every`` steps: Gaussians with a mean gradient above ``grow_grad2d`` are
duplicated if small and split in two if large; those with opacity below ``prune_opa`` or larger than
``prune_scale3d`` (times the scene extent) are removed. Every ``reset_every`` steps opacities are clamped
down to ``2 * prune_opa``. Optimiser moments follow every change (new rows start at zero).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import roma
import torch
import torch.nn as nn
from torch import Tensor

from flow3d.geometry import quat_wxyz_to_xyzw
from flow3d.log import get_logger
from flow3d.scene.gaussians import GaussianParams

logger = get_logger(__name__)

GROUPS = ("fg", "bg")


@dataclass
class DensifyConfig:
    refine_start: int = 500
    """First step at which Gaussians are grown or pruned."""
    refine_stop: int = 15000
    """No growing or pruning after this step."""
    refine_every: int = 100
    """Steps between two refinements."""
    reset_every: int = 3000
    """Steps between two opacity resets (0: never)."""
    grow_grad2d: float = 2e-4
    """Mean screen-space gradient above which a Gaussian is duplicated or split."""
    grad2d_batch_scale: bool = True
    """Multiply each render's screen-space gradient by the batch size, as Shape of Motion does (the loss
    averages over the B frames of a batch, so one frame's gradient is ~1/B of a single-frame step's):
    ``grow_grad2d`` then means the same at any batch size. False: the unscaled gradient (before issue 24)."""
    grow_scale3d: float = 0.01
    """Gaussians larger than this (times the scene extent) are split, smaller ones duplicated."""
    prune_opa: float = 0.005
    """Gaussians below this opacity are removed."""
    prune_scale3d: float = 0.1
    """Gaussians larger than this (times the scene extent) are removed (after the first reset)."""
    max_gaussians: int = 200_000
    """No growing beyond this total (fg + bg); near the cap only the largest gradients grow."""


def update_param_with_optimizer(
    group: GaussianParams,
    prefix: str,
    optimizers: dict[str, torch.optim.Optimizer],
    param_fn: Callable[[str, Tensor], Tensor],
    state_fn: Callable[[str, Tensor], Tensor],
) -> None:
    """Replace every parameter of ``group`` by ``param_fn(name, p)`` and its Adam moments by
    ``state_fn(name, moment)`` (the optimiser ``optimizers[f"{prefix}.{name}"]`` holds that one param)."""
    for name in list(group.params.keys()):
        old = group.params[name]
        new = nn.Parameter(param_fn(name, old.detach()), requires_grad=old.requires_grad)
        group.params[name] = new
        opt = optimizers.get(f"{prefix}.{name}")
        if opt is None:
            continue
        st = opt.state.pop(old, None)
        opt.param_groups[0]["params"] = [new]
        if st:
            opt.state[new] = {
                k: (state_fn(name, v) if torch.is_tensor(v) and v.dim() > 0 else v) for k, v in st.items()
            }


def centre_on_ignored(means2d: Tensor, valid: Tensor) -> Tensor:
    """(N,) bool: the projected centre lies on a pixel where ``valid`` (H, W) bool is False.

    means2d: (N, 2) in gsplat's pixel coordinates (pixel (i, j) covers [j, j+1) x [i, i+1)). Centres
    outside the image are not on an ignored pixel.
    """
    H, W = valid.shape
    ij = torch.floor(means2d).long()  # (N, 2) as (x, y)
    inside = (ij[:, 0] >= 0) & (ij[:, 0] < W) & (ij[:, 1] >= 0) & (ij[:, 1] < H)
    on = valid[ij[:, 1].clamp(0, H - 1), ij[:, 0].clamp(0, W - 1)]
    return inside & ~on


class DensifyStrategy:
    def __init__(self, cfg: DensifyConfig, scene_extent: float):
        self.cfg = cfg
        self.scene_extent = float(scene_extent)

    def initialize_state(self) -> dict:
        return {"grad2d": {}, "count": {}}

    def step_pre_backward(self, model, optimizers, state: dict, step: int, info: dict) -> None:
        """Before ``loss.backward()``: keep the gradient of every render's ``means2d`` (a non-leaf tensor).

        info: ``{"means2d": [(1, N, 2), ...], "radii": [(1, N) or (1, N, 2), ...], "img_wh": (W, H)}``, one
        entry per rendered frame, and optionally ``"valid": [(H, W) bool, ...]`` (False = ignored pixel) and
        ``"batch_size"`` (frames per batch, default 1: the gradient scale of ``grad2d_batch_scale``)."""
        if step > self.cfg.refine_stop:
            return
        for m2d in info["means2d"]:
            if m2d.requires_grad:
                m2d.retain_grad()

    def step_post_backward(self, model, optimizers, state: dict, step: int, info: dict) -> None:
        """After the optimiser step: accumulate gradient statistics; grow, prune and reset on schedule."""
        cfg = self.cfg
        if step > cfg.refine_stop:
            return
        sizes = {"fg": model.num_fg, "bg": model.num_bg}
        W, H = info["img_wh"]
        bs = float(info.get("batch_size", 1)) if cfg.grad2d_batch_scale else 1.0
        valids = info.get("valid") or [None] * len(info["means2d"])
        for m2d, r, valid in zip(info["means2d"], info["radii"], valids):
            if m2d.grad is None:
                continue
            g = m2d.grad.detach()[0].clone()  # (N, 2)
            g[:, 0] *= W / 2.0 * bs
            g[:, 1] *= H / 2.0 * bs
            norms = g.norm(dim=-1)
            vis = (r[0] > 0).reshape(r.shape[1], -1).all(dim=-1)
            if valid is not None:
                vis = vis & ~centre_on_ignored(m2d.detach()[0], valid)
            start = 0
            for name in GROUPS:
                n = sizes[name]
                if n == 0:
                    continue
                acc = state["grad2d"].setdefault(name, norms.new_zeros(n))
                cnt = state["count"].setdefault(name, norms.new_zeros(n))
                if acc.shape[0] != n:  # the group changed size outside the strategy (e.g. resume)
                    acc = state["grad2d"][name] = norms.new_zeros(n)
                    cnt = state["count"][name] = norms.new_zeros(n)
                sl = slice(start, start + n)
                acc += norms[sl] * vis[sl]
                cnt += vis[sl].to(cnt.dtype)
                start += n
        if step >= cfg.refine_start and step % cfg.refine_every == 0:
            self._refine(model, optimizers, state, step)
        if cfg.reset_every > 0 and step > 0 and step % cfg.reset_every == 0:
            self._reset_opacity(model, optimizers)

    @torch.no_grad()
    def _refine(self, model, optimizers, state: dict, step: int) -> None:
        cfg = self.cfg
        total = model.num_fg + model.num_bg
        for name in GROUPS:
            group: GaussianParams | None = getattr(model, name)
            if group is None or name not in state["grad2d"]:
                continue
            grads = state["grad2d"][name] / state["count"][name].clamp_min(1)
            scales_max = group.get_scales().max(dim=-1).values
            high = grads > cfg.grow_grad2d
            small = scales_max <= cfg.grow_scale3d * self.scene_extent
            room = max(0, cfg.max_gaussians - total)
            if int(high.sum()) > room:  # at the cap: grow only the `room` largest gradients
                keep = torch.zeros_like(high)
                if room > 0:
                    keep[torch.topk(torch.where(high, grads, torch.full_like(grads, -1.0)), room).indices] = True
                high = high & keep
            dup = high & small
            split = high & ~small
            n_dup, n_split = int(dup.sum()), int(split.sum())
            if n_dup:
                self._duplicate(group, name, optimizers, dup)
            if n_split:
                split = torch.cat([split, split.new_zeros(n_dup)])
                self._split(group, name, optimizers, split)
            opac = group.get_opacities()
            prune = opac < cfg.prune_opa
            if step > cfg.reset_every > 0:
                prune |= group.get_scales().max(dim=-1).values > cfg.prune_scale3d * self.scene_extent
            if name == "fg" and int((~prune).sum()) < 1:
                prune[:] = False
            n_prune = int(prune.sum())
            if n_prune:
                keep = ~prune
                update_param_with_optimizer(group, name, optimizers, lambda _, p: p[keep], lambda _, v: v[keep])
            logger.debug("refine %s at step %d: +%d dup, +%d split, -%d pruned", name, step, n_dup, n_split, n_prune)
            total += n_dup + n_split - n_prune
            state["grad2d"].pop(name)
            state["count"].pop(name)

    def _duplicate(self, group: GaussianParams, name: str, optimizers, sel: Tensor) -> None:
        update_param_with_optimizer(
            group,
            name,
            optimizers,
            lambda _, p: torch.cat([p, p[sel]]),
            lambda _, v: torch.cat([v, v.new_zeros((int(sel.sum()), *v.shape[1:]))]),
        )

    def _split(self, group: GaussianParams, name: str, optimizers, sel: Tensor) -> None:
        """Each selected Gaussian becomes two, sampled from it, with scales / 1.6."""
        scales = group.get_scales()[sel]
        R = roma.unitquat_to_rotmat(quat_wxyz_to_xyzw(group.get_quats()[sel]))
        offsets = torch.einsum(
            "nij,snj->sni", R, scales * torch.randn(2, *scales.shape, dtype=scales.dtype, device=scales.device)
        )
        rest = ~sel
        n = int(sel.sum())

        def param_fn(pname: str, p: Tensor) -> Tensor:
            if pname == "means":
                new = (p[sel][None] + offsets).reshape(-1, 3)
            elif pname == "scales":
                new = torch.log(scales / 1.6).repeat(2, 1)
            else:
                new = p[sel].repeat(2, *([1] * (p.dim() - 1)))
            return torch.cat([p[rest], new])

        update_param_with_optimizer(
            group,
            name,
            optimizers,
            param_fn,
            lambda _, v: torch.cat([v[rest], v.new_zeros((2 * n, *v.shape[1:]))]),
        )

    def _reset_opacity(self, model, optimizers) -> None:
        ceiling = torch.logit(torch.tensor(2 * self.cfg.prune_opa)).item()
        for name in GROUPS:
            group = getattr(model, name)
            if group is None:
                continue
            update_param_with_optimizer(
                group,
                name,
                optimizers,
                lambda pn, p: p.clamp_max(ceiling) if pn == "opacities" else p,
                lambda pn, v: torch.zeros_like(v) if pn == "opacities" else v,
            )
