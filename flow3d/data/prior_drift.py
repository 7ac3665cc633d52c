"""The depth prior of the synthetic scenes (objects and tissue): the true disparity the camera sees, through a
prior-error model (``--data.prior-error``, see :mod:`flow3d.data.synthetic` for the options).

``affine`` (the default): blurred true disparity through a per-frame affine that drifts over the video,
times multiplicative noise -- the error a per-frame scale and shift removes.

``realistic``: what monocular depth networks do and no per-frame affine undoes, each component a parameter
(0 turns it off), applied in this order to the true disparity ``d``:

1. *one object misplaced* (``prior_object_error``, ``prior_object_frames``): in two runs of frames covering
   about ``prior_object_frames`` of the video, one moving object's disparity is multiplied by
   ``1 +- prior_object_error`` (too near or too far relative to the rest). Objects scene: one of the rigid
   objects; tissue scene: the pulled tissue flap (the main grab's footprint), its moving part;
2. *blurred depth edges*: a Gaussian blur of ``prior_edge_blur_px`` (instead of ``prior_blur_px``);
3. *a tone curve varying per frame* (``prior_tone``): ``d -> m (d / m)^gamma_t`` with m the clip's median
   true disparity and ``log gamma_t = prior_tone * u_t``, u_t a smooth random curve in [-1, 1]: monotone
   (increasing) in d for every frame, non-linear unless gamma_t = 1;
4. the per-frame affine drift ``a_t d + b_t`` (as ``affine``);
5. *a low-frequency multiplicative field drifting over time with flicker* (``prior_field``,
   ``prior_flicker``): ``exp(prior_field * f_t * F_t(x, y))`` with F_t three plane waves of 0.5-1.5 cycles
   per image whose phases drift over the video (unit RMS) and f_t = |1 + prior_flicker * N(0, 1)| a
   per-frame flicker of its amplitude;
6. multiplicative noise (``prior_noise``), as ``affine``.

The realistic components draw from their own generator (seeded by the scene's seed), so the ``affine``
prior and everything else of a scene are the same whichever model is chosen.
"""

from __future__ import annotations

import cv2
import numpy as np


def _smooth_curve(T: int, rng: np.random.Generator) -> np.ndarray:
    """A smooth random curve (T,) with max |u| = 1: two sinusoids of 0.5-2 cycles over the video."""
    s = np.linspace(0.0, 1.0, T)
    u = sum(
        rng.uniform(0.5, 1.0) * np.sin(2 * np.pi * rng.uniform(0.5, 2.0) * s + rng.uniform(0, 2 * np.pi))
        for _ in range(2)
    )
    return u / max(float(np.abs(u).max()), 1e-12)


def tone_curve(disp: np.ndarray, median: float, gamma: float) -> np.ndarray:
    """The tone curve of disparity ``median * (disp / median) ** gamma`` (monotone increasing for gamma > 0)."""
    return median * np.power(np.maximum(disp, 0.0) / median, gamma)


def low_frequency_field(T: int, H: int, W: int, rng: np.random.Generator) -> np.ndarray:
    """(T, H, W) sum of three plane waves (0.5-1.5 cycles per image, unit RMS) whose phases drift over time."""
    ys, xs = np.meshgrid(np.arange(H) / max(H, 1), np.arange(W) / max(W, 1), indexing="ij")
    s = np.linspace(0.0, 1.0, T)
    out = np.zeros((T, H, W))
    for _ in range(3):
        r, ang = rng.uniform(0.5, 1.5), rng.uniform(0, 2 * np.pi)
        fx, fy = r * np.cos(ang), r * np.sin(ang)
        phase, speed = rng.uniform(0, 2 * np.pi), rng.uniform(np.pi, 3 * np.pi) * rng.choice([-1.0, 1.0])
        out += np.sqrt(2.0 / 3.0) * np.cos(2 * np.pi * (fx * xs + fy * ys)[None] + phase + speed * s[:, None, None])
    return out


