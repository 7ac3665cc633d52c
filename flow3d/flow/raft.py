"""torchvision RAFT (Teed & Deng 2020) as a flow backend.

Weights are never downloaded: the model is built with ``weights=None`` and its state dict is loaded from
the local file given as the ``weights`` option (for example torchvision's
``raft_large_C_T_SKHT_V2-ff5fadd5.pth``, fetched once by hand). Inputs are scaled to [-1, 1] as RAFT
expects, padded by edge replication to a multiple of 8 (split evenly between both sides, as RAFT's
``InputPadder``; frames smaller than 128 px are padded up to 128, the smallest size torchvision's
correlation pyramid accepts), and the flow is cropped back to the exact input size. The GPU is used when present.

torchvision is imported lazily (``pip install flow3d[raft]``); it does not import next to every torch
build, so the rest of :mod:`flow3d.flow` never needs it.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from flow3d.log import get_logger

logger = get_logger(__name__)

RAFT_MODELS = ("raft_small", "raft_large")
RAFT_MIN_SIZE = 128  # torchvision's correlation pyramid needs feature maps of at least 16 x 16 (1/8 scale)
_MODEL_CACHE: dict[tuple, torch.nn.Module] = {}


class MissingWeightsError(FileNotFoundError, ValueError):
    """The RAFT ``weights`` option is unset or names a file that does not exist."""


def _import_torchvision_raft():
    try:
        from torchvision.models import optical_flow
    except Exception as err:  # ImportError, or the RuntimeError a mismatched torch/torchvision pair raises
        raise ImportError(
            "the 'raft' flow backend needs torchvision (pip install 'flow3d[raft]' with a matching torch; "
            f"on a CPU machine torch==2.14.1 torchvision==0.29.1): {err}"
        ) from err
    return optical_flow


def _unwrap_state_dict(obj, path: Path) -> dict:
    if isinstance(obj, dict):
        for key in ("state_dict", "model"):
            if key in obj and isinstance(obj[key], dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(torch.is_tensor(v) for v in obj.values()):
        raise ValueError(f"{path}: expected a RAFT state dict (name -> tensor), got {type(obj).__name__}")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def load_raft(weights: str | os.PathLike | None, model: str = "raft_large", device: str | torch.device | None = None):
    """Build torchvision's ``model`` without downloading anything and load ``weights`` (a local file).

    Cached per (model, file, modification time, device). Returns the model in eval mode on ``device``
    (default: CUDA when available, else CPU).
    """
    if model not in RAFT_MODELS:
        raise ValueError(f"RAFT model must be one of {RAFT_MODELS}, got {model!r}")
    if weights is None or str(weights) == "":
        raise MissingWeightsError(
            "the 'raft' flow backend needs the option weights=<path to a local RAFT state dict>; weights are "
            "never downloaded at run time (get e.g. torchvision's raft_large_C_T_SKHT_V2-ff5fadd5.pth once by hand)"
        )
    path = Path(weights).expanduser()
    if not path.is_file():
        raise MissingWeightsError(
            f"RAFT weights file not found: {path} (set the 'weights' option to a local state dict file; "
            "flow3d never downloads weights)"
        )
    device = (
        torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    )
    key = (model, str(path.resolve()), path.stat().st_mtime_ns, str(device))
    if key not in _MODEL_CACHE:
        optical_flow = _import_torchvision_raft()
        net = getattr(optical_flow, model)(weights=None, progress=False)
        state = _unwrap_state_dict(torch.load(path, map_location="cpu", weights_only=True), path)
        try:
            net.load_state_dict(state)
        except RuntimeError as err:
            raise ValueError(f"{path}: state dict does not fit torchvision {model}: {err}") from err
        _MODEL_CACHE[key] = net.eval().to(device)
        logger.info("loaded %s weights from %s on %s", model, path, device)
    return _MODEL_CACHE[key]


def pad_to_multiple(
    x: torch.Tensor, multiple: int = 8, min_size: int = 0
) -> tuple[torch.Tensor, tuple[int, int, int, int]]:
    """Edge-pad (B, C, H, W) so H and W are multiples of ``multiple`` and at least ``min_size``.

    The padding is split evenly (the extra pixel goes below / right). Returns the tensor and
    (left, right, top, bottom).
    """
    H, W = x.shape[-2:]
    ph, pw = max((-H) % multiple, min_size - H), max((-W) % multiple, min_size - W)
    ph, pw = ph + (-(H + ph)) % multiple, pw + (-(W + pw)) % multiple
    pads = (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2)
    return (F.pad(x, pads, mode="replicate") if ph or pw else x), pads


def unpad(x: torch.Tensor, pads: tuple[int, int, int, int]) -> torch.Tensor:
    """Undo :func:`pad_to_multiple` on (B, C, H', W')."""
    left, right, top, bottom = pads
    H, W = x.shape[-2:]
    return x[..., top : H - bottom, left : W - right]


@torch.no_grad()
def raft_flow(
    img0: np.ndarray,
    img1: np.ndarray,
    weights: str | os.PathLike | None = None,
    model: str = "raft_large",
    num_flow_updates: int = 12,
    device: str | torch.device | None = None,
) -> np.ndarray:
    """RAFT flow img0 -> img1: (H, W, 3) uint8 RGB each -> (H, W, 2) float32 numpy, (dx, dy) pixels.

    weights: local state-dict file (required). model: "raft_small" | "raft_large".
    num_flow_updates: refinement iterations (torchvision's default is 12; RAFT used 32 on Sintel).
    """
    if int(num_flow_updates) < 1:
        raise ValueError(f"num_flow_updates must be >= 1, got {num_flow_updates}")
    net = load_raft(weights, model, device)
    dev = next(net.parameters()).device
    if img0.ndim == 2:
        img0, img1 = np.repeat(img0[..., None], 3, -1), np.repeat(img1[..., None], 3, -1)
    pair = torch.from_numpy(np.stack([img0, img1])).to(dev).permute(0, 3, 1, 2).float()  # (2, 3, H, W)
    pair = pair / 127.5 - 1.0  # [0, 255] -> [-1, 1]
    pair, pads = pad_to_multiple(pair, 8, RAFT_MIN_SIZE)
    flows = net(pair[:1], pair[1:], num_flow_updates=int(num_flow_updates))
    flow = unpad(flows[-1], pads)[0]  # (2, H, W)
    return flow.permute(1, 2, 0).float().cpu().numpy()
