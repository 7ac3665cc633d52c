"""Issue 22's cases about options, presets, cfg.yaml and the training run itself (items 2-5): each asserts the
exact outcome, one ``error:`` line naming the file or flag (exit 1; usage errors exit 2) or the documented
recovery. Presets and cfg.yaml get the command line's type checks; run_val's two splits have their own
folders; the training says which split it fits, on which device, and how long a CPU run of a GPU-sized
config takes."""

from __future__ import annotations

import json
import logging
import textwrap
from pathlib import Path

import pytest
import torch
import yaml
from reliability_helpers import FAST, assert_one_error_line, data_args, main_error, run_cli

import run_training
import run_val
from flow3d.cli import run_main
from flow3d.config import TrainConfig, apply_overrides, load_preset, validate_config

TRAINED = [*FAST, "--max-steps", "4", "--save-every", "2"]


def _argv(work: Path, clip_root: Path, *args: str, data: tuple[str, ...] = ()) -> list[str]:
    return ["--work-dir", str(work), *args, *data_args(clip_root, *data)]


# ------------------------------------------------------------------ presets: the command line's types
def test_preset_number_that_yaml_reads_as_text_is_a_float(tmp_path):
    preset = tmp_path / "mine.yaml"
    preset.write_text("optim:\n  lr_means: 1e-3\n  lr_quats: 5E-4\n")
    assert load_preset(str(preset))["optim"]["lr_means"] == "1e-3"  # YAML 1.1: a string
    cfg = run_training.parse_args(["--preset", str(preset), "--work-dir", "x", "data:synthetic"])
    assert cfg.optim.lr_means == 1e-3 and type(cfg.optim.lr_means) is float and cfg.optim.lr_quats == 5e-4


@pytest.mark.parametrize(
    "text, field, wanted",
    [
        ("max_steps: true\n", "max_steps", "an integer"),
        ("batch_size: 2.5\n", "batch_size", "an integer"),
        ("optim:\n  lr_means: fast\n", "optim.lr_means", "a number"),
        ("optim: 3\n", "optim", "mapping"),
        ("bg_color: white\n", "bg_color", "a list"),
        ("bg_color: [1, 1]\n", "bg_color", "a list of 3 values"),
        ("device: gpu\n", "device", "one of 'auto', 'cpu', 'cuda'"),
        ("optim:\n  refine_cameras: 1\n", "optim.refine_cameras", "true or false"),
    ],
)
def test_preset_value_of_the_wrong_type_is_one_error_naming_file_and_field(tmp_path, text, field, wanted):
    preset = tmp_path / "bad.yaml"
    preset.write_text(text)
    main_error(
        run_training.main,
        ["--preset", str(preset), "--work-dir", str(tmp_path / "w"), "data:synthetic"],
        str(preset),
        field,
        wanted,
    )
    assert not (tmp_path / "w").exists()  # before anything is made


def test_preset_that_is_not_yaml_names_the_file(tmp_path):
    preset = tmp_path / "bad.yaml"
    preset.write_text("max_steps: [1\n")
    main_error(
        run_training.main,
        ["--preset", str(preset), "--work-dir", str(tmp_path / "w"), "data:synthetic"],
        str(preset),
        "not valid YAML",
    )


@pytest.mark.parametrize(
    "argv", [["--preset"], ["--preset", "--max-steps", "4"], ["--preset="], ["--preset", "data:synthetic"]]
)
def test_preset_without_a_name_is_a_usage_error(argv, capsys):
    with pytest.raises(SystemExit) as e:
        run_training.main(["--work-dir", "x", *argv])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert_one_error_line(err, "--preset needs a name", "cpu_demo")


@pytest.mark.slow  # run_training.py in a subprocess (the exit code a shell sees)
def test_preset_without_a_name_exits_2_in_a_shell():
    r = run_cli("run_training.py", "--work-dir", "x", "data:synthetic", "--preset")
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0
    assert_one_error_line(r.stderr, "--preset needs a name")


# ------------------------------------------------------------------ --seed
def test_seed_beyond_64_bits_is_one_error_naming_it(tmp_path):
    main_error(
        run_training.main,
        ["--work-dir", str(tmp_path / "w"), "--seed", str(2**64), "data:synthetic"],
        "--seed must be in [0, 18446744073709551615]",
        str(2**64),
    )
    cfg = validate_config(TrainConfig(seed=2**64 - 1))  # the largest seed torch takes is accepted ...
    torch.Generator().manual_seed(cfg.seed)  # ... and torch takes it


