"""Evaluation metrics: images (PSNR, SSIM, LPIPS), depth, depth order, temporal consistency, tracking.

Pure functions on torch tensors; they follow their inputs' device and dtype and never need a trained
model. Shapes use the glossary letters of :mod:`flow3d` (T frames, M tracks, P points or pairs).

Conventions shared by every function here
    * Images are channels-last ``(B, H, W, 3)`` in [0, 1], as the renderer and the datasets give them.
    * Masks are ``(B, H, W)`` float in [0, 1] or bool; a pixel counts with its mask weight.
    * A metric that has nothing to score (empty mask, no valid depth, no visible track) is NaN for
      that frame, never silently 0; aggregates skip NaN frames and say how many they used
      (see :func:`flow3d.eval.report.aggregate_per_frame`).
    * Something that cannot be computed at all on this machine (LPIPS without weights) is an
      :class:`Unavailable` carrying the reason, which the report writes as ``null`` plus the reason.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from flow3d.depth import disp_to_depth, is_valid
from flow3d.flow.pairs import sample_pixel_pairs
from flow3d.geometry import bilinear_sample, inside_image, pixel_grid
from flow3d.log import get_logger
from flow3d.losses.consistency import fit_scale_shift
from flow3d.losses.ordinal import ordinal_accuracy
from flow3d.losses.photometric import gaussian_kernel_1d, ssim_map, zero_outside
from flow3d.losses.photometric import psnr as _psnr

logger = get_logger(__name__)


@dataclass(frozen=True)
class Unavailable:
    """A metric that could not be computed, with the reason (written as null + reason in reports)."""

    reason: str


@dataclass
class MetricResult:
    """Per-frame values and their aggregates.

    per_frame: name -> (T,) tensor (NaN where a frame had nothing to score).
    aggregate: name -> float (NaN when no frame could be scored; ``notes`` then says why).
    notes: name -> short human-readable remark (how a value was computed or why it is missing).
    """

    per_frame: dict[str, Tensor] = field(default_factory=dict)
    aggregate: dict[str, float] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)


def _check_images(pred: Tensor, target: Tensor, mask: Tensor | None, name: str = "pred") -> Tensor | None:
    if pred.dim() != 4 or pred.shape[-1] != 3 or pred.shape != target.shape:
        raise ValueError(
            f"{name} and target must both be (B, H, W, 3) images, got {tuple(pred.shape)} and {tuple(target.shape)}"
        )
    if mask is None:
        return None
    if mask.shape != pred.shape[:3]:
        raise ValueError(f"mask must be (B, H, W) = {tuple(pred.shape[:3])}, got {tuple(mask.shape)}")
    return mask.to(pred.dtype)


def _masked_mean_or_nan(values: Tensor, weights: Tensor, dims: tuple[int, ...]) -> Tensor:
    """sum(values * w) / sum(w) over ``dims``; NaN where the weights sum to 0 (nothing to score)."""
    wsum = weights.sum(dim=dims)
    safe = torch.where(wsum > 0, wsum, torch.ones_like(wsum))
    out = (values * weights).sum(dim=dims) / safe
    return torch.where(wsum > 0, out, torch.full_like(out, float("nan")))


# ----------------------------------------------------------------------------------------------
# Images
# ----------------------------------------------------------------------------------------------


def masked_psnr(pred: Tensor, target: Tensor, mask: Tensor | None = None, data_range: float = 1.0) -> Tensor:
    """PSNR in dB per image over the (weighted) mask.

    pred, target: (B, H, W, 3) in [0, data_range]; mask: (B, H, W) or None (whole image).
    MSE = sum(mask * (pred - target)^2) / (3 * sum(mask)), as Shape of Motion's mPSNR for binary masks
    (SoM squares a soft mask: mask^2 weights; covisibility masks are binary, where both agree).
    Returns (B,); NaN for an image whose mask is empty. Aggregate as the mean over images (SoM does).
    """
    m = _check_images(pred, target, mask)
    return _psnr(pred, target, None if m is None else m[..., None], data_range=data_range)


def masked_ssim(pred: Tensor, target: Tensor, mask: Tensor | None = None, data_range: float = 1.0) -> Tensor:
    """Mean of the SSIM map over the (weighted) mask, per image.

    pred, target: (B, H, W, 3) in [0, data_range]; mask: (B, H, W) or None (whole image).
    The map is :func:`flow3d.losses.photometric.ssim_map` (11x11 Gaussian window, sigma 1.5, zero
    'same' padding), so pixels outside the mask still enter the windows of pixels near its border.
    Returns (B,); NaN for an empty mask. For numbers comparable with published Shape of Motion /
    DyCheck mSSIM on covisibility masks use :func:`mssim_som`.
    """
    m = _check_images(pred, target, mask)
    smap = ssim_map(pred.permute(0, 3, 1, 2), target.permute(0, 3, 1, 2), data_range=data_range)  # (B, 3, H, W)
    return _mean_of_map(smap, m)


def _mean_of_map(smap: Tensor, m: Tensor | None) -> Tensor:
    """(B, C, H, W) map -> (B,) mean over pixels and channels, weighted by m (B, H, W) if given."""
    if m is None:
        return smap.mean(dim=(1, 2, 3))
    return _masked_mean_or_nan(smap, m[:, None].expand_as(smap), (1, 2, 3))


def mssim_som(
    pred: Tensor,
    target: Tensor,
    mask: Tensor | None = None,
    data_range: float = 1.0,
    window_size: int = 11,
    sigma: float = 1.5,
) -> Tensor:
    """Masked SSIM exactly as Shape of Motion's ``mSSIM`` (inherited from DyCheck), per image.

    pred, target: (B, H, W, 3) in [0, data_range]; mask: (B, H, W) (covisibility) or None.
    Definition (read from SoM ``flow3d/metrics.py``): the Gaussian blur is separable and 'valid'
    (no padding; the map is (H-10, W-10)), applied first along x then along y. Each 1-D pass takes
    the Gaussian-weighted sum of ``z * m`` and rescales it by ``size / count(m in window)`` (not by
    the Gaussian weight of the masked pixels); windows with no masked pixel give 0 and pass an empty
    mask to the next pass. Variances are clipped to >= 0 and the covariance to |cov| <= sqrt(v0 v1).
    The result is the mean of the SSIM map over *all* its pixels and channels: windows that see no
    masked pixel have mu = sigma = 0 and count as SSIM 1 (a quirk of the published metric, kept so
    numbers compare). Returns (B,).
    """
    m = _check_images(pred, target, mask)
    B, H, W, C = pred.shape
    if H < window_size or W < window_size:
        raise ValueError(f"mssim_som needs images of at least {window_size}x{window_size} pixels, got {H}x{W}")
    if m is None:
        m = pred.new_ones(B, H, W)
    g = gaussian_kernel_1d(window_size, sigma, pred.device, pred.dtype)

    def blur_1d(z: Tensor, mk: Tensor, kernel_shape: tuple[int, int]) -> tuple[Tensor, Tensor]:
        # z: (B, C, h, w), mk: (B, 1, h, w) -> blurred z and the new mask (window saw a masked pixel).
        f = g.reshape(1, 1, *kernel_shape).expand(z.shape[1], 1, *kernel_shape)
        ones = torch.ones_like(g).reshape(1, 1, *kernel_shape)
        z_ = F.conv2d(z * mk, f, groups=z.shape[1])
        m_ = F.conv2d(mk, ones)
        out = torch.where(m_ > 0, z_ * window_size / torch.where(m_ > 0, m_, torch.ones_like(m_)), torch.zeros_like(z_))
        return out, (m_ > 0).to(z.dtype)

    def blur(z: Tensor) -> Tensor:
        zx, mx = blur_1d(z, m[:, None], (1, window_size))
        return blur_1d(zx, mx, (window_size, 1))[0]

    smap = ssim_map(
        pred.permute(0, 3, 1, 2), target.permute(0, 3, 1, 2), data_range=data_range, blur=blur, clip_moments=True
    )  # (B, 3, H - 10, W - 10)
    return smap.mean(dim=(1, 2, 3))


# ----------------------------------------------------------------------------------------------
# LPIPS (AlexNet), only from local weight files
# ----------------------------------------------------------------------------------------------

# torchvision's AlexNet ``features`` convolutions: (index in features, in, out, kernel, stride, pad).
_ALEX_CONVS = [
    (0, 3, 64, 11, 4, 2),
    (3, 64, 192, 5, 1, 2),
    (6, 192, 384, 3, 1, 1),
    (8, 384, 256, 3, 1, 1),
    (10, 256, 256, 3, 1, 1),
]
_ALEX_POOL_AFTER = {0, 3}  # max-pool (3, stride 2) after the ReLU of these convs, before the next tap
_LPIPS_SHIFT = (-0.030, -0.088, -0.188)
_LPIPS_SCALE = (0.458, 0.448, 0.450)


class LpipsScorer:
    """LPIPS (v0.1, AlexNet backbone, as Shape of Motion's mLPIPS) from local weight files only.

    ``LpipsScorer(lin_path, backbone_path)``:
      * ``lin_path``: the LPIPS linear heads, ``lpips/weights/v0.1/alex.pth`` from the ``lpips``
        package (keys ``lin{0..4}.model.1.weight``, shapes (1, C, 1, 1));
      * ``backbone_path``: torchvision's ImageNet AlexNet state dict
        (``alexnet-owt-7be5be79.pth``, in ``~/.cache/torch/hub/checkpoints/`` on a machine that has
        used it; keys ``features.{0,3,6,8,10}.{weight,bias}``).
    Nothing is downloaded. ``available`` tells whether both loaded; ``reason`` says why not.
    Calling the scorer returns a (B,) tensor, or :class:`Unavailable` when the weights are missing, so
    a caller cannot skip LPIPS silently.
    """

    def __init__(self, lin_path: str | Path | None = None, backbone_path: str | Path | None = None):
        self.lin_path = None if lin_path is None else Path(lin_path)
        self.backbone_path = None if backbone_path is None else Path(backbone_path)
        self.available = False
        self.reason = ""
        self._convs: list[tuple[Tensor, Tensor, int, int]] = []
        self._lins: list[Tensor] = []
        try:
            self._load()
            self.available = True
        except _LpipsUnavailable as e:
            self.reason = str(e)
            logger.info("LPIPS unavailable: %s", self.reason)

    def _load(self) -> None:
        if self.lin_path is None or self.backbone_path is None:
            raise _LpipsUnavailable(
                "LPIPS needs local weights (no download here): pass lin_path (lpips/weights/v0.1/alex.pth) "
                "and backbone_path (torchvision alexnet-owt-7be5be79.pth)"
            )
        lin = _load_state_dict(self.lin_path, "lin_path")
        backbone = _load_state_dict(self.backbone_path, "backbone_path")
        for idx, cin, cout, k, stride, pad in _ALEX_CONVS:
            w, b = backbone.get(f"features.{idx}.weight"), backbone.get(f"features.{idx}.bias")
            if w is None or b is None or tuple(w.shape) != (cout, cin, k, k) or tuple(b.shape) != (cout,):
                raise _LpipsUnavailable(
                    f"backbone_path {self.backbone_path}: expected torchvision AlexNet key features.{idx}.weight "
                    f"of shape {(cout, cin, k, k)} (and its bias), got {None if w is None else tuple(w.shape)}"
                )
            self._convs.append((w.float(), b.float(), stride, pad))
        for i, (_, _, cout, _, _, _) in enumerate(_ALEX_CONVS):
            w = lin.get(f"lin{i}.model.1.weight")
            if w is None or tuple(w.shape) != (1, cout, 1, 1):
                raise _LpipsUnavailable(
                    f"lin_path {self.lin_path}: expected key lin{i}.model.1.weight of shape (1, {cout}, 1, 1), "
                    f"got {None if w is None else tuple(w.shape)}"
                )
            self._lins.append(w.float())

    def _features(self, x: Tensor) -> list[Tensor]:
        shift = x.new_tensor(_LPIPS_SHIFT).reshape(1, 3, 1, 1)
        scale = x.new_tensor(_LPIPS_SCALE).reshape(1, 3, 1, 1)
        h = (x - shift) / scale
        taps = []
        for i, (w, b, stride, pad) in enumerate(self._convs):
            if i > 0 and _ALEX_CONVS[i - 1][0] in _ALEX_POOL_AFTER:
                h = F.max_pool2d(h, kernel_size=3, stride=2)
            h = F.relu(F.conv2d(h, w.to(x), b.to(x), stride=stride, padding=pad))
            taps.append(h)
        return taps

    @torch.no_grad()
    def __call__(self, pred: Tensor, target: Tensor, mask: Tensor | None = None) -> Tensor | Unavailable:
        """LPIPS per image (lower is better).

        pred, target: (B, H, W, 3) in [0, 1]; mask: (B, H, W) or None.
        Without a mask: the standard LPIPS (per-layer spatial mean, summed). With a mask, as SoM's
        mLPIPS: both images are multiplied by the mask, the per-layer maps are upsampled (bilinear) to
        (H, W) and summed, and the result is averaged over the mask. Returns (B,) (NaN for an empty
        mask) or :class:`Unavailable`.
        """
        m = _check_images(pred, target, mask)
        if not self.available:
            return Unavailable(self.reason)
        x0, x1 = pred.permute(0, 3, 1, 2), target.permute(0, 3, 1, 2)
        if m is not None:
            x0, x1 = x0 * m[:, None], x1 * m[:, None]
        f0s, f1s = self._features(2 * x0 - 1), self._features(2 * x1 - 1)
        H, W = pred.shape[1:3]
        total = None
        for f0, f1, lin in zip(f0s, f1s, self._lins):
            n0 = f0 / (torch.sqrt((f0 * f0).sum(dim=1, keepdim=True)) + 1e-10)
            n1 = f1 / (torch.sqrt((f1 * f1).sum(dim=1, keepdim=True)) + 1e-10)
            d = F.conv2d((n0 - n1) ** 2, lin.to(n0))  # (B, 1, h, w)
            if m is None:
                layer = d.mean(dim=(1, 2, 3))
            else:
                layer = F.interpolate(d, size=(H, W), mode="bilinear", align_corners=False)[:, 0]  # (B, H, W)
            total = layer if total is None else total + layer
        if m is None:
            return total
        return _masked_mean_or_nan(total, m, (1, 2))


class _LpipsUnavailable(Exception):
    pass


def _load_state_dict(path: Path, arg: str) -> dict[str, Tensor]:
    if not path.is_file():
        raise _LpipsUnavailable(f"{arg} {path} does not exist")
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt or not a torch file
        raise _LpipsUnavailable(f"{arg} {path} could not be loaded as a torch state dict ({type(e).__name__}: {e})")
    if not isinstance(sd, dict):
        raise _LpipsUnavailable(f"{arg} {path} holds a {type(sd).__name__}, expected a state dict")
    return sd


def image_metrics(
    pred: Tensor,
    target: Tensor,
    fg_mask: Tensor | None = None,
    covisible_mask: Tensor | None = None,
    valid_mask: Tensor | None = None,
    lpips: LpipsScorer | None = None,
) -> dict[str, Tensor | Unavailable]:
    """All image metrics for a batch of frames, following Shape of Motion's validator.

    pred, target: (B, H, W, 3) in [0, 1]; masks: (B, H, W) or None. ``valid_mask`` (pixels with image
    content; 0 on ignored pixels such as endoscopy instruments) multiplies every mask; ``covisible_mask``
    (seen in training views; iPhone) too, as SoM.
    Keys, each (B,) or :class:`Unavailable`:
        psnr, ssim                     whole image (times valid/covisible masks when given)
        mpsnr, mssim                   SoM mPSNR / mSSIM (:func:`mssim_som`) -- only with a covisible mask
        fg_psnr, fg_ssim, bg_psnr, bg_ssim   masked to foreground / background (only with fg_mask)
        lpips (and fg_lpips, bg_lpips)  from ``lpips``; :class:`Unavailable` when no scorer/weights
        ssim_endo, lpips_endo          only with ``valid_mask``: the EndoNeRF-family protocol (EndoGaussian's
                                       and Deform3DGS's ``metrics.py``): both images times the tissue mask,
                                       then the whole-image SSIM / LPIPS (the zeroed pixels count, as SSIM 1)
    ``ssim`` and the fg/bg SSIMs are :func:`masked_ssim`-like means of the SSIM map over the mask. With a
    ``valid_mask``, pred and target are first set to 0 on its invalid pixels (:func:`zero_outside`), so no
    metric depends on what an ignored pixel holds in either image (not even through an SSIM window).
    PSNR over the valid pixels is EndoGaussian's masked PSNR (MSE over the mask's pixels).
    """
    _check_images(pred, target, None)
    base = None
    for name, mk in (("valid_mask", valid_mask), ("covisible_mask", covisible_mask)):
        if mk is not None:
            mk = _check_images(pred, target, mk)
            base = mk if base is None else base * mk
    if valid_mask is not None:
        pred, target = zero_outside(pred, valid_mask), zero_outside(target, valid_mask)
    smap = ssim_map(pred.permute(0, 3, 1, 2), target.permute(0, 3, 1, 2))  # (B, 3, H, W), computed once
    out: dict[str, Tensor | Unavailable] = {
        "psnr": masked_psnr(pred, target, base),
        "ssim": _mean_of_map(smap, base),
    }
    if valid_mask is not None:
        out["ssim_endo"] = smap.mean(dim=(1, 2, 3))
        out["lpips_endo"] = Unavailable("no LpipsScorer given") if lpips is None else lpips(pred, target, None)
    if covisible_mask is not None:
        out["mpsnr"] = out["psnr"]
        out["mssim"] = mssim_som(pred, target, base)
    regions: dict[str, Tensor | None] = {"": base}
    if fg_mask is not None:
        fg = _check_images(pred, target, fg_mask)
        ones = torch.ones_like(fg) if base is None else base
        regions["fg_"] = fg * ones
        regions["bg_"] = (1 - fg) * ones
        for p in ("fg_", "bg_"):
            out[p + "psnr"] = masked_psnr(pred, target, regions[p])
            out[p + "ssim"] = _mean_of_map(smap, regions[p])
    for p, region in regions.items():
        if lpips is None:
            out[p + "lpips"] = Unavailable("no LpipsScorer given")
        else:
            out[p + "lpips"] = lpips(pred, target, region)
    return out


# ----------------------------------------------------------------------------------------------
# Depth
# ----------------------------------------------------------------------------------------------


def depth_valid_mask(gt_depth: Tensor, pred_depth: Tensor | None = None, valid: Tensor | None = None) -> Tensor:
    """Bool mask of pixels where depth can be scored: gt valid by :func:`flow3d.depth.is_valid` (finite,
    > ``EPS``), pred finite, and ``valid``."""
    ok = is_valid(gt_depth)
    if pred_depth is not None:
        ok = ok & torch.isfinite(pred_depth)
    if valid is not None:
        ok = ok & valid.bool()
    return ok


DepthAlignment = Literal["sequence", "frame", "sequence_scale_shift", "frame_scale_shift", "none"]
DEPTH_ALIGNMENTS: tuple[str, ...] = ("sequence", "frame", "sequence_scale_shift", "frame_scale_shift", "none")

#: aligned disparity is clamped below at this fraction of the smallest valid ground-truth disparity (a depth
#: cap of 10x the farthest true depth), so a scale-and-shift that sends a pixel's disparity to <= 0 counts
#: as a large, finite error
_DISP_FLOOR_FRAC = 0.1


def _align_depth(pred: Tensor, gt: Tensor, w: Tensor, alignment: str) -> tuple[Tensor, Tensor, Tensor]:
    """(aligned depth (T, H, W), scale (T,), shift (T,)) of ``pred`` onto ``gt`` under weights ``w``.

    "sequence" / "frame": ``s * pred`` with the least-squares depth scale; "*_scale_shift": the least-squares
    ``s / pred + t`` onto ``1 / gt`` (DISPARITY), turned back into depth; "none": pred. Fits in float64.
    ``pred`` and ``gt`` hold harmless values (not 0) where ``w`` is 0."""
    T = pred.shape[0]
    if alignment == "none":
        return pred, pred.new_ones(T), pred.new_zeros(T)
    dims = (0, 1, 2) if alignment.startswith("sequence") else (1, 2)
    p64, g64, w64 = pred.double(), gt.double(), w.double()
    if alignment in ("sequence", "frame"):
        s, t, ok = fit_scale_shift(p64, g64, w64, dims, "scale")
        aligned = p64 * s
    else:
        inv_p = torch.where(w64 > 0, 1.0 / p64, torch.zeros_like(p64))
        inv_g = torch.where(w64 > 0, 1.0 / g64, torch.zeros_like(g64))
        s, t, ok = fit_scale_shift(inv_p, inv_g, w64, dims, "scale_shift")
        floor = _DISP_FLOOR_FRAC * inv_g[w64 > 0].min() if bool((w64 > 0).any()) else 1.0
        aligned = 1.0 / (s * inv_p + t).clamp_min(floor)
    nan = torch.full_like(s, float("nan"))
    s, t = torch.where(ok, s, nan), torch.where(ok, t, nan)
    return aligned.to(pred.dtype), s.reshape(-1).expand(T).to(pred.dtype), t.reshape(-1).expand(T).to(pred.dtype)


def depth_metrics(
    pred_depth: Tensor,
    gt_depth: Tensor,
    valid: Tensor | None = None,
    alignment: DepthAlignment = "sequence",
) -> MetricResult:
    """AbsRel, RMSE and delta<1.25 of a depth sequence against ground truth after a least-squares alignment.

    pred_depth, gt_depth: (T, H, W) z-depth; valid: (T, H, W) bool or None. Pixels count where gt is
    valid (:func:`depth_valid_mask`), pred is finite and positive, and ``valid``.
    alignment (the fits are :func:`flow3d.losses.fit_scale_shift` over the valid pixels):

    * ``"sequence"`` -- ONE depth scale s = argmin_s sum (s * pred - gt)^2 over all frames,
      s = sum(pred * gt) / sum(pred^2): measures the depth up to the global scale a monocular method
      cannot know, so a wrong per-frame offset or a stretched range counts;
    * ``"frame"`` -- that scale per frame;
    * ``"sequence_scale_shift"`` -- ONE scale and shift of DISPARITY, (s, t) = argmin sum (s / pred + t -
      1 / gt)^2 over all frames; depth = 1 / (s / pred + t). Measures shape: a stretched but otherwise
      right surface scores well, a depth that drifts from frame to frame does not;
    * ``"frame_scale_shift"`` -- that scale and shift per frame;
    * ``"none"`` -- s = 1.

    Aligned disparities below 0.1 x the smallest ground-truth disparity are clamped there (depth capped at
    10 x the farthest true depth), so a negative aligned disparity is a large finite error.
    Per frame (T,): abs_rel = mean |d - gt| / gt; rmse = sqrt(mean (d - gt)^2) (gt units); delta1 = fraction
    with max(d / gt, gt / d) < 1.25 (d <= 0 counts as a miss); scale and shift (the fit: depth scale and 0,
    or disparity scale and shift); num_valid. Frames without valid pixels are NaN.
    Aggregates: the mean over frames with valid pixels (each frame weighs the same, as per-image
    PSNR does); for the sequence alignments also the fitted ``scale`` (and ``shift``).
    """
    if pred_depth.dim() != 3 or pred_depth.shape != gt_depth.shape:
        raise ValueError(
            f"pred_depth and gt_depth must both be (T, H, W), got {tuple(pred_depth.shape)} and {tuple(gt_depth.shape)}"
        )
    if valid is not None and valid.shape != gt_depth.shape:
        raise ValueError(f"valid must be (T, H, W) = {tuple(gt_depth.shape)}, got {tuple(valid.shape)}")
    if alignment not in DEPTH_ALIGNMENTS:
        raise ValueError(f"alignment must be one of {', '.join(map(repr, DEPTH_ALIGNMENTS))}, got {alignment!r}")
    ok = depth_valid_mask(gt_depth, pred_depth, valid)
    if alignment.endswith("scale_shift"):
        ok = ok & is_valid(pred_depth)  # its disparity is fitted
    w = ok.to(pred_depth.dtype)
    pred = torch.where(ok, pred_depth, torch.ones_like(pred_depth))
    gt = torch.where(ok, gt_depth, torch.ones_like(gt_depth))
    dims = (1, 2)
    aligned, scale, shift = _align_depth(pred, gt, w, alignment)
    err = aligned - gt
    count = w.sum(dim=dims)
    abs_rel = _masked_mean_or_nan(err.abs() / gt, w, dims)
    rmse = torch.sqrt(_masked_mean_or_nan(err * err, w, dims))
    pos = aligned > 0
    ratio = torch.where(
        pos,
        torch.maximum(aligned / gt, gt / torch.where(pos, aligned, torch.ones_like(aligned))),
        torch.full_like(aligned, float("inf")),
    )
    delta1 = _masked_mean_or_nan((ratio < 1.25).to(w.dtype), w, dims)
    scale = torch.where(count > 0, scale, torch.full_like(scale, float("nan")))
    shift = torch.where(count > 0, shift, torch.full_like(shift, float("nan")))
    res = MetricResult(
        per_frame={
            "abs_rel": abs_rel,
            "rmse": rmse,
            "delta1": delta1,
            "scale": scale,
            "shift": shift,
            "num_valid": count,
        }
    )
    for k in ("abs_rel", "rmse", "delta1"):
        res.aggregate[k] = _nanmean(res.per_frame[k])
    if alignment.startswith("sequence"):
        any_ok = bool((count > 0).any())
        res.aggregate["scale"] = float(scale[count > 0][0]) if any_ok else float("nan")
        if alignment == "sequence_scale_shift":
            res.aggregate["shift"] = float(shift[count > 0][0]) if any_ok else float("nan")
    if not bool((count > 0).any()):
        res.notes["abs_rel"] = "no valid ground-truth depth pixel"
    return res


def prior_depth_metrics(
    prior_disp: Tensor,
    gt_depth: Tensor,
    valid: Tensor | None = None,
    alignment: DepthAlignment = "sequence",
) -> MetricResult:
    """:func:`depth_metrics` of a monocular prior given as disparity (T, H, W).

    The prior is turned into depth with :func:`flow3d.depth.disp_to_depth` (its validity rule) and then
    aligned exactly as the model's depth, so the "raw prior" row of an ablation table is comparable:
    ``"sequence"`` fits one depth scale (no disparity shift), ``"sequence_scale_shift"`` one scale and shift
    of the prior's disparity itself.
    """
    if prior_disp.shape != gt_depth.shape:
        raise ValueError(
            f"prior_disp must have gt_depth's shape {tuple(gt_depth.shape)}, got {tuple(prior_disp.shape)}"
        )
    depth, ok = disp_to_depth(prior_disp, valid)
    return depth_metrics(depth, gt_depth, ok, alignment=alignment)


def _nanmean(x: Tensor) -> float:
    finite = torch.isfinite(x)
    return float(x[finite].mean()) if bool(finite.any()) else float("nan")


def depth_order_accuracy(
    pred_depth: Tensor,
    reference: Tensor,
    kind: Literal["depth", "disparity"],
    num_pairs: int = 5000,
    valid: Tensor | None = None,
    tie_threshold: float = 0.05,
    seed: int = 0,
) -> MetricResult:
    """Fraction of sampled pixel pairs whose depth order in ``pred_depth`` matches ``reference``.

    pred_depth: (T, H, W) rendered z-depth; reference: (T, H, W) either GT depth (``kind="depth"``) or
    prior disparity (``kind="disparity"``: larger disparity = nearer, so its order is reversed);
    valid: (T, H, W) bool or None. Usable pixels: pred finite, reference valid
    (:func:`flow3d.depth.is_valid`), ``valid``. Per frame, ``num_pairs`` pairs of distinct usable pixels
    are drawn uniformly by :func:`flow3d.flow.sample_pixel_pairs` with a generator seeded by ``seed``
    (same pairs for the same inputs and seed); pairs whose reference values are near-ties,
    |r_a - r_b| / max(r_a, r_b) < tie_threshold, are dropped (:func:`flow3d.depth.depth_order_sign`).
    A pair is correct when the rendered depth order equals the reference's
    (:func:`flow3d.losses.ordinal_accuracy`; an exact tie in pred is wrong).
    per_frame: accuracy (T,) (NaN when no pair survives) and num_pairs (T,) used; aggregate: the
    accuracy over all used pairs pooled, and their count.
    """
    if kind not in ("depth", "disparity"):
        raise ValueError(f"kind must be 'depth' or 'disparity', got {kind!r}")
    if pred_depth.dim() != 3 or pred_depth.shape != reference.shape:
        raise ValueError(
            f"pred_depth and reference must both be (T, H, W), got {tuple(pred_depth.shape)} and {tuple(reference.shape)}"
        )
    if valid is not None and valid.shape != reference.shape:
        raise ValueError(f"valid must be (T, H, W) = {tuple(reference.shape)}, got {tuple(valid.shape)}")
    if num_pairs < 1:
        raise ValueError(f"num_pairs must be >= 1, got {num_pairs}")
    T = pred_depth.shape[0]
    ok = torch.isfinite(pred_depth) & is_valid(reference)
    if valid is not None:
        ok = ok & valid.bool()
    gen = torch.Generator(device=pred_depth.device).manual_seed(seed)
    acc = pred_depth.new_full((T,), float("nan"))
    used = pred_depth.new_zeros((T,))
    pooled: list[tuple[Tensor, Tensor, Tensor]] = []
    for t in range(T):
        pairs = sample_pixel_pairs(
            ok[t], num_pairs, prior=reference[t], prior_kind=kind, min_rel_diff=tie_threshold, generator=gen
        )
        used[t] = len(pairs)
        if len(pairs) == 0:
            continue
        p = pred_depth[t]
        vals = (
            p[pairs.xy_a[:, 1], pairs.xy_a[:, 0]],
            p[pairs.xy_b[:, 1], pairs.xy_b[:, 0]],
            pairs.order.to(torch.int8),
        )
        acc[t] = ordinal_accuracy(*vals).to(acc.dtype)
        pooled.append(vals)
    used_total = int(used.sum())
    res = MetricResult(per_frame={"accuracy": acc, "num_pairs": used})
    res.aggregate["accuracy"] = (
        float(ordinal_accuracy(*(torch.cat(v) for v in zip(*pooled)))) if used_total > 0 else float("nan")
    )
    res.aggregate["num_pairs"] = float(used_total)
    if used_total == 0:
        res.notes["accuracy"] = "no pixel pair outside the near-tie threshold"
    return res


def temporal_consistency(
    depth: Tensor,
    depth_next: Tensor,
    flow: Tensor,
    valid: Tensor | None = None,
) -> MetricResult:
    """Relative change of depth along the forward flow: mean |d_t(x) - d_{t+1}(x + f(x))| / d_t(x).

    depth: (B, H, W) z-depth at frames t; depth_next: (B, H, W) at frames t+1; flow: (B, H, W, 2)
    forward flow t -> t+1 in pixels (dx, dy), OpenCV pixel centres; valid: (B, H, W) bool, typically
    the forward-backward consistent pixels. Pixels also need a valid d_t (:func:`flow3d.depth.is_valid`), a target inside the
    image and a finite d_{t+1} there; d_{t+1} is read with :func:`flow3d.geometry.bilinear_sample`.
    This also counts true depth change (objects or the camera moving along the optical axis), so it
    is not 0 for a perfect reconstruction of a moving scene: compute the same on ground-truth depth
    (with the same flow and mask) and compare the two. per_frame: value (B,) (NaN without valid
    pixels) and num_valid (B,); aggregate: mean over pairs with valid pixels.
    """
    if depth.dim() != 3 or depth.shape != depth_next.shape:
        raise ValueError(
            f"depth and depth_next must both be (B, H, W), got {tuple(depth.shape)} and {tuple(depth_next.shape)}"
        )
    B, H, W = depth.shape
    if flow.shape != (B, H, W, 2):
        raise ValueError(f"flow must be (B, H, W, 2) = {(B, H, W, 2)} (dx, dy) pixels, got {tuple(flow.shape)}")
    if valid is not None and valid.shape != depth.shape:
        raise ValueError(f"valid must be (B, H, W) = {tuple(depth.shape)}, got {tuple(valid.shape)}")
    target = pixel_grid(H, W, device=depth.device, dtype=depth.dtype)[None] + flow.to(depth.dtype)  # (B, H, W, 2)
    finite_next = torch.isfinite(depth_next)
    dn = torch.where(finite_next, depth_next, torch.zeros_like(depth_next))
    sampled = bilinear_sample(torch.stack([dn, finite_next.to(depth.dtype)], dim=1), target.reshape(B, H * W, 2))
    warped = sampled[..., 0].reshape(B, H, W)
    next_ok = sampled[..., 1].reshape(B, H, W) > 1 - 1e-6  # all four neighbours finite
    inside = inside_image(target, W, H)
    ok = is_valid(depth) & inside & next_ok & torch.isfinite(flow).all(dim=-1)
    if valid is not None:
        ok = ok & valid.bool()
    w = ok.to(depth.dtype)
    d = torch.where(ok, depth, torch.ones_like(depth))
    rel = torch.where(ok, (d - warped).abs() / d, torch.zeros_like(d))
    value = _masked_mean_or_nan(rel, w, (1, 2))
    count = w.sum(dim=(1, 2))
    res = MetricResult(per_frame={"value": value, "num_valid": count})
    res.aggregate["value"] = _nanmean(value)
    if not bool((count > 0).any()):
        res.notes["value"] = "no flow-consistent pixel"
    return res


# ----------------------------------------------------------------------------------------------
# Tracking
# ----------------------------------------------------------------------------------------------


def tracking_metrics(
    pred_xy: Tensor,
    gt_xy: Tensor,
    gt_visible: Tensor,
    thresholds: tuple[float, ...] = (1, 2, 4, 8, 16),
    query_t: Tensor | None = None,
) -> MetricResult:
    """2D end-point error and TAP-Vid style position accuracy of tracks on visible points.

    pred_xy, gt_xy: (M, T, 2) pixels (OpenCV pixel centres); gt_visible: (M, T) bool; query_t: (M,)
    long or None -- when given, each track's query frame is excluded (TAP-Vid does: it is given).
    Counted points: gt visible (and not the query frame). A point is within threshold d when
    ||pred - gt|| < d (strict, as TAP-Vid). per_frame (T,): epe, and within_<d> per threshold.
    aggregate: epe (mean over all counted points), within_<d> (pooled fractions) and delta_avg (their
    mean over thresholds, TAP-Vid's < delta^x_avg >).
    """
    if pred_xy.dim() != 3 or pred_xy.shape[-1] != 2 or pred_xy.shape != gt_xy.shape:
        raise ValueError(
            f"pred_xy and gt_xy must both be (M, T, 2), got {tuple(pred_xy.shape)} and {tuple(gt_xy.shape)}"
        )
    if gt_visible.shape != pred_xy.shape[:2]:
        raise ValueError(f"gt_visible must be (M, T) = {tuple(pred_xy.shape[:2])}, got {tuple(gt_visible.shape)}")
    M, T = gt_visible.shape
    vis = gt_visible.bool() & torch.isfinite(gt_xy).all(dim=-1)
    if query_t is not None:
        if query_t.shape != (M,):
            raise ValueError(f"query_t must be (M,) = ({M},), got {tuple(query_t.shape)}")
        is_query = torch.arange(T, device=query_t.device)[None, :] == query_t[:, None].long()
        vis = vis & ~is_query.to(vis.device)
    diff = torch.where(vis[..., None], pred_xy - gt_xy, torch.zeros_like(pred_xy))
    dist = torch.linalg.norm(diff, dim=-1)  # (M, T)
    dist = torch.where(torch.isfinite(dist), dist, torch.full_like(dist, float("inf")))  # non-finite pred = miss
    w = vis.to(pred_xy.dtype)
    res = MetricResult()
    finite_w = w * torch.isfinite(dist).to(w.dtype)
    res.per_frame["epe"] = _masked_mean_or_nan(
        torch.where(torch.isfinite(dist), dist, torch.zeros_like(dist)), finite_w, (0,)
    )
    n = w.sum()
    res.aggregate["epe"] = (
        float((dist * finite_w).nan_to_num(0.0).sum() / finite_w.sum()) if finite_w.sum() > 0 else float("nan")
    )
    fracs = []
    for d in thresholds:
        within = (dist < d).to(w.dtype)
        key = f"within_{d:g}"
        res.per_frame[key] = _masked_mean_or_nan(within, w, (0,))
        frac = float((within * w).sum() / n) if n > 0 else float("nan")
        res.aggregate[key] = frac
        fracs.append(frac)
    res.aggregate["delta_avg"] = sum(fracs) / len(fracs) if n > 0 else float("nan")
    res.aggregate["num_points"] = float(n)
    if n == 0:
        res.notes["epe"] = "no visible ground-truth track point"
    return res


def keypoint_pck(
    pred_kps: Tensor,
    gt_kps: Tensor,
    visible: Tensor,
    img_wh: tuple[int, int],
    ratio: float = 0.05,
) -> MetricResult:
    """Shape of Motion's iPhone keypoint PCK (from DyCheck): correct when ||pred - gt|| < ratio * max(W, H).

    pred_kps, gt_kps: (B, P, 2) pixels, one row per (source, target) frame pair: the source frame's
    keypoints carried to the target frame, and the target's annotation; visible: (B, P) bool, the
    keypoint annotated in both frames of the pair; img_wh: (W, H) of the image the pixels refer to.
    Counted as SoM's ``PCK`` metric does: per pair, correct / max(visible count, 1e-8), so a pair with no
    visible keypoint scores 0; the aggregate is the mean over ALL pairs (empty ones included).
    per_frame: pck (B,) per pair; aggregate: pck, threshold_px, num_empty_pairs.
    """
    if pred_kps.dim() != 3 or pred_kps.shape[-1] != 2 or pred_kps.shape != gt_kps.shape:
        raise ValueError(
            f"pred_kps and gt_kps must both be (B, P, 2), got {tuple(pred_kps.shape)} and {tuple(gt_kps.shape)}"
        )
    if visible.shape != pred_kps.shape[:2]:
        raise ValueError(f"visible must be (B, P) = {tuple(pred_kps.shape[:2])}, got {tuple(visible.shape)}")
    if len(img_wh) != 2 or min(img_wh) <= 0:
        raise ValueError(f"img_wh must be (W, H) with positive sizes, got {img_wh}")
    thr = ratio * max(img_wh)
    dist = torch.linalg.norm(pred_kps - gt_kps, dim=-1)  # (B, P); NaN pred -> not correct
    vis = visible.bool()
    correct = ((dist < thr) & vis).sum(1).to(pred_kps.dtype)  # (B,)
    total = vis.sum(1).to(pred_kps.dtype)
    pck = correct / total.clamp_min(1e-8)
    n_empty = int((total == 0).sum())
    res = MetricResult(
        per_frame={"pck": pck},
        aggregate={
            "pck": float(pck.mean()) if pck.numel() else float("nan"),
            "threshold_px": float(thr),
            "num_empty_pairs": float(n_empty),
        },
    )
    if n_empty:
        res.notes["pck"] = (
            f"{n_empty} of {pck.numel()} pairs have no keypoint visible in both frames and count as 0 (SoM)"
        )
    return res


# ----------------------------------------------------------------------------------------------
# Never-seen surface (endoscopy: tissue an instrument covered in every training frame)
# ----------------------------------------------------------------------------------------------


def never_seen_metrics(
    pred_rgb: Tensor,
    pred_depth: Tensor,
    gt_rgb: Tensor,
    gt_depth: Tensor,
    never_seen: Tensor,
    valid: Tensor,
    depth_scale: float,
    pred_alpha: Tensor | None = None,
    min_alpha: float = 0.99,
) -> MetricResult:
    """PSNR and depth AbsRel on the surface no training frame saw, next to the same numbers on the seen,
    visible surface, scored against the true surface under whatever hides it.

    pred_rgb, gt_rgb: (S, H, W, 3) (``gt_rgb``: the scene without the ignored things, e.g. the tissue under
    the instruments); pred_depth, gt_depth: (S, H, W) z-depth (gt 0 = unknown); never_seen: (S, H, W) bool;
    valid: (S, H, W) bool, the view's own usable pixels; pred_alpha: (S, H, W) or None.
    ``never_seen_*`` score the ``never_seen`` pixels (visible in the view or not), ``seen_*`` the ``valid``
    pixels that some training frame saw. Depth is ``depth_scale * pred_depth`` for both (one scale, the one
    fitted on the visible pixels, so a never-seen surface at the wrong depth is not rescaled away); a pixel
    that renders no depth (0) counts as AbsRel 1. Per view: ``never_seen_psnr``, ``never_seen_abs_rel``,
    ``seen_psnr``, ``seen_abs_rel``, ``never_seen_frac`` (never-seen pixels / pixels) and, with
    ``pred_alpha``, ``never_seen_hole_frac`` (never-seen pixels with alpha < ``min_alpha`` / never-seen
    pixels). Aggregates: mean over views that have such pixels; ``never_seen_frac`` and
    ``never_seen_hole_frac`` pooled over all pixels of all views.
    """
    S = pred_rgb.shape[0]
    for name, x in (("pred_depth", pred_depth), ("gt_depth", gt_depth), ("never_seen", never_seen), ("valid", valid)):
        if x.shape != pred_rgb.shape[:3]:
            raise ValueError(f"{name} must be (S, H, W) = {tuple(pred_rgb.shape[:3])}, got {tuple(x.shape)}")
    ns = never_seen.bool()
    seen = valid.bool() & ~ns
    dims = (1, 2)
    res = MetricResult()
    d_ok = is_valid(gt_depth)
    aligned = torch.where(torch.isfinite(pred_depth), pred_depth * float(depth_scale), torch.zeros_like(pred_depth))
    rel = (aligned - gt_depth).abs() / torch.where(d_ok, gt_depth, torch.ones_like(gt_depth))
    for who, m in (("never_seen", ns), ("seen", seen)):
        res.per_frame[f"{who}_psnr"] = masked_psnr(pred_rgb, gt_rgb, m.to(pred_rgb.dtype))
        res.per_frame[f"{who}_abs_rel"] = _masked_mean_or_nan(rel, (m & d_ok).to(rel.dtype), dims)
    res.per_frame["never_seen_frac"] = ns.reshape(S, -1).float().mean(-1)
    for k, v in res.per_frame.items():
        res.aggregate[k] = _nanmean(v)
    res.aggregate["never_seen_frac"] = float(ns.float().mean()) if ns.numel() else float("nan")
    if pred_alpha is not None:
        holes = ns & (pred_alpha < min_alpha)
        res.per_frame["never_seen_hole_frac"] = _masked_mean_or_nan(holes.float(), ns.float(), dims)
        res.aggregate["never_seen_hole_frac"] = float(holes.sum() / ns.sum()) if bool(ns.any()) else float("nan")
    return res
