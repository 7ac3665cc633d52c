"""Fields every data subcommand shares, and the last step every file loader takes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import tyro

from flow3d.data.normalize import normalize_from_tracks
from flow3d.data.sequence import VideoSequence
from flow3d.log import get_logger

logger = get_logger(__name__)


@dataclass(kw_only=True)
class CommonDataConfig:
    """Fields shared by every data subcommand."""

    is_train: tyro.conf.FlagConversionOff[bool] = True
    """Which split the caller scores: True for training (train frames), False for validation (held-out
    frames). Loading returns the whole video either way; ``train_ids`` / ``val_ids`` say which is which."""
    val_every: int = 8
    """Hold out every n-th frame for validation, EndoNeRF protocol: frames 1, 1+n, 1+2n, ... of the
    loaded clip (frame 0 always trains). 0 holds out nothing."""


@dataclass(kw_only=True)
class FileDataConfig(CommonDataConfig):
    """Fields shared by the loaders that read sequences from disk (custom, davis, iphone)."""

    max_tracks_per_query: int = 1024
    """Keep at most this many tracks per query frame (seeded random subset); 0 = all."""
    normalize_scene: tyro.conf.FlagConversionOff[bool] = True
    """Shape of Motion's scene normalisation (centre and scale from foreground 3D tracks, up axis to +z)."""
    seed: int = 0
    """Seed of the track subsets and of the points used for the normalisation."""
    cache_dir: Optional[str] = None
    """Cache folder; None = $FLOW3D_CACHE_DIR or ~/.cache/flow3d/data."""
    use_cache: tyro.conf.FlagConversionOff[bool] = True
    """Read/write the on-disk cache."""


def finish_file_sequence(seq: VideoSequence, cfg: FileDataConfig) -> VideoSequence:
    """The last step of every file loader: Shape of Motion's scene normalisation when asked for.

    (The prior's validity was decided when ``seq`` was constructed; caching is
    :func:`flow3d.data.cache.cached_sequence`'s.)"""
    return normalize_from_tracks(seq, cfg.seed) if cfg.normalize_scene else seq
