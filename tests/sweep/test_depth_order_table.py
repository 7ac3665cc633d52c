"""The per-family depth-order table (flow3d.sweep.depth_order_table) from hand-made trial folders: held-out PSNR
from val/<step>/heldout/, depth AbsRel from val/<step>/train/, mean ± std over seeds and the goal check against hand-computed
ratios. No training (the training-frame scoring is skipped because val/<step>/train/ exists)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from flow3d.eval.report import write_metrics
from flow3d.sweep.depth_order_table import main
from flow3d.sweep.spec import load_spec

REPO = Path(__file__).resolve().parents[2]
SPEC = {
    "runs": {"som_baseline": ["--preset", "som_baseline"], "defaults": []},
    "data": {"tissue": ["data:synthetic", "--data.scene", "tissue"]},
    "seeds": [0, 1],
    "max_steps": 5,
}
# (run, seed) -> held-out psnr, train depth_abs_rel, depth_abs_rel_scale_shift; the prior is the same everywhere
VALUES = {
    ("som_baseline", 0): (30.0, 0.10, 0.060),
    ("som_baseline", 1): (30.2, 0.12, 0.080),
    ("defaults", 0): (29.9, 0.07, 0.020),
    ("defaults", 1): (30.1, 0.09, 0.040),
}
PRIOR = (0.20, 0.12)


def _fake_sweep(tmp_path: Path) -> tuple[Path, Path]:
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(SPEC))
    out = tmp_path / "out"
    for trial in load_spec(spec_path).trials(out):
        psnr, a, ss = VALUES[(trial.run, trial.seed)]
        write_metrics(trial.metrics_path.parent, [], {"psnr": psnr, "depth_abs_rel": 9.9})  # held-out depth: unused
        write_metrics(
            trial.work_dir / "val" / "5" / "train",
            [],
            {
                "psnr": 99.0,
                "depth_abs_rel": a,
                "depth_abs_rel_scale_shift": ss,
                "prior_abs_rel": PRIOR[0],
                "prior_abs_rel_scale_shift": PRIOR[1],
            },
        )
    return spec_path, out


def test_table_takes_psnr_from_held_out_and_depth_from_training_frames(tmp_path, capsys):
    spec_path, out = _fake_sweep(tmp_path)
    assert main([str(spec_path), "--out-dir", str(out)]) == 0
    text = (out / "depth_order_table.md").read_text()
    # defaults: psnr mean 30.0, std 0.1414; AbsRel 0.08 ± 0.0141; shape 0.03 ± 0.0141
    assert "| defaults | 2 | 30.00 ± 0.14 | **0.0800 ± 0.0141** | **0.0300 ± 0.0141** |" in text
    assert "| som_baseline | 2 | **30.10 ± 0.14** | 0.1100 ± 0.0141 | 0.0700 ± 0.0141 |" in text
    assert "| prior (reference) |  | – | 0.2000 | 0.1200 |" in text
    # goal check: 0.08/0.11 = 0.73, 0.03/0.07 = 0.43, 0.08/0.2 = 0.40, 0.03/0.12 = 0.25, 30.0 - 30.1 = -0.10
    assert "| tissue | defaults | 0.73 | 0.43 | 0.40 | 0.25 | -0.10 | yes |" in text


def test_goal_fails_when_one_ratio_misses(tmp_path):
    spec_path, out = _fake_sweep(tmp_path)
    # make the defaults' held-out PSNR 0.5 dB worse than the baseline's: the goal is missed
    for seed in (0, 1):
        psnr = VALUES[("defaults", seed)][0] - 0.4
        write_metrics(out / "defaults" / "tissue" / f"seed{seed}" / "val" / "5" / "heldout", [], {"psnr": psnr})
    assert main([str(spec_path), "--out-dir", str(out)]) == 0
    assert (
        "| tissue | defaults | 0.73 | 0.43 | 0.40 | 0.25 | -0.50 | no |" in (out / "depth_order_table.md").read_text()
    )


def test_no_finished_trial_is_one_error_line(tmp_path, capsys):
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(SPEC))
    assert (
        main([str(spec_path), "--out-dir", str(tmp_path / "none")]) == 1
    )  # an expected failure: exit 1 (2 is for usage errors)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: no finished trial")


def test_families_spec_parses_and_has_both_families():
    spec = load_spec(REPO / "configs/sweeps/depth_order_families.yaml")
    assert {"som_baseline", "defaults"} <= set(spec.runs)
    assert any("tissue" in a for a in spec.data["tissue_linear"]) and "objects" in spec.data["objects_linear"]
    assert len(spec.seeds) >= 3


@pytest.mark.parametrize("bad", ["", "..", "a/b"])
def test_run_val_out_name_must_be_a_folder_name(tmp_path, bad):
    from flow3d.eval.validate import ValConfig, evaluate

    with pytest.raises(ValueError, match="out-name"):
        evaluate(ValConfig(work_dir=str(tmp_path / "missing"), out_name=bad))
