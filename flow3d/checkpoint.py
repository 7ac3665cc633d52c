"""Checkpoints: written atomically (:mod:`flow3d.fileio`), resolved from a step or ``last``, loaded on any
device with clear errors. Used by the trainer (save, resume) and by every command that reads a work dir."""

from __future__ import annotations

import re
from pathlib import Path

import torch

from flow3d.fileio import torch_save

CKPT_RE = re.compile(r"^model_(\d+)\.ckpt$")


def save_checkpoint(path: Path, payload: dict) -> None:
    """``torch.save`` to ``path`` atomically (a crash never leaves a half-written checkpoint)."""
    torch_save(path, payload)


def available_steps(ckpt_dir: Path) -> list[int]:
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        return []
    return sorted(int(m.group(1)) for p in ckpt_dir.iterdir() if (m := CKPT_RE.match(p.name)))


def resolve_checkpoint(work_dir: Path, model: str) -> Path:
    """``model`` is a step number or ``last``; a missing one raises listing what exists."""
    ckpt_dir = Path(work_dir) / "checkpoints"
    path = ckpt_dir / ("last.ckpt" if model == "last" else f"model_{int(model)}.ckpt") if (model == "last" or str(model).isdigit()) else None
    if path is None:
        raise ValueError(f"--model must be a checkpoint step (an integer) or 'last', got {model!r}")
    if not path.is_file():
        steps = available_steps(ckpt_dir)
        last = " and last" if (ckpt_dir / "last.ckpt").is_file() else ""
        raise ValueError(f"checkpoint {path} not found; available steps in {ckpt_dir}: {steps or 'none'}{last}")
    return path


def load_checkpoint(path: Path, map_location="cpu") -> dict:
    """Load a checkpoint written by :func:`save_checkpoint` (``weights_only`` where possible)."""
    path = Path(path)
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises many kinds for truncated / foreign files
        raise ValueError(f"checkpoint {path} is corrupt or not a flow3d checkpoint ({type(e).__name__}: {e})") from None
    if not isinstance(payload, dict) or "model" not in payload or "step" not in payload:
        raise ValueError(f"checkpoint {path} is not a flow3d checkpoint (expected a dict with 'model' and 'step')")
    return payload
