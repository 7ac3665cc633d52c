"""The tissue scene of ``data:synthetic --data.scene tissue``: a static endoscope over deforming tissue.

Geometry, in the camera frame (OpenCV axes, scene units; one static, non-identity ``c2w`` puts it in the
world). The tissue is a surface parameterised by *material coordinates* m: the pixel (x, y) where the
material point is seen at rest. At time s = t / (T - 1) it is seen at pixel ``p(m, s) = m + L(m, s)``
with z-depth ``z(m, s)``, so its camera-frame point is ``X(m, s) = z(m, s) K^-1 [p(m, s), 1]``:

* rest depth ``z0(m) = D (1 + tilt + gentle bumps)`` with D = 1 scene unit;
* two grab points with Gaussian footprints ``G_k(m)`` (widths relative to the image width) pull the
  tissue towards the camera and sideways: ``z = z0 (1 - pull A_1(s) G_1 - 0.45 pull A_2(s) G_2)`` and
  ``L = A_1 G_1 v_1 + A_2 G_2 v_2 + b(s) (m - centre)``. The main pull ``A_1 = sin^2(pi s)`` is pulled
  and released once (peak relative depth change ``tissue_pull``); the second, ``A_2 = sin^2(2 pi s)``,
  pulses twice and is zero when the main one peaks; ``b(s)`` is a 1% radial "breathing".

Rendering inverts p per pixel (Newton's method on ``m + L(m, s) = q`` with L's analytic Jacobian, which
stays below 0.5: p is a small smooth displacement and one-to-one), so the tissue point behind every
pixel, its depth, flow and tracks are exact. Shading is Blinn-Phong from a point light beside the lens, as in endoscopy: diffuse plus specular
highlights that slide over the tissue as it deforms. Instruments are 0-2 rounded shafts (capsules),
ray-cast analytically in front of the tissue, whose tips sweep over it.

Ground truth in the :class:`~flow3d.data.sequence.VideoSequence`:

* ``gt_depth``: the TISSUE's depth at every pixel, also under the instruments;
* ``gt_hidden_images``: the tissue's colour at every pixel as if there were no instruments (the truth
  under them), ``gt_never_seen``: pixels whose tissue no training frame sees (:func:`never_seen`);
* ``gt_tracks_3d``: tissue points from a grid of tissue pixels in each query frame; a track is visible
  where it is inside the image and no instrument is in front of it;
* ``gt_surface_points`` / ``gt_surface_uv``: the tissue's material grid, so ``seq.gt_flow(i, j)`` is the
  tissue's flow between any two frames;
* ``gt_prior_affine``: the prior is the drifting disparity of what the camera sees, instruments included
  (:func:`flow3d.data.prior_drift.drifting_prior`), so ``prior = a_t / gt_depth + b_t`` (before blur and
  noise) holds on tissue pixels;
* ``fg_masks`` = 1 on tissue (all of it deforms: no static background), 0 on instruments;
  ``valid_masks`` = not an instrument (the pixels to ignore are ``valid_masks == False``);
* ``gt_points`` / ``gt_object_ids`` / ``gt_object_poses``: None (there are no rigid objects).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np
import torch

from flow3d.data.normalize import apply_scene_norm, compute_scene_norm
from flow3d.data.prior_drift import drifting_prior
from flow3d.data.sequence import VideoSequence
from flow3d.data.split import split_frames
from flow3d.log import get_logger

logger = get_logger(__name__)

_DEPTH = 1.0  # distance D of the tissue, scene units
_LIGHT = np.array([0.06, -0.05, 0.0])  # point light beside the lens, camera frame
_INVERT_ITERS = 20
_INVERT_TOL_PX = 1e-6


@dataclass
class TissueScene:
    """Parameters of one tissue scene (all lengths in pixels of the rendered image unless said)."""

    W: int
    H: int
    T: int
    K: np.ndarray  # (3, 3) OpenCV pixel-centre convention
    c2w: np.ndarray  # (4, 4) the static camera
    bumps: np.ndarray  # (4, 4): amplitude (fraction of D), frequency x, y (cycles per image width), phase
    grabs: list  # per grab: (centre (2,) px, sigma px, depth amplitude, lateral v (2,) px)
    tex_low: np.ndarray  # (6, 3): frequency x, y (cycles per width), phase
    tex_fine: np.ndarray  # (6, 3)
    vessels: np.ndarray  # (3, 6): g (2,), phase, h (2,), phase
    instruments: list  # per instrument: (tip at s=0 (2,), tip at s=1 (2,), tip depth, shaft direction (3,), radius)


def build_tissue_scene(cfg, rng: np.random.Generator) -> TissueScene:
    """Draw the scene's parameters from ``rng`` (deterministic from the seed)."""
    T, W, H = cfg.num_frames, cfg.width, cfg.height
    if T < 2 or W < 8 or H < 8:
        raise ValueError(f"need num_frames >= 2 and an image of at least 8x8, got T={T}, {W}x{H}")
    if not 0 <= cfg.num_instruments <= 2:
        raise ValueError(f"num_instruments must be in 0..2, got {cfg.num_instruments}")
    if not 0.0 <= cfg.tissue_pull < 0.5:
        raise ValueError(f"tissue_pull must be in [0, 0.5), got {cfg.tissue_pull}")
    f = (W / 2.0) / math.tan(math.radians(cfg.fov_deg) / 2.0)
    K = np.array([[f, 0.0, (W - 1) / 2.0], [0.0, f, (H - 1) / 2.0], [0.0, 0.0, 1.0]])
    c2w = np.eye(4)
    c2w[:3, :3] = cv2.Rodrigues(0.2 * np.array([1.0, 0.4, 0.1]) / np.linalg.norm([1.0, 0.4, 0.1]))[0]
    c2w[:3, 3] = [0.1, -0.2, 0.3]
    bumps = np.stack([rng.uniform(0.008, 0.014, 4), *rng.uniform(-3.0, 3.0, (2, 4)), rng.uniform(0, 2 * np.pi, 4)], -1)
    grabs = []
    for k, (sigma, lateral) in enumerate(((0.20, 0.07), (0.15, 0.05))):
        cx = rng.uniform(0.35, 0.65) if k == 0 else rng.choice([0.2, 0.8])
        cy = rng.uniform(0.35, 0.65)
        ang = rng.uniform(0, 2 * np.pi)
        grabs.append(
            (
                np.array([cx * W, cy * H]),
                sigma * W,
                (1.0 if k == 0 else 0.45) * cfg.tissue_pull,
                lateral * W * np.array([math.cos(ang), math.sin(ang)]),
            )
        )

    def waves(n, lo, hi):
        r = rng.uniform(lo, hi, n)
        a = rng.uniform(0, 2 * np.pi, n)
        return np.stack([r * np.cos(a), r * np.sin(a), rng.uniform(0, 2 * np.pi, n)], -1)

    tex_low, tex_fine = waves(6, 2.0, 6.0), waves(6, 6.0, 14.0)
    vessels = np.concatenate([waves(3, 2.5, 4.5), waves(3, 1.0, 2.0)], -1)
    instruments = []
    paths = [
        ((0.22, 0.65), (0.55, 0.45), 0.50, (-0.85, 0.35, -0.25)),
        ((0.82, 0.25), (0.62, 0.50), 0.55, (0.80, -0.45, -0.25)),
    ]
    for a, b, z, d in paths[: cfg.num_instruments]:
        j = rng.uniform(-0.04, 0.04, 4)
        d = np.asarray(d) / np.linalg.norm(d)
        instruments.append(
            (
                np.array([a[0] + j[0], a[1] + j[1]]) * [W, H],
                np.array([b[0] + j[2], b[1] + j[3]]) * [W, H],
                z * _DEPTH,
                d,
                0.035 * _DEPTH,
            )
        )
    return TissueScene(W, H, T, K, c2w, bumps, grabs, tex_low, tex_fine, vessels, instruments)


