"""Fixtures of the tools that look at a trained scene: a tiny trained work dir and its sequence."""

from __future__ import annotations

from pathlib import Path

import pytest

TRAIN_ARGS = [
    "--preset",
    "cpu_demo",
    "--max-steps",
    "4",
    "--save-every",
    "2",
    "--init.num-fg",
    "200",
    "--init.num-bg",
    "300",
    "--init.init-fit-steps",
    "20",
    "data:synthetic",
    "--data.num-frames",
    "8",
    "--data.width",
    "48",
    "--data.height",
    "36",
]


@pytest.fixture(scope="session")
def work_dir(tmp_path_factory) -> Path:
    """A work dir trained for 4 steps on an 8-frame 48x36 synthetic clip (checkpoints 2, 4 and last)."""
    import run_training

    d = tmp_path_factory.mktemp("vis_work")
    run_training.main(["--work-dir", str(d), *TRAIN_ARGS])
    return d


@pytest.fixture(scope="session")
def trained(work_dir):
    """(TrainedRun, VideoSequence) of ``work_dir``'s last checkpoint on the CPU."""
    from flow3d.vis.load import load_trained_run

    run = load_trained_run(work_dir, "last", device="cpu")
    return run, run.load_sequence()
