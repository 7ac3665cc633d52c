"""What a re-run in a work dir that holds a checkpoint does with a changed command (issue 22, item 1): options
that shape the model or its optimisation -> one error naming each field with both values (or
``--resume-with-changes``, recorded in cfg.yaml's history); safe options -> allowed and logged; ``--max-steps``
below the checkpoint's step -> one error; a finished run re-run with nothing to train, or refused, leaves every
file byte-identical. The ``work`` fixture is a copy of a 4-step run (``FAST``, ``--save-every 2``)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
import yaml
from reliability_helpers import FAST, assert_one_error_line, data_args, main_error, run_cli

import run_training
from flow3d.checkpoint import load_checkpoint
from flow3d.config import TrainConfig, load_config, resume_safe_fields

TRAINED = [*FAST, "--max-steps", "4", "--save-every", "2"]
"""The command the ``trained`` fixture ran (without --work-dir and the data)."""


def _argv(work: Path, clip_root: Path, *args: str) -> list[str]:
    return ["--work-dir", str(work), *args, *data_args(clip_root)]


def _snapshot(work: Path) -> dict[str, tuple[bytes, int]]:
    """Every file of the work dir (the lock file aside: it names its holder) -> (bytes, mtime in ns)."""
    return {
        str(p.relative_to(work)): (p.read_bytes(), p.stat().st_mtime_ns)
        for p in sorted(work.rglob("*"))
        if p.is_file() and p.name != ".lock"
    }


# ------------------------------------------------------------------ the classification
def test_classification_is_declared_on_the_fields():
    safe = resume_safe_fields()
    assert {
        "max_steps",
        "save_every",
        "log_every",
        "image_every",
        "work_dir",
        "device",
        "render_backend",
        "max_nonfinite_steps",
        "resume_with_changes",
        "losses.order.flow_cache_dir",
    } == safe
    # what shapes the model or its optimisation is never safe
    for name in (
        "batch_size",
        "seed",
        "init.num_fg",
        "init.num_motion_bases",
        "optim.lr_means",
        "losses.w_rgb",
        "densify.max_gaussians",
        "losses.order.neighbor_stride",
        "prior_align",
        "bg_color",
    ):
        assert name not in safe


# ------------------------------------------------------------------ shape-changing options
def test_changed_model_options_are_one_error_naming_both_values(work, clip_root):
    before = _snapshot(work)
    msg = main_error(
        run_training.main,
        _argv(work, clip_root, *TRAINED, "--init.num-bg", "50", "--losses.w-rgb", "2", "--optim.lr-means", "0.002"),
        "last.ckpt",
        "(step 4)",
        "--init.num-bg 100 -> 50",
        "--losses.w-rgb 1.0 -> 2.0",
        "--optim.lr-means 0.001 -> 0.002",
        "another --work-dir",
        "--resume-with-changes",
    )
    assert "--max-steps" not in msg and "--save-every" not in msg  # unchanged / safe: not listed
    assert _snapshot(work) == before


@pytest.mark.slow  # run_training.py in a subprocess (the exit code)
def test_default_command_on_a_preset_run_is_refused_exit_1(work, clip_root):
    """The issue's case: a preset run re-run with the user's default command (no preset)."""
    before = _snapshot(work)
    r = run_cli("run_training.py", *_argv(work, clip_root, "--max-steps", "4"))
    assert r.returncode == 1, r.stderr[-3000:]
    line = assert_one_error_line(
        r.stderr,
        "--batch-size 2 -> 8",
        "--init.num-motion-bases 6 -> 10",
        "--init.num-fg 100 -> 4000",
        "--resume-with-changes",
        "--work-dir",
    )
    assert "--max-steps" not in line
    assert _snapshot(work) == before


def test_copied_work_dir_resumes_without_a_word_about_its_path(work, trained, clip_root, caplog):
    with caplog.at_level(logging.INFO, logger="flow3d"):
        assert (
            run_training.main(_argv(work, clip_root, *TRAINED[:-4], "--max-steps", "5", "--save-every", "2"))["steps"]
            == 5
        )
    assert str(trained) not in caplog.text


def test_resume_with_changes_continues_and_records_the_history(work, clip_root, caplog):
    changed = [*TRAINED[:-4], "--save-every", "2", "--losses.w-rgb", "2", "--seed", "3"]
    with caplog.at_level(logging.WARNING, logger="flow3d"):
        stats = run_training.main(_argv(work, clip_root, *changed, "--max-steps", "6", "--resume-with-changes"))
    assert stats["steps"] == 6 and stats["steps_this_run"] == 2
    assert any(
        "--resume-with-changes" in r.getMessage() and "--losses.w-rgb 1.0 -> 2.0" in r.getMessage()
        for r in caplog.records
    )
    doc = yaml.safe_load((work / "cfg.yaml").read_text())
    assert doc["history"] == [
        {
            "step": 4,
            "time": doc["history"][0]["time"],
            "changed": {
                "--seed": {"from": 0, "to": 3},
                "--losses.w-rgb": {"from": 1.0, "to": 2.0},
                "--max-steps": {"from": 4, "to": 6},
            },
        }
    ]
    cfg = load_config(work / "cfg.yaml")  # the history is not a field
    assert cfg.losses.w_rgb == 2.0 and cfg.seed == 3 and cfg.resume_with_changes is False
    ckpt = load_checkpoint(work / "checkpoints" / "last.ckpt")
    assert ckpt["config"]["losses"]["w_rgb"] == 2.0 and ckpt["config_history"] == doc["history"]
    # the new options are now the run's: the same command without the flag resumes; the old ones are refused
    assert run_training.main(_argv(work, clip_root, *changed, "--max-steps", "8"))["steps"] == 8
    assert yaml.safe_load((work / "cfg.yaml").read_text())["history"] == doc["history"]  # kept
    main_error(
        run_training.main,
        _argv(work, clip_root, *TRAINED[:-4], "--max-steps", "10"),
        "--losses.w-rgb 2.0 -> 1.0",
        "--seed 3 -> 0",
    )


def test_checkpoint_without_recorded_options_is_compared_with_cfg_yaml(work, clip_root):
    """Checkpoints written before the options were recorded: the work dir's cfg.yaml stands for them."""
    for name in ("last.ckpt", "model_4.ckpt"):
        path = work / "checkpoints" / name
        payload = torch.load(path, weights_only=True)
        del payload["config"]
        torch.save(payload, path)
    main_error(
        run_training.main,
        _argv(work, clip_root, *TRAINED, "--init.num-motion-bases", "4"),
        "--init.num-motion-bases 6 -> 4",
    )