# ------------------------------------------------------------------------------------------------
# The deforming surface: m (..., 2) material coordinates in pixels, s in [0, 1]
# ------------------------------------------------------------------------------------------------
def _envelopes(s: float) -> tuple[float, float, float]:
    """Main pull, second pull, radial breathing at time s."""
    return math.sin(math.pi * s) ** 2, math.sin(2 * math.pi * s) ** 2, 0.01 * math.sin(2 * math.pi * s)


def _gauss(sc: TissueScene, m: np.ndarray) -> list[np.ndarray]:
    """Footprints G_k(m) (...,) of the grab points."""
    x, y = m[..., 0], m[..., 1]
    return [np.exp(-((x - c[0]) ** 2 + (y - c[1]) ** 2) / (2 * sig * sig)) for c, sig, _, _ in sc.grabs]


def lateral(sc: TissueScene, m: np.ndarray, s: float) -> np.ndarray:
    """L(m, s) (..., 2) pixels: where material point m is seen is m + L."""
    env = _envelopes(s)
    out = env[2] * (m - np.array([(sc.W - 1) / 2.0, (sc.H - 1) / 2.0]))
    for (_, _, _, v), g, a in zip(sc.grabs, _gauss(sc, m), env[:2]):
        out = out + (a * g)[..., None] * v
    return out


