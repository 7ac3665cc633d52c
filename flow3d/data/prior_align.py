"""Temporal alignment of a drifting depth prior: one scale and shift of disparity per frame, so that the
tracked points of the scene stay where they are from frame to frame.

A monocular prior is disparity up to an unknown scale and shift *per frame*: ``prior_t = a_t / z + b_t``,
with ``a_t, b_t`` drifting over the video. Terms that compare rendered and prior disparity directly
(Shape of Motion's ``depth_reg``, ``depth_grad``, the mapped depth, the initialisation that lifts tracks
with the prior) copy that drift into the scene: with a static camera nothing else pins the depth of a
frame, so the rendered depth drifts with the prior. The scale-invariant terms (Pearson, G2-MonoDepth, the
hinge) cannot help: they are blind to exactly that drift.

:func:`estimate_prior_drift` finds per-frame ``(s_t, t_t)`` such that the corrected prior
``s_t * prior_t + t_t`` lifts every 2D track to (nearly) the same world point in every frame, robustly
(a track that really moves, or a deforming surface, is a minority the Cauchy weights push aside), by
alternating two closed-form steps:

1. each track's world point: the robust (IRLS) mean of its lifted points over the frames where it is
   visible;
2. each frame's scale and shift: the robust least-squares fit of the prior's disparity at the tracks to the
   disparity of those world points seen from the frame's camera (:func:`flow3d.losses.fit_scale_shift`).

With a moving camera the world points also absorb camera motion, so static background points agree across
frames once the drift is removed; with a static camera they are points on fixed rays. The gauge is fixed by
the *robust temporal average*: after every round the affines are composed with the inverse of their median
(the median scale and median shift), so the corrected prior keeps the prior's own average calibration -- it
removes the drift, never the global scale and shift that only the prior (and the cameras) know.

Only training frames are fitted; the other frames take the affine of the nearest fitted frames
(interpolated linearly in time). Units: disparity in 1 / scene units, as the prior.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from flow3d.depth import invert
from flow3d.geometry import bilinear_sample, project_points, unproject_pixels
from flow3d.log import get_logger
from flow3d.losses.consistency import fit_scale_shift

logger = get_logger(__name__)


@dataclass
class PriorDrift:
    """Per-frame affine of the prior's disparity: the corrected prior is ``scale[t] * prior_t + shift[t]``."""

    scale: Tensor  # (T,)
    shift: Tensor  # (T,) disparity units
    num_points: Tensor  # (T,) long: tracked points that fitted frame t (0 = interpolated / identity)
    residual: float  # robust relative residual (median |disp - fitted| / disp) after the last round


def _cauchy(r: Tensor, c: Tensor) -> Tensor:
    """Cauchy IRLS weights 1 / (1 + (r / c)^2)."""
    return 1.0 / (1.0 + (r / c) ** 2)


def _mad_scale(r: Tensor, w: Tensor) -> Tensor:
    """Robust scale of residuals r (weighted entries w > 0): 1.4826 x median |r|, at least 1e-4."""
    used = r[w > 0].abs()
    if used.numel() == 0:
        return r.new_tensor(1.0)
    return (1.4826 * used.median()).clamp_min(1e-4)


def _track_samples(seq, frame_ids: Tensor, region: str) -> tuple[Tensor, Tensor, Tensor]:
    """Prior disparity (T, M), its weight (T, M) and pixel positions (T, M, 2) of every track entry usable
    for the fit: visible, in a fitted frame, on valid pixels with a valid prior, in ``region``."""
    xy = seq.tracks_xy.transpose(0, 1)  # (T, M, 2)
    disp = bilinear_sample(seq.prior_disp[:, None], xy)[..., 0]  # (T, M)
    usable = (seq.prior_valid & seq.valid_masks.bool()).float()
    if region != "all":
        fg = seq.fg_masks > 0.5
        usable = usable * (fg if region == "fg" else ~fg).float()
    ok = bilinear_sample(usable[:, None], xy)[..., 0] > 0.999
    in_fit = torch.zeros(seq.num_frames, dtype=torch.bool)
    in_fit[frame_ids] = True
    w = seq.tracks_conf.transpose(0, 1) * (seq.tracks_visible.transpose(0, 1) & ok & in_fit[:, None] & (disp > 0))
    return disp, w, xy


