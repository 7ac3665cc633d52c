"""Temporal alignment of a drifting depth prior: one scale (and shift) of disparity per frame, so that the
static background (or, without one, the tracked points) stays where it is from frame to frame.

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

**Dense source (default whenever there is a static background).** What the track folder holds must not
decide the fit: a foreground-focused tracker ships tracks on the moving objects only, and a fit on them takes
motion for drift. So when the foreground masks leave a static background in most fitted frames, the fit
uses it directly: a fixed random subset of static pixels of every fitted frame (outside the masks dilated
by 3 px, where a monocular prior's blurred edges do not reach) is lifted with the frame's corrected prior,
projected with the cameras into frames 1, 2, 4, 8, ... apart, and compared there with the target frame's
prior (at static pixels only); each frame's affine is the robust fit of its prior to what the other frames
say, alternated with the gauge as above. A static camera works too (the pixel maps to itself). The shift
is kept only where it makes the prior clearly more consistent than the scale alone (``fit="auto"``).
Without a static background (deforming tissue under a static endoscope) the tracks are used as above.

**Guard.** The fit is applied only when it makes the prior more consistent across frames, measured by the
same reprojection (or, without a static background, by the tracks' disagreement with their world
points); otherwise the prior is left as it is, with a warning giving the two numbers.

Only training frames are fitted; the other frames take the affine of the nearest fitted frames
(interpolated linearly in time). Units: disparity in 1 / scene units, as the prior.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
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
    source: str = "tracks"  # what it was fitted on: "dense" (static pixels reprojected) or "tracks"
    consistency_raw: float = float("nan")  # the guard's disagreement measure of the raw prior ...
    consistency_aligned: float = float("nan")  # ... and of the aligned one
    applied: bool = True  # False: the guard refused the fit (scale 1, shift 0)
    curves: list | None = None  # fit "monotone": per frame None or (x, y) knots of a monotone map of the
    # affine-corrected disparity (increasing x and y; linear through the origin beyond the ends)


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


def _fit_frames(
    disp: Tensor, target: Tensor, w: Tensor, min_points: int, fit: str, irls: int = 3
) -> tuple[Tensor, Tensor, Tensor]:
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


# ------------------------------------------------------------------------------------ dense static pixels
@dataclass
class _StaticSamples:
    """Static-background pixels of the fitted frames and the frames each is reprojected into."""

    frame_ids: Tensor  # (F,) long, the fitted frames
    xy: Tensor  # (F, N, 2) pixel centres (float64)
    disp: Tensor  # (F, N) raw prior disparity there
    w: Tensor  # (F, N) 1 where a sample exists, else 0
    sources: Tensor  # (F, S) long: for target frame f, the indices (into frame_ids) of its source frames
    src_ok: Tensor  # (F, S) bool: the source exists
    static_map: Tensor  # (F, 1, H, W) float64: 1 on usable static pixels
    prior: Tensor  # (F, 1, H, W) float64: the raw prior disparity of the fitted frames


def _static_map(seq, frame_ids: Tensor, erode_px: int) -> Tensor:
    """(F, H, W) bool: valid pixels with a valid prior outside the foreground masks dilated by ``erode_px``
    (a monocular prior blurs depth edges: the background next to an object carries some of its depth)."""
    fg = (seq.fg_masks[frame_ids] > 0.5).float()[:, None]
    if erode_px > 0:
        fg = F.max_pool2d(fg, 2 * erode_px + 1, stride=1, padding=erode_px)
    return (
        seq.prior_valid[frame_ids]
        & seq.valid_masks[frame_ids].bool()
        & (fg[:, 0] < 0.5)
        & (seq.prior_disp[frame_ids] > 0)
    )


def _source_offsets(F_: int) -> list[int]:
    """Frame-index gaps to reproject from: +-1, +-2, +-4, ... (a few per octave keeps every frame tied to
    near and far frames at O(F log F) pairs)."""
    gaps, g = [], 1
    while g < F_:
        gaps += [-g, g]
        g *= 2
    return gaps


def _static_samples(
    seq, frame_ids: Tensor, per_frame: int = 1000, min_pixels: int = 200, erode_px: int = 3, min_frac: float = 0.8
) -> _StaticSamples | None:
    """Up to ``per_frame`` static pixels per fitted frame (a fixed random subset), or None when fewer than
    ``min_frac`` of the fitted frames have ``min_pixels`` static pixels (no static background to fit on)."""
    frame_ids = frame_ids.long()
    if frame_ids.numel() < 2:
        return None
    static = _static_map(seq, frame_ids, erode_px)
    counts = static.flatten(1).sum(1)
    if not bool(((counts >= min_pixels).float().mean() >= min_frac)):
        return None
    Fn, H, W = static.shape
    gen = torch.Generator().manual_seed(0)
    xy = torch.zeros(Fn, per_frame, 2, dtype=torch.float64)
    disp = torch.zeros(Fn, per_frame, dtype=torch.float64)
    w = torch.zeros(Fn, per_frame, dtype=torch.float64)
    for f in range(Fn):
        idx = torch.nonzero(static[f].flatten())[:, 0]
        if idx.numel() > per_frame:
            idx = idx[torch.randperm(idx.numel(), generator=gen)[:per_frame]]
        n = idx.numel()
        xy[f, :n, 0], xy[f, :n, 1] = (idx % W).double(), (idx // W).double()
        disp[f, :n] = seq.prior_disp[frame_ids[f]].flatten()[idx].double()
        w[f, :n] = 1.0
    gaps = _source_offsets(Fn)
    src = torch.arange(Fn)[:, None] + torch.tensor(gaps)[None]
    src_ok = (src >= 0) & (src < Fn)
    return _StaticSamples(
        frame_ids,
        xy,
        disp,
        w,
        src.clamp(0, Fn - 1),
        src_ok,
        static.double()[:, None],
        seq.prior_disp[frame_ids].double()[:, None],
    )


def _reproject(
    st: _StaticSamples, seq64, scale: Tensor, shift: Tensor, src_disp: Tensor | None = None, maps: Tensor | None = None
):
    """Static pixels of every source frame lifted with their corrected prior and projected into each target
    frame. Returns, each (F, S*N): the target's raw prior there ``d``, the disparity the point should have
    there ``target``, the weight ``w`` (0: no source, off the image, onto a non-static pixel), the source's
    corrected disparity ``D`` and ``beta``, the target-camera depth of the source camera's centre (so that
    the target depth is ``alpha / D + beta`` for the pixel's ray: ``alpha = (1 / target - beta) D``).
    With ``maps`` (F, 1, H, W), corrected disparity maps of the fitted frames, the sources are lifted with
    them and ``d`` is read from them instead of the raw prior."""
    ids = st.frame_ids
    s, t = scale[ids], shift[ids]
    D = s[:, None] * st.disp + t[:, None] if src_disp is None else src_disp
    z, z_ok = invert(D)
    c2w = seq64.c2ws[ids]
    X = unproject_pixels(st.xy, torch.where(z_ok, z, torch.ones_like(z)), seq64.Ks[ids], c2w)  # (F, N, 3)
    Fn, S = st.sources.shape
    N = st.xy.shape[1]
    Xs = X[st.sources].reshape(Fn, S * N, 3)
    w_src = (st.w * z_ok)[st.sources] * st.src_ok[..., None]  # (F, S, N)
    q, zq = project_points(Xs, seq64.Ks[ids], seq64.w2cs[ids])  # (F, S*N, 2), (F, S*N)
    centres = c2w[:, :3, 3][st.sources]  # (F, S, 3) source camera centres
    beta = (centres @ seq64.w2cs[ids][:, None, 2, :3].transpose(-1, -2))[..., 0] + seq64.w2cs[ids][:, None, 2, 3]
    H, W = st.prior.shape[-2:]
    inside = (q[..., 0] >= 0) & (q[..., 0] <= W - 1) & (q[..., 1] >= 0) & (q[..., 1] <= H - 1) & (zq > 1e-6)
    d = bilinear_sample(st.prior if maps is None else maps, q)[..., 0]
    stat = bilinear_sample(st.static_map, q)[..., 0] > 0.999
    target, t_ok = invert(torch.where(inside, zq, torch.ones_like(zq)))
    w = w_src.reshape(Fn, S * N) * (inside & stat & t_ok & (d > 0))
    return d, target, w, D[st.sources].reshape(Fn, S * N), beta[..., None].expand(Fn, S, N).reshape(Fn, S * N)


def _dense_consistency(st: _StaticSamples, seq64, scale: Tensor, shift: Tensor) -> float:
    """Median relative disparity disagreement of the (corrected) prior across frames on the static background:
    ``|s_j d_j(q) + t_j - 1 / z_q| / (1 / z_q)`` over every static pixel reprojected from a source frame into
    a target frame j (see :func:`_reproject`). Lower is more consistent; nan when nothing reprojects."""
    d, target, w, _, _ = _reproject(st, seq64, scale, shift)
    s, t = scale[st.frame_ids][:, None], shift[st.frame_ids][:, None]
    r = ((s * d + t - target) / target.clamp_min(1e-12)).abs()
    return float(r[w > 0].median()) if bool((w > 0).any()) else float("nan")


def _gauge(s_new: Tensor, t_new: Tensor, ok: Tensor) -> tuple[Tensor, Tensor]:
    """Compose with the inverse of the robust temporal average (median scale, median shift)."""
    s_med, t_med = s_new[ok].median(), t_new[ok].median()
    return s_new / s_med, (t_new - t_med) / s_med


def _fit_dense(
    st: _StaticSamples, seq64, T: int, fit: str, rounds: int, min_points: int
) -> tuple[Tensor, Tensor, Tensor]:
    """Per-frame (scale, shift, ok) that make the static background's reprojected prior agree across frames.

    All frames at once (a per-frame fit to the other frames' current state converges slowly, like
    diffusion): robust Gauss-Newton on ``s_j d_j(q) + t_j = g(s_i d_i + t_i)``, where ``g(D) = D / (alpha +
    beta D)`` is the disparity in target frame j of a point of source frame i at corrected disparity D,
    residuals relative to the target disparity, Cauchy weights, a weak constraint (mean scale 1, mean shift
    0) for what the data leaves free (with a static camera the global scale), then the gauge (temporal
    median) at the end."""
    ids, Fn = st.frame_ids, st.frame_ids.numel()
    n = 2 * Fn if fit == "scale_shift" else Fn
    scale, shift = torch.ones(T, dtype=torch.float64), torch.zeros(T, dtype=torch.float64)
    ok_all = torch.zeros(T, dtype=torch.bool)
    S, N = st.sources.shape[1], st.xy.shape[1]
    tgt_idx = torch.arange(Fn)[:, None].expand(Fn, S * N)
    src_idx = st.sources[..., None].expand(Fn, S, N).reshape(Fn, S * N)
    d_src = st.disp[st.sources].reshape(Fn, S * N)
    for _ in range(rounds):
        d, target, w, D, beta = _reproject(st, seq64, scale, shift)
        s, t = scale[ids], shift[ids]
        good = (w > 0) & (D > 0)
        alpha = (1.0 / target.clamp_min(1e-12) - beta) * D
        gp = alpha * target**2 / D.clamp_min(1e-12) ** 2  # dg/dD
        r = (s[:, None] * d + t[:, None] - target) / target.clamp_min(1e-12)
        wt = (w * good * _cauchy(r, _mad_scale(r, w * good)) / target.clamp_min(1e-12) ** 2)[good]
        ti, si, dd, ds, g, gpp, DD = (x[good] for x in (tgt_idx, src_idx, d, d_src, target, gp, D))
        rhs = g - gpp * DD
        if fit == "scale_shift":
            idx = torch.stack([ti, ti + Fn, si, si + Fn], 1)
            coef = torch.stack([dd, torch.ones_like(dd), -gpp * ds, -gpp], 1)
        else:
            idx, coef = torch.stack([ti, si], 1), torch.stack([dd, -gpp * ds], 1)
        A = torch.zeros(n, n, dtype=torch.float64)
        bvec = torch.zeros(n, dtype=torch.float64)
        k = idx.shape[1]
        for a_ in range(k):
            bvec.index_put_((idx[:, a_],), wt * coef[:, a_] * rhs, accumulate=True)
            for b_ in range(k):
                A.index_put_((idx[:, a_], idx[:, b_]), wt * coef[:, a_] * coef[:, b_], accumulate=True)
        counts = torch.zeros(Fn, dtype=torch.long).index_add_(0, ti, torch.ones_like(ti))
        ok = counts >= min_points
        if not bool(ok.any()):
            return scale, shift, ok_all
        x_cur = torch.cat([s, t]) if fit == "scale_shift" else s.clone()
        lam = 1e-3 * float(wt.sum()) + 1e-12  # weak: only fixes what the data leaves free
        c = torch.zeros(n, dtype=torch.float64)
        c[:Fn] = 1.0 / Fn  # gauge: mean scale 1 ...
        A += lam * torch.outer(c, c)
        bvec += lam * c
        if fit == "scale_shift":
            c2 = torch.zeros(n, dtype=torch.float64)
            c2[Fn:] = 1.0 / Fn  # ... and mean shift 0
            A += lam * torch.outer(c2, c2)
        mu = 1e-6 * float(A.diagonal().abs().max()) + 1e-12  # damping towards the current state
        A += mu * torch.eye(n, dtype=torch.float64)
        bvec += mu * x_cur
        x = torch.linalg.solve(A, bvec)
        s_f = x[:Fn]
        t_f = x[Fn:] if fit == "scale_shift" else torch.zeros(Fn, dtype=torch.float64)
        ok = ok & (s_f > 0)
        s_new, t_new = torch.ones(T, dtype=torch.float64), torch.zeros(T, dtype=torch.float64)
        ok_all = torch.zeros(T, dtype=torch.bool)
        s_new[ids], t_new[ids], ok_all[ids] = s_f, t_f, ok
        if not bool(ok_all.any()):
            return scale, shift, ok_all
        s_new, t_new = _fill(s_new, ok_all, 1.0), _fill(t_new, ok_all, 0.0)
        change = float((s_new - scale).abs().max() / s_new.abs().max())
        scale, shift = s_new, t_new
        if change < 1e-5:  # converged (typically after 3-5 rounds)
            break
    scale, shift = _gauge(scale, shift, ok_all)
    return scale, shift, ok_all


def _pava(y: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Weighted isotonic (non-decreasing) least-squares fit of y: the pool-adjacent-violators algorithm."""
    vals, wts, sizes = [], [], []
    for yi, wi in zip(y.tolist(), w.tolist()):
        vals.append(yi), wts.append(wi), sizes.append(1)
        while len(vals) > 1 and vals[-2] > vals[-1]:
            wsum = wts[-2] + wts[-1]
            v = (vals[-2] * wts[-2] + vals[-1] * wts[-1]) / wsum
            n = sizes[-2] + sizes[-1]
            del vals[-1], wts[-1], sizes[-1]
            vals[-1], wts[-1], sizes[-1] = v, wsum, n
    return np.repeat(np.array(vals), np.array(sizes))