def depth(sc: TissueScene, m: np.ndarray, s: float) -> np.ndarray:
    """z(m, s) (...,): z-depth of material point m at time s, scene units."""
    u = m / sc.W
    z0 = 1.0 + 0.10 * (u[..., 0] - 0.5) + 0.06 * (u[..., 1] - 0.5 * sc.H / sc.W)
    for amp, fx, fy, ph in sc.bumps:
        z0 = z0 + amp * np.sin(2 * np.pi * (fx * u[..., 0] + fy * u[..., 1]) + ph)
    pull = 1.0
    for (_, _, a_k, _), g, a in zip(sc.grabs, _gauss(sc, m), _envelopes(s)[:2]):
        pull = pull - a_k * a * g
    return _DEPTH * z0 * pull


def position(sc: TissueScene, m: np.ndarray, s: float) -> np.ndarray:
    """X(m, s) (..., 3): camera-frame point of material point m at time s."""
    p = m + lateral(sc, m, s)
    ray = np.concatenate([p, np.ones_like(p[..., :1])], -1) @ np.linalg.inv(sc.K).T  # z = 1
    return ray * depth(sc, m, s)[..., None]


def _lateral_jacobian(sc: TissueScene, m: np.ndarray, s: float) -> np.ndarray:
    """dL/dm (..., 2, 2) of :func:`lateral`, analytic: ``sum_k A_k v_k grad(G_k)^T + b I``."""
    env = _envelopes(s)
    J = np.broadcast_to(env[2] * np.eye(2), m.shape[:-1] + (2, 2)).copy()
    for (c, sig, _, v), g, a in zip(sc.grabs, _gauss(sc, m), env[:2]):
        grad = -(a * g)[..., None] * (m - c) / (sig * sig)  # (..., 2)
        J += v[:, None] * grad[..., None, :]
    return J


def invert(sc: TissueScene, q: np.ndarray, s: float) -> np.ndarray:
    """Material coordinates m (..., 2) of the tissue seen at pixels q (..., 2): solves m + L(m, s) = q by
    Newton's method from m = q (the map is a small smooth displacement: its Jacobian I + dL/dm stays
    close to I); raises if the residual is not below 1e-6 px."""
    m = q.copy()
    for _ in range(_INVERT_ITERS):
        F = m + lateral(sc, m, s) - q
        if not q.size or np.abs(F).max() < 1e-9:
            break
        J = np.eye(2) + _lateral_jacobian(sc, m, s)  # (..., 2, 2); solve J dm = F in closed form
        a, b, c, d = J[..., 0, 0], J[..., 0, 1], J[..., 1, 0], J[..., 1, 1]
        det = a * d - b * c
        m = m - np.stack([d * F[..., 0] - b * F[..., 1], a * F[..., 1] - c * F[..., 0]], -1) / det[..., None]
    res = np.abs(m + lateral(sc, m, s) - q).max() if q.size else 0.0
    if res > _INVERT_TOL_PX:
        raise RuntimeError(
            f"tissue scene: inverting the deformation did not converge (residual {res:.3g} px); lower tissue_pull"
        )
    return m


