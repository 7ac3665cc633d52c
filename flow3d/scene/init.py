"""Initialisation as Shape of Motion does it, from 2D tracks lifted to 3D with the depth prior.

1. lift the visible 2D track points of the training frames with the prior depth and the cameras;
2. pick the canonical frame with the most visible tracks (track entries on ignored pixels are not visible,
   so on endoscopy data this favours frames where the instruments hide little tissue);
3. cluster the tracks' motion relative to the canonical frame into K groups (k-means);
4. fit each basis per frame by weighted Procrustes (``roma.rigid_points_registration``);
5. refine bases, basis weights and canonical means on the 3D tracks for a few hundred steps;
6. fill the canonical frame's foreground with back-projected prior depth; foreground that ignored pixels
   (instruments) hide in the canonical frame comes from the other frames where it is visible, carried
   back to the canonical time by the inverse of its fitted motion;
7. in the tissue setting (below), complete what the canonical frame has no depth for -- tissue behind
   its instruments (of which some no training frame shows at all) and pixels without a valid prior (e.g.
   a stereo prior's invalid band): depth continued smoothly into the gap from the surrounding tissue
   (:func:`harmonic_fill`), colour from the frames that saw it or else continued too, never from an
   ignored pixel (:func:`_complete_unseen`); this replaces step 6's carried depth there;
8. place background Gaussians on back-projected background prior depth.

The tissue setting (endoscopy): when every valid pixel is foreground -- deforming tissue under a static
endoscope, no static background -- there are no background Gaussians, and every Gaussian moves on the
motion bases. That is the intended mode for such data, not a failure: the log says so.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import roma
import torch
from scipy import ndimage, sparse
from scipy.sparse.linalg import spsolve
from scipy.spatial import cKDTree
from torch import Tensor

from flow3d.geometry import bilinear_sample, project_points, unproject_pixels
from flow3d.log import get_logger
from flow3d.losses import se3_smoothness_loss
from flow3d.scene.gaussians import GaussianParams
from flow3d.scene.model import SceneModel
from flow3d.scene.motion import MotionBases, matrix_to_rot6d

logger = get_logger(__name__)


@dataclass
class InitConfig:
    num_fg: int = 4000
    """Foreground Gaussians: one per usable lifted track, then back-projected foreground pixels of the
    canonical frame up to this number (their motion weights blended from the nearest tracks)."""
    num_bg: int = 8000
    """Background Gaussians created from back-projected background prior depth."""
    num_motion_bases: int = 10
    """K, the number of shared SE(3) motion bases."""
    init_fit_steps: int = 300
    """Adam steps fitting bases, weights and canonical means to the lifted 3D tracks."""
    init_fit_lr: float = 1e-2
    """Learning rate of that fit."""
    init_opacity: float = 0.8
    """Initial opacity of every Gaussian."""
    max_prior_depth_quantile: float = 0.98
    """Background points beyond this quantile of prior depth (per frame) are dropped (sky, far noise)."""
    complete_unseen: bool = True
    """Tissue setting (every valid pixel foreground): seed Gaussians where no training frame shows the
    surface (always behind an instrument) or the prior is invalid, with depth and colour continued smoothly
    from the surrounding tissue (harmonic interpolation); never from ignored pixels."""
    complete_border_px: int = 2
    """Tissue pixels within this many pixels of an ignored pixel do not give the completion its border
    depth (a blurred prior smears the instrument's depth into them); their colour still does."""


def lift_tracks(seq, frame_ids: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """World points (M, T, 3), validity (M, T) and confidence (M, T) of the tracks lifted with the prior
    (:meth:`flow3d.data.VideoSequence.lift_tracks`). An entry is valid when the track is visible there,
    the prior is valid around it, and both its frame and its query frame are in ``frame_ids`` (the
    training split)."""
    pts, depth_ok = seq.lift_tracks()
    in_split = torch.zeros(seq.num_frames, dtype=torch.bool)
    in_split[frame_ids] = True
    valid = seq.tracks_visible & depth_ok & in_split[None, :] & in_split[seq.tracks_query_t][:, None]
    return pts, valid, seq.tracks_conf * valid


def mask_at_query(masks: Tensor, tracks_xy: Tensor, query_t: Tensor) -> Tensor:
    """Each track's mask value at its query pixel: masks (T, H, W), tracks_xy (M, T, 2), query_t (M,) -> (M,).

    Bilinear, as :func:`flow3d.geometry.bilinear_sample`. Every frame's mask is read at the tracks whose
    query frame it is, so memory is O(T H W + M), not one full-size mask per track (161 GB at 640x512 with
    the default track grid).
    """
    M = query_t.shape[0]
    out = torch.zeros(M, dtype=masks.dtype if masks.is_floating_point() else torch.float32, device=masks.device)
    if M == 0:
        return out
    xy_q = tracks_xy[torch.arange(M), query_t]  # (M, 2)
    for t in torch.unique(query_t).tolist():
        sel = torch.nonzero(query_t == t)[:, 0]
        out[sel] = bilinear_sample(masks[t][None, None].to(out.dtype), xy_q[sel][None])[0, :, 0]
    return out


def interpolate_missing(x: Tensor, valid: Tensor) -> Tensor:
    """Fill invalid entries of trajectories (M, T, D) by linear interpolation between the nearest valid
    frames before and after; before the first / after the last valid frame the nearest value is held.
    Rows with no valid frame are returned unchanged."""
    M, T, _ = x.shape
    ar = torch.arange(T).expand(M, T)
    prev = torch.cummax(torch.where(valid, ar, torch.full_like(ar, -1)), dim=1).values
    nxt = torch.cummin(torch.where(valid, ar, torch.full_like(ar, T)).flip(1), dim=1).values.flip(1)
    has_prev, has_next = prev >= 0, nxt < T
    lo = torch.where(has_prev, prev, nxt).clamp(0, T - 1)
    hi = torch.where(has_next, nxt, prev).clamp(0, T - 1)
    span = (hi - lo).clamp_min(1).to(x.dtype)
    w = ((ar - lo).to(x.dtype) / span).clamp(0, 1)[..., None]
    x_lo = torch.gather(x, 1, lo[..., None].expand_as(x))
    x_hi = torch.gather(x, 1, hi[..., None].expand_as(x))
    out = x_lo * (1 - w) + x_hi * w
    return torch.where(valid.any(dim=1)[:, None, None], out, x)


def kmeans(
    features: Tensor, k: int, iters: int = 30, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    """Lloyd's k-means with k-means++ seeding. features (P, F) -> labels (P,), centroids (k, F)."""
    P = features.shape[0]
    k = min(k, P)
    first = torch.randint(P, (1,), generator=generator)
    centroids = features[first]
    for _ in range(1, k):
        d2 = torch.cdist(features, centroids).min(dim=1).values ** 2
        probs = d2 / d2.sum() if d2.sum() > 0 else torch.full_like(d2, 1.0 / P)
        centroids = torch.cat([centroids, features[torch.multinomial(probs, 1, generator=generator)]])
    for _ in range(iters):
        labels = torch.cdist(features, centroids).argmin(dim=1)
        new = torch.stack([features[labels == j].mean(0) if (labels == j).any() else centroids[j] for j in range(k)])
        if torch.allclose(new, centroids):
            break
        centroids = new
    return torch.cdist(features, centroids).argmin(dim=1), centroids


def knn_scale(points: Tensor, k: int = 3, chunk: int = 4096) -> Tensor:
    """Mean distance to the k nearest other points (P,) — the initial Gaussian size."""
    out = []
    for s in range(0, points.shape[0], chunk):
        d = torch.cdist(points[s : s + chunk], points)
        d = d.topk(min(k + 1, points.shape[0]), largest=False).values[:, 1:]
        out.append(d.mean(1) if d.numel() else torch.full((d.shape[0],), 0.01))
    return torch.cat(out).clamp_min(1e-4)


def fit_bases_procrustes(
    pts: Tensor, valid: Tensor, weights: Tensor, labels: Tensor, can_t: int, k: int
) -> MotionBases:
    """Per cluster and frame, the rigid transform taking canonical points to frame-t points."""
    M, T, _ = pts.shape
    rots = torch.eye(3).expand(k, T, 3, 3).clone()
    transls = torch.zeros(k, T, 3)
    fitted = torch.zeros(k, T, dtype=torch.bool)
    for j in range(k):
        sel = labels == j
        x_can = pts[sel, can_t]
        for t in range(T):
            ok = valid[sel, t] & valid[sel, can_t]
            if ok.sum() >= 3:
                R, tr = roma.rigid_points_registration(
                    x_can[ok], pts[sel, t][ok], weights=weights[sel, t][ok].clamp_min(1e-6)
                )
                rots[j, t], transls[j, t] = R, tr
                fitted[j, t] = True
    # frames without enough points (held-out frames, occlusions): interpolate between fitted neighbours
    rot6d = interpolate_missing(matrix_to_rot6d(rots), fitted)
    transls = interpolate_missing(transls, fitted)
    return MotionBases(rot6d, transls)


def initialize_scene(seq, cfg: InitConfig, generator: torch.Generator | None = None) -> tuple[SceneModel, int]:
    """Build the initial :class:`SceneModel` from a loaded sequence; returns it and the canonical frame."""
    train_ids = seq.train_ids
    pts, valid, conf = lift_tracks(seq, train_ids)
    # Foreground tracks: the track point lies in the foreground mask of its query frame.
    fg_at_query = mask_at_query(seq.fg_masks, seq.tracks_xy, seq.tracks_query_t) > 0.5
    counts = valid[fg_at_query].sum(0)
    if counts.max() < 3:
        raise ValueError(
            f"only {int(counts.max())} foreground track points could be lifted in any training frame: "
            "check the foreground masks, the tracks and the depth prior of the sequence"
        )
    can_t = int(counts.argmax())
    keep = fg_at_query & valid[:, can_t]
    idx = torch.nonzero(keep)[:, 0]
    if len(idx) > cfg.num_fg:
        idx = idx[torch.randperm(len(idx), generator=generator)[: cfg.num_fg]]
    pts, valid, conf = pts[idx], valid[idx], conf[idx]
    filled = interpolate_missing(pts, valid)
    k = min(cfg.num_motion_bases, len(idx))
    features = (filled - filled[:, can_t : can_t + 1]).reshape(len(idx), -1)
    labels, centroids = kmeans(features, k, generator=generator)
    bases = fit_bases_procrustes(filled, valid, conf, labels, can_t, k)
    dists = torch.cdist(features, centroids)
    coef_logits = -dists / dists.mean().clamp_min(1e-8) * 4.0
    logger.info(
        "init: %d foreground tracks, canonical frame %d, K=%d bases (cluster sizes %s)",
        len(idx),
        can_t,
        k,
        torch.bincount(labels, minlength=k).tolist(),
    )

    means_can = pts[:, can_t]
    colors = _valid_colors(seq.images[can_t], seq.valid_masks[can_t], seq.tracks_xy[idx, can_t])
    N = len(idx)
    fg = GaussianParams(
        means_can,
        torch.tensor([1.0, 0, 0, 0]).expand(N, 4),
        knn_scale(means_can)[:, None].expand(N, 3),
        torch.full((N,), cfg.init_opacity),
        colors.clamp(0.01, 0.99),
        coef_logits,
    )
    _fit_motion_to_tracks(fg, bases, pts, valid, conf, cfg)
    fg = _densify_foreground(seq, can_t, fg, bases, cfg, generator)
    bg = _init_background(seq, cfg, generator)
    return SceneModel(fg, bases, bg), can_t


def _valid_colors(image: Tensor, valid: Tensor, xy: Tensor) -> Tensor:
    """Colours (P, 3) of ``image`` (H, W, 3) at ``xy`` (P, 2) OpenCV pixels, read bilinearly from its valid
    pixels only (``valid`` (H, W) bool; the weights renormalised over them): an ignored pixel's value never
    enters, not even with a tiny weight."""
    img = torch.where(valid[..., None], image, torch.zeros_like(image))
    chans = torch.cat([img, valid[..., None].to(image.dtype)], dim=-1).permute(2, 0, 1)[None]  # (1, 4, H, W)
    s = bilinear_sample(chans, xy[None])[0]  # (P, 4)
    return s[:, :3] / s[:, 3:].clamp_min(1e-6)


def _densify_foreground(
    seq, can_t: int, tracks_fg: GaussianParams, bases: MotionBases, cfg: InitConfig, generator
) -> GaussianParams:
    """Tracks are sparse (a grid of queries); fill the canonical frame's foreground up to ``num_fg``
    Gaussians with back-projected prior depth. Each new Gaussian takes the basis weights of its 3 nearest
    fitted track Gaussians (inverse-distance blend of their logits). Every Gaussian's size is its pixel
    footprint at its depth: half the spacing between samples.

    Foreground hidden in the canonical frame behind ignored pixels (an instrument) is filled from the other
    training frames where it is visible (:func:`_hidden_foreground`), at the same density."""
    depth, dvalid = seq.prior_depth()[can_t], seq.prior_valid[can_t]
    m = dvalid & (seq.fg_masks[can_t] > 0.5) & seq.valid_masks[can_t]
    n_tracks = tracks_fg.num_gaussians
    n_new = max(0, cfg.num_fg - n_tracks)
    ij = torch.nonzero(m)
    if n_new == 0 or len(ij) == 0:
        return tracks_fg
    n_hidden_px = int((~seq.valid_masks[can_t]).sum())
    rate = min(1.0, n_new / float(len(ij) + n_hidden_px))  # samples per pixel, visible and hidden alike
    ij = ij[torch.randperm(len(ij), generator=generator)[: max(1, round(rate * len(ij)))]]
    xy = ij.flip(-1).to(depth.dtype)
    z = depth[ij[:, 0], ij[:, 1]]
    new_means = unproject_pixels(xy, z, seq.Ks[can_t], torch.linalg.inv(seq.w2cs[can_t]))
    fx = seq.Ks[can_t, 0, 0]
    with torch.no_grad():
        t_means = tracks_fg.get_means()
        new_logits = _blend_logits(new_means, t_means, tracks_fg.params["motion_coefs"])
        rgb = seq.images[can_t][ij[:, 0], ij[:, 1]]
        spacing_px = (m.sum() / (len(ij) + n_tracks)).sqrt()
        hid = _hidden_foreground(seq, can_t, tracks_fg, bases, rate, generator)
        if cfg.complete_unseen and _tissue_setting(seq):
            # the hidden tissue's colour comes from the frames that saw it; its depth, for all of it, from
            # the canonical frame's surrounding surface (the carried points' depth holds their frame's
            # prior and the fitted motion's error: 18-28% too near on the tissue scene)
            comp = _complete_unseen(seq, can_t, tracks_fg, hid[4], hid[5], rate, cfg.complete_border_px, generator)
        else:
            comp = hid[:4]
        new_means, new_logits, rgb, z = (torch.cat([a, b]) for a, b in zip((new_means, new_logits, rgb, z), comp))
        new_size = z * spacing_px / fx * 0.5
        # the track Gaussians get the footprint size too (their depth is their camera z at can_t)
        t_z = (t_means @ seq.w2cs[can_t, :3, :3].T + seq.w2cs[can_t, :3, 3])[:, 2].clamp_min(1e-3)
        t_size = t_z * spacing_px / fx * 0.5
        N = n_tracks + new_means.shape[0]
        return GaussianParams(
            torch.cat([t_means, new_means]),
            torch.tensor([1.0, 0, 0, 0]).expand(N, 4),
            torch.cat([t_size, new_size]).clamp_min(1e-4)[:, None].expand(N, 3),
            torch.full((N,), cfg.init_opacity),
            torch.cat([tracks_fg.get_colors(), rgb.clamp(0.01, 0.99)]),
            torch.cat([tracks_fg.params["motion_coefs"], new_logits]),
        )


def _blend_logits(points: Tensor, track_points: Tensor, track_logits: Tensor, k: int = 3) -> Tensor:
    """Motion-coefficient logits (P, K) of ``points`` (P, 3): inverse-distance blend of those of their ``k``
    nearest ``track_points`` (N, 3) (scipy's cKDTree: no P x N distance matrix)."""
    k = min(k, track_points.shape[0])
    d, nn_idx = cKDTree(track_points.double().numpy()).query(points.double().numpy(), k=k)
    d = torch.from_numpy(d).to(points.dtype).reshape(points.shape[0], k)
    nn_idx = torch.from_numpy(nn_idx).long().reshape(points.shape[0], k)
    w = 1.0 / d.clamp_min(1e-6)
    w = w / w.sum(-1, keepdim=True)
    return (track_logits[nn_idx] * w[..., None]).sum(1)


def _hidden_foreground(
    seq, can_t: int, tracks_fg: GaussianParams, bases: MotionBases, rate: float, generator
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Canonical Gaussians for foreground that ignored pixels hide in the canonical frame ``can_t``.

    The other training frames are visited from the nearest in time. In each, every valid foreground pixel
    with a valid prior is lifted with the prior; it takes the blended motion of its nearest track Gaussians
    at that frame's time (:func:`_blend_logits`), and that motion is inverted to carry it back to the
    canonical time. The ignored canonical pixels it lands on that no earlier frame reached are claimed, one
    point each, and a ``rate`` fraction of those points becomes Gaussians: the hidden foreground is sampled
    at the density of the rest. Returns canonical means (P, 3), logits (P, K), colours (P, 3) and
    canonical-camera depths (P,), and, per canonical pixel, the depth (H, W) (0 = not reached) and colour
    (H, W, 3) of the point that claimed it.
    """
    H, W = seq.valid_masks.shape[1:]
    hidden = ~seq.valid_masks[can_t]  # (H, W)
    claimed = torch.zeros(H, W, dtype=torch.bool)
    claimed_z = torch.zeros(H * W, dtype=seq.images.dtype)
    claimed_rgb = torch.zeros(H * W, 3, dtype=seq.images.dtype)
    depth, coefs = seq.prior_depth(), tracks_fg.get_coefs()
    out: list[list[Tensor]] = [[], [], [], []]
    for t in sorted((t for t in seq.train_ids.tolist() if t != can_t), key=lambda t: (abs(t - can_t), t)):
        if bool((claimed | ~hidden).all()):
            break
        cand = torch.nonzero(seq.valid_masks[t] & seq.prior_valid[t] & (seq.fg_masks[t] > 0.5))  # (P, 2) (y, x)
        X_t = unproject_pixels(
            cand.flip(-1).to(depth.dtype), depth[t][cand[:, 0], cand[:, 1]], seq.Ks[t], torch.linalg.inv(seq.w2cs[t])
        )  # (P, 3) world points at time t
        R, tr = bases.compute_transforms(torch.tensor([t]), coefs)  # (N, 1, 3, 3), (N, 1, 3)
        tracks_t = (R[:, 0] @ tracks_fg.get_means()[..., None])[..., 0] + tr[:, 0]
        logits = _blend_logits(X_t, tracks_t, tracks_fg.params["motion_coefs"])
        R_p, tr_p = bases.compute_transforms(torch.tensor([t]), torch.softmax(logits, dim=-1))
        X_can = (R_p[:, 0].transpose(-1, -2) @ (X_t - tr_p[:, 0])[..., None])[..., 0]  # the motion, inverted
        xy, z = project_points(X_can, seq.Ks[can_t], seq.w2cs[can_t])
        px = xy.round().long()
        inside = (px[:, 0] >= 0) & (px[:, 0] < W) & (px[:, 1] >= 0) & (px[:, 1] < H) & (z > 0)
        flat = px[:, 1].clamp(0, H - 1) * W + px[:, 0].clamp(0, W - 1)
        new = torch.nonzero(inside & (hidden & ~claimed).reshape(-1)[flat])[:, 0]
        if len(new) == 0:
            continue
        pix, first = _first_per_value(flat[new])  # one point per newly reached pixel
        claimed.view(-1)[pix] = True
        claimed_z[pix] = z[new[first]].to(claimed_z.dtype)
        claimed_rgb[pix] = seq.images[t][cand[new[first], 0], cand[new[first], 1]]
        sel = new[first][torch.rand(len(first), generator=generator) < rate]
        for lst, val in zip(out, (X_can[sel], logits[sel], seq.images[t][cand[sel, 0], cand[sel, 1]], z[sel])):
            lst.append(val)
    maps = (claimed_z.reshape(H, W), claimed_rgb.reshape(H, W, 3))
    if not out[0]:
        K = tracks_fg.params["motion_coefs"].shape[1]
        return (torch.zeros(0, 3), torch.zeros(0, K), torch.zeros(0, 3), torch.zeros(0)) + maps
    res = tuple(torch.cat(v) for v in out)
    logger.info(
        "init: %d foreground Gaussians for what ignored pixels hide in canonical frame %d, from other "
        "frames (%d of its %d ignored pixels reached)",
        res[0].shape[0],
        can_t,
        int(claimed.sum()),
        int(hidden.sum()),
    )
    return res + maps


def _tissue_setting(seq) -> bool:
    """Every valid pixel of the training frames is foreground (deforming tissue, no static background)."""
    return bool(((seq.fg_masks[seq.train_ids] > 0.5) | ~seq.valid_masks[seq.train_ids]).all())


def harmonic_fill(values: Tensor, known: Tensor, fill: Tensor) -> Tensor:
    """Continue ``values`` (H, W, C) from the ``known`` pixels (H, W) bool into the ``fill`` pixels (H, W)
    bool smoothly: the discrete harmonic interpolant (4-neighbour Laplacian zero on every fill pixel,
    Dirichlet on known neighbours, no flux through pixels that are neither), solved with
    ``scipy.sparse.linalg.spsolve``. Planes are reproduced exactly in a gap that known pixels enclose. Only known pixels' values are read; fill
    pixels of a region that touches no known pixel are NaN. Returns a float64 (H, W, C) copy."""
    H, W, C = values.shape
    known_np, fill_np = known.numpy().astype(bool), (fill & ~known).numpy().astype(bool)
    out = np.where(known_np[..., None], values.double().numpy(), 0.0)
    labels, n = ndimage.label(fill_np)
    if n == 0:
        return torch.from_numpy(out)
    touching = np.unique(labels[ndimage.binary_dilation(known_np) & fill_np])
    solvable = fill_np & np.isin(labels, touching[touching > 0])
    out[fill_np & ~solvable] = np.nan
    ys, xs = np.nonzero(solvable)
    idx = -np.ones((H, W), dtype=np.int64)
    idx[ys, xs] = np.arange(len(ys))
    rows, cols, vals = [], [], []
    diag = np.zeros(len(ys))
    rhs = np.zeros((len(ys), C))
    for dy, dx in ((0, 1), (0, -1), (1, 0), (-1, 0)):
        ny, nx = ys + dy, xs + dx
        inside = (ny >= 0) & (ny < H) & (nx >= 0) & (nx < W)
        nyc, nxc = ny.clip(0, H - 1), nx.clip(0, W - 1)
        is_known = inside & known_np[nyc, nxc]
        is_fill = inside & solvable[nyc, nxc]
        diag += is_known | is_fill
        rhs[is_known] += out[nyc[is_known], nxc[is_known]]
        r = np.nonzero(is_fill)[0]
        rows.append(r)
        cols.append(idx[nyc[r], nxc[r]])
        vals.append(-np.ones(len(r)))
    A = sparse.csr_matrix(
        (
            np.concatenate([diag, *vals]),
            (np.concatenate([np.arange(len(ys)), *rows]), np.concatenate([np.arange(len(ys)), *cols])),
        ),
        shape=(len(ys), len(ys)),
    )
    sol = spsolve(A.tocsc(), rhs)
    out[ys, xs] = sol.reshape(len(ys), C)
    return torch.from_numpy(out)


def _complete_unseen(
    seq,
    can_t: int,
    tracks_fg: GaussianParams,
    claimed_z: Tensor,
    claimed_rgb: Tensor,
    rate: float,
    border_px: int,
    generator,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Canonical Gaussians where the canonical frame has no depth of its own: its ignored pixels -- those
    that :func:`_hidden_foreground` reached from other frames (``claimed_z`` > 0) and those it did not (an
    instrument covered that tissue in every training frame) -- and valid pixels without a valid prior.
    Their depth is :func:`harmonic_fill` ed
    from the canonical frame's own prior depth on valid pixels (not within ``border_px`` of an ignored pixel),
    their colour from its image on valid pixels and from the reached hidden pixels' ``claimed_rgb``. An ignored pixel's image or prior value is never read. A ``rate``
    fraction of the gap's pixels becomes Gaussians (the density of the rest), with the blended motion of
    their nearest track Gaussians. Returns means (P, 3), logits (P, K), colours (P, 3), depths (P,)."""
    K = tracks_fg.params["motion_coefs"].shape[1]
    empty = (torch.zeros(0, 3), torch.zeros(0, K), torch.zeros(0, 3), torch.zeros(0))
    valid = seq.valid_masks[can_t].bool()
    dvalid = seq.prior_valid[can_t].bool() & valid
    reached = (claimed_z > 0) & ~valid
    gap_depth = ~dvalid  # no depth of the canonical frame's own
    if not bool(gap_depth.any()):
        return empty
    near_ignored = torch.zeros_like(valid)
    if border_px > 0 and not bool(valid.all()):
        k = np.ones((2 * border_px + 1, 2 * border_px + 1), np.uint8)
        near_ignored = torch.from_numpy(cv2.dilate((~valid).numpy().astype(np.uint8), k) > 0) & valid
    prior_depth = seq.prior_depth()[can_t]
    depth_known = dvalid & ~near_ignored
    # depth only from the canonical frame's own prior (the points carried from other frames carry their
    # frames' prior scale and the fitted motion's error); the fill spans all it does not know
    z = harmonic_fill(
        torch.where(depth_known, prior_depth, torch.zeros_like(prior_depth))[..., None], depth_known, ~depth_known
    )[..., 0]
    rgb_map = torch.where(
        valid[..., None], seq.images[can_t], torch.where(reached[..., None], claimed_rgb, torch.zeros_like(claimed_rgb))
    )
    rgb_known = valid | reached
    rgb = harmonic_fill(rgb_map, rgb_known, ~rgb_known)
    ok = gap_depth & torch.isfinite(z) & (z > 0) & torch.isfinite(rgb).all(-1)
    ij = torch.nonzero(ok)
    n_unseen = int((gap_depth & ~valid & ~reached).sum())
    if len(ij) == 0:
        logger.warning(
            "init: %d canonical pixels have no surface point and no tissue around them to complete from",
            int(gap_depth.sum()),
        )
        return empty
    ij = ij[torch.rand(len(ij), generator=generator) < rate]
    zz = z[ij[:, 0], ij[:, 1]].to(seq.images.dtype)
    means = unproject_pixels(ij.flip(-1).to(zz.dtype), zz, seq.Ks[can_t], torch.linalg.inv(seq.w2cs[can_t]))
    logits = (
        _blend_logits(means, tracks_fg.get_means(), tracks_fg.params["motion_coefs"]) if len(ij) else torch.zeros(0, K)
    )
    cols = rgb[ij[:, 0], ij[:, 1]].to(seq.images.dtype)
    logger.info(
        "init: completed %d canonical pixels without depth (%d behind instruments in every training frame, "
        "%d hidden here but seen elsewhere: their colour from there, %d without a valid prior) from the "
        "surrounding tissue: %d Gaussians",
        int(ok.sum()),
        n_unseen,
        int(reached.sum()),
        int((gap_depth & valid).sum()),
        len(ij),
    )
    return means, logits, cols, zz


def _first_per_value(values: Tensor) -> tuple[Tensor, Tensor]:
    """Distinct values (U,) of a 1-D long tensor and the index of the first occurrence of each (U,)."""
    uniq, inv = torch.unique(values, return_inverse=True)
    first = torch.full((len(uniq),), len(values), dtype=torch.long)
    first = first.scatter_reduce(0, inv, torch.arange(len(values)), reduce="amin")
    return uniq, first


def _fit_motion_to_tracks(
    fg: GaussianParams, bases: MotionBases, pts: Tensor, valid: Tensor, conf: Tensor, cfg: InitConfig
) -> None:
    """Refine bases, weights and canonical means so the blended motion follows the lifted tracks."""
    if cfg.init_fit_steps <= 0:
        return
    params = [bases.params["rots"], bases.params["transls"], fg.params["motion_coefs"], fg.params["means"]]
    opt = torch.optim.Adam(params, lr=cfg.init_fit_lr)
    T = bases.num_frames
    ts = torch.arange(T)
    w = conf * valid
    scale = (pts[valid] - pts[valid].mean(0)).norm(dim=-1).median().clamp_min(1e-6)
    for step in range(cfg.init_fit_steps):
        R, t = bases.compute_transforms(ts, fg.get_coefs())
        pred = torch.einsum("ntij,nj->nti", R, fg.get_means()) + t  # (N, T, 3)
        err = (pred - pts).norm(dim=-1) / scale
        loss = (err * w).sum() / w.sum().clamp_min(1e-8)
        if T >= 3:
            loss = loss + 0.1 * se3_smoothness_loss(bases.params["rots"], bases.params["transls"] / scale)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    logger.info("init: motion fit to 3D tracks, final relative error %.4f", float(loss.detach()))


def _init_background(seq, cfg: InitConfig, generator: torch.Generator | None) -> GaussianParams | None:
    if bool(((seq.fg_masks[seq.train_ids] > 0.5) | ~seq.valid_masks[seq.train_ids]).all()):
        logger.info(
            "init: every valid pixel is foreground (e.g. deforming tissue under a static endoscope): "
            "no background Gaussians; every Gaussian moves on the motion bases"
        )
        return None
    if cfg.num_bg <= 0:
        return None
    depth, dvalid = seq.prior_depth(), seq.prior_valid
    bg_mask = dvalid & (seq.fg_masks < 0.5) & seq.valid_masks
    T, H, W = depth.shape
    frames = seq.train_ids
    per_frame = max(1, cfg.num_bg // len(frames))
    c2ws = torch.linalg.inv(seq.w2cs)
    pts_all, rgb_all = [], []
    for t in frames.tolist():
        m = bg_mask[t]
        if m.any():
            far = torch.quantile(depth[t][m], cfg.max_prior_depth_quantile)
            m = m & (depth[t] <= far)
        ij = torch.nonzero(m)
        if len(ij) == 0:
            continue
        ij = ij[torch.randperm(len(ij), generator=generator)[:per_frame]]
        xy = ij.flip(-1).float()
        z = depth[t][ij[:, 0], ij[:, 1]]
        pts_all.append(unproject_pixels(xy, z, seq.Ks[t], c2ws[t]))
        rgb_all.append(seq.images[t][ij[:, 0], ij[:, 1]])
    if not pts_all:
        logger.warning("init: no background pixels with a valid prior depth; the scene has no background Gaussians")
        return None
    pts, rgb = torch.cat(pts_all), torch.cat(rgb_all)
    # samples of overlapping frames interleave: size each by its neighbours, not by its frame's spacing
    size = 0.5 * knn_scale(pts)
    N = pts.shape[0]
    logger.info("init: %d background Gaussians from %d frames", N, len(frames))
    return GaussianParams(
        pts,
        torch.tensor([1.0, 0, 0, 0]).expand(N, 4),
        size[:, None].expand(N, 3).clamp_min(1e-4),
        torch.full((N,), cfg.init_opacity),
        rgb.clamp(0.01, 0.99),
    )