def apply_curve(disp: Tensor, curve) -> Tensor:
    """A monotone map given by knots ``curve = (x, y)`` (increasing), linear through the origin beyond the ends
    (so the map stays increasing and positive for positive disparity)."""
    x, y = (np.asarray(c, dtype=np.float64) for c in curve)
    d = disp.double().numpy()
    out = np.interp(d, x, y)
    out = np.where(d < x[0], d * (y[0] / x[0]), out)
    out = np.where(d > x[-1], d * (y[-1] / x[-1]), out)
    return torch.from_numpy(out).to(disp.dtype)


def _monotone_curve(a: Tensor, target: Tensor, w: Tensor, bins: int, min_points: int):
    """Knots of the isotonic fit of ``target`` on ``a`` (1-D, weights w > 0 used): per quantile bin of a the
    median a and the median target (robust to occlusions and misses), then pool-adjacent-violators
    weighted by the bin counts. None when there are fewer than ``min_points`` samples."""
    keep = w > 0
    a, target = a[keep].numpy(), target[keep].numpy()
    if a.size < max(min_points, 2 * bins):
        return None
    edges = np.quantile(a, np.linspace(0, 1, bins + 1))
    which = np.clip(np.searchsorted(edges, a, side="right") - 1, 0, bins - 1)
    xs, ys, ns = [], [], []
    for k in range(bins):
        sel = which == k
        if sel.sum() >= 3:
            xs.append(np.median(a[sel])), ys.append(np.median(target[sel])), ns.append(sel.sum())
    if len(xs) < 3:
        return None
    x, y = np.array(xs), _pava(np.array(ys), np.array(ns, dtype=np.float64))
    x, idx = np.unique(x, return_index=True)
    y = y[idx]
    # strictly increasing knots (flat runs of the isotonic fit get a tiny slope) and positive
    y = np.maximum(y, 1e-9) + np.arange(y.size) * 1e-9 * max(float(np.abs(y).max()), 1e-12)
    return torch.from_numpy(x), torch.from_numpy(y)