# ------------------------------------------------------------------ cfg.yaml read by run_val
@pytest.mark.parametrize(
    "edit, field, wanted",
    [
        (lambda d: d["data"].update(val_every=2.5), "data.val_every", "an integer"),
        (lambda d: d["losses"].update(w_rgb="heavy"), "losses.w_rgb", "a number"),
        (lambda d: d.update(bg_color="white"), "bg_color", "a list"),
        (lambda d: d.update(max_steps=True), "max_steps", "an integer"),
        (lambda d: d["data"].update(seq_name=7), "data.seq_name", "a string"),
    ],
)
def test_run_val_cfg_yaml_of_the_wrong_type_is_one_error_naming_file_and_field(work, edit, field, wanted):
    path = work / "cfg.yaml"
    doc = yaml.safe_load(path.read_text())
    edit(doc)
    path.write_text(yaml.safe_dump(doc, sort_keys=False) + "# end of the flow3d config\n")
    main_error(run_val.main, ["--work-dir", str(work), "--no-video"], str(path), field, wanted)
    assert not (work / "val").exists()


def test_cfg_yaml_number_written_as_yaml_1_1_text_loads(tmp_path):
    from flow3d.config import load_config, save_config

    path = tmp_path / "cfg.yaml"
    save_config(TrainConfig(), path)
    path.write_text(path.read_text().replace("lr_means: 0.00016", "lr_means: 1.6e-4"))
    assert load_config(path).optim.lr_means == 1.6e-4


def test_python_callers_may_pass_config_objects_whole():
    from flow3d.config import LossConfig

    cfg = apply_overrides(TrainConfig(), {"losses": LossConfig(w_rgb=3.0)})
    assert cfg.losses.w_rgb == 3.0


# ------------------------------------------------------------------ checkpoints another program wrote
def _strip(path: Path, *keys: str) -> None:
    payload = torch.load(path, weights_only=True)
    for k in keys:
        del payload[k]
    torch.save(payload, path)


@pytest.mark.parametrize("damage", ["no optimiser state", "another program"])
def test_last_ckpt_that_cannot_be_resumed_falls_back_to_the_newest_model_ckpt(work, clip_root, caplog, damage):
    last = work / "checkpoints" / "last.ckpt"
    if damage == "no optimiser state":
        _strip(last, "optimizers")
    else:
        torch.save({"model": {"weights": torch.zeros(3)}, "step": 4}, last)
    _strip(work / "checkpoints" / "model_4.ckpt", "optimizers")  # the newest numbered one lacks it too
    with caplog.at_level(logging.WARNING, logger="flow3d"):
        stats = run_training.main(_argv(work, clip_root, *TRAINED[:-4], "--max-steps", "6", "--save-every", "0"))
    assert stats["steps"] == 6 and stats["steps_this_run"] == 4  # from model_2.ckpt
    warned = [r.getMessage() for r in caplog.records if "newest intact" in r.getMessage()]
    assert len(warned) == 1 and "last.ckpt" in warned[0] and "model_2.ckpt" in warned[0], warned
    assert "cannot be resumed from" in caplog.text and "optimizers" in caplog.text
    assert (work / "checkpoints" / "last.ckpt.unreadable").is_file()  # the user's file is kept


def test_checkpoint_with_a_foreign_model_is_one_error_naming_it(work, clip_root):
    ckpt = work / "checkpoints" / "last.ckpt"
    payload = torch.load(ckpt, weights_only=True)
    payload["model"] = {"backbone.weight": torch.zeros(2, 2)}
    torch.save(payload, ckpt)
    main_error(
        run_training.main,
        _argv(work, clip_root, *TRAINED[:-4], "--max-steps", "6", "--save-every", "2"),
        str(ckpt),
        "cannot be resumed from",
    )


# ------------------------------------------------------------------ out of memory
def test_cpu_out_of_memory_is_one_error_with_advice():
    def allocate(argv):
        torch.empty(2**50, dtype=torch.uint8)  # the CPU allocator refuses (1 PiB)

    with pytest.raises(SystemExit) as e:
        run_main(allocate, [])
    msg = e.value.code
    assert isinstance(msg, str) and msg.startswith("error: out of memory: ") and "\n" not in msg, msg
    assert "DefaultCPUAllocator" in msg and "enforce fail" not in msg and "smaller batch" in msg

    def numpy_alloc(argv):
        raise MemoryError

    with pytest.raises(SystemExit, match=r"^error: out of memory: MemoryError \(free memory"):
        run_main(numpy_alloc, [])

    def bug(argv):
        raise RuntimeError("shape mismatch")  # any other RuntimeError stays a bug with its traceback

    with pytest.raises(RuntimeError, match="shape mismatch"):
        run_main(bug, [])