def invert_shifted(sc: TissueScene, q: np.ndarray, s: float, baseline: float) -> np.ndarray:
    """Material coordinates m (..., 2) of the tissue seen at pixels q (..., 2) of a camera shifted by
    ``baseline`` along the camera's x axis (the right view of a rectified stereo pair, same K): solves
    ``m + L(m, s) - (f_x baseline / z(m, s), 0) = q`` by Newton's method (the disparity's gradient by
    central differences). ``baseline`` 0 is :func:`invert`."""
    if baseline == 0.0:
        return invert(sc, q, s)
    fb, h = sc.K[0, 0] * baseline, 0.25
    ex, ey = np.array([h, 0.0]), np.array([0.0, h])

    def residual(m):
        p = m + lateral(sc, m, s)
        p[..., 0] -= fb / depth(sc, m, s)
        return p - q

    m = q.copy()
    m[..., 0] += fb / _DEPTH
    for _ in range(_INVERT_ITERS):
        F = residual(m)
        if not q.size or np.abs(F).max() < 1e-9:
            break
        J = np.eye(2) + _lateral_jacobian(sc, m, s)
        for col, e in ((0, ex), (1, ey)):
            J[..., 0, col] += fb * (1.0 / depth(sc, m - e, s) - 1.0 / depth(sc, m + e, s)) / (2 * h)
        a, b, c, d = J[..., 0, 0], J[..., 0, 1], J[..., 1, 0], J[..., 1, 1]
        det = a * d - b * c
        m = m - np.stack([d * F[..., 0] - b * F[..., 1], a * F[..., 1] - c * F[..., 0]], -1) / det[..., None]
    res = np.abs(residual(m)).max() if q.size else 0.0
    if res > _INVERT_TOL_PX:
        raise RuntimeError(
            f"tissue scene: inverting the deformation for the right view did not converge (residual {res:.3g} px)"
        )
    return m


def _normals(sc: TissueScene, m: np.ndarray, s: float, h: float = 0.25) -> np.ndarray:
    """Unit surface normals (..., 3) facing the camera, from central differences of X in m."""
    ex, ey = np.array([h, 0.0]), np.array([0.0, h])
    dx = position(sc, m + ex, s) - position(sc, m - ex, s)
    dy = position(sc, m + ey, s) - position(sc, m - ey, s)
    n = -np.cross(dx, dy)
    n = n / np.linalg.norm(n, axis=-1, keepdims=True)
    flip = (n * -position(sc, m, s)).sum(-1, keepdims=True) < 0
    return np.where(flip, -n, n)


def albedo(sc: TissueScene, m: np.ndarray) -> np.ndarray:
    """Tissue colour (..., 3) in [0, 1] at material coordinates m: mottled pink with dark vessels."""
    u = m / sc.W

    def wave(p):
        return np.sin(2 * np.pi * (p[0] * u[..., 0] + p[1] * u[..., 1]) + p[2])

    low = np.mean([wave(p) for p in sc.tex_low], 0)
    fine = np.mean([wave(p) for p in sc.tex_fine], 0)
    col = np.array([0.80, 0.42, 0.40]) * (0.85 + 0.25 * low)[..., None] * (1.0 + 0.25 * fine)[..., None]
    vessel = np.zeros(u.shape[:-1])
    for g0, g1, ph, h0, h1, ph2 in sc.vessels:
        w = np.sin(
            2 * np.pi * (g0 * u[..., 0] + g1 * u[..., 1])
            + ph
            + 0.8 * np.sin(2 * np.pi * (h0 * u[..., 0] + h1 * u[..., 1]) + ph2)
        )
        vessel = np.maximum(vessel, np.exp(-(w * w) / 0.06))
    v = 0.6 * vessel[..., None]
    return np.clip((1 - v) * col + v * np.array([0.42, 0.08, 0.12]), 0.0, 1.0)