def _corrected_maps(st: _StaticSamples, scale: Tensor, shift: Tensor, curves: list) -> Tensor:
    """(F, 1, H, W) corrected disparity of the fitted frames: the affine, then each frame's monotone curve."""
    ids = st.frame_ids
    maps = scale[ids][:, None, None, None] * st.prior + shift[ids][:, None, None, None]
    maps = torch.where(st.prior > 0, maps, torch.zeros_like(maps))
    for f, c in enumerate(curves):
        if c is not None:
            maps[f, 0] = torch.where(st.prior[f, 0] > 0, apply_curve(maps[f, 0], c), maps[f, 0])
    return maps


def _maps_consistency(st: _StaticSamples, seq64, scale: Tensor, shift: Tensor, maps: Tensor) -> float:
    """:func:`_dense_consistency` of the corrected maps (affine plus curves)."""
    src = torch.stack([maps[f, 0][st.xy[f, :, 1].long(), st.xy[f, :, 0].long()] for f in range(maps.shape[0])])
    d, target, w, _, _ = _reproject(st, seq64, scale, shift, src_disp=src, maps=maps)
    r = ((d - target) / target.clamp_min(1e-12)).abs()
    return float(r[w > 0].median()) if bool((w > 0).any()) else float("nan")


def _fit_monotone(
    st: _StaticSamples, seq64, scale: Tensor, shift: Tensor, min_points: int, rounds: int = 2, bins: int = 24
) -> list:
    """Per fitted frame the monotone map of its affine-corrected prior onto what the other frames' static
    background says (the reprojected disparity), refitted ``rounds`` times with the sources corrected."""
    Fn = st.frame_ids.numel()
    curves: list = [None] * Fn
    for _ in range(rounds):
        maps = _corrected_maps(st, scale, shift, curves)
        src = torch.stack([maps[f, 0][st.xy[f, :, 1].long(), st.xy[f, :, 0].long()] for f in range(Fn)])
        d, target, w, _, _ = _reproject(st, seq64, scale, shift, src_disp=src)
        a = scale[st.frame_ids][:, None] * d + shift[st.frame_ids][:, None]  # target frame's affine-corrected value
        curves = [_monotone_curve(a[f], target[f], w[f], bins, min_points) for f in range(Fn)]
    return curves


