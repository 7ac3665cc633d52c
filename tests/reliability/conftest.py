"""Fixtures of the reliability catalogue: a tiny clip in the custom layout and one tiny trained work dir."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from reliability_helpers import FAST, SEQ, data_args, run_cli


@pytest.fixture(scope="session")
def clip_root(tmp_path_factory) -> Path:
    """A 6-frame 32x24 synthetic clip written in the custom layout (images/clip/00000.png, ...)."""
    from flow3d.data import SyntheticDataConfig, make_synthetic_sequence, write_custom_layout

    cfg = SyntheticDataConfig(num_frames=6, width=32, height=24, track_grid_step=4, normalize_scene=False)
    root = tmp_path_factory.mktemp("clip")
    write_custom_layout(make_synthetic_sequence(cfg), root, SEQ)
    return root


@pytest.fixture
def clip(clip_root, tmp_path) -> Path:
    """A copy of the clip that a case may damage."""
    return Path(shutil.copytree(clip_root, tmp_path / "clip_copy"))


@pytest.fixture(scope="session")
def trained(clip_root, tmp_path_factory) -> Path:
    """A work dir trained 4 steps on the clip in a subprocess (checkpoints model_2, model_4, last)."""
    work = tmp_path_factory.mktemp("trained") / "w"
    r = run_cli(
        "run_training.py",
        "--work-dir",
        str(work),
        *FAST,
        "--max-steps",
        "4",
        "--save-every",
        "2",
        *data_args(clip_root),
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    return work


@pytest.fixture
def work(trained, tmp_path) -> Path:
    """A copy of the trained work dir that a case may damage or continue."""
    return Path(shutil.copytree(trained, tmp_path / "work"))
