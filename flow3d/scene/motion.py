"""Shared SE(3) motion bases (Shape of Motion): K trajectories of rigid transforms over T frames.

A foreground Gaussian with basis weights ``w`` (N, K) moves from the canonical frame to frame t by the
transform whose rotation is the 6D blend ``sum_k w_k r_k(t)`` (orthonormalised) and whose translation is
``sum_k w_k t_k(t)``. Rotations are stored in the continuous 6D form (the first two columns of R).
"""

from __future__ import annotations

import roma
import torch
import torch.nn as nn
from torch import Tensor


def rot6d_to_matrix(rot6d: Tensor) -> Tensor:
    """(..., 6) first two columns of R, stacked column after column -> (..., 3, 3)."""
    return roma.special_gramschmidt(rot6d.reshape(*rot6d.shape[:-1], 2, 3).transpose(-1, -2))


def matrix_to_rot6d(R: Tensor) -> Tensor:
    """(..., 3, 3) -> (..., 6): inverse of :func:`rot6d_to_matrix` on rotations."""
    return R[..., :, :2].transpose(-1, -2).reshape(*R.shape[:-2], 6)


class MotionBases(nn.Module):
    """``rots`` (K, T, 6) and ``transls`` (K, T, 3): basis k maps canonical points to frame t."""

    def __init__(self, rots: Tensor, transls: Tensor):
        super().__init__()
        if rots.dim() != 3 or rots.shape[-1] != 6:
            raise ValueError(f"rots must be (K, T, 6), got {tuple(rots.shape)}")
        if transls.shape != (*rots.shape[:2], 3):
            raise ValueError(f"transls must be (K, T, 3) = {(*rots.shape[:2], 3)}, got {tuple(transls.shape)}")
        self.params = nn.ParameterDict(
            {"rots": nn.Parameter(rots.detach().clone()), "transls": nn.Parameter(transls.detach().clone())}
        )

    @classmethod
    def identity(cls, num_bases: int, num_frames: int) -> "MotionBases":
        R = torch.eye(3).expand(num_bases, num_frames, 3, 3)
        return cls(matrix_to_rot6d(R), torch.zeros(num_bases, num_frames, 3))

    @property
    def num_bases(self) -> int:
        return self.params["rots"].shape[0]

    @property
    def num_frames(self) -> int:
        return self.params["rots"].shape[1]

    def compute_transforms(self, ts: Tensor, coefs: Tensor) -> tuple[Tensor, Tensor]:
        """Blend the bases at frames ``ts`` (B,) with weights ``coefs`` (N, K).

        Returns rotations (N, B, 3, 3) and translations (N, B, 3).
        """
        rots = self.params["rots"][:, ts]  # (K, B, 6)
        transls = self.params["transls"][:, ts]  # (K, B, 3)
        rot6d = torch.einsum("nk,kbd->nbd", coefs, rots)
        return rot6d_to_matrix(rot6d), torch.einsum("nk,kbd->nbd", coefs, transls)
