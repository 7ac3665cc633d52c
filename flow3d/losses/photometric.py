"""Image-similarity functions shared by the training loss and the evaluation metrics."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def _gaussian_window(size: int, sigma: float, channels: int, device, dtype) -> Tensor:
    coords = torch.arange(size, device=device, dtype=dtype) - (size - 1) / 2.0
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :]).expand(channels, 1, size, size).contiguous()


def ssim_map(img0: Tensor, img1: Tensor, window_size: int = 11, sigma: float = 1.5, data_range: float = 1.0) -> Tensor:
    """Per-pixel SSIM (Wang et al. 2004) with a Gaussian window, 'same' zero padding as 3DGS uses.

    img0, img1: (B, C, H, W) in [0, data_range]. Returns (B, C, H, W); 1 where the images agree.
    """
    if img0.shape != img1.shape or img0.dim() != 4:
        raise ValueError(f"img0 and img1 must both be (B, C, H, W), got {tuple(img0.shape)} and {tuple(img1.shape)}")
    C = img0.shape[1]
    win = _gaussian_window(window_size, sigma, C, img0.device, img0.dtype)
    pad = window_size // 2
    mu0 = F.conv2d(img0, win, padding=pad, groups=C)
    mu1 = F.conv2d(img1, win, padding=pad, groups=C)
    s00 = F.conv2d(img0 * img0, win, padding=pad, groups=C) - mu0**2
    s11 = F.conv2d(img1 * img1, win, padding=pad, groups=C) - mu1**2
    s01 = F.conv2d(img0 * img1, win, padding=pad, groups=C) - mu0 * mu1
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


def rgb_loss(pred: Tensor, gt: Tensor, mask: Tensor | None = None) -> Tensor:
    """``0.8 * L1 + 0.2 * (1 - SSIM)`` between rendered and target images (3DGS / Shape of Motion mix).

    pred, gt: (B, H, W, C) channel-last in [0, 1], as the renderer returns them. mask: None, or
    (B, H, W) / (B, H, W, 1) bool or float weights; both terms are then weighted means over the mask
    (SSIM is computed on the full images, its per-pixel map averaged under the mask). Scalar; an empty
    mask gives a differentiable 0.
    """
    if pred.dim() != 4 or gt.shape != pred.shape:
        raise ValueError(f"rgb_loss: pred and gt must both be (B, H, W, C), got {tuple(pred.shape)} and {tuple(gt.shape)}")
    gt = gt.to(pred.dtype)
    l1 = (pred - gt).abs()
    s_map = ssim_map(pred.permute(0, 3, 1, 2), gt.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
    if mask is None:
        return 0.8 * l1.mean() + 0.2 * (1.0 - s_map.mean())
    if mask.shape not in (pred.shape[:-1], pred.shape[:-1] + (1,)):
        raise ValueError(
            f"rgb_loss: mask has shape {tuple(mask.shape)} but pred has shape {tuple(pred.shape)}; expected "
            f"{tuple(pred.shape[:-1])} or {tuple(pred.shape[:-1]) + (1,)}"
        )
    w = mask.reshape(pred.shape[:-1] + (1,)).to(pred.dtype).clamp_min(0.0).expand_as(pred)
    n = w.sum()
    n_safe = torch.where(n > 0, n, torch.ones_like(n))
    loss = 0.8 * (l1 * w).sum() / n_safe + 0.2 * ((1.0 - s_map) * w).sum() / n_safe
    return torch.where(n > 0, loss, pred.sum() * 0.0)