def _pick_region(seq, frame_ids: Tensor, min_points: int) -> str:
    """'bg' when the static background carries enough tracked points in most fitted frames, else 'all'."""
    _, w, _ = _track_samples(seq, frame_ids, "bg")
    per_frame = (w[frame_ids] > 0).sum(1)
    return "bg" if bool((per_frame >= min_points).float().mean() >= 0.8) else "all"


def _world_points(z: Tensor, xy: Tensor, w: Tensor, seq, iters: int = 3) -> tuple[Tensor, Tensor]:
    """Robust mean over frames of the lifted tracks: X (M, 3) and its usable mask (M,)."""
    pts = unproject_pixels(xy, z, seq.Ks, seq.c2ws)  # (T, M, 3)
    wt = w.clone()
    X = (pts * wt[..., None]).sum(0) / wt.sum(0).clamp_min(1e-12)[:, None]
    for _ in range(iters):
        r = (pts - X[None]).norm(dim=-1) / z.clamp_min(1e-6)  # relative distance (T, M)
        wt = w * _cauchy(r, _mad_scale(r, w))
        X = (pts * wt[..., None]).sum(0) / wt.sum(0).clamp_min(1e-12)[:, None]
    return X, (w > 0).sum(0) >= 2


def _fit_frames(disp: Tensor, target: Tensor, w: Tensor, min_points: int, fit: str,
                irls: int = 3) -> tuple[Tensor, Tensor, Tensor]:
    """Per-frame robust fit of ``s * disp (+ t)`` to ``target`` (T, M) under weights w; (s, t, ok) each (T,)."""
    wt = w.clone()
    for _ in range(irls + 1):
        s, t, ok = fit_scale_shift(disp, target, wt, (1,), fit)
        r = (s * disp + t - target) / target.clamp_min(1e-6)
        wt = w * _cauchy(r, _mad_scale(r, w))
    ok = ok[:, 0] & ((w > 0).sum(1) >= min_points) & (s[:, 0] > 0)
    return s[:, 0], t[:, 0], ok


def _fill(values: Tensor, ok: Tensor, default: float) -> Tensor:
    """Frames without a fit take the value interpolated linearly between the nearest fitted frames."""
    idx = torch.nonzero(ok)[:, 0]
    if idx.numel() == 0:
        return torch.full_like(values, default)
    t = torch.arange(values.shape[0], dtype=values.dtype)
    return torch.from_numpy(np.interp(t.numpy(), idx.to(values.dtype).numpy(), values[idx].numpy())).to(values.dtype)


