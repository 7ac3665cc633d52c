"""Gaussian parameters: raw tensors the optimiser sees, activations in getters.

Raw parameters (one ``nn.Parameter`` each, so densification can resize them with their optimiser state):

    means        (N, 3)  canonical-frame centres (foreground) or world centres (background)
    quats        (N, 4)  wxyz, not normalised (``get_quats`` normalises)
    scales       (N, 3)  log of the standard deviations (``get_scales`` applies exp)
    opacities    (N,)    logits (``get_opacities`` applies sigmoid)
    colors       (N, 3)  logits of RGB in [0, 1] (``get_colors`` applies sigmoid)
    motion_coefs (N, K)  foreground only: logits of the weights over the K motion bases (softmax)
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

PER_GAUSSIAN = ("means", "quats", "scales", "opacities", "colors", "motion_coefs")


def _logit(x: Tensor, eps: float = 1e-4) -> Tensor:
    x = x.clamp(eps, 1 - eps)
    return torch.log(x / (1 - x))


class GaussianParams(nn.Module):
    """A set of Gaussians; ``motion_coefs`` present for the foreground set only."""

    def __init__(
        self,
        means: Tensor,
        quats: Tensor,
        scales: Tensor,
        opacities: Tensor,
        colors: Tensor,
        motion_coefs: Tensor | None = None,
        *,
        raw: bool = False,
    ):
        """Build from activated values (``raw=False``: scales > 0, opacities and colours in (0, 1),
        coefs as weights or logits) or from raw values (``raw=True``, e.g. from a checkpoint)."""
        super().__init__()
        N = means.shape[0]
        for name, t, shape in (
            ("means", means, (N, 3)),
            ("quats", quats, (N, 4)),
            ("scales", scales, (N, 3)),
            ("opacities", opacities, (N,)),
            ("colors", colors, (N, 3)),
        ):
            if tuple(t.shape) != shape:
                raise ValueError(f"{name} must have shape {shape}, got {tuple(t.shape)}")
        if motion_coefs is not None and (motion_coefs.dim() != 2 or motion_coefs.shape[0] != N):
            raise ValueError(f"motion_coefs must be (N={N}, K), got {tuple(motion_coefs.shape)}")
        if not raw:
            scales = torch.log(scales.clamp_min(1e-8))
            opacities = _logit(opacities)
            colors = _logit(colors)
        self.params = nn.ParameterDict(
            {
                "means": nn.Parameter(means.detach().clone()),
                "quats": nn.Parameter(quats.detach().clone()),
                "scales": nn.Parameter(scales.detach().clone()),
                "opacities": nn.Parameter(opacities.detach().clone()),
                "colors": nn.Parameter(colors.detach().clone()),
            }
        )
        if motion_coefs is not None:
            self.params["motion_coefs"] = nn.Parameter(motion_coefs.detach().clone())

    @classmethod
    def from_state_dict(cls, state: dict[str, Tensor], prefix: str = "params.") -> "GaussianParams":
        get = lambda k: state[prefix + k]  # noqa: E731
        coefs = state.get(prefix + "motion_coefs")
        return cls(get("means"), get("quats"), get("scales"), get("opacities"), get("colors"), coefs, raw=True)

    @property
    def num_gaussians(self) -> int:
        return self.params["means"].shape[0]

    @property
    def has_motion(self) -> bool:
        return "motion_coefs" in self.params

    def get_means(self) -> Tensor:
        return self.params["means"]

    def get_quats(self) -> Tensor:
        return F.normalize(self.params["quats"], dim=-1)

    def get_scales(self) -> Tensor:
        return torch.exp(self.params["scales"])

    def get_opacities(self) -> Tensor:
        return torch.sigmoid(self.params["opacities"])

    def get_colors(self) -> Tensor:
        return torch.sigmoid(self.params["colors"])

    def get_coefs(self) -> Tensor:
        if not self.has_motion:
            raise ValueError("these Gaussians are static: they have no motion_coefs")
        return torch.softmax(self.params["motion_coefs"], dim=-1)
