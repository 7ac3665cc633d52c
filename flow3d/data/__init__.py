"""The data layer: one :class:`VideoSequence` per video, from five tyro subcommands.

``data:synthetic`` (the embedded procedural scenes with ground truth: objects, tissue), ``data:custom``
and ``data:davis`` (Shape of Motion's casual layout), ``data:iphone`` (DyCheck iPhone as processed by
Shape of Motion), ``data:endonerf`` (EndoNeRF's own layout).
A parent dataclass with a field ``data: DataConfig`` gets the five subcommands and options such as
``--data.seq-name``; ``cfg.data.load()`` returns the whole video (cached), and ``train_ids`` /
``val_ids`` say which frames train and which validate (EndoNeRF protocol, :mod:`flow3d.data.split`).
"""

from typing import Annotated, Union

import tyro

from flow3d.data.casual import CustomDataConfig, DavisDataConfig
from flow3d.data.endonerf import EndoNeRFDataConfig
from flow3d.data.fingerprint import check_data_config, check_same_content, content_record
from flow3d.data.iphone import IPhoneDataConfig
from flow3d.data.prior_align import PriorDrift, apply_prior_drift, estimate_prior_drift
from flow3d.data.sequence import BgPoints, HeldOutViews, Tracks3D, VideoSequence, touches_ignored
from flow3d.data.split import split_frames
from flow3d.data.synthetic import SyntheticDataConfig, make_synthetic_sequence, write_custom_layout
from flow3d.data.tracks import tapir_to_visibility, visibility_to_tapir

DataConfig = Union[
    Annotated[SyntheticDataConfig, tyro.conf.subcommand("synthetic")],
    Annotated[CustomDataConfig, tyro.conf.subcommand("custom")],
    Annotated[DavisDataConfig, tyro.conf.subcommand("davis")],
    Annotated[IPhoneDataConfig, tyro.conf.subcommand("iphone")],
    Annotated[EndoNeRFDataConfig, tyro.conf.subcommand("endonerf")],
]
"""Union of the data subcommands (``data:synthetic``, ``data:custom``, ``data:davis``, ``data:iphone``,
``data:endonerf``)."""

__all__ = [
    "BgPoints",
    "check_data_config",
    "check_same_content",
    "content_record",
    "CustomDataConfig",
    "PriorDrift",
    "apply_prior_drift",
    "estimate_prior_drift",
    "DataConfig",
    "DavisDataConfig",
    "EndoNeRFDataConfig",
    "HeldOutViews",
    "IPhoneDataConfig",
    "SyntheticDataConfig",
    "Tracks3D",
    "VideoSequence",
    "make_synthetic_sequence",
    "split_frames",
    "tapir_to_visibility",
    "touches_ignored",
    "visibility_to_tapir",
    "write_custom_layout",
]
