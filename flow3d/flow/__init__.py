"""Optical flow and what the depth-order losses build on it.

* :func:`estimate_flow` -- (H, W, 3) uint8 frames -> (H, W, 2) float32 (dx, dy) px; backends in
  ``FLOW_BACKENDS`` ("dis" default, "farneback", "raft").
* :func:`fb_consistency_mask` / :func:`fb_confidence` -- forward-backward check (rules in ``FB_RULES``).
* :func:`read_flo` / :func:`write_flo` -- Middlebury ``.flo`` files.
* :class:`FlowCache` -> :class:`FlowResult` -- flows + fb masks kept on disk per settings.
* :func:`sample_pixel_pairs` -> :class:`PixelPairs` -- pixel pairs among fb-consistent pixels.
* :func:`tracks_from_flow` / :func:`write_som_tracks` -- tracks chained from flow, Shape of Motion format.
* :func:`fill_ignored` -- frames with ignored pixels (instruments) inpainted before flow is estimated.
"""

from flow3d.flow.cache import FlowCache, FlowResult
from flow3d.flow.consistency import FB_RULES, fb_confidence, fb_consistency_mask, fb_mask_and_confidence
from flow3d.flow.estimate import DIS_PRESETS, FLOW_BACKENDS, estimate_flow
from flow3d.flow.fill import fill_ignored
from flow3d.flow.io import read_flo, write_flo
from flow3d.flow.pairs import PixelPairs, sample_pixel_pairs
from flow3d.flow.tracks import TRACK_LOGIT, query_grid, som_track_name, tracks_from_flow, write_som_tracks

__all__ = [
    "DIS_PRESETS",
    "FB_RULES",
    "FLOW_BACKENDS",
    "FlowCache",
    "FlowResult",
    "PixelPairs",
    "TRACK_LOGIT",
    "estimate_flow",
    "fb_confidence",
    "fb_consistency_mask",
    "fb_mask_and_confidence",
    "fill_ignored",
    "query_grid",
    "read_flo",
    "sample_pixel_pairs",
    "som_track_name",
    "tracks_from_flow",
    "write_flo",
    "write_som_tracks",
]