def misplaced_object_frames(objects: np.ndarray, frac: float, rng: np.random.Generator) -> list[tuple[int, int]]:
    """The (frame, object id) pairs where one object is misplaced: two runs of frames, about ``frac`` of the
    video together, each with one object present in its first frame (none when ``frac`` is 0 or no object)."""
    T = objects.shape[0]
    run = int(round(frac * T / 2))
    out = []
    if run <= 0:
        return out
    for _ in range(2):
        start = int(rng.integers(0, max(T - run, 0) + 1))
        present = np.unique(objects[start][objects[start] >= 0])
        if present.size == 0:
            continue
        k = int(rng.choice(present))
        out += [(t, k) for t in range(start, min(start + run, T))]
    return out


def drifting_prior(depth: np.ndarray, cfg, rng: np.random.Generator, objects: np.ndarray | None = None):
    """The depth prior of the synthetic scenes from the true depth the camera sees, ``depth`` (T, H, W), by the
    prior-error model ``cfg.prior_error`` (module doc). ``cfg`` is a
    :class:`flow3d.data.synthetic.SyntheticDataConfig` (its ``prior_*`` fields); ``objects`` (T, H, W) int:
    the moving object behind each pixel (-1: none), for the misplaced-object component.

    Returns ``prior`` (T, H, W) disparity (0 where invalid), ``prior_valid`` (T, H, W) bool and the
    affine ``a_t``, ``b_t`` (T,) each. Draws the noise from ``rng`` (after everything else of the scene).
    """
    T, H, W = depth.shape
    s = np.linspace(0.0, 1.0, T)
    u = {"linear": s - 0.5, "sine": 0.5 * np.sin(2 * np.pi * s), "none": 0 * s, "perfect": 0 * s}[cfg.prior_drift]
    true_disp = 1.0 / depth
    a_t = 1.0 + cfg.prior_scale_drift * u
    b_t = cfg.prior_shift_drift * float(np.median(true_disp)) * u
    realistic = getattr(cfg, "prior_error", "affine") == "realistic" and cfg.prior_drift != "perfect"
    blur = 0.0 if cfg.prior_drift == "perfect" else (cfg.prior_edge_blur_px if realistic else cfg.prior_blur_px)
    noise = 0.0 if cfg.prior_drift == "perfect" else cfg.prior_noise
    disp = true_disp.copy()
    gamma = np.ones(T)
    field = np.zeros((T, H, W))
    if realistic:
        rr = np.random.default_rng([int(cfg.seed), 21])  # its own stream: the rest of the scene is unchanged
        if objects is not None and cfg.prior_object_error > 0:
            for t, k in misplaced_object_frames(objects, cfg.prior_object_frames, rr):
                sign = rr.choice([-1.0, 1.0])
                disp[t] = np.where(objects[t] == k, disp[t] * (1.0 + sign * cfg.prior_object_error), disp[t])
        gamma = np.exp(cfg.prior_tone * _smooth_curve(T, rr))
        flicker = np.abs(1.0 + cfg.prior_flicker * rr.normal(size=T))
        field = cfg.prior_field * flicker[:, None, None] * low_frequency_field(T, H, W, rr)
    median = float(np.median(true_disp))
    prior = np.zeros_like(true_disp)
    for t in range(T):
        d_t = cv2.GaussianBlur(disp[t], (0, 0), blur, borderType=cv2.BORDER_REFLECT) if blur > 0 else disp[t]
        if realistic:
            d_t = tone_curve(d_t, median, gamma[t])
        prior[t] = (a_t[t] * d_t + b_t[t]) * np.exp(field[t])
    if noise > 0:
        prior = prior * (1.0 + noise * rng.normal(size=prior.shape))
    prior_valid = np.isfinite(prior) & (prior > 0)
    prior = np.where(prior_valid, prior, 0.0)
    return prior, prior_valid, a_t, b_t
