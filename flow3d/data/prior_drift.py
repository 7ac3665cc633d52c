"""The depth prior of the synthetic scenes (objects and tissue): the true disparity the camera sees, blurred,
through a per-frame affine that drifts over the video, times multiplicative noise (see
:mod:`flow3d.data.synthetic` for the options)."""

from __future__ import annotations

import cv2
import numpy as np


def drifting_prior(depth: np.ndarray, cfg, rng: np.random.Generator):
    """The depth prior of the synthetic scenes from the true depth the camera sees, ``depth`` (T, H, W):
    blurred true disparity through the drifting per-frame affine, times multiplicative noise. ``cfg`` is a
    :class:`flow3d.data.synthetic.SyntheticDataConfig` (its ``prior_*`` fields).

    Returns ``prior`` (T, H, W) disparity (0 where invalid), ``prior_valid`` (T, H, W) bool and the
    affine ``a_t``, ``b_t`` (T,) each. Draws the noise from ``rng`` (after everything else of the scene).
    """
    T = depth.shape[0]
    s = np.linspace(0.0, 1.0, T)
    u = {"linear": s - 0.5, "sine": 0.5 * np.sin(2 * np.pi * s), "none": 0 * s, "perfect": 0 * s}[cfg.prior_drift]
    true_disp = 1.0 / depth
    a_t = 1.0 + cfg.prior_scale_drift * u
    b_t = cfg.prior_shift_drift * float(np.median(true_disp)) * u
    blur = 0.0 if cfg.prior_drift == "perfect" else cfg.prior_blur_px
    noise = 0.0 if cfg.prior_drift == "perfect" else cfg.prior_noise
    prior = np.zeros_like(true_disp)
    for t in range(T):
        d_t = cv2.GaussianBlur(true_disp[t], (0, 0), blur, borderType=cv2.BORDER_REFLECT) if blur > 0 else true_disp[t]
        prior[t] = a_t[t] * d_t + b_t[t]
    if noise > 0:
        prior = prior * (1.0 + noise * rng.normal(size=prior.shape))
    prior_valid = np.isfinite(prior) & (prior > 0)
    prior = np.where(prior_valid, prior, 0.0)
    return prior, prior_valid, a_t, b_t
