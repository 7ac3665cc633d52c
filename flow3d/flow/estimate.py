"""Optical flow between two RGB frames, behind one interface and a registry of backends.

``estimate_flow(img0, img1, backend, **options)`` takes two (H, W, 3) uint8 RGB frames and returns an
(H, W, 2) float32 numpy array of (dx, dy) pixels: pixel (x, y) of ``img0`` moves to (x + dx, y + dy) in
``img1`` (OpenCV pixel-centre convention, see :mod:`flow3d`).

Backends (``FLOW_BACKENDS``):
    ``dis``        OpenCV DIS (Kroeger et al. 2016); offline, no weights; the default.
                   Options: ``preset`` ("ultrafast" | "fast" | "medium", default "medium"), and any of
                   ``finest_scale``, ``patch_size``, ``patch_stride``, ``gradient_descent_iterations``,
                   ``variational_refinement_iterations``, ``use_spatial_propagation`` to override it.
    ``farneback``  OpenCV Farneback. Options: ``pyr_scale`` (0.5), ``levels`` (5), ``winsize`` (15),
                   ``iterations`` (3), ``poly_n`` (5), ``poly_sigma`` (1.2).
    ``raft``       torchvision RAFT, see :mod:`flow3d.flow.raft` (needs ``weights=<local file>``).
"""

from __future__ import annotations

import functools
import re
from typing import Callable

import cv2
import numpy as np

DIS_PRESETS = {
    "ultrafast": cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST,
    "fast": cv2.DISOPTICAL_FLOW_PRESET_FAST,
    "medium": cv2.DISOPTICAL_FLOW_PRESET_MEDIUM,
}
_DIS_SETTERS = {
    "finest_scale": "setFinestScale",
    "patch_size": "setPatchSize",
    "patch_stride": "setPatchStride",
    "gradient_descent_iterations": "setGradientDescentIterations",
    "variational_refinement_iterations": "setVariationalRefinementIterations",
    "use_spatial_propagation": "setUseSpatialPropagation",
}
FARNEBACK_DEFAULTS = dict(pyr_scale=0.5, levels=5, winsize=15, iterations=3, poly_n=5, poly_sigma=1.2)


def _check_options(backend: str, options: dict, allowed) -> None:
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} for flow backend {backend!r}; allowed: {sorted(allowed)}")


def to_gray(img: np.ndarray) -> np.ndarray:
    """(H, W, 3) RGB uint8 -> (H, W) uint8 (grayscale inputs pass through)."""
    return img if img.ndim == 2 else cv2.cvtColor(np.ascontiguousarray(img), cv2.COLOR_RGB2GRAY)


def dis_flow(img0: np.ndarray, img1: np.ndarray, preset: str = "medium", **overrides) -> np.ndarray:
    """OpenCV DIS flow img0 -> img1: (H, W, 3) uint8 RGB each -> (H, W, 2) float32 (dx, dy) px."""
    if preset not in DIS_PRESETS:
        raise ValueError(f"DIS preset must be one of {sorted(DIS_PRESETS)}, got {preset!r}")
    _check_options("dis", overrides, _DIS_SETTERS)
    dis = cv2.DISOpticalFlow_create(DIS_PRESETS[preset])
    for name, value in overrides.items():
        getattr(dis, _DIS_SETTERS[name])(value)
    flow = dis.calc(to_gray(img0), to_gray(img1), None)
    return flow.astype(np.float32, copy=False)


def farneback_flow(img0: np.ndarray, img1: np.ndarray, **options) -> np.ndarray:
    """OpenCV Farneback flow img0 -> img1: (H, W, 3) uint8 RGB each -> (H, W, 2) float32 (dx, dy) px."""
    _check_options("farneback", options, FARNEBACK_DEFAULTS)
    p = {**FARNEBACK_DEFAULTS, **options}
    flow = cv2.calcOpticalFlowFarneback(
        to_gray(img0),
        to_gray(img1),
        None,
        p["pyr_scale"],
        int(p["levels"]),
        int(p["winsize"]),
        int(p["iterations"]),
        int(p["poly_n"]),
        p["poly_sigma"],
        0,
    )
    return flow.astype(np.float32, copy=False)


