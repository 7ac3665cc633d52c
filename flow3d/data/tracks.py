"""2D tracks: Shape of Motion's TAPIR format and the dense per-sequence arrays.

On disk (Shape of Motion, ``<track_type>/SEQ/<q>_<t>.npy``) a track file holds (P, 4) float32 rows
(x, y, occlusion logit, expected-distance logit) for the P query points of frame q, located in frame t.
:func:`tapir_to_visibility` converts the logits as Shape of Motion's ``parse_tapir_track_info`` does:
visibility = 1 - sigmoid(occlusion), confidence = 1 - sigmoid(expected distance); a point is *visible*
when visibility * confidence > 0.5, *confidently occluded* when (1 - visibility) * confidence > 0.5, and
its confidence is zeroed when it is neither. The same converter serves the on-disk reader and the
flow fallback.
"""

from __future__ import annotations

from typing import Mapping, Optional, Sequence

import numpy as np
import torch
from torch import Tensor

# Logit magnitude used when writing certain tracks: 1 - sigmoid(-20) is exactly 1.0 in float32.
_CERTAIN_LOGIT = 20.0


def tapir_to_visibility(tracks: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(..., 4) TAPIR rows -> ``xy`` (..., 2), ``visible`` (...) bool, ``confidence`` (...) in [0, 1].

    ``confidence`` > 0 where the point is confidently visible or confidently occluded, else 0.
    """
    if tracks.shape[-1] != 4:
        raise ValueError(
            f"tracks must be (..., 4) rows (x, y, occlusion logit, distance logit), got {tuple(tracks.shape)}"
        )
    visibility = 1.0 - torch.sigmoid(tracks[..., 2])
    confidence = 1.0 - torch.sigmoid(tracks[..., 3])
    visible = visibility * confidence > 0.5
    invisible = (1.0 - visibility) * confidence > 0.5
    confidence = confidence * (visible | invisible).to(confidence.dtype)
    return tracks[..., :2], visible, confidence


def visibility_to_tapir(xy: Tensor, visible: Tensor, confidence: Optional[Tensor] = None) -> Tensor:
    """Inverse of :func:`tapir_to_visibility` for writing files: (..., 2), (...) -> (..., 4) float32.

    ``confidence`` None means certain (logits of magnitude 20). Entries with confidence <= 0.5 read back
    as neither visible nor occluded (confidence 0).
    """
    occ = torch.where(visible, -_CERTAIN_LOGIT, _CERTAIN_LOGIT).to(torch.float32)
    if confidence is None:
        dist = torch.full_like(occ, -_CERTAIN_LOGIT)
    else:
        c = confidence.to(torch.float32)
        cc = c.clamp(1e-6, 1 - 1e-6)
        dist = torch.log((1 - cc) / cc)  # logit(1 - c)
        dist = torch.where(c >= 1 - 1e-6, -_CERTAIN_LOGIT, torch.where(c <= 1e-6, _CERTAIN_LOGIT, dist))
    return torch.cat([xy.to(torch.float32), occ[..., None], dist[..., None]], dim=-1)


def dense_tracks_from_pairs(
    pairs: Mapping[tuple[int, int], np.ndarray | Tensor],
    num_frames: int,
    query_frames: Sequence[int],
    max_per_query: int = 0,
    seed: int = 0,
    source: str = "tracks",
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Assemble ``{(q, t): (P_q, 4)}`` into dense arrays over all frames.

    Returns ``tracks_xy`` (M, T, 2), ``tracks_visible`` (M, T) bool, ``tracks_conf`` (M, T),
    ``tracks_query_t`` (M,) long. A missing (q, t) pair leaves its entries unknown (confidence 0).
    ``max_per_query`` > 0 keeps that many rows per query frame, chosen with a seeded generator.
    ``source`` names the origin in error messages.
    """
    xys, viss, confs, qs = [], [], [], []
    for q in query_frames:
        if (q, q) not in pairs:
            raise ValueError(f"{source}: query frame {q} has no ({q}, {q}) entry (the query points themselves)")
        P = int(np.asarray(pairs[(q, q)]).shape[0])
        rows = torch.arange(P)
        if 0 < max_per_query < P:
            g = torch.Generator().manual_seed(seed * 100003 + int(q))
            rows = torch.randperm(P, generator=g)[:max_per_query].sort().values
        xy = torch.zeros(len(rows), num_frames, 2)
        vis = torch.zeros(len(rows), num_frames, dtype=torch.bool)
        conf = torch.zeros(len(rows), num_frames)
        for t in range(num_frames):
            arr = pairs.get((q, t))
            if arr is None:
                continue
            arr = torch.as_tensor(np.asarray(arr, dtype=np.float32))
            if arr.ndim != 2 or arr.shape != (P, 4):
                raise ValueError(
                    f"{source}: entry ({q}, {t}) must have shape ({P}, 4) like ({q}, {q}), got {tuple(arr.shape)}"
                )
            a_xy, a_vis, a_conf = tapir_to_visibility(arr[rows])
            bad = ~torch.isfinite(a_xy).all(-1)
            xy[:, t] = torch.where(bad[:, None], torch.zeros_like(a_xy), a_xy)
            vis[:, t] = a_vis & ~bad
            conf[:, t] = torch.where(bad, torch.zeros_like(a_conf), a_conf)
        xys.append(xy)
        viss.append(vis)
        confs.append(conf)
        qs.append(torch.full((len(rows),), int(q), dtype=torch.long))
    if not xys:
        return (
            torch.zeros(0, num_frames, 2),
            torch.zeros(0, num_frames, dtype=torch.bool),
            torch.zeros(0, num_frames),
            torch.zeros(0, dtype=torch.long),
        )
    return torch.cat(xys), torch.cat(viss), torch.cat(confs), torch.cat(qs)
