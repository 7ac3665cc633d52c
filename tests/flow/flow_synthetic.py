"""Synthetic frames with known motion for the flow tests: a smooth random texture moved by a known
rigid motion, and an occluding textured square that moves differently. Ground truth is exact by
construction (frames are rendered by inverse warping with ``cv2.remap``)."""

from __future__ import annotations

import cv2
import numpy as np


def smooth_texture(height: int, width: int, seed: int, cell: int = 4) -> np.ndarray:
    """(H, W, 3) float32 texture in [0, 255]: random noise upsampled and blurred (trackable, no aliasing)."""
    rng = np.random.default_rng(seed)
    small = rng.uniform(0, 255, size=(height // cell + 2, width // cell + 2, 3)).astype(np.float32)
    big = cv2.resize(small, (width + 2 * cell, height + 2 * cell), interpolation=cv2.INTER_CUBIC)
    big = cv2.GaussianBlur(big, (0, 0), 1.0)
    big = big[cell : cell + height, cell : cell + width]
    big = (big - big.min()) / (big.max() - big.min()) * 255.0
    return big.astype(np.float32)


def render(texture: np.ndarray, inv_map: np.ndarray) -> np.ndarray:
    """Sample ``texture`` at (H, W, 2) positions -> (H, W, 3) float32."""
    return cv2.remap(
        texture,
        inv_map[..., 0].astype(np.float32),
        inv_map[..., 1].astype(np.float32),
        interpolation=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_REFLECT,
    )


def grid(height: int, width: int) -> np.ndarray:
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float64)
    return np.stack([xs, ys], axis=-1)


class Scene:
    """Background: rotation by ``angle_deg`` per frame about the image centre, then translation ``shift``.
    Occluder: a ``side``-px square whose top-left corner starts at ``sq0`` and moves by ``sq_vel`` per frame."""

    def __init__(
        self,
        height=120,
        width=160,
        shift=(1.3, 0.7),
        angle_deg=0.0,
        side=30,
        sq0=(40.0, 30.0),
        sq_vel=(4.0, 1.0),
        seed=0,
        pad=40,
    ):
        self.H, self.W, self.pad = height, width, pad
        self.bg = smooth_texture(height + 2 * pad, width + 2 * pad, seed)
        self.fg = smooth_texture(side, side, seed + 1)
        self.side, self.sq0, self.sq_vel = side, np.asarray(sq0, float), np.asarray(sq_vel, float)
        a = np.deg2rad(angle_deg)
        self.R = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
        self.c = np.array([(width - 1) / 2, (height - 1) / 2])
        self.shift = np.asarray(shift, float)

    def bg_motion(self, xy: np.ndarray, k: int) -> np.ndarray:
        """Where background point ``xy`` (..., 2) of frame 0 is in frame k."""
        for _ in range(k):
            xy = (xy - self.c) @ self.R.T + self.c + self.shift
        return xy

    def bg_inverse(self, xy: np.ndarray, k: int) -> np.ndarray:
        for _ in range(k):
            xy = (xy - self.shift - self.c) @ self.R + self.c
        return xy

    def square_at(self, k: int) -> np.ndarray:
        return self.sq0 + k * self.sq_vel

    def in_square(self, xy: np.ndarray, k: int, margin: float = 0.0) -> np.ndarray:
        lo = self.square_at(k) - margin
        hi = self.square_at(k) + self.side - 1 + margin
        return (xy[..., 0] >= lo[0]) & (xy[..., 0] <= hi[0]) & (xy[..., 1] >= lo[1]) & (xy[..., 1] <= hi[1])

    def frame(self, k: int) -> np.ndarray:
        g = grid(self.H, self.W)
        img = render(self.bg, self.bg_inverse(g, k) + self.pad)
        inside = self.in_square(g, k)
        fg = render(self.fg, g - self.square_at(k))
        img[inside] = fg[inside]
        return np.clip(np.rint(img), 0, 255).astype(np.uint8)

    def flow_gt(self, k0: int = 0, k1: int = 1):
        """GT flow frame k0 -> k1 (H, W, 2), and the (H, W) bool 'occluded' (no correspondence in k1)."""
        g = grid(self.H, self.W)
        origin = self.bg_inverse(g, k0)
        target_bg = self.bg_motion(origin, k1)
        flow = target_bg - g
        on_sq = self.in_square(g, k0)
        flow[on_sq] = (k1 - k0) * self.sq_vel
        target = g + flow
        occluded = ~on_sq & self.in_square(target, k1)
        return flow.astype(np.float32), occluded
