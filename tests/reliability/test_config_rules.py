"""The config checks behind the one-line errors: every number of the config tree has a range rule, every
preset passes it, a cfg.yaml cut short is told from one written by an older version."""

from __future__ import annotations

import dataclasses
import typing

import pytest

from flow3d.config import (
    END_MARKER,
    TrainConfig,
    apply_overrides,
    available_presets,
    load_config,
    load_preset,
    rule_for,
    save_config,
    validate_config,
)
from flow3d.data import DataConfig


def _numeric_fields(cls, prefix=""):
    hints = typing.get_type_hints(cls, include_extras=True)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        while typing.get_origin(tp) is typing.Annotated:
            tp = typing.get_args(tp)[0]
        args = typing.get_args(tp) or (tp,)
        if dataclasses.is_dataclass(tp):
            yield from _numeric_fields(tp, prefix + f.name + ".")
        elif (
            any(a in (int, float) for a in args)
            or any(typing.get_origin(a) is tuple and float in typing.get_args(a) for a in args)
            or typing.get_origin(tp) is tuple
        ):
            yield prefix + f.name, f.name


def test_every_numeric_field_has_a_range_rule():
    classes = [TrainConfig] + [typing.get_args(m)[0] for m in typing.get_args(DataConfig)]
    missing = sorted(
        {path for cls in classes for path, name in _numeric_fields(cls) if rule_for(name) is None and name != "data"}
    )
    assert missing == []


@pytest.mark.parametrize("name", available_presets())
def test_every_preset_passes_the_range_checks(name):
    validate_config(apply_overrides(TrainConfig(), load_preset(name), where=name))


def test_several_bad_fields_are_all_named_in_one_error():
    cfg = TrainConfig(max_steps=0, batch_size=-1)
    with pytest.raises(ValueError) as e:
        validate_config(cfg)
    assert "--max-steps must be >= 1, got 0" in str(e.value) and "--batch-size must be >= 1, got -1" in str(e.value)
    assert "\n" not in str(e.value)


def test_cut_short_cfg_yaml_is_an_error_and_an_older_complete_one_is_not(tmp_path, caplog):
    path = tmp_path / "cfg.yaml"
    save_config(TrainConfig(max_steps=7), path)
    text = path.read_text()
    assert text.rstrip().endswith(END_MARKER)
    assert load_config(path).max_steps == 7
    # an older flow3d wrote no end marker: a complete file still loads
    path.write_text(text.replace(END_MARKER, ""))
    assert load_config(path).max_steps == 7
    # cut short: the missing fields are named
    lines = [ln for ln in text.splitlines() if not ln.startswith("seed:")]
    path.write_text("\n".join(lines[: len(lines) // 2]) + "\n")
    with pytest.raises(ValueError, match=r"cut short: missing field\(s\) .*seed"):
        load_config(path)
    # a complete file of an older version that lacks a newer field: defaulted with a warning
    path.write_text("\n".join(ln for ln in text.splitlines() if not ln.startswith("seed:")) + "\n")
    assert load_config(path).seed == TrainConfig().seed
    assert any("seed" in r.getMessage() for r in caplog.records)