def blinn_phong(
    base: np.ndarray, X: np.ndarray, n: np.ndarray, ks: float, shininess: float, origin: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Colour (..., 3) and specular term (...,) of camera-frame points X with normals n under the light
    beside the lens: ``base (0.4 + 0.6 max(n.l, 0)) + ks max(n.h, 0)^shininess`` (white highlights),
    seen from the camera centre ``origin`` (default the left camera's, 0)."""
    l_dir = _LIGHT - X
    l_dir = l_dir / np.linalg.norm(l_dir, axis=-1, keepdims=True)
    v_dir = -X if origin is None else origin - X
    v_dir = v_dir / np.linalg.norm(v_dir, axis=-1, keepdims=True)
    h = l_dir + v_dir
    h = h / np.linalg.norm(h, axis=-1, keepdims=True)
    diffuse = np.clip((n * l_dir).sum(-1), 0.0, None)
    spec = ks * np.clip((n * h).sum(-1), 0.0, None) ** shininess
    return base * (0.4 + 0.6 * diffuse)[..., None] + spec[..., None], spec


# ------------------------------------------------------------------------------------------------
# Instruments: capsules in the camera frame
# ------------------------------------------------------------------------------------------------
def _instrument_segment(inst, sc: TissueScene, s: float) -> tuple[np.ndarray, np.ndarray]:
    """End points (3,) of instrument ``inst``'s axis at time s: the tip, and a point 1.2 units back
    along the shaft (far outside the view)."""
    tip0, tip1, z, d, _ = inst
    w = s * s * (3 - 2 * s)  # smoothstep sweep
    tip_px = (1 - w) * tip0 + w * tip1
    tip = z * np.linalg.inv(sc.K) @ np.array([tip_px[0], tip_px[1], 1.0])
    return tip, tip + 1.2 * d


def _capsule_hit(a: np.ndarray, b: np.ndarray, r: float, rd: np.ndarray) -> np.ndarray:
    """Distance (P,) along unit rays ``rd`` (P, 3) from the origin to the capsule of radius r around the
    segment a-b (inf where missed): cylinder body, then the spherical cap at the nearer end."""
    ba, oa = b - a, -a
    baba, baoa, oaoa = ba @ ba, ba @ oa, oa @ oa
    bard, rdoa = rd @ ba, rd @ oa
    qa = baba - bard * bard
    qb = baba * rdoa - baoa * bard
    qc = baba * oaoa - baoa * baoa - r * r * baba
    disc = qb * qb - qa * qc
    with np.errstate(invalid="ignore", divide="ignore"):
        t = (-qb - np.sqrt(np.maximum(disc, 0.0))) / qa
    y = baoa + t * bard
    body = (disc >= 0) & (y > 0) & (y < baba) & (t > 0)
    oc = np.where((y <= 0)[:, None], oa[None], -b[None])  # (P, 3) origin relative to the nearer cap centre
    cb = (rd * oc).sum(-1)
    cc = (oc * oc).sum(-1) - r * r
    hc = cb * cb - cc
    tc = -cb - np.sqrt(np.maximum(hc, 0.0))
    cap = (disc >= 0) & ~body & (hc > 0) & (tc > 0)
    return np.where(body, t, np.where(cap, tc, np.inf))


def instruments_depth(
    sc: TissueScene, xy: np.ndarray, s: float, origin: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """z-depth (P,) of the nearest instrument through pixels xy (P, 2) (inf where none), its camera-frame
    point (P, 3), and the instrument index (P,) (-1 where none). ``origin`` (3,): the centre of the
    camera (same orientation and K) in the left camera's frame, default 0; the returned points are in
    the left camera's frame either way."""
    o = np.zeros(3) if origin is None else np.asarray(origin, dtype=np.float64)
    ray = np.concatenate([xy, np.ones_like(xy[:, :1])], -1) @ np.linalg.inv(sc.K).T  # z = 1
    rd = ray / np.linalg.norm(ray, axis=-1, keepdims=True)
    best = np.full(xy.shape[0], np.inf)
    idx = np.full(xy.shape[0], -1)
    for k, inst in enumerate(sc.instruments):
        a, b = _instrument_segment(inst, sc, s)
        t = _capsule_hit(a - o, b - o, inst[4], rd)
        closer = t < best
        best[closer], idx[closer] = t[closer], k
    X = rd * np.where(np.isfinite(best), best, 0.0)[:, None] + o
    return np.where(np.isfinite(best), X[:, 2], np.inf), X, idx


def _shade_instruments(
    sc: TissueScene, X: np.ndarray, idx: np.ndarray, s: float, origin: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Metallic grey shafts with dark rings: colour (P, 3) and specular term (P,) at hit points X."""
    col = np.zeros_like(X)
    n = np.zeros_like(X)
    for k, inst in enumerate(sc.instruments):
        sel = idx == k
        if not sel.any():
            continue
        a, b = _instrument_segment(inst, sc, s)
        ax = (b - a) / np.linalg.norm(b - a)
        along = np.clip((X[sel] - a) @ ax, 0.0, None)
        n[sel] = X[sel] - (a + along[:, None] * ax)
        ring = ((along / 0.06) % 1.0) < 0.2
        col[sel] = np.where(ring[:, None], [0.2, 0.2, 0.22], [0.62, 0.64, 0.68])
    n = n / np.maximum(np.linalg.norm(n, axis=-1, keepdims=True), 1e-12)
    return blinn_phong(col, X, n, ks=0.9, shininess=40.0, origin=origin)


# ------------------------------------------------------------------------------------------------
def render_tissue_frame(sc: TissueScene, t: int, baseline: float = 0.0) -> dict[str, np.ndarray]:
    """Render frame t. Returns (H, W, ...) arrays: ``rgb`` (in [0, 1], before 8-bit quantisation),
    ``tissue_rgb`` (the same without instruments: the tissue they hide), ``specular`` (the white specular
    term added to each pixel), ``tissue_depth``, ``material`` (m of the tissue behind each pixel),
    ``instrument`` (bool), ``visible_depth`` (what the camera sees). ``baseline`` > 0 renders the right
    view of a rectified stereo pair: the camera shifted by ``baseline`` scene units along its x axis."""
    s = t / (sc.T - 1)
    H, W = sc.H, sc.W
    o = np.array([baseline, 0.0, 0.0])
    ys, xs = np.meshgrid(np.arange(H, dtype=np.float64), np.arange(W, dtype=np.float64), indexing="ij")
    q = np.stack([xs, ys], -1)  # (H, W, 2)
    m = invert_shifted(sc, q, s, baseline)
    z = depth(sc, m, s)
    X = position(sc, m, s)
    rgb, spec = blinn_phong(
        albedo(sc, m), X, _normals(sc, m, s), ks=0.8, shininess=120.0, origin=None if baseline == 0.0 else o
    )
    tissue_rgb = np.clip(rgb, 0.0, 1.0)
    zi, Xi, idx = instruments_depth(sc, q.reshape(-1, 2), s, origin=None if baseline == 0.0 else o)
    inst = (idx >= 0) & (zi < z.reshape(-1))
    if inst.any():
        rgb_i, spec_i = _shade_instruments(sc, Xi[inst], idx[inst], s, origin=None if baseline == 0.0 else o)
        rgb.reshape(-1, 3)[inst] = rgb_i
        spec.reshape(-1)[inst] = spec_i
    inst = inst.reshape(H, W)
    return dict(
        rgb=np.clip(rgb, 0.0, 1.0),
        tissue_rgb=tissue_rgb,
        specular=spec,
        tissue_depth=z,
        material=m,
        instrument=inst,
        visible_depth=np.where(inst, zi.reshape(H, W), z),
    )


def never_seen(sc: TissueScene, material: np.ndarray, instrument: np.ndarray, train_ids) -> np.ndarray:
    """Bool (T, H, W): the tissue behind the pixel (``material`` (T, H, W, 2)) is seen by no training
    frame -- in each frame of ``train_ids`` it is outside the image or an instrument is in front of it
    (exact: the instruments ray-cast at the point's pixel and time, as the tracks' visibility)."""
    T, H, W = instrument.shape
    train = [int(t) for t in train_ids]
    out = np.zeros((T, H, W), dtype=bool)
    for t in range(T):
        # a training frame sees its own non-instrument pixels: only the others need a test
        cand = instrument[t] if t in train else np.ones((H, W), dtype=bool)
        m = material[t][cand]  # (P, 2)
        unseen = np.ones(m.shape[0], dtype=bool)
        for tt in train:
            if not unseen.any():
                break
            st = tt / (sc.T - 1)
            mu = m[unseen]
            xy = mu + lateral(sc, mu, st)
            inside = (xy[:, 0] >= -0.5) & (xy[:, 0] <= W - 0.5) & (xy[:, 1] >= -0.5) & (xy[:, 1] <= H - 0.5)
            zi = instruments_depth(sc, xy, st)[0]
            seen = inside & ~(zi < depth(sc, mu, st))
            idx = np.nonzero(unseen)[0]
            unseen[idx[seen]] = False
        out[t][cand] = unseen
    return out


def render_right_views(cfg, baseline: float) -> np.ndarray:
    """Right views (T, H, W, 3) in [0, 1], 8-bit levels, of the tissue scene of ``cfg`` (the same scene as
    :func:`make_tissue_sequence`, from the seed): a rectified stereo pair with the left camera, the right
    camera ``baseline`` scene units along the left camera's x axis, same K."""
    if not baseline > 0:
        raise ValueError(f"stereo baseline must be > 0 scene units, got {baseline}")
    sc = build_tissue_scene(cfg, np.random.default_rng(cfg.seed))
    return np.round(np.stack([render_tissue_frame(sc, t, baseline)["rgb"] for t in range(sc.T)]) * 255.0) / 255.0


def write_right_views(cfg, root, seq_name: str, baseline: float, names, right_type: str = "images_right") -> None:
    """Write :func:`render_right_views` as ``root/<right_type>/<seq_name>/NAME.png`` (atomically), one per
    frame name of the left views."""
    from pathlib import Path  # noqa: PLC0415

    from flow3d.data import io  # noqa: PLC0415

    right = render_right_views(cfg, baseline)
    if len(names) != right.shape[0]:
        raise ValueError(f"{len(names)} frame names for {right.shape[0]} right views")
    for n, img in zip(names, right):
        io.write_png_atomic(Path(root) / right_type / seq_name / f"{n}.png", (img * 255.0).round().astype(np.uint8))
    logger.info(
        "tissue scene: right views (baseline %g scene units) written to %s",
        baseline,
        Path(root) / right_type / seq_name,
    )


def _to_world(sc: TissueScene, X: np.ndarray) -> np.ndarray:
    return X @ sc.c2w[:3, :3].T + sc.c2w[:3, 3]


def _surface_grid(sc: TissueScene) -> tuple[np.ndarray, float, float]:
    """Material grid covering every m seen at any time: coordinates (Hs, Ws, 2), pad and step in pixels."""
    step = max(sc.W, sc.H) / 128.0 if max(sc.W, sc.H) > 128 else 1.0
    pad = math.ceil(0.2 * max(sc.W, sc.H) / step) * step
    gx = np.arange(-pad, sc.W - 1 + pad + 1e-9, step)
    gy = np.arange(-pad, sc.H - 1 + pad + 1e-9, step)
    return np.stack(np.meshgrid(gx, gy, indexing="xy"), -1), pad, step


def _tracks(sc: TissueScene, cfg, material: np.ndarray, instrument: np.ndarray):
    """GT tracks of tissue points from a grid of tissue pixels in each query frame: world points
    (M, T, 3), pixels (M, T, 2), visibility (M, T), query frame (M,)."""
    T, W, H, g = sc.T, sc.W, sc.H, cfg.track_grid_step
    gy, gx = np.meshgrid(np.arange(g // 2, H, g), np.arange(g // 2, W, g), indexing="ij")
    gy, gx = gy.ravel(), gx.ravel()
    ms, qs = [], []
    for q in range(0, T, max(cfg.track_query_stride, 1)):
        keep = ~instrument[q, gy, gx]
        ms.append(material[q, gy[keep], gx[keep]])
        qs.append(np.full(int(keep.sum()), q))
    m, query_t = np.concatenate(ms), np.concatenate(qs)
    M = m.shape[0]
    X = np.zeros((M, T, 3))
    xy = np.zeros((M, T, 2))
    vis = np.zeros((M, T), dtype=bool)
    for t in range(T):
        s = t / (T - 1)
        X[:, t] = _to_world(sc, position(sc, m, s))
        xy[:, t] = m + lateral(sc, m, s)
        inside = (xy[:, t, 0] >= -0.5) & (xy[:, t, 0] <= W - 0.5) & (xy[:, t, 1] >= -0.5) & (xy[:, t, 1] <= H - 0.5)
        zi = instruments_depth(sc, xy[:, t], s)[0]
        vis[:, t] = inside & ~(zi < depth(sc, m, s))
    vis[np.arange(M), query_t] = True
    return X, xy, vis, query_t


def make_tissue_sequence(cfg) -> VideoSequence:
    """Render the tissue scene of ``cfg`` into a :class:`VideoSequence` with ground truth (module doc)."""
    rng = np.random.default_rng(cfg.seed)
    sc = build_tissue_scene(cfg, rng)
    T, W, H = sc.T, sc.W, sc.H
    frames = [render_tissue_frame(sc, t) for t in range(T)]
    images = np.round(np.stack([f["rgb"] for f in frames]) * 255.0) / 255.0  # 8-bit levels, exact through PNG
    inst = np.stack([f["instrument"] for f in frames])
    hidden_rgb = np.round(np.stack([f["tissue_rgb"] for f in frames]) * 255.0) / 255.0
    material = np.stack([f["material"] for f in frames])
    tissue_depth = np.stack([f["tissue_depth"] for f in frames])
    prior, prior_valid, a_t, b_t = drifting_prior(
        np.stack([f["visible_depth"] for f in frames]),
        cfg,
        rng,
        objects=np.where(~inst & (_gauss(sc, material)[0] > 0.5), 0, -1),
    )
    gt3d, xy, vis, query_t = _tracks(sc, cfg, material, inst)
    xy_obs = xy.copy()
    if cfg.track_noise_px > 0:
        xy_obs = xy_obs + cfg.track_noise_px * rng.normal(size=xy.shape)
        xy_obs[np.arange(len(query_t)), query_t] = xy[np.arange(len(query_t)), query_t]
    grid, pad, step = _surface_grid(sc)
    surface = np.stack([_to_world(sc, position(sc, grid, t / (T - 1))) for t in range(T)])  # (T, Hs, Ws, 3)

    w2c = np.linalg.inv(sc.c2w)
    train_ids, val_ids = split_frames(T, cfg.val_every)
    unseen = never_seen(sc, material, inst, train_ids.tolist())
    f32 = lambda a: torch.from_numpy(np.ascontiguousarray(a)).float()  # noqa: E731
    M = len(query_t)
    seq = VideoSequence(
        name=f"tissue_s{cfg.seed}",
        images=f32(images),
        fg_masks=f32(~inst),
        valid_masks=torch.from_numpy(~inst),
        prior_disp=f32(prior),
        prior_valid=torch.from_numpy(prior_valid),
        w2cs=f32(np.repeat(w2c[None], T, 0)),
        Ks=f32(np.repeat(sc.K[None], T, 0)),
        time_ids=torch.arange(T),
        train_ids=train_ids,
        val_ids=val_ids,
        tracks_xy=f32(xy_obs),
        tracks_visible=torch.from_numpy(vis),
        tracks_conf=torch.ones(M, T),
        tracks_query_t=torch.from_numpy(query_t).long(),
        gt_depth=f32(tissue_depth),
        gt_tracks_3d=f32(gt3d),
        gt_prior_affine=f32(np.stack([a_t, b_t], -1)),
        gt_surface_points=f32(surface),
        gt_surface_uv=f32((material + pad) / step),
        gt_hidden_images=f32(hidden_rgb),
        gt_never_seen=torch.from_numpy(unseen),
        frame_names=[f"{t:05d}" for t in range(T)],
    )
    if cfg.normalize_scene:
        scale, transform = compute_scene_norm(seq.gt_tracks_3d.reshape(-1, 3), seq.w2cs)
        seq = apply_scene_norm(seq, scale, transform)
    logger.info(
        "tissue scene: %d frames %dx%d, %d instruments (%.1f%% of pixels), %d tracks, %.2f%% of "
        "pixels show tissue no training frame sees",
        T,
        W,
        H,
        len(sc.instruments),
        100.0 * inst.mean(),
        M,
        100.0 * unseen.mean(),
    )
    return seq