# ------------------------------------------------------------------------------------------------ tracks
def _fit_tracks(seq, seq64, frame_ids: Tensor, region: str, fit: str, rounds: int, min_points: int):
    """The track-based fit (module doc): (scale, shift, ok, residual, points per frame)."""
    T = seq.num_frames
    disp, w, xy = _track_samples(seq, frame_ids, region)
    disp, w, xy = disp.double(), w.double(), xy.double()
    scale, shift = torch.ones(T, dtype=torch.float64), torch.zeros(T, dtype=torch.float64)
    ok = torch.zeros(T, dtype=torch.bool)
    resid = float("nan")
    for _ in range(rounds):
        disp_c, target, wf = _track_targets(disp, w, xy, seq64, scale, shift)
        s_new, t_new, ok = _fit_frames(disp, target, wf, min_points, fit)
        if not bool(ok.any()):
            return scale, shift, ok, resid, (w > 0).sum(1) * ok
        s_new, t_new = _fill(s_new, ok, 1.0), _fill(t_new, ok, 0.0)
        scale, shift = _gauge(s_new, t_new, ok)
        r = ((scale[:, None] * disp + shift[:, None] - target) / target.clamp_min(1e-6)).abs()
        resid = float(r[wf > 0].median()) if bool((wf > 0).any()) else float("nan")
    return scale, shift, ok, resid, (w > 0).sum(1) * ok


