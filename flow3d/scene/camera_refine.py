"""Per-frame camera corrections optimised with the scene (``--optim.refine-cameras``).

Each frame t has a small se(3) correction ``delta_t = (rotation vector (3), translation (3))`` in the
frame's camera coordinates, zero at the start: ``w2c'_t = exp(delta_t) @ w2c_t`` with
``exp(delta) = [R(rotvec) | translation]`` (``roma.rotvec_to_rotmat``; scene units, radians). The first
training frame's correction is held at zero (the scene may otherwise drift with all cameras at once).

Held-out frames never get a gradient; :meth:`CameraRefine.all_w2cs` gives them the correction
interpolated linearly (in frame index) between the nearest training frames, which is what evaluation
uses. The trainer's hooks are three calls: :meth:`refine_batch` after sampling a batch,
:meth:`all_w2cs` for the cameras of every frame, and the state dict in the checkpoint.
"""

from __future__ import annotations

import roma
import torch
from torch import Tensor, nn

from flow3d.scene.init import interpolate_missing


def se3_exp_small(delta: Tensor) -> Tensor:
    """(..., 6) (rotvec, translation) -> (..., 4, 4) ``[R(rotvec) | translation]``."""
    out = torch.zeros(*delta.shape[:-1], 4, 4, dtype=delta.dtype, device=delta.device)
    out[..., :3, :3] = roma.rotvec_to_rotmat(delta[..., :3])
    out[..., :3, 3] = delta[..., 3:]
    out[..., 3, 3] = 1.0
    return out


class CameraRefine(nn.Module):
    """Learnable per-frame corrections of ``w2cs``. ``train_ids`` (T_train,) long: frames that learn."""

    def __init__(self, num_frames: int, train_ids: Tensor):
        super().__init__()
        self.deltas = nn.Parameter(torch.zeros(num_frames, 6))
        learn = torch.zeros(num_frames, dtype=torch.bool)
        learn[train_ids] = True
        learn[int(train_ids.min())] = False  # the gauge frame
        self.register_buffer("learn", learn)
        train = torch.zeros(num_frames, dtype=torch.bool)
        train[train_ids] = True
        self.register_buffer("is_train", train)

    def effective_deltas(self) -> Tensor:
        """(T, 6): learned corrections on training frames (zero on the gauge frame), interpolated on the others."""
        d = torch.where(self.learn[:, None], self.deltas, torch.zeros_like(self.deltas))
        return interpolate_missing(d[None], self.is_train[None])[0]

    def forward(self, w2cs: Tensor, ts: Tensor) -> Tensor:
        """Corrected cameras (B, 4, 4) of frames ``ts`` (B,) from their cameras ``w2cs`` (B, 4, 4)."""
        return se3_exp_small(self.effective_deltas()[ts]) @ w2cs

    def all_w2cs(self, w2cs: Tensor) -> Tensor:
        """Corrected cameras (T, 4, 4) of every frame from ``w2cs`` (T, 4, 4)."""
        return se3_exp_small(self.effective_deltas()) @ w2cs

    def refine_batch(self, batch):
        """A copy of a :class:`flow3d.train.batch.Batch` with its cameras and target cameras corrected."""
        import dataclasses

        return dataclasses.replace(
            batch, w2cs=self(batch.w2cs, batch.ts), target_w2cs=self(batch.target_w2cs, batch.target_ts)
        )


def make_camera_refine(num_frames: int, train_ids: Tensor, lr: float, device, state: dict | None = None):
    """A :class:`CameraRefine` on ``device`` with its Adam optimiser; ``state`` from :func:`camera_refine_state`
    (a checkpoint) restores both."""
    ref = CameraRefine(num_frames, train_ids.cpu()).to(device)
    opt = torch.optim.Adam(ref.parameters(), lr=lr, eps=1e-15)
    if state is not None:
        ref.load_state_dict(state["module"])
        opt.load_state_dict(state["optimizer"])
    return ref, opt


def camera_refine_state(ref: CameraRefine, opt: torch.optim.Optimizer) -> dict:
    """What a checkpoint keeps: the corrections and the optimiser state."""
    return {"module": ref.state_dict(), "optimizer": opt.state_dict()}


def apply_to_sequence(seq, state: dict | None):
    """``seq`` with every camera corrected by a checkpoint's ``camera_refine`` state (unchanged when None)."""
    if state is None:
        return seq
    import dataclasses

    module = state["module"]
    ref = CameraRefine(module["deltas"].shape[0], seq.train_ids)
    ref.load_state_dict({k: v.cpu() for k, v in module.items()})
    with torch.no_grad():
        w2cs = ref.all_w2cs(seq.w2cs.to(ref.deltas.dtype))
    return dataclasses.replace(seq, w2cs=w2cs)