def estimate_prior_drift(
    seq,
    frame_ids: Tensor | None = None,
    rounds: int = 12,
    min_points: int = 20,
    region: str = "auto",
    fit: str = "auto",
) -> PriorDrift:
    """Per-frame scale and shift of ``seq.prior_disp`` that keep tracked points still (see the module doc).

    Args:
        seq: a :class:`flow3d.data.VideoSequence` (its tracks, prior, cameras, masks).
        frame_ids: (F,) long, the frames to fit (default: ``seq.train_ids``); others are interpolated.
        rounds: alternations of world points and per-frame fits.
        min_points: a frame needs this many tracked points to be fitted.
        region: where the tracks must lie: ``"bg"`` (static background), ``"all"``, or ``"auto"`` (the
            background when it carries ``min_points`` tracked points in 80% of the fitted frames, which a
            scene without a static part, such as deforming tissue, does not).
        fit: ``"auto"`` (``"scale_shift"`` on a static background, else ``"scale"``), ``"scale"`` (one
            disparity scale per frame: a depth scaling about the camera, well conditioned
            on a nearly fronto-parallel surface) or ``"scale_shift"``. On the synthetic tissue scene (static
            camera, all of it deforming) a per-frame shift is confounded with the tissue moving along the rays
            and the scale-and-shift fit makes the drift worse; ``"scale"`` removes most of it.

    Returns a :class:`PriorDrift` whose temporal median scale is 1 and median shift 0 (the gauge).
    """
    T = seq.num_frames
    frame_ids = seq.train_ids if frame_ids is None else frame_ids
    if region not in ("auto", "bg", "fg", "all"):
        raise ValueError(f"estimate_prior_drift: region must be 'auto', 'bg', 'fg' or 'all', got {region!r}")
    if fit not in ("auto", "scale", "scale_shift"):
        raise ValueError(f"estimate_prior_drift: fit must be 'auto', 'scale' or 'scale_shift', got {fit!r}")
    if region == "auto":
        region = _pick_region(seq, frame_ids, min_points)
    if fit == "auto":
        fit = "scale_shift" if region == "bg" else "scale"
    disp, w, xy = _track_samples(seq, frame_ids, region)
    disp, w, xy = disp.double(), w.double(), xy.double()
    seq64 = dataclasses.replace(seq, Ks=seq.Ks.double(), w2cs=seq.w2cs.double())
    scale, shift = torch.ones(T, dtype=torch.float64), torch.zeros(T, dtype=torch.float64)
    ok = torch.zeros(T, dtype=torch.bool)
    resid = float("nan")
    for _ in range(rounds):
        corrected = scale[:, None] * disp + shift[:, None]
        z, z_ok = invert(corrected)
        wz = w * z_ok
        X, x_ok = _world_points(torch.where(z_ok, z, torch.ones_like(z)), xy, wz, seq64)
        _, z_proj = project_points(X[None].expand(T, -1, -1), seq64.Ks, seq64.w2cs)  # (T, M)
        target, t_ok = invert(z_proj)
        wf = w * (x_ok[None] & t_ok)
        s_new, t_new, ok = _fit_frames(disp, target, wf, min_points, fit)
        if not bool(ok.any()):
            logger.warning("prior drift: no frame has %d tracked points with a valid prior (region %r); the prior "
                           "is left as it is", min_points, region)
            return PriorDrift(torch.ones(T), torch.zeros(T), torch.zeros(T, dtype=torch.long), float("nan"))
        s_new, t_new = _fill(s_new, ok, 1.0), _fill(t_new, ok, 0.0)
        # gauge: compose with the inverse of the robust temporal average (median scale, median shift)
        s_med, t_med = s_new[ok].median(), t_new[ok].median()
        scale, shift = s_new / s_med, (t_new - t_med) / s_med
        r = ((scale[:, None] * disp + shift[:, None] - target) / target.clamp_min(1e-6)).abs()
        resid = float(r[wf > 0].median()) if bool((wf > 0).any()) else float("nan")
    n = (w > 0).sum(1) * ok
    logger.info("prior drift (%s tracks, %s fit): scale %.3f..%.3f, shift %.3g..%.3g over %d fitted frames; residual %.4f",
                region, fit, float(scale.min()), float(scale.max()), float(shift.min()), float(shift.max()),
                int(ok.sum()), resid)
    return PriorDrift(scale.float(), shift.float(), n.long(), resid)


def apply_prior_drift(seq, drift: PriorDrift):
    """A copy of ``seq`` whose prior is ``scale[t] * prior_t + shift[t]`` (pixels that fall to <= 0 become
    invalid, by the sequence's validity rule)."""
    disp = drift.scale[:, None, None] * seq.prior_disp + drift.shift[:, None, None]
    disp = torch.where(seq.prior_valid, disp, torch.zeros_like(disp))
    return dataclasses.replace(seq, prior_disp=disp.to(seq.prior_disp.dtype))


__all__ = ["PriorDrift", "apply_prior_drift", "estimate_prior_drift"]