def _track_targets(disp: Tensor, w: Tensor, xy: Tensor, seq64, scale: Tensor, shift: Tensor):
    """Tracks lifted with the corrected prior, their robust world points projected back into every frame:
    (disp, target disparity, weight), each (T, M)."""
    T = disp.shape[0]
    z, z_ok = invert(scale[:, None] * disp + shift[:, None])
    wz = w * z_ok
    X, x_ok = _world_points(torch.where(z_ok, z, torch.ones_like(z)), xy, wz, seq64)
    _, z_proj = project_points(X[None].expand(T, -1, -1), seq64.Ks, seq64.w2cs)  # (T, M)
    target, t_ok = invert(z_proj)
    return disp, target, w * (x_ok[None] & t_ok)


def _track_consistency(seq, seq64, frame_ids: Tensor, region: str, scale: Tensor, shift: Tensor) -> float:
    """Median relative disparity disagreement of the tracked points with their robust world point, as above."""
    disp, w, xy = _track_samples(seq, frame_ids, region)
    disp, target, wf = _track_targets(disp.double(), w.double(), xy.double(), seq64, scale, shift)
    r = ((scale[:, None] * disp + shift[:, None] - target) / target.clamp_min(1e-6)).abs()
    return float(r[wf > 0].median()) if bool((wf > 0).any()) else float("nan")