# ------------------------------------------------------------------ errors raised while the bar runs
@pytest.mark.slow  # a training in a subprocess
def test_error_raised_mid_training_is_on_its_own_line(work, clip_root):
    argv = _argv(work, clip_root, *TRAINED[:-4], "--max-steps", "20", "--save-every", "0")
    script = textwrap.dedent(f"""
        import flow3d.train.trainer as trainer
        real = trainer.weighted_total
        trainer.weighted_total = lambda values, weights: real(values, weights) * float("nan")
        import run_training
        run_training.main({argv!r})
    """)
    r = run_cli("-c", script)
    assert r.returncode == 1, r.stderr[-3000:]
    line = assert_one_error_line(r.stderr, "5 consecutive steps had a non-finite loss")
    # the bar's last state ends with a newline before the error: the error line starts a line of its own
    assert f"\n{line}" in r.stderr.replace("\r", "\n")
    assert r.stderr.split(line)[0].endswith("\n")


def test_the_bar_is_closed_before_an_error_leaves_the_training(work, clip_root, monkeypatch):
    """In-process: the exception (held by pytest, so the bar is not garbage-collected) leaves ``fit`` after the
    bar has closed its line."""
    from flow3d.errors import TrainingError
    from flow3d.train import trainer

    closed = []

    class Bar(trainer.tqdm):
        def close(self):
            closed.append(self.n)
            super().close()

    real, real_fit = trainer.weighted_total, trainer.Trainer.fit
    when_raised = []

    def fit(self):
        try:
            return real_fit(self)
        except TrainingError:
            when_raised.append(list(closed))  # the traceback still holds the bar here: only close() counts
            raise

    monkeypatch.setattr(trainer, "tqdm", Bar)
    monkeypatch.setattr(trainer.Trainer, "fit", fit)
    monkeypatch.setattr(trainer, "weighted_total", lambda values, weights: real(values, weights) * float("nan"))
    cfg = run_training.parse_args(_argv(work, clip_root, *TRAINED[:-4], "--max-steps", "20", "--save-every", "0"))
    with pytest.raises(TrainingError, match="5 consecutive steps"):
        trainer.train(cfg)
    assert when_raised == [[8]]  # resumed at step 4: 4 skipped steps, the 5th raises


# ------------------------------------------------------------------ loss-term checks
def test_neighbor_stride_that_leaves_the_hinge_without_pairs_is_one_warning(tmp_path, clip_root, caplog):
    with caplog.at_level(logging.WARNING, logger="flow3d"):
        run_training.main(
            _argv(
                tmp_path / "w",
                clip_root,
                *FAST,
                "--max-steps",
                "1",
                "--save-every",
                "0",
                "--losses.order.neighbor-stride",
                "100",
            )
        )
    warned = [r.getMessage() for r in caplog.records if "--losses.order.neighbor-stride 100" in r.getMessage()]
    assert len(warned) == 1, caplog.text
    assert "hinge_ordinal" in warned[0] and "5 training frames" in warned[0] and "below 5" in warned[0]


def test_default_neighbor_stride_gives_no_such_warning(work, clip_root, caplog):
    with caplog.at_level(logging.WARNING, logger="flow3d"):
        run_training.main(_argv(work, clip_root, *TRAINED[:-4], "--max-steps", "5", "--save-every", "0"))
    assert "neighbor-stride" not in caplog.text


def test_absurd_loss_weight_names_the_weight_not_the_prior(tmp_path, clip_root):
    msg = main_error(
        run_training.main,
        _argv(tmp_path / "w", clip_root, *FAST, "--max-steps", "8", "--save-every", "0", "--losses.w-rgb", "1e300"),
        "5 consecutive steps had a non-finite loss",
        "loss weight is too large",
        "--losses.w-rgb 1e+300",
    )
    assert "prior" not in msg


