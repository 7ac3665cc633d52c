"""Fields every data subcommand shares, and the last steps every loader takes."""

from __future__ import annotations

from dataclasses import dataclass

import tyro

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
