"""Long 2D tracks chained from fb-consistent optical flow, in Shape of Motion's TAPIR track format.

From each query frame q, points on a grid over the foreground mask are carried frame by frame, forwards
(q -> q+1 -> ...) and backwards (q -> q-1 -> ...), by the flow between consecutive frames sampled
bilinearly at the current sub-pixel position. A track ends for good at the first step where the flow
under it is not trustworthy -- any of the (up to four) pixels the bilinear sample mixes fails the
forward-backward check -- or where it leaves the image. Chained flow cannot re-find a point that
reappears, so an ended track stays occluded.

Output format (what Shape of Motion's ``load_target_tracks`` + ``parse_tapir_track_info`` read):
``tracks[(q, t)]`` is a (P, 4) float32 array ``(x, y, occlusion_logit, expected_dist_logit)`` with x, y
in pixels of frame t (OpenCV pixel centres; row ``p`` is the same point for every t of one q). SoM
computes ``visibility = 1 - sigmoid(occlusion_logit)``, ``confidence = 1 - sigmoid(expected_dist_logit)``,
``visible = visibility * confidence > 0.5`` and ``invisible = (1 - visibility) * confidence > 0.5``.
We write:

* tracked points: ``(x, y, -10, -10)``: visibility = confidence = 0.99995, so SoM reads them as visible;
* ended tracks: ``(last known x, y, +10, +10)``: visibility = confidence = 4.5e-5, so SoM reads them as
  neither visible nor confidently occluded (confidence 0): the position is unknown and no loss uses it.
  The last known position keeps the coordinates finite for SoM's ``grid_sample`` of depth.

Files are named ``<query>_<target>.npy`` from the frame names, as SoM's casual/DAVIS loader does
(``{frame_names[q]}_{frame_names[t]}.npy``; DAVIS frames are ``00000.jpg`` ..., hence ``00000_00012.npy``).
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch
from tqdm import tqdm

from flow3d.fileio import write_bytes
from flow3d.flow.cache import FlowCache, FlowResult
from flow3d.flow.consistency import FB_RULES, fb_mask_and_confidence
from flow3d.flow.estimate import estimate_flow
from flow3d.geometry import bilinear_sample, inside_image

TRACK_LOGIT = 10.0  # |logit| written for "surely visible" (negative) and "unknown / ended" (positive)


def query_grid(mask: np.ndarray, grid_step: int) -> np.ndarray:
    """(P, 2) float32 (x, y) of grid pixels (every ``grid_step`` px, offset ``grid_step // 2``) inside ``mask`` (H, W)."""
    H, W = mask.shape
    ys, xs = np.meshgrid(
        np.arange(grid_step // 2, H, grid_step), np.arange(grid_step // 2, W, grid_step), indexing="ij"
    )
    keep = mask[ys, xs]
    return np.stack([xs[keep], ys[keep]], axis=-1).astype(np.float32)


class _PairFlows:
    """Flow + fb mask between consecutive frames, from a FlowCache or computed and held in memory."""

    def __init__(self, images: np.ndarray, backend: str, cache_dir, fb_rule: str, fb_coeffs: dict, options: dict):
        self.images = images
        self.cache = (
            FlowCache(cache_dir, backend, fb_rule=fb_rule, fb_coeffs=fb_coeffs, **options) if cache_dir else None
        )
        self.backend, self.fb_rule, self.fb_coeffs, self.options = backend, fb_rule, fb_coeffs, options
        self.memory: dict[tuple[int, int], FlowResult] = {}

    def get(self, i: int, j: int) -> FlowResult:
        if self.cache is not None:
            return self.cache.get(i, j, self.images[i], self.images[j])
        if (i, j) not in self.memory:
            fw = estimate_flow(self.images[i], self.images[j], self.backend, **self.options)
            bw = estimate_flow(self.images[j], self.images[i], self.backend, **self.options)
            for (a, b), (f, g) in (((i, j), (fw, bw)), ((j, i), (bw, fw))):
                valid, conf = fb_mask_and_confidence(f, g, self.fb_rule, **self.fb_coeffs)
                self.memory[(a, b)] = FlowResult(f, valid, conf.astype(np.float32))
        return self.memory.pop((i, j))  # each direction is used once per pass


def _step_image(step: FlowResult) -> torch.Tensor:
    """(1, 3, H, W) float32: dx, dy and the fb mask as 0/1, to sample together."""
    stack = np.concatenate([step.flow, step.valid[..., None].astype(np.float32)], axis=-1)  # (H, W, 3)
    return torch.from_numpy(stack).permute(2, 0, 1)[None]


def _advance(pos: torch.Tensor, alive: torch.Tensor, img: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Move points (P, 2) by one flow step ``img`` (1, 3, H, W) from :func:`_step_image`.

    A point dies where any pixel its bilinear sample mixes fails the fb check, or where it leaves the image.
    """
    H, W = img.shape[-2:]
    s = bilinear_sample(img, pos[None])[0]  # (P, 3)
    new = pos + s[:, :2]
    ok = alive & (s[:, 2] > 1.0 - 1e-4) & inside_image(new, W, H)
    return torch.where(ok[:, None], new, pos), ok


def _as_numpy(x, name: str) -> np.ndarray:
    if torch.is_tensor(x):
        x = x.detach().cpu().numpy()
    if not isinstance(x, np.ndarray):
        raise ValueError(f"{name} must be a numpy array or torch tensor, got {type(x).__name__}")
    return x


def tracks_from_flow(
    images,
    masks,
    query_frames: Iterable[int],
    *,
    grid_step: int = 8,
    backend: str = "dis",
    cache_dir: str | os.PathLike | None = None,
    fb_rule: str = "squared",
    fb_coeffs: dict | None = None,
    flow_options: dict | None = None,
    progress: bool = False,
) -> dict[tuple[int, int], np.ndarray]:
    """Chain fb-consistent flow into tracks from each query frame to every frame.

    images: (T, H, W, 3) uint8 RGB. masks: (T, H, W) bool foreground (queries lie on a grid over
    ``masks[q]``). query_frames: frame indices q. grid_step: grid spacing in pixels.
    backend / flow_options: the flow estimator (see :func:`flow3d.flow.estimate_flow`).
    cache_dir: a :class:`FlowCache` folder to read/write flows (None: compute in memory).
    fb_rule / fb_coeffs: the forward-backward check (see :mod:`flow3d.flow.consistency`).

    Returns ``{(q, t): (P_q, 4) float32}`` for every q and every t in [0, T), in Shape of Motion's
    TAPIR format ``(x, y, occlusion_logit, expected_dist_logit)`` (see the module docstring).
    """
    images, masks = _as_numpy(images, "images"), _as_numpy(masks, "masks")
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise ValueError(f"images must be (T, H, W, 3) uint8, got {images.dtype} {images.shape}")
    if masks.shape != images.shape[:3]:
        raise ValueError(f"masks must be (T, H, W) = {images.shape[:3]}, got {masks.shape}")
    if fb_rule not in FB_RULES:
        raise ValueError(f"unknown fb rule {fb_rule!r}; choose one of {sorted(FB_RULES)}")
    if int(grid_step) < 1:
        raise ValueError(f"grid_step must be >= 1, got {grid_step}")
    masks = masks > 0.5 if masks.dtype != bool else masks
    T = images.shape[0]
    queries = sorted({int(q) for q in query_frames})
    if any(q < 0 or q >= T for q in queries):
        raise ValueError(f"query_frames must lie in [0, {T}), got {queries}")
    flows = _PairFlows(images, backend, cache_dir, fb_rule, dict(fb_coeffs or {}), dict(flow_options or {}))

    starts = {q: torch.from_numpy(query_grid(masks[q], int(grid_step))) for q in queries}
    out_pos: dict[tuple[int, int], torch.Tensor] = {}
    out_alive: dict[tuple[int, int], torch.Tensor] = {}
    for q in queries:
        out_pos[(q, q)], out_alive[(q, q)] = starts[q], torch.ones(len(starts[q]), dtype=torch.bool)
    if queries:
        # forward pass t -> t+1 advances every chain that started at or before t; backward likewise.
        for direction, steps in (
            (+1, range(queries[0], T - 1)),
            (-1, range(queries[-1], 0, -1)),
        ):
            bar = tqdm(
                steps, desc=f"tracks {'forward' if direction > 0 else 'backward'}", disable=not progress, leave=False
            )
            for t in bar:
                active = [q for q in queries if (q <= t if direction > 0 else q >= t)]
                step = _step_image(flows.get(t, t + direction))
                for q in active:
                    pos, alive = _advance(out_pos[(q, t)], out_alive[(q, t)], step)
                    out_pos[(q, t + direction)], out_alive[(q, t + direction)] = pos, alive
    tracks = {}
    for key, pos in out_pos.items():
        logit = torch.where(out_alive[key], -TRACK_LOGIT, TRACK_LOGIT).float()
        tracks[key] = torch.cat([pos, logit[:, None], logit[:, None]], dim=-1).numpy().astype(np.float32)
    return dict(sorted(tracks.items()))


def som_track_name(q: int, t: int, frame_names: Sequence[str] | None = None) -> str:
    """``<query>_<target>.npy``: frame names when given, else indices zero-padded to 5 digits (DAVIS style)."""
    if frame_names is not None:
        return f"{frame_names[q]}_{frame_names[t]}.npy"
    return f"{q:05d}_{t:05d}.npy"


def write_som_tracks(
    out_dir: str | os.PathLike,
    tracks: dict[tuple[int, int], np.ndarray],
    frame_names: Sequence[str] | None = None,
) -> list[Path]:
    """Write each ``tracks[(q, t)]`` (P, 4) float32 to ``out_dir/<q>_<t>.npy`` (atomically). Returns the paths."""
    out_dir = Path(out_dir)
    paths = []
    for (q, t), arr in tracks.items():
        arr = np.asarray(arr, dtype=np.float32)
        if arr.ndim != 2 or arr.shape[1] != 4:
            raise ValueError(f"tracks[{(q, t)}] must be (P, 4), got {arr.shape}")
        buf = io.BytesIO()
        np.save(buf, arr)
        path = out_dir / som_track_name(q, t, frame_names)
        write_bytes(path, buf.getvalue())
        paths.append(path)
    return paths
