"""Forward-backward consistency of a pair of flows.

For each pixel x of frame i, with forward flow f = f_ij(x) and the backward flow b = f_ji sampled
bilinearly at x + f, x is kept when x + f lands inside frame j and the round trip closes. Rules
(``FB_RULES``; every coefficient is a keyword argument):

    "squared"  |f + b|^2 < alpha * (|f|^2 + |b|^2) + beta      alpha=0.01, beta=0.5 (px^2)
               Sundaram et al. 2010 / UnFlow (Meister et al. 2018). The default: it rejects more of
               the unreliable pixels on small motions, which ordinal depth pairs need.
    "lenient"  |f + b| < alpha * (|f| + |b|) + beta            alpha=0.5, beta=0.5 (px)
               as NSFF, MoSca and MoDGS use.
    "fixed"    |f + b| < threshold                             threshold=3.0 (px), OmniMotion's value
               for long gaps.

Each rule compares a residual ``r`` with a bound ``tau``; :func:`fb_confidence` is the soft version
``clip(1 - r / tau, 0, 1)`` of the same test (0 exactly where the mask rejects, 1 for a perfect round
trip), usable as a per-pixel confidence weight.

Flows are (H, W, 2) or batched (B, H, W, 2), (dx, dy) pixels; numpy in -> numpy out, torch in -> torch
out on the same device.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from flow3d.geometry import bilinear_sample, inside_image, pixel_grid

FB_RULES: dict[str, dict[str, float]] = {
    "squared": {"alpha": 0.01, "beta": 0.5},
    "lenient": {"alpha": 0.5, "beta": 0.5},
    "fixed": {"threshold": 3.0},
}


def _to_torch(flow, name: str) -> Tensor:
    if isinstance(flow, np.ndarray):
        flow = torch.from_numpy(flow)
    if not torch.is_tensor(flow):
        raise ValueError(f"{name} must be a numpy array or torch tensor, got {type(flow).__name__}")
    if flow.dim() not in (3, 4) or flow.shape[-1] != 2:
        raise ValueError(f"{name} must be (H, W, 2) or (B, H, W, 2), got {tuple(flow.shape)}")
    return flow if flow.is_floating_point() else flow.float()


def warp_backward_flow(flow_fw: Tensor, flow_bw: Tensor) -> tuple[Tensor, Tensor]:
    """Sample ``flow_bw`` at x + flow_fw(x). Both (B, H, W, 2). Returns (b (B, H, W, 2), inside (B, H, W) bool)."""
    B, H, W, _ = flow_fw.shape
    target = pixel_grid(H, W, device=flow_fw.device, dtype=flow_fw.dtype) + flow_fw  # (B, H, W, 2)
    b = bilinear_sample(flow_bw.permute(0, 3, 1, 2), target.reshape(B, H * W, 2)).reshape(B, H, W, 2)
    return b, inside_image(target, W, H)


def fb_residual(flow_fw, flow_bw, rule: str = "squared", **coeffs) -> tuple[Tensor, Tensor, Tensor]:
    """Torch core of the fb check: returns (residual, bound, inside), each (B, H, W); keep = inside & residual < bound."""
    if rule not in FB_RULES:
        raise ValueError(f"unknown fb rule {rule!r}; choose one of {sorted(FB_RULES)}")
    unknown = sorted(set(coeffs) - set(FB_RULES[rule]))
    if unknown:
        raise ValueError(f"unknown coefficient(s) {unknown} for fb rule {rule!r}; allowed: {sorted(FB_RULES[rule])}")
    c = {**FB_RULES[rule], **coeffs}
    fw, bw = _to_torch(flow_fw, "flow_fw"), _to_torch(flow_bw, "flow_bw")
    if fw.shape != bw.shape:
        raise ValueError(f"flow_fw and flow_bw must have the same shape, got {tuple(fw.shape)} and {tuple(bw.shape)}")
    bw = bw.to(device=fw.device, dtype=fw.dtype)
    if fw.dim() == 3:
        fw, bw = fw[None], bw[None]
    b, inside = warp_backward_flow(fw, bw)
    s = fw + b
    if rule == "squared":
        residual = (s * s).sum(-1)
        bound = c["alpha"] * ((fw * fw).sum(-1) + (b * b).sum(-1)) + c["beta"]
    elif rule == "lenient":
        residual = s.norm(dim=-1)
        bound = c["alpha"] * (fw.norm(dim=-1) + b.norm(dim=-1)) + c["beta"]
    else:
        residual = s.norm(dim=-1)
        bound = torch.full_like(residual, c["threshold"])
    return residual, bound, inside


def _like_input(x: Tensor, flow_fw) -> Tensor | np.ndarray:
    if isinstance(flow_fw, np.ndarray):
        x = x.cpu().numpy()
    return x[0] if flow_fw.ndim == 3 else x


def fb_consistency_mask(flow_fw, flow_bw, rule: str = "squared", **coeffs):
    """Boolean mask of pixels whose forward flow is forward-backward consistent.

    flow_fw: (H, W, 2) or (B, H, W, 2) flow i -> j; flow_bw: same shape, flow j -> i; (dx, dy) pixels.
    rule: "squared" (default) | "lenient" | "fixed", with coefficients as in the module docstring.
    Returns (H, W) (or (B, H, W)) bool, numpy or torch like ``flow_fw``. Pixels whose target leaves
    the image are rejected.
    """
    residual, bound, inside = fb_residual(flow_fw, flow_bw, rule, **coeffs)
    return _like_input(inside & (residual < bound), flow_fw)


def fb_confidence(flow_fw, flow_bw, rule: str = "squared", **coeffs):
    """Soft confidence ``clip(1 - residual / bound, 0, 1)`` in [0, 1] from the same test as the mask.

    Same arguments as :func:`fb_consistency_mask`; returns (H, W) (or (B, H, W)) float, numpy or torch
    like ``flow_fw``. It is 0 wherever the mask rejects (including targets outside the image).
    """
    residual, bound, inside = fb_residual(flow_fw, flow_bw, rule, **coeffs)
    conf = (1.0 - residual / bound.clamp_min(1e-12)).clamp(0.0, 1.0) * inside
    return _like_input(conf, flow_fw)


def fb_mask_and_confidence(flow_fw, flow_bw, rule: str = "squared", **coeffs):
    """Both outputs from one residual computation: (mask, confidence), as the two functions above."""
    residual, bound, inside = fb_residual(flow_fw, flow_bw, rule, **coeffs)
    mask = inside & (residual < bound)
    conf = (1.0 - residual / bound.clamp_min(1e-12)).clamp(0.0, 1.0) * inside
    return _like_input(mask, flow_fw), _like_input(conf, flow_fw)