# ------------------------------------------------------------------ --data.is-train in run_training.py
@pytest.mark.parametrize("is_train", ["True", "False"])
def test_training_says_once_which_split_it_fits(tmp_path, clip_root, caplog, is_train):
    with caplog.at_level(logging.INFO, logger="flow3d"):
        run_training.main(
            _argv(
                tmp_path / "w",
                clip_root,
                *FAST,
                "--max-steps",
                "1",
                "--save-every",
                "1",
                data=("--data.is-train", is_train),
            )
        )
    said = [r for r in caplog.records if "5 training frames (1 held out, --data.val-every 8)" in r.getMessage()]
    assert len(said) == 1
    assert (said[0].levelno == logging.WARNING) == (is_train == "False")
    if is_train == "False":
        assert "does not change what trains" in said[0].getMessage()
    from flow3d.checkpoint import load_checkpoint

    assert load_checkpoint(tmp_path / "w" / "checkpoints" / "model_1.ckpt")["data"]["train_ids"] == [0, 2, 3, 4, 5]


# ------------------------------------------------------------------ device, backend, expected time
def test_device_and_render_backend_are_logged_at_start(work, clip_root, caplog):
    with caplog.at_level(logging.INFO, logger="flow3d"):
        run_training.main(
            _argv(work, clip_root, *TRAINED[:-4], "--max-steps", "5", "--save-every", "0", "--render-backend", "torch")
        )
    assert "device cpu, render backend torch" in caplog.text


def _bare_trainer(max_steps: int, step: int):
    """A Trainer with only what :meth:`Trainer._expected_time` reads (no data, no model)."""
    from flow3d.train.trainer import Trainer

    t = Trainer.__new__(Trainer)
    t.cfg, t.device, t.step, t._step_times = TrainConfig(max_steps=max_steps), torch.device("cpu"), step, []
    return t


def test_cpu_run_of_a_gpu_sized_config_says_its_expected_time_once(caplog):
    t = _bare_trainer(20000, 0)
    with caplog.at_level(logging.WARNING, logger="flow3d"):
        for seconds in (9.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0):  # the first step (warm-up) is not counted
            t.step += 1
            t._expected_time(seconds, 0)
    warned = [r.getMessage() for r in caplog.records]
    assert len(warned) == 1, warned
    # hand value: 2.0 s/step x (20000 - 6) steps = 39988 s = 11.1 h
    assert "about 11.1 h more (2.00 s/step over steps 2-6, 19994 steps to go)" in warned[0]
    assert "--preset cpu_demo" in warned[0] and "cpu_endonerf" in warned[0]


def test_short_cpu_run_gets_no_expected_time_line(caplog):
    t = _bare_trainer(600, 0)
    with caplog.at_level(logging.WARNING, logger="flow3d"):
        for _ in range(10):
            t.step += 1
            t._expected_time(0.14, 0)  # cpu_demo's speed: 600 steps in ~1.4 min
    assert caplog.records == []


# ------------------------------------------------------------------ run_val: one folder per split
@pytest.mark.slow  # three evaluations
def test_run_val_splits_do_not_overwrite_each_other(work, caplog):
    with caplog.at_level(logging.INFO, logger="flow3d"):
        held = run_val.main(["--work-dir", str(work), "--no-video", "--data.is-train", "False"])
    assert held.out_dir == work / "val" / "4" / "heldout"
    held_bytes = (held.out_dir / "metrics.json").read_bytes()
    train = run_val.main(["--work-dir", str(work), "--no-video", "--data.is-train", "True"])
    assert train.out_dir == work / "val" / "4" / "train"
    assert (held.out_dir / "metrics.json").read_bytes() == held_bytes  # still there, untouched
    assert sorted(p.name for p in (work / "val" / "4").iterdir()) == ["heldout", "train"]
    assert [r["frame"] for r in json.loads((held.out_dir / "metrics.json").read_text())["per_frame"]] == [1]
    assert [r["frame"] for r in json.loads((train.out_dir / "metrics.json").read_text())["per_frame"]] == [
        0,
        2,
        3,
        4,
        5,
    ]
    assert f"wrote the scores of the held-out frames to {held.out_dir}" in caplog.text
    # --out-name still picks the top folder
    other = run_val.main(["--work-dir", str(work), "--no-video", "--data.is-train", "False", "--out-name", "val_b"])
    assert other.out_dir == work / "val_b" / "4" / "heldout"


# ------------------------------------------------------------------ --help keeps its example's line break
def test_help_keeps_the_line_break_of_its_example(capsys):
    with pytest.raises(SystemExit) as e:
        run_training.main(["--help"])
    assert e.value.code == 0
    lines = capsys.readouterr().out.splitlines()
    i = next(i for i, ln in enumerate(lines) if ln.rstrip().endswith("data:custom \\"))
    assert lines[i + 1].strip().startswith("--data.seq-name pulling")
