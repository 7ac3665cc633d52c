"""Flow neighbours of the training frames, for the terms that need flow (hinge ordinal, depth consistency).

Per training frame t the neighbour is the training frame ``stride`` places later in the split (earlier at
the end): held-out images never enter the flow. Flow t -> neighbour and its forward-backward mask come
from :class:`flow3d.flow.FlowCache`, computed once when training starts, on frames whose ignored pixels
(``valid_masks`` False, e.g. instruments) are inpainted (:func:`flow3d.flow.fill_ignored`), so the flow
does not depend on what those pixels hold.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from flow3d.config import DepthOrderConfig
from flow3d.flow import FlowCache, fill_ignored
from flow3d.log import get_logger

logger = get_logger(__name__)


def neighbor_map(train_ids: Tensor, stride: int) -> dict[int, int]:
    """Frame -> its neighbour frame, both in the training split."""
    ids = train_ids.tolist()
    n = len(ids)
    out = {}
    for i, t in enumerate(ids):
        j = i + stride if i + stride < n else i - stride
        if 0 <= j < n and j != i:
            out[t] = ids[j]
    return out


@dataclass
class NeighborFlow:
    """Flow of one training frame to its neighbour, kept on the CPU: pairs are sampled there with the
    trainer's CPU generator (the same pairs on any device), then moved to the renders' device."""

    next_t: int
    flow: Tensor  # (H, W, 2) pixels t -> next_t
    valid: Tensor  # (H, W) bool, fb-consistent
    conf: Tensor  # (H, W) float in [0, 1]
    next_valid: Tensor | None = None  # (H, W) bool, the neighbour's valid_masks (False = ignored pixel)


def prepare_neighbor_flows(seq, cfg: DepthOrderConfig, work_dir: Path) -> dict[int, NeighborFlow]:
    """Flows of every training frame to its neighbour (``cfg.neighbor_stride``), through the flow cache."""
    cache_dir = Path(cfg.flow_cache_dir) if cfg.flow_cache_dir else Path(work_dir) / "flow_cache"
    cache = FlowCache(cache_dir, backend=cfg.flow_backend, fb_rule=cfg.fb_rule)
    images = fill_ignored((seq.images.clamp(0, 1) * 255).round().to(torch.uint8).numpy(), (~seq.valid_masks).numpy())
    out = {}
    kept = []
    for t, n in tqdm(neighbor_map(seq.train_ids, cfg.neighbor_stride).items(), desc="flow", leave=False):
        res = cache.get(t, n, images[t], images[n])
        out[t] = NeighborFlow(
            n,
            torch.from_numpy(np.ascontiguousarray(res.flow)),
            torch.from_numpy(np.ascontiguousarray(res.valid)),
            torch.from_numpy(np.ascontiguousarray(res.conf)).float(),
            seq.valid_masks[n].to(torch.bool),
        )
        kept.append(float(res.valid.mean()))
    if kept:
        logger.info(
            "neighbour flows: %d pairs, fb-consistent pixels %.1f%% on average (min %.1f%%)",
            len(kept),
            100 * np.mean(kept),
            100 * np.min(kept),
        )
    return out
