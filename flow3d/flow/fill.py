"""Frames prepared for optical flow when some pixels must be ignored (e.g. surgical instruments).

Flow estimated on the raw frames would follow the instruments and drag the tissue around them along.
:func:`fill_ignored` replaces the ignored pixels by an inpainting of their surroundings (OpenCV's Telea
method, ``cv2.inpaint``), which reads only the pixels that are not ignored: the filled frames, and so the
flow, forward-backward masks and chained tracks computed from them, do not depend on what the ignored
pixels held. The flow there is an interpolation of the surrounding tissue's; callers still treat the
ignored pixels as unusable.
"""

from __future__ import annotations

import cv2
import numpy as np

INPAINT_RADIUS_PX = 3
"""Neighbourhood radius of the inpainting (pixels)."""


def fill_ignored(images: np.ndarray, ignore: np.ndarray | None) -> np.ndarray:
    """Frames with their ignored pixels inpainted from the others.

    images: (T, H, W, 3) or (H, W, 3) uint8; ignore: (T, H, W) / (H, W) bool, or None. Returns a new
    uint8 array of the same shape: frames without an ignored pixel are copied as they are, and a frame
    whose pixels are all ignored becomes mid-grey. When nothing is ignored, ``images`` itself is returned.
    """
    if ignore is None or not np.asarray(ignore).any():
        return images
    single = images.ndim == 3
    imgs = images[None] if single else images
    ign = np.asarray(ignore, dtype=bool)
    ign = ign[None] if single else ign
    if imgs.dtype != np.uint8 or imgs.ndim != 4 or imgs.shape[-1] != 3 or ign.shape != imgs.shape[:3]:
        raise ValueError(
            f"fill_ignored: expected uint8 images (T, H, W, 3) and a bool ignore mask (T, H, W), got "
            f"{imgs.dtype} {imgs.shape} and {ign.shape}"
        )
    out = imgs.copy()
    for t in range(imgs.shape[0]):
        if not ign[t].any():
            continue
        if ign[t].all():
            out[t] = 128
            continue
        # zero the ignored pixels first: OpenCV's Telea reads some of them (at the image border), so the
        # inpainting would otherwise depend on what they held
        src = np.where(ign[t][..., None], np.uint8(0), imgs[t])
        out[t] = cv2.inpaint(np.ascontiguousarray(src), ign[t].astype(np.uint8), INPAINT_RADIUS_PX, cv2.INPAINT_TELEA)
    return out[0] if single else out
