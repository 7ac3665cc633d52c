"""The training CLI: presets, the users' literal command lines, cfg.yaml round trip."""

import shlex
import subprocess
import sys

import pytest

from flow3d.config import (
    TrainConfig,
    apply_overrides,
    available_presets,
    config_to_dict,
    load_config,
    load_preset,
    save_config,
)
from run_training import parse_args

USER_TRAIN = (
    "--work-dir ./outputs/pulling_60_ordinal data:custom --data.seq-name pulling "
    "--data.root-dir /data/pulling --data.is-train True"
)


def test_users_training_command_parses_literally():
    cfg = parse_args(shlex.split(USER_TRAIN))
    assert cfg.work_dir == "./outputs/pulling_60_ordinal"
    assert type(cfg.data).__name__ == "CustomDataConfig"
    assert cfg.data.seq_name == "pulling" and str(cfg.data.root_dir) == "/data/pulling" and cfg.data.is_train is True


@pytest.mark.parametrize("name", available_presets())
def test_every_preset_parses_and_overrides_apply(name):
    cfg = parse_args(["--preset", name, "--work-dir", "x", "--max-steps", "7", "data:synthetic"])
    assert cfg.max_steps == 7  # the flag wins over the preset
    overrides = load_preset(name)
    for key, value in overrides.get("losses", {}).items():
        assert getattr(cfg.losses, key) == value


def test_presets_exist():
    assert {"cpu_demo", "som_baseline"} <= set(available_presets())


def test_unknown_override_field_is_an_error():
    with pytest.raises(ValueError, match="unknown field 'w_rgbb'"):
        apply_overrides(TrainConfig(), {"losses": {"w_rgbb": 1.0}})


def test_cfg_yaml_round_trip(tmp_path):
    cfg = parse_args(
        ["--preset", "cpu_demo", "--work-dir", str(tmp_path), "--losses.w-track", "0.5"] + shlex.split(USER_TRAIN)[2:]
    )
    save_config(cfg, tmp_path / "cfg.yaml")
    back = load_config(tmp_path / "cfg.yaml")
    assert config_to_dict(back) == config_to_dict(cfg)
    assert back.losses.w_track == 0.5 and type(back.data).__name__ == "CustomDataConfig"


def test_help_lists_the_data_subcommands_and_presets():
    out = subprocess.run(
        [sys.executable, "run_training.py", "--help"],
        capture_output=True,
        text=True,
        cwd=str(__import__("pathlib").Path(__file__).resolve().parents[2]),
    )
    assert out.returncode == 0, out.stderr
    for sub in ("data:synthetic", "data:custom", "data:davis", "data:iphone", "cpu_demo"):
        assert sub in out.stdout
    assert "--max-steps" in out.stdout and "--device" in out.stdout


def test_presets_stack_left_to_right():
    cfg = parse_args(["--preset", "cpu_demo", "--preset=ordinal", "--work-dir", "x", "data:synthetic"])
    assert cfg.max_steps == load_preset("cpu_demo")["max_steps"]
    assert cfg.losses.w_hinge_ordinal == load_preset("ordinal")["losses"]["w_hinge_ordinal"]
    with pytest.raises(SystemExit, match="available"):
        parse_args(["--preset", "no_such_preset", "data:synthetic"])


def test_bad_input_is_one_clear_error_not_a_traceback(tmp_path):
    from run_training import main

    with pytest.raises(SystemExit, match="error: .*not found: .*nowhere"):
        main(
            [
                "--work-dir",
                str(tmp_path),
                "data:custom",
                "--data.seq-name",
                "s",
                "--data.root-dir",
                str(tmp_path / "nowhere"),
            ]
        )