def _identity(T: int, source: str, before: float = float("nan"), after: float = float("nan")) -> PriorDrift:
    return PriorDrift(
        torch.ones(T),
        torch.zeros(T),
        torch.zeros(T, dtype=torch.long),
        float("nan"),
        source=source,
        consistency_raw=before,
        consistency_aligned=after,
        applied=False,
    )


def estimate_prior_drift(
    seq,
    frame_ids: Tensor | None = None,
    rounds: int = 12,
    min_points: int = 20,
    region: str = "auto",
    fit: str = "auto",
    source: str = "auto",
    min_gain: float = 0.01,
    shift_gain: float = 0.05,
) -> PriorDrift:
    """Per-frame scale and shift of ``seq.prior_disp`` that make the prior consistent across frames (module doc).

    Args:
        seq: a :class:`flow3d.data.VideoSequence` (its prior, cameras, masks and, for ``source="tracks"``, tracks).
        frame_ids: (F,) long, the frames to fit (default: ``seq.train_ids``); others are interpolated.
        rounds: alternations of targets and per-frame fits.
        min_points: a frame needs this many tracked points (or reprojected static pixels) to be fitted.
        region: tracks only -- where the tracks must lie: ``"bg"`` (static background), ``"fg"``, ``"all"``,
            or ``"auto"`` (the background when it carries ``min_points`` tracked points in 80% of the
            fitted frames, which a scene without a static part, such as deforming tissue, does not).
        fit: ``"auto"``, ``"scale"`` (one disparity scale per frame), ``"scale_shift"`` or ``"monotone"``
            (``"auto"``, then, on a static background, a monotone map per fitted frame: the isotonic fit of
            its corrected prior to the disparity the other frames' static background reprojects to, kept
            when it lowers that disagreement by ``min_gain``; held-out frames keep the affine only). ``"auto"`` on the
            dense source fits both and keeps the shift only when it makes the prior at least ``shift_gain``
            (relatively) more consistent than the scale alone (the shift is identified only by a static
            background with a range of depths); on tracks it is ``"scale_shift"`` on background tracks, else
            ``"scale"`` (on a deforming surface under a static camera a per-frame shift is confounded with
            the surface moving along the rays).
        source: ``"dense"`` (static pixels, outside the foreground masks, reprojected between frames with
            the cameras: needs a static background in 80% of the fitted frames, whatever the tracks),
            ``"tracks"``, or ``"auto"`` (dense when there is a static background, else the tracks).
        min_gain: the guard: the alignment is applied only when it lowers the consistency measure (dense
            reprojection when there is a static background, else the tracks' disagreement) by this fraction;
            otherwise the identity is returned (``applied`` False) and a warning gives both numbers.

    Returns a :class:`PriorDrift` whose temporal median scale is 1 and median shift 0 (the gauge).
    """
    T = seq.num_frames
    frame_ids = (seq.train_ids if frame_ids is None else frame_ids).long()
    if region not in ("auto", "bg", "fg", "all"):
        raise ValueError(f"estimate_prior_drift: region must be 'auto', 'bg', 'fg' or 'all', got {region!r}")
    if fit not in ("auto", "scale", "scale_shift", "monotone"):
        raise ValueError(f"estimate_prior_drift: fit must be 'auto', 'scale', 'scale_shift' or 'monotone', got {fit!r}")
    monotone = fit == "monotone"
    fit = "auto" if monotone else fit
    if source not in ("auto", "dense", "tracks"):
        raise ValueError(f"estimate_prior_drift: source must be 'auto', 'dense' or 'tracks', got {source!r}")
    seq64 = dataclasses.replace(seq, Ks=seq.Ks.double(), w2cs=seq.w2cs.double())
    static = _static_samples(seq, frame_ids)
    if source == "auto":
        source = "dense" if static is not None else "tracks"
    ones, zeros = torch.ones(T, dtype=torch.float64), torch.zeros(T, dtype=torch.float64)
    if source == "dense":
        if static is None:
            logger.warning(
                "prior drift: no static background (outside the foreground masks) in 80%% of the "
                "fitted frames to reproject; the prior is left as it is"
            )
            return _identity(T, "dense")
        fits = ("scale", "scale_shift") if fit == "auto" else (fit,)
        cands = {f: _fit_dense(static, seq64, T, f, rounds, min_points) for f in fits}
        cons = {f: _dense_consistency(static, seq64, c[0], c[1]) for f, c in cands.items()}
        chosen = fits[0]
        if len(fits) == 2 and cons["scale_shift"] < (1.0 - shift_gain) * cons["scale"]:
            chosen = "scale_shift"
        scale, shift, ok = cands[chosen]
        after, what = cons[chosen], f"static pixels, {chosen} fit"
        if len(fits) == 2:
            what += f"; consistency scale {cons['scale']:.4f}, scale+shift {cons['scale_shift']:.4f}"
        measure = lambda s, t: _dense_consistency(static, seq64, s, t)  # noqa: E731
        n = torch.zeros(T, dtype=torch.long)
        n[frame_ids] = static.w.sum(1).long()
        n = n * ok
        resid = after
    else:
        if region == "auto":
            region = _pick_region(seq, frame_ids, min_points)
        if fit == "auto":
            fit = "scale_shift" if region == "bg" else "scale"
        scale, shift, ok, resid, n = _fit_tracks(seq, seq64, frame_ids, region, fit, rounds, min_points)
        if not bool(ok.any()):
            logger.warning(
                "prior drift: no frame has %d tracked points with a valid prior (region %r); the prior "
                "is left as it is",
                min_points,
                region,
            )
            return _identity(T, "tracks")
        what = f"{region} tracks, {fit} fit"
        if static is not None:
            measure = lambda s, t: _dense_consistency(static, seq64, s, t)  # noqa: E731
        else:
            measure = lambda s, t: _track_consistency(seq, seq64, frame_ids, region, s, t)  # noqa: E731
        after = measure(scale, shift)
    before = measure(ones, zeros)
    kind = "static-pixel reprojection" if static is not None else "track"
    curves = None
    if monotone and static is None:
        logger.warning("prior drift: the monotone alignment needs a static background to reproject; affine only")
    elif monotone:
        fitted = _fit_monotone(static, seq64, scale, shift, min_points)
        mono = _maps_consistency(static, seq64, scale, shift, _corrected_maps(static, scale, shift, fitted))
        if mono < (1.0 - min_gain) * after:
            logger.info(
                "prior drift: per-frame monotone maps on %d of %d fitted frames; static-pixel reprojection "
                "disagreement %.4f affine -> %.4f monotone",
                sum(c is not None for c in fitted),
                len(fitted),
                after,
                mono,
            )
            curves = [None] * T
            for f, c in zip(static.frame_ids.tolist(), fitted):
                curves[f] = c
            after = mono
        else:
            logger.warning(
                "prior drift: per-frame monotone maps NOT applied (static-pixel reprojection disagreement "
                "%.4f affine, %.4f monotone)",
                after,
                mono,
            )
    if not (after < (1.0 - min_gain) * before):
        logger.warning(
            "prior drift (%s): NOT applied -- it does not make the prior more consistent across frames "
            "(%s disagreement %.4f raw, %.4f aligned)",
            what,
            kind,
            before,
            after,
        )
        return _identity(T, source, before, after)
    logger.info(
        "prior drift (%s): scale %.3f..%.3f, shift %.3g..%.3g over %d fitted frames; %s disagreement "
        "%.4f raw -> %.4f aligned",
        what,
        float(scale.min()),
        float(scale.max()),
        float(shift.min()),
        float(shift.max()),
        int(ok.sum()),
        kind,
        before,
        after,
    )
    return PriorDrift(
        scale.float(),
        shift.float(),
        n.long(),
        resid,
        source=source,
        consistency_raw=before,
        consistency_aligned=after,
        applied=True,
        curves=curves,
    )


def apply_prior_drift(seq, drift: PriorDrift):
    """A copy of ``seq`` whose prior is ``scale[t] * prior_t + shift[t]``, then through frame t's monotone
    curve when it has one (pixels that fall to <= 0 become
    invalid, by the sequence's validity rule)."""
    disp = drift.scale[:, None, None] * seq.prior_disp + drift.shift[:, None, None]
    for t, c in enumerate(drift.curves or []):
        if c is not None:
            disp[t] = apply_curve(disp[t], c)
    disp = torch.where(seq.prior_valid, disp, torch.zeros_like(disp))
    return dataclasses.replace(seq, prior_disp=disp.to(seq.prior_disp.dtype))


__all__ = ["PriorDrift", "apply_prior_drift", "estimate_prior_drift"]
