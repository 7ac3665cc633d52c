"""2D tracks of the *static* part of a video, for camera estimation.

Tracks are chained from forward-backward-consistent optical flow (:func:`flow3d.flow.tracks_from_flow`)
from a query grid over the background (outside the foreground masks dilated by ``dilate_px``) of every
``query_stride``-th frame. A track entry counts only while the track is outside the dilated foreground
of its frame, so points that drift onto a moving object, or that a moving object covers, drop out. A
new query point lying closer than half the grid step to a track already alive in its frame is a
duplicate and is dropped. Robust rejection of moving points the masks miss happens later (essential
matrix RANSAC and bundle-adjustment residuals, :mod:`flow3d.cameras.estimate`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import cv2
import numpy as np
from scipy.spatial import cKDTree

from flow3d.flow import tracks_from_flow
from flow3d.log import get_logger

logger = get_logger(__name__)


@dataclass
class StaticTracks:
    """Tracks of static points. ``xy`` (P, T, 2) OpenCV pixels; ``visible`` (P, T) bool; ``query_t`` (P,)."""

    xy: np.ndarray  # (P, T, 2) float64
    visible: np.ndarray  # (P, T) bool
    query_t: np.ndarray  # (P,) int

    @property
    def num_tracks(self) -> int:
        return int(self.xy.shape[0])

    def subset(self, keep: np.ndarray) -> "StaticTracks":
        """The tracks where ``keep`` (P,) bool is True."""
        return StaticTracks(self.xy[keep], self.visible[keep], self.query_t[keep])


def dilate_masks(masks: np.ndarray, radius: int) -> np.ndarray:
    """Binary dilation of (T, H, W) bool masks by a disk of ``radius`` pixels (0 = unchanged)."""
    if radius <= 0:
        return masks.astype(bool)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    return np.stack([cv2.dilate(m.astype(np.uint8), kernel) > 0 for m in masks])


def _sample_mask(mask: np.ndarray, xy: np.ndarray) -> np.ndarray:
    """Nearest-pixel lookup of (H, W) bool ``mask`` at (N, 2) positions; outside the image counts as True."""
    H, W = mask.shape
    xi, yi = np.round(xy[:, 0]).astype(int), np.round(xy[:, 1]).astype(int)
    inside = (xi >= 0) & (xi < W) & (yi >= 0) & (yi < H)
    out = np.ones(len(xy), dtype=bool)
    out[inside] = mask[yi[inside], xi[inside]]
    return out


def static_tracks(
    images: np.ndarray,
    fg_masks: np.ndarray,
    *,
    grid_step: int = 8,
    query_stride: int = 4,
    dilate_px: int = 5,
    min_length: int = 2,
    backend: str = "dis",
    cache_dir: str | os.PathLike | None = None,
) -> StaticTracks:
    """Flow-chained tracks of the background of a video.

    images: (T, H, W, 3) uint8 RGB. fg_masks: (T, H, W) bool, True on moving content. grid_step: query
    spacing (px). query_stride: every k-th frame (and the last) is a query frame. dilate_px: margin around
    the foreground. min_length: tracks visible in fewer frames are dropped. backend / cache_dir: the flow
    (:class:`flow3d.flow.FlowCache` folder, shared with the loader's flow tracks when given).
    """
    T, H, W = images.shape[:3]
    if fg_masks.shape != (T, H, W):
        raise ValueError(f"fg_masks must be (T, H, W) = {(T, H, W)} like the images, got {fg_masks.shape}")
    forbidden = dilate_masks(fg_masks.astype(bool), dilate_px)
    queries = sorted(set(range(0, T, max(int(query_stride), 1))) | {T - 1})
    raw = tracks_from_flow(images, ~forbidden, queries, grid_step=grid_step, backend=backend, cache_dir=cache_dir)
    xy_all, vis_all, q_all = [], [], []
    for q in queries:
        n = raw[(q, q)].shape[0]
        if n == 0:
            continue
        xy = np.stack([raw[(q, t)][:, :2] for t in range(T)], axis=1).astype(np.float64)  # (n, T, 2)
        vis = np.stack([raw[(q, t)][:, 2] < 0 for t in range(T)], axis=1)  # (n, T)
        for t in range(T):
            vis[:, t] &= ~_sample_mask(forbidden[t], xy[:, t])
        if xy_all:  # duplicates of tracks already alive in frame q
            prev_xy, prev_vis = np.concatenate(xy_all), np.concatenate(vis_all)
            alive = prev_vis[:, q]
            if alive.any():
                d, _ = cKDTree(prev_xy[alive, q]).query(xy[:, q], k=1)
                keep = d >= 0.5 * grid_step
                xy, vis = xy[keep], vis[keep]
        xy_all.append(xy)
        vis_all.append(vis)
        q_all.append(np.full(len(xy), q))
    if not xy_all:
        raise ValueError("no static tracks: the background (outside the dilated foreground masks) is empty")
    tracks = StaticTracks(np.concatenate(xy_all), np.concatenate(vis_all), np.concatenate(q_all))
    tracks = tracks.subset(tracks.visible.sum(1) >= min_length)
    logger.info(
        "static tracks: %d from %d query frames, %.1f frames visible on average",
        tracks.num_tracks,
        len(queries),
        float(tracks.visible.sum(1).mean()) if tracks.num_tracks else 0.0,
    )
    return tracks


def camera_motion_px(tracks: StaticTracks) -> np.ndarray:
    """(T,) median displacement (px) of static tracks in each frame from their query frame (NaN when no
    track of an earlier or later query frame is visible there). A static camera gives ~0 everywhere."""
    T = tracks.visible.shape[1]
    out = np.full(T, np.nan)
    P = tracks.num_tracks
    q_xy = tracks.xy[np.arange(P), tracks.query_t]  # (P, 2)
    for t in range(T):
        sel = tracks.visible[:, t] & (tracks.query_t != t)
        if sel.sum() >= 5:
            out[t] = float(np.median(np.linalg.norm(tracks.xy[sel, t] - q_xy[sel], axis=-1)))
    return out
