"""What a loss term may read in one training step: :class:`StepContext`."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from flow3d.config import LossConfig
from flow3d.depth import depth_to_disp
from flow3d.scene.model import RenderOutput, SceneModel
from flow3d.train.batch import Batch
from flow3d.train.neighbors import NeighborFlow


@dataclass
class StepContext:
    """The inputs of every loss term of one step (typed: a term reads fields, never string keys).

    ``out`` renders the batch's frames; ``next_out`` their flow neighbours (only when a term needs
    neighbour renders). ``reported`` is owned by the trainer and shared across steps: (term, frame) pairs
    already warned about. ``cache`` holds values shared by several terms of this step.
    """

    batch: Batch
    out: RenderOutput
    model: SceneModel
    cfg: LossConfig
    generator: torch.Generator  # CPU generator for every random draw of the terms
    step: int = 0
    all_w2cs: Tensor | None = None  # (T, 4, 4) every frame's camera, on the render device
    next_out: RenderOutput | None = None
    neighbor_flows: dict[int, NeighborFlow] | None = None  # training frame -> its flow to the neighbour
    k_obj: float | None = None  # depth-aware scale: calibrated object constant
    reported: set = field(default_factory=set)
    cache: dict = field(default_factory=dict)

    def pred_disp(self) -> Tensor:
        """(B, H, W) rendered disparity 1 / expected depth (0 where the depth is not valid)."""
        if "pred_disp" not in self.cache:
            self.cache["pred_disp"] = depth_to_disp(self.out.depth[..., 0])[0]
        return self.cache["pred_disp"]

    def depth_mask(self) -> Tensor:
        """(B, H, W) pixels where rendered and prior disparity may be compared."""
        b = self.batch
        return b.prior_valid & b.valid_masks & (self.out.alpha[..., 0] > 0.5)
