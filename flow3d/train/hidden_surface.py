"""The surface behind ignored pixels (endoscopy: tissue behind instruments) stays a surface.

An instrument hides tissue that continues behind it; where it covered the same tissue in every training
frame, no photometric or depth term reaches the Gaussians there (those pixels are ignored), and nothing
would stop them from thinning out into a hole. :func:`hidden_surface_term` asks, on the ignored pixels of
the batch's frames only:

* coverage: rendered alpha 1, ``mean (1 - alpha)`` over the ignored pixels and, in a frame whose valid
  pixels are all foreground (the tissue setting: there is tissue behind every pixel), over all its
  pixels (L1: a pull that does not fade as alpha nears 1; the goal is alpha >= 0.99 on all the tissue,
  and the photometric term alone leaves visible tissue at 0.7-0.98 in places);
* surface: the rendered disparity on the ignored pixels is the smooth continuation of the rendered
  disparity around them: the harmonic fill (:func:`flow3d.scene.init.harmonic_fill`, the continuation the
  initial completion seeds) of the detached render on the valid pixels that are more than ``border_px``
  (2) from an ignored pixel (a blurred prior pulls those towards the instrument), ``mean |d - fill| /
  median d`` over the ignored pixels;
* smoothness of colour: the rendered colour has zero 4-neighbour Laplacian, ``mean |lap|`` over the
  ignored pixels and a one-pixel seam around them.

It reads only the renders: never the input image or the prior at an ignored pixel. Meant for the tissue
setting (every valid pixel is surface, so an ignored pixel hides surface): the endoscopy presets switch it
on (``losses.w_hidden_surface``), the default is 0.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from flow3d.scene.init import harmonic_fill
from flow3d.train.context import StepContext

_LAPLACE = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]])


def laplacian(x: Tensor) -> Tensor:
    """4-neighbour Laplacian (B, C, H, W) of ``x`` (B, C, H, W), borders replicated."""
    C = x.shape[1]
    k = _LAPLACE.to(x)[None, None].expand(C, 1, 3, 3)
    return F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), k, groups=C)


def surface_target(disp: Tensor, ignored: Tensor, border_px: int = 2) -> tuple[Tensor, Tensor]:
    """Harmonic continuation (H, W) of ``disp`` (H, W, detached) from the pixels farther than ``border_px``
    from an ``ignored`` (H, W) pixel into the rest, and where it is defined (H, W) bool."""
    k = 2 * border_px + 1
    near = F.max_pool2d(ignored.float()[None, None], k, stride=1, padding=border_px)[0, 0] > 0
    known = ~near & (disp > 0)
    fill = harmonic_fill(disp.detach().double().cpu()[..., None], known.cpu(), (~known).cpu())[..., 0]
    ok = torch.isfinite(fill)
    return torch.nan_to_num(fill).to(disp), ok.to(disp.device)


def hidden_surface_term(ctx: StepContext) -> Tensor:
    """Coverage + surface + colour smoothness of the render on the ignored pixels (module docstring); 0
    without any."""
    b, out = ctx.batch, ctx.out
    ign = ~b.valid_masks.bool()  # (B, H, W)
    if not bool(ign.any()):
        return out.alpha.sum() * 0.0
    alpha = out.alpha[..., 0]
    all_tissue = ((b.fg_masks > 0.5) | ign).flatten(1).all(1)  # (B,) every valid pixel is foreground
    cover_px = ign | all_tissue[:, None, None]
    cover = (1.0 - alpha)[cover_px].mean()
    disp = ctx.pred_disp()  # (B, H, W), 0 where nothing renders
    surf = []
    for i in range(disp.shape[0]):
        if not bool(ign[i].any()):
            continue
        target, ok = surface_target(disp[i].detach(), ign[i])
        m = ign[i] & ok
        if bool(m.any()):
            ref = disp[i].detach()[~ign[i] & (disp[i] > 0)]
            scale = ref.median().clamp_min(1e-8) if ref.numel() else disp[i].detach().mean().clamp_min(1e-8)
            surf.append(((disp[i] - target).abs()[m] / scale).mean())
    surface = torch.stack(surf).mean() if surf else disp.sum() * 0.0
    seam = F.max_pool2d(ign.float()[:, None], 3, stride=1, padding=1)[:, 0] > 0
    lap_c = laplacian(out.img.permute(0, 3, 1, 2)).abs().mean(1)
    return cover + surface + lap_c[seam].mean()
