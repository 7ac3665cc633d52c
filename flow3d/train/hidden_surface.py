"""The surface behind ignored pixels (endoscopy: tissue behind instruments) stays a surface.

An instrument hides tissue that continues behind it; where it covered the same tissue in every training
frame, no photometric or depth term reaches the Gaussians there (those pixels are ignored), and nothing
would stop them from thinning out into a hole. :func:`hidden_surface_term` asks, on the ignored pixels of
the batch's frames only:

* coverage: rendered alpha 1, ``mean (1 - alpha)^2`` over the ignored pixels;
* smoothness: the rendered depth (divided by the median rendered depth of the valid pixels) and the
  rendered colour have zero 4-neighbour Laplacian, ``mean |lap|`` over the ignored pixels and a one-pixel
  seam around them -- the continuation the initial completion (:func:`flow3d.scene.init.harmonic_fill`)
  seeds is harmonic, and this keeps it so.

It reads only the renders: never the input image or the prior at an ignored pixel. Meant for the tissue
setting (every valid pixel is surface, so an ignored pixel hides surface): the endoscopy presets switch it
on (``losses.w_hidden_surface``), the default is 0.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from flow3d.train.context import StepContext

_LAPLACE = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]])


def laplacian(x: Tensor) -> Tensor:
    """4-neighbour Laplacian (B, C, H, W) of ``x`` (B, C, H, W), borders replicated."""
    C = x.shape[1]
    k = _LAPLACE.to(x)[None, None].expand(C, 1, 3, 3)
    return F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), k, groups=C)


def hidden_surface_term(ctx: StepContext) -> Tensor:
    """Coverage + smoothness of the render on the ignored pixels (module docstring); 0 without any."""
    b, out = ctx.batch, ctx.out
    ign = ~b.valid_masks.bool()  # (B, H, W)
    if not bool(ign.any()):
        return out.alpha.sum() * 0.0
    alpha = out.alpha[..., 0]
    cover = ((1.0 - alpha) ** 2)[ign].mean()
    seam = F.max_pool2d(ign.float()[:, None], 3, stride=1, padding=1)[:, 0] > 0
    depth = out.depth[..., 0]
    ref = b.valid_masks.bool() & (alpha > 0.5)
    scale = depth.detach()[ref].median() if bool(ref.any()) else depth.detach().mean()
    lap_d = laplacian((depth / scale.clamp_min(1e-6))[:, None])[:, 0].abs()
    lap_c = laplacian(out.img.permute(0, 3, 1, 2)).abs().mean(1)
    smooth = (lap_d + lap_c)[seam].mean()
    return cover + smooth
