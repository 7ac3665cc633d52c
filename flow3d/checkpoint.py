"""Checkpoints: written atomically (:mod:`flow3d.fileio`), resolved from a step or ``last``, loaded on any
device with clear errors. Used by the trainer (save, resume) and by every command that reads a work dir.

A training resumes from :func:`resume_point`: ``last.ckpt``, or the newest intact ``model_<step>.ckpt``
when ``last.ckpt`` is unreadable (it is then kept aside as ``last.ckpt.unreadable``) or missing."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Optional

import torch

from flow3d.fileio import set_aside, torch_save
from flow3d.log import get_logger

logger = get_logger(__name__)

CKPT_RE = re.compile(r"^model_(\d+)\.ckpt$")

RESUME_KEYS = ("optimizers", "strategy_state", "scene_extent", "canonical_t", "rng")
"""What a training needs beyond ``model`` and ``step`` to resume from a checkpoint (``run_training.py`` writes
them all; a file from another program, or one stripped of its optimiser state, lacks some)."""


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
    path = (
        ckpt_dir / ("last.ckpt" if model == "last" else f"model_{int(model)}.ckpt")
        if (model == "last" or str(model).isdigit())
        else None
    )
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


def load_resumable(path: Path) -> dict:
    """:func:`load_checkpoint`, and ``ValueError`` when the file lacks what a training resumes from
    (:data:`RESUME_KEYS`: e.g. written by another program, or without its optimiser state)."""
    payload = load_checkpoint(path)
    missing = [k for k in RESUME_KEYS if k not in payload]
    if missing:
        raise ValueError(
            f"checkpoint {path} cannot be resumed from: it lacks {', '.join(missing)} (it was not written "
            "by run_training.py, or was stripped of its optimiser state)"
        )
    return payload


def resume_point(ckpt_dir: Path) -> Optional[tuple[Path, dict]]:
    """(path, payload) of the checkpoint a training in ``ckpt_dir`` resumes from, or None for a new training.

    ``last.ckpt`` when it loads with everything a training resumes from (:func:`load_resumable`). When it is
    unreadable (truncated, corrupt, another program's, without its optimiser state) or missing while numbered
    checkpoints exist, the newest ``model_<step>.ckpt`` that loads, with a warning naming both files; an
    unreadable ``last.ckpt`` is renamed ``last.ckpt.unreadable`` (kept for the user, never read again).
    ``ValueError`` when checkpoints exist but none loads.
    """
    ckpt_dir = Path(ckpt_dir)
    last = ckpt_dir / "last.ckpt"
    problem = None
    if last.is_file():
        try:
            return last, load_resumable(last)
        except ValueError as e:
            problem = str(e)
    steps = available_steps(ckpt_dir)
    if problem is None and not steps:
        return None
    for step in reversed(steps):
        path = ckpt_dir / f"model_{step}.ckpt"
        try:
            payload = load_resumable(path)
        except ValueError as e:
            logger.warning("%s", e)
            continue
        if problem is not None:
            aside = set_aside(last, "unreadable")
            logger.warning(
                "%s; resuming from %s (step %d), the newest intact checkpoint; the unreadable file is kept as %s",
                problem,
                path,
                int(payload["step"]),
                aside.name,
            )
        else:
            logger.warning(
                "no %s: resuming from %s (step %d), the newest intact checkpoint", last, path, int(payload["step"])
            )
        return path, payload
    what = f"{problem}, and no" if problem is not None else "no"
    raise ValueError(
        f"{what} intact model_<step>.ckpt is left in {ckpt_dir} to resume from: move the folder away "
        "to start a new training"
    )
