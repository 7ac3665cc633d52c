"""Image-similarity functions shared by the training loss and the evaluation metrics."""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor


def gaussian_kernel_1d(size: int, sigma: float, device=None, dtype=torch.float32) -> Tensor:
    """(size,) normalised Gaussian weights centred on the middle tap (the SSIM window)."""
    coords = torch.arange(size, device=device, dtype=dtype) - (size - 1) / 2.0
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    return g / g.sum()


def _separable_gaussian_blur(z: Tensor, size: int, sigma: float) -> Tensor:
    """Gaussian blur of every channel of ``z`` (B, C, H, W) with 'same' zero padding -> (B, C, H, W).

    Two 1D passes (rows, then columns): equal to the 2D window ``g g^T`` with zero padding, at 2k
    instead of k^2 multiply-adds per pixel.
    """
    C = z.shape[1]
    g = gaussian_kernel_1d(size, sigma, z.device, z.dtype)
    z = F.conv2d(z, g.view(1, 1, 1, size).expand(C, 1, 1, size), padding=(0, size // 2), groups=C)
    return F.conv2d(z, g.view(1, 1, size, 1).expand(C, 1, size, 1), padding=(size // 2, 0), groups=C)


def ssim_map(
    img0: Tensor,  # (B, C, H, W)
    img1: Tensor,  # (B, C, H, W)
    window_size: int = 11,
    sigma: float = 1.5,
    data_range: float = 1.0,
    blur: Callable[[Tensor], Tensor] | None = None,
    clip_moments: bool = False,
) -> Tensor:
    """Per-pixel SSIM (Wang et al. 2004): the project's one SSIM formula.

    img0, img1: (B, C, H, W) in [0, data_range]. The local moments are ``blur`` of the images and of
    their products (one call on the five stacked moments, so ``blur`` must act per channel); the default
    blur is a separable Gaussian window (``window_size``, ``sigma``) with 'same' zero padding as 3DGS
    uses, so the map is (B, C, H, W). :func:`flow3d.eval.metrics.mssim_som` passes Shape of Motion's
    masked 'valid' blur and ``clip_moments=True`` (variances clipped to >= 0, the covariance to
    |cov| <= sqrt(var0 var1), as SoM's mSSIM). 1 where the images agree.
    """
    if img0.shape != img1.shape or img0.dim() != 4:
        raise ValueError(f"img0 and img1 must both be (B, C, H, W), got {tuple(img0.shape)} and {tuple(img1.shape)}")
    if blur is None:
        blur = lambda z: _separable_gaussian_blur(z, window_size, sigma)  # noqa: E731
    # the five local moments in one blur call: (B, 5C, H, W) -> five (B, C, H, W)
    mu0, mu1, e00, e11, e01 = blur(torch.cat([img0, img1, img0 * img0, img1 * img1, img0 * img1], dim=1)).chunk(
        5, dim=1
    )
    s00 = e00 - mu0**2
    s11 = e11 - mu1**2
    s01 = e01 - mu0 * mu1
    if clip_moments:
        s00, s11 = s00.clamp(min=0.0), s11.clamp(min=0.0)
        s01 = torch.sign(s01) * torch.minimum(torch.sqrt(s00 * s11), s01.abs())
    c1 = (0.01 * data_range) ** 2
    c2 = (0.03 * data_range) ** 2
    return ((2 * mu0 * mu1 + c1) * (2 * s01 + c2)) / ((mu0**2 + mu1**2 + c1) * (s00 + s11 + c2))


def ssim(img0: Tensor, img1: Tensor, window_size: int = 11, data_range: float = 1.0) -> Tensor:
    """Mean SSIM over pixels and channels per image: (B, C, H, W) x2 -> (B,)."""
    return ssim_map(img0, img1, window_size=window_size, data_range=data_range).mean(dim=(1, 2, 3))


def psnr(img0: Tensor, img1: Tensor, mask: Tensor | None = None, data_range: float = 1.0) -> Tensor:
    """PSNR in dB per image. img0, img1: (B, H, W, C) or (B, C, H, W) alike; mask broadcastable, 1 = count.

    Returns (B,). An empty mask gives NaN for that image (there is nothing to score); callers report it.
    """
    se = (img0 - img1) ** 2
    if mask is None:
        mse = se.flatten(1).mean(1)
    else:
        m = mask.to(se.dtype).expand_as(se)
        mse = (se * m).flatten(1).sum(1) / m.flatten(1).sum(1)
    return 10.0 * torch.log10(data_range**2 / mse)


def zero_outside(img: Tensor, mask: Tensor) -> Tensor:
    """``img`` (B, H, W, C) with 0 wherever ``mask`` (B, H, W) or (B, H, W, 1) (bool or weights) is not > 0.

    Before an SSIM window is slid over both images, filling their masked-out pixels with the same constant
    makes every SSIM value independent of what those pixels held (in either image): an ignored pixel then
    acts exactly like the zero padding outside the image border.
    """
    keep = mask.reshape(img.shape[:-1] + (1,)) > 0
    return torch.where(keep, img, torch.zeros_like(img))


def rgb_loss(pred: Tensor, gt: Tensor, mask: Tensor | None = None) -> Tensor:
    """``0.8 * L1 + 0.2 * (1 - SSIM)`` between rendered and target images (3DGS / Shape of Motion mix).

    pred, gt: (B, H, W, C) channel-last in [0, 1], as the renderer returns them. mask: None, or
    (B, H, W) / (B, H, W, 1) bool or float weights; both terms are then weighted means over the mask.
    The pixels outside the mask (weight 0, e.g. an instrument) are set to 0 in BOTH images before the
    SSIM windows are slid (:func:`zero_outside`), so the loss and its gradient do not depend on their
    values in either image. Scalar; an empty mask gives a differentiable 0.
    """
    if pred.dim() != 4 or gt.shape != pred.shape:
        raise ValueError(
            f"rgb_loss: pred and gt must both be (B, H, W, C), got {tuple(pred.shape)} and {tuple(gt.shape)}"
        )
    gt = gt.to(pred.dtype)
    if mask is None:
        l1 = (pred - gt).abs()
        s_map = ssim_map(pred.permute(0, 3, 1, 2), gt.permute(0, 3, 1, 2))
        return 0.8 * l1.mean() + 0.2 * (1.0 - s_map.mean())
    if mask.shape not in (pred.shape[:-1], pred.shape[:-1] + (1,)):
        raise ValueError(
            f"rgb_loss: mask has shape {tuple(mask.shape)} but pred has shape {tuple(pred.shape)}; expected "
            f"{tuple(pred.shape[:-1])} or {tuple(pred.shape[:-1]) + (1,)}"
        )
    w = mask.reshape(pred.shape[:-1] + (1,)).to(pred.dtype).clamp_min(0.0).expand_as(pred)
    pred, gt = zero_outside(pred, w[..., :1]), zero_outside(gt, w[..., :1])
    l1 = (pred - gt).abs()
    s_map = ssim_map(pred.permute(0, 3, 1, 2), gt.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
    n = w.sum()
    n_safe = torch.where(n > 0, n, torch.ones_like(n))
    loss = 0.8 * (l1 * w).sum() / n_safe + 0.2 * ((1.0 - s_map) * w).sum() / n_safe
    return torch.where(n > 0, loss, pred.sum() * 0.0)
