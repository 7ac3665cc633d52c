"""Load a trained work dir for the tools that look at the result (export, render_video, view).

A work dir holds ``cfg.yaml`` and ``checkpoints/model_<step>.ckpt`` / ``last.ckpt`` (see
:mod:`flow3d.train.trainer`). This module is the one place where those tools import the checkpoint
and device helpers, so that moving them (``flow3d.checkpoint``, ``flow3d.device``) changes one import.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch import Tensor

from flow3d.checkpoint import load_checkpoint, resolve_checkpoint
from flow3d.config import TrainConfig, load_config
from flow3d.data import VideoSequence
from flow3d.device import pick_device
from flow3d.log import get_logger
from flow3d.scene.gaussians import GaussianParams
from flow3d.scene.model import SceneModel

logger = get_logger(__name__)


@dataclass
class TrainedRun:
    """A checkpoint of a work dir, ready to render (``model`` in eval mode on ``device``)."""

    work_dir: Path
    cfg: TrainConfig  # the training config saved in cfg.yaml
    model: SceneModel
    step: int
    ckpt_path: Path
    device: torch.device
    backend: str  # rasterizer: 'auto', 'gsplat' or 'torch'
    bg_color: Tensor  # (3,) RGB in [0, 1], the colour behind the Gaussians during training

    def load_sequence(self) -> VideoSequence:
        """The training video (cameras, images, ``scene_scale``) from the data config in cfg.yaml.

        Raises ValueError when it does not have the checkpoint's number of frames.
        """
        seq = self.cfg.data.load()
        if seq.num_frames != self.model.num_frames:
            raise ValueError(
                f"{self.ckpt_path} models {self.model.num_frames} frames but the data config in "
                f"{self.work_dir / 'cfg.yaml'} loads {seq.num_frames}"
            )
        return seq

    @torch.no_grad()
    def centres_at(self, t: int) -> Tensor:
        """(N, 3) float64 CPU: the centres of all Gaussians at video frame ``t`` (dynamic moved, static as is)."""
        means, _ = self.model.fg_means_quats_at(torch.tensor([int(t)], device=self.device))  # (N_fg, 1, 3)
        parts = [means[:, 0]] + ([self.model.bg.get_means()] if self.model.bg is not None else [])
        return torch.cat(parts).double().cpu()

    @torch.no_grad()
    def render(
        self, t: int, w2c: Tensor, K: Tensor, img_wh: tuple[int, int], fg: bool = True, bg: bool = True
    ) -> dict[str, np.ndarray]:
        """Render video frame ``t`` from camera ``w2c`` (4, 4) world -> camera (OpenCV), ``K`` (3, 3) pixels.

        ``fg`` / ``bg`` show the dynamic / static Gaussians. Returns numpy arrays on the CPU: ``rgb``
        (H, W, 3) in [0, 1] over ``bg_color``, ``depth`` (H, W) expected z-depth in scene units (0 where
        nothing renders), ``alpha`` (H, W) accumulated opacity, ``fg`` (H, W) foreground weight.
        """
        model = subset_model(self.model, fg, bg)
        out = model.render(
            torch.tensor([int(t)], device=self.device),
            w2c[None].to(self.device, torch.float32),
            K[None].to(self.device, torch.float32),
            img_wh,
            bg_color=self.bg_color,
            backend=self.backend,
        )
        return {
            "rgb": out.img[0].clamp(0, 1).float().cpu().numpy(),  # (H, W, 3)
            "depth": out.depth[0, ..., 0].float().cpu().numpy(),  # (H, W)
            "alpha": out.alpha[0, ..., 0].float().cpu().numpy(),  # (H, W)
            "fg": out.fg[0, ..., 0].float().cpu().numpy(),  # (H, W)
        }


def load_trained_run(
    work_dir: str | Path, model: str = "last", device: str = "auto", render_backend: Optional[str] = None
) -> TrainedRun:
    """Load ``WORK_DIR/cfg.yaml`` and checkpoint ``model`` (a step number or ``'last'``).

    ``device`` is 'auto' (CUDA when available), 'cpu' or 'cuda'; ``render_backend`` defaults to the one
    in cfg.yaml. Every expected failure (missing folder, config or checkpoint, a file that is not a
    flow3d checkpoint) raises one ValueError naming the file.
    """
    work_dir = Path(work_dir)
    if not work_dir.is_dir():
        raise ValueError(f"--work-dir {work_dir} is not a folder")
    cfg = load_config(work_dir / "cfg.yaml")
    dev = pick_device(device)
    if str(model) == "last" or str(model).isdigit():
        wanted = work_dir / "checkpoints" / ("last.ckpt" if str(model) == "last" else f"model_{int(model)}.ckpt")
        if wanted.is_dir():
            raise ValueError(f"checkpoint {wanted} is a folder, not a checkpoint file")
    ckpt_path = resolve_checkpoint(work_dir, str(model))
    payload = load_checkpoint(ckpt_path, map_location=dev)
    try:
        scene = SceneModel.from_state_dict(payload["model"]).to(dev).eval()
    except (KeyError, RuntimeError, ValueError) as e:
        raise ValueError(
            f"checkpoint {ckpt_path}: its 'model' state dict is not a flow3d SceneModel ({type(e).__name__}: {e})"
        ) from None
    scene.requires_grad_(False)
    backend = render_backend or cfg.render_backend
    bg = torch.tensor(cfg.bg_color, device=dev, dtype=torch.float32)
    logger.info(
        "loaded %s (step %d): %d dynamic + %d static Gaussians, %d frames, on %s",
        ckpt_path,
        int(payload["step"]),
        scene.num_fg,
        scene.num_bg,
        scene.num_frames,
        dev,
    )
    return TrainedRun(work_dir, cfg, scene, int(payload["step"]), ckpt_path, dev, backend, bg)


def check_output_path(path: str | Path, flag: str, folder: bool) -> Path:
    """Check before any work that ``path`` (a file, or a ``folder``) can be written: ValueError naming
    ``flag`` when it is a folder where a file belongs (or a file where a folder belongs), or when a
    file stands where one of its parent folders would be created."""
    path = Path(path)
    if path.exists() and path.is_dir() != folder:
        raise ValueError(f"{flag} {path} is a {'file' if folder else 'folder'}, not a {'folder' if folder else 'file'}")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ValueError(f"{flag} {path} cannot be created: {parent} is a file")
            break
    return path


def subset_model(model: SceneModel, fg: bool = True, bg: bool = True) -> SceneModel:
    """A view of ``model`` with only its dynamic (``fg``) and/or static (``bg``) Gaussians.

    The parameters are shared, not copied. Hiding the dynamic set keeps the motion bases and zero
    dynamic Gaussians, so the result still renders with :meth:`SceneModel.render`.
    """
    if fg and bg:
        return model
    if fg:
        return SceneModel(model.fg, model.bases, None)
    p = model.fg.params
    empty = GaussianParams(
        p["means"][:0],
        p["quats"][:0],
        p["scales"][:0],
        p["opacities"][:0],
        p["colors"][:0],
        p["motion_coefs"][:0],
        raw=True,
    )
    return SceneModel(empty, model.bases, model.bg if bg else None)


__all__ = ["TrainedRun", "check_output_path", "load_trained_run", "subset_model"]