def _raft_flow(img0: np.ndarray, img1: np.ndarray, **options) -> np.ndarray:
    from flow3d.flow.raft import raft_flow  # torchvision is imported only when RAFT is asked for

    return raft_flow(img0, img1, **options)


FLOW_BACKENDS: dict[str, Callable[..., np.ndarray]] = {
    "dis": dis_flow,
    "farneback": farneback_flow,
    "raft": _raft_flow,
}


def check_image_pair(img0, img1) -> None:
    """Raise one ValueError unless img0 and img1 are numpy uint8 frames of the same (H, W, 3) or (H, W) shape."""
    for name, img in (("img0", img0), ("img1", img1)):
        if (
            not isinstance(img, np.ndarray)
            or img.dtype != np.uint8
            or not (img.ndim == 3 and img.shape[-1] == 3 or img.ndim == 2)
        ):
            desc = f"{type(img).__name__} {getattr(img, 'dtype', '')} {tuple(getattr(img, 'shape', ()))}"
            raise ValueError(f"{name} must be a numpy uint8 array of shape (H, W, 3) (or (H, W) gray), got {desc}")
    if img0.shape != img1.shape:
        raise ValueError(f"img0 and img1 must have the same shape, got {img0.shape} and {img1.shape}")


PROBE_BELOW = 64
"""Frames with a side below this many pixels are probed by :func:`check_flow_size`; larger ones always pass."""


@functools.lru_cache(maxsize=64)
def _probe(backend: str, height: int, width: int, options: tuple) -> str | None:
    img = np.zeros((height, width, 3), np.uint8)
    try:
        FLOW_BACKENDS[backend](img, img, **dict(options))
    except cv2.error as e:
        m = re.search(r"error: \([^)]*\) (.*?)(?: in function .*)?$", " ".join(str(e).split()))
        return f"OpenCV says {m.group(1) if m else ' '.join(str(e).split())!r}"
    return None


def check_flow_size(height: int, width: int, backend: str = "dis", **options) -> None:
    """A ``ValueError`` when frames of ``height`` x ``width`` are smaller than the flow ``backend`` accepts with
    ``options``. OpenCV's DIS needs, at its default patch size 8, both sides >= 8 pixels and the longer >= 12
    (measured on OpenCV 5.1: 8x12 and 12x8 pass, 8x11 and 11x11 fail; larger patches need more): small
    frames are probed once with a blank pair (cached), so the rule is the installed OpenCV's, whatever the
    options. RAFT pads small frames (:mod:`flow3d.flow.raft`)."""
    if backend not in FLOW_BACKENDS:
        raise ValueError(f"unknown flow backend {backend!r}; choose one of {sorted(FLOW_BACKENDS)}")
    if height < 1 or width < 1:
        raise ValueError(f"frames of {width}x{height} pixels have no pixel for the optical flow")
    if backend == "raft" or min(height, width) >= PROBE_BELOW:
        return
    key = tuple(sorted(options.items()))
    try:
        hash(key)
    except TypeError:  # options that cannot key the probe's cache: the backend's own error stands
        return
    why = _probe(backend, int(height), int(width), key)
    if why is not None:
        hint = (
            " (DIS at its default patch size needs both sides >= 8 pixels and the longer >= 12)"
            if backend == "dis"
            else ""
        )
        raise ValueError(f"frames of {width}x{height} pixels are too small for the {backend} optical flow{hint}: {why}")


def estimate_flow(img0: np.ndarray, img1: np.ndarray, backend: str = "dis", **options) -> np.ndarray:
    """Optical flow from ``img0`` to ``img1``.

    img0, img1: (H, W, 3) uint8 RGB (an (H, W) gray frame is accepted too).
    Returns (H, W, 2) float32 numpy, (dx, dy) in pixels: pixel (x, y) of img0 is at (x + dx, y + dy)
    in img1. ``options`` go to the backend (see the module docstring); unknown ones raise ValueError.
    """
    if backend not in FLOW_BACKENDS:
        raise ValueError(f"unknown flow backend {backend!r}; choose one of {sorted(FLOW_BACKENDS)}")
    check_image_pair(img0, img1)
    check_flow_size(img0.shape[0], img0.shape[1], backend, **options)  # one clear error, not OpenCV's
    flow = FLOW_BACKENDS[backend](img0, img1, **options)
    return np.ascontiguousarray(flow, dtype=np.float32)
