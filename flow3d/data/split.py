"""Train/validation split over the frames of one video.

EndoNeRF protocol, as the EndoNeRF-based Gaussian works implement it (EndoGaussian, Deform3DGS,
SurgicalGaussian: ``test_idxs = [i for i in range(n) if (i - 1) % 8 == 0]``): hold out frames
1, 1 + n, 1 + 2n, ... (indices into the loaded clip, after ``start``/``end``). Frame 0 is always a train
frame, so the first frame, which initialises the scene, is never held out.
"""

from __future__ import annotations

import torch
from torch import Tensor


def split_frames(num_frames: int, val_every: int) -> tuple[Tensor, Tensor]:
    """Return ``(train_ids, val_ids)`` (long tensors indexing 0..num_frames-1).

    ``val_every`` = n holds out every frame i with ``(i - 1) % n == 0``; ``val_every <= 0`` holds out none.
    """
    if num_frames <= 0:
        raise ValueError(f"num_frames must be positive, got {num_frames}")
    if val_every == 1:
        raise ValueError("val_every must be 0 (no validation frames) or >= 2 (hold out every n-th frame), got 1")
    ids = torch.arange(num_frames)
    if val_every <= 0:
        return ids, ids[:0]
    is_val = (ids - 1) % val_every == 0
    return ids[~is_val], ids[is_val]