# ------------------------------------------------------------------ safe options
def test_safe_changes_are_allowed_and_logged(work, clip_root, caplog):
    args = [
        *TRAINED[:-4],
        "--max-steps",
        "6",
        "--save-every",
        "3",
        "--log-every",
        "5",
        "--image-every",
        "0",
        "--render-backend",
        "torch",
    ]
    with caplog.at_level(logging.INFO, logger="flow3d"):
        stats = run_training.main(_argv(work, clip_root, *args))
    assert stats["steps"] == 6 and stats["steps_this_run"] == 2
    (line,) = [r.getMessage() for r in caplog.records if "safe to change" in r.getMessage()]
    for change in (
        "--max-steps 4 -> 6",
        "--save-every 2 -> 3",
        "--log-every 1000 -> 5",
        "--render-backend 'auto' -> 'torch'",
    ):
        assert change in line, line
    assert (work / "checkpoints" / "model_6.ckpt").is_file()
    assert not yaml.safe_load((work / "cfg.yaml").read_text()).get("history")  # safe changes are not history


def test_max_steps_below_the_checkpoint_step_is_an_error(work, clip_root):
    before = _snapshot(work)
    main_error(
        run_training.main,
        _argv(work, clip_root, *TRAINED[:-4], "--max-steps", "2", "--save-every", "2"),
        "--max-steps 2",
        "below the step",
        "last.ckpt",
        "(4)",
        "--max-steps 4 or more",
    )
    assert _snapshot(work) == before


# ------------------------------------------------------------------ a finished run
def test_finished_run_files_byte_identical_after_refused_and_noop_reruns(work, clip_root, caplog):
    before = _snapshot(work)
    assert {"cfg.yaml", "train_stats.json", "checkpoints/last.ckpt", "checkpoints/model_4.ckpt"} <= set(before)
    main_error(run_training.main, _argv(work, clip_root, *TRAINED, "--batch-size", "3"), "--batch-size 2 -> 3")
    assert _snapshot(work) == before
    with caplog.at_level(logging.INFO, logger="flow3d"):
        stats = run_training.main(_argv(work, clip_root, *TRAINED))  # the same command: nothing to train
    assert stats["steps"] == 4 and stats["steps_this_run"] == 0
    assert any("nothing to train" in r.getMessage() and "no file was written" in r.getMessage() for r in caplog.records)
    assert _snapshot(work) == before  # bytes and modification times
    # a safe change with nothing to train (--save-every) is a no-op too
    run_training.main(_argv(work, clip_root, *TRAINED[:-2], "--save-every", "1"))
    assert _snapshot(work) == before


def test_run_interrupted_on_its_last_step_is_completed_not_skipped(work, clip_root):
    """last.ckpt at --max-steps without model_<step>.ckpt and train_stats.json (a signal during the last step):
    the re-run writes them rather than calling the run finished."""
    (work / "checkpoints" / "model_4.ckpt").unlink()
    (work / "train_stats.json").unlink()
    stats = run_training.main(_argv(work, clip_root, *TRAINED))
    assert stats["steps"] == 4 and stats["steps_this_run"] == 0
    assert (work / "checkpoints" / "model_4.ckpt").is_file() and (work / "train_stats.json").is_file()


def test_cfg_yaml_history_round_trip(tmp_path):
    from flow3d.config import config_history, save_config

    entry = {"step": 4, "time": "t", "changed": {"--seed": {"from": 0, "to": 1}}}
    save_config(TrainConfig(seed=1, resume_with_changes=True), tmp_path / "cfg.yaml", [entry])
    assert config_history(tmp_path / "cfg.yaml") == [entry]
    cfg = load_config(tmp_path / "cfg.yaml")
    assert cfg.seed == 1 and cfg.resume_with_changes is False  # a one-off request, not a setting


@pytest.mark.parametrize("preset", ["cpu_endonerf"])
def test_another_preset_names_its_fields(work, clip_root, preset):
    main_error(
        run_training.main,
        _argv(work, clip_root, *FAST[2:], "--preset", preset, "--max-steps", "4"),
        "--init.num-motion-bases 6 -> 10",
        "--bg-color [1.0, 1.0, 1.0] -> [0.0, 0.0, 0.0]",
    )
