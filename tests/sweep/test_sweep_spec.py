"""Sweep pieces that need no Ray: the spec, trial states, error lines, the summary statistics, the
ablation spec against the ablation benchmark's rows, and the missing-Ray message."""

from __future__ import annotations

import csv
import json
import math
import sys
from pathlib import Path

import pytest
import yaml

from flow3d.sweep import (
    format_summary,
    last_error_line,
    load_spec,
    metric_direction,
    parse_spec,
    summarize,
    trial_state,
)
from flow3d.sweep.results import write_all

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = {
    "runs": {
        "som_baseline": ["--preset", "cpu_demo", "--preset", "som_baseline"],
        "defaults": ["--preset", "cpu_demo"],
    },
    "data": {"synthetic": ["data:synthetic", "--data.num-frames", "12"]},
    "seeds": [0, 1],
    "max_steps": 4,
}


class TestSpec:
    def test_example_file_is_the_issue_example(self):
        doc = yaml.safe_load((REPO / "configs/sweeps/example.yaml").read_text())
        assert doc == EXAMPLE

    def test_trials_and_their_commands(self, tmp_path):
        spec = parse_spec(EXAMPLE)
        trials = spec.trials(tmp_path)
        assert [(t.run, t.data, t.seed) for t in trials] == [
            ("som_baseline", "synthetic", 0),
            ("defaults", "synthetic", 0),
            ("som_baseline", "synthetic", 1),
            ("defaults", "synthetic", 1),
        ]
        t = trials[2]
        work = str(tmp_path.resolve() / "som_baseline" / "synthetic" / "seed1")
        assert t.train_argv == (
            "--preset",
            "cpu_demo",
            "--preset",
            "som_baseline",
            "--seed",
            "1",
            "--max-steps",
            "4",
            "--work-dir",
            work,
            "data:synthetic",
            "--data.num-frames",
            "12",
        )
        assert t.val_argv == ("--work-dir", work, "--model", "last", "--data.is-train", "False")
        assert t.metrics_path == Path(work) / "val" / "4" / "heldout" / "metrics.json"

    def test_train_args_val_args_and_scalars(self, tmp_path):
        doc = {
            **EXAMPLE,
            "train_args": ["--save-every", 2],
            "val_args": ["--no-video", "--ordinal-pairs", 100],
            "runs": {"r": ["--losses.w-pearson", 0.5, "--data.normalize-scene", False]},
        }
        t = parse_spec(doc).trials(tmp_path)[0]
        assert t.train_argv[:6] == ("--save-every", "2", "--losses.w-pearson", "0.5", "--data.normalize-scene", "False")
        assert t.val_argv[-3:] == ("--no-video", "--ordinal-pairs", "100")

    @pytest.mark.parametrize(
        "change, match",
        [
            ({"sedes": [0]}, "unknown field"),
            ({"seeds": None}, "seeds"),
            ({"seeds": [0, 0]}, "repeats"),
            ({"seeds": [0.5]}, "seeds"),
            ({"max_steps": 0}, "max_steps"),
            ({"runs": {}}, "runs"),
            ({"runs": {"a/b": []}}, "name 'a/b'"),
            ({"runs": {"..": []}}, "name '..'"),
            ({"runs": {"r": ["--seed", "3"]}}, r"runs.r: --seed is set by the sweep"),
            ({"runs": {"r": ["--work-dir=x"]}}, "--work-dir is set by the sweep"),
            ({"runs": {"r": ["data:synthetic"]}}, "belongs in `data`"),
            ({"runs": {"r": [["nested"]]}}, r"runs.r\[0\]"),
            ({"data": {"d": ["--data.num-frames", "12"]}}, "first argument must be a data subcommand"),
            ({"val_args": ["--model", "3"]}, "--model is set by the sweep"),
            ({"metrics": "psnr"}, "metrics"),
        ],
    )
    def test_bad_fields_name_the_field(self, change, match):
        doc = {**EXAMPLE, **change}
        if change.get("seeds", 1) is None:
            del doc["seeds"]
            match = "missing field"
        with pytest.raises(ValueError, match=match):
            parse_spec(doc, "s.yaml")

    def test_load_errors_name_the_file(self, tmp_path):
        with pytest.raises(ValueError, match="cannot read"):
            load_spec(tmp_path / "nope.yaml")
        bad = tmp_path / "bad.yaml"
        bad.write_text("runs: [unclosed\n")
        with pytest.raises(ValueError, match="bad.yaml: not valid YAML"):
            load_spec(bad)

    def test_select(self):
        spec = parse_spec(EXAMPLE)
        sub = spec.select(runs=["defaults"], seeds=[5, 6, 7], max_steps=9)
        assert list(sub.runs) == ["defaults"] and sub.seeds == [5, 6, 7] and sub.max_steps == 9
        assert list(spec.runs) == ["som_baseline", "defaults"]  # unchanged
        with pytest.raises(ValueError, match=r"runs \['ordinal'\] not in the spec"):
            spec.select(runs=["ordinal"])


class TestTrialState:
    def _trial(self, tmp_path):
        return parse_spec(EXAMPLE).trials(tmp_path)[0]

    def test_states(self, tmp_path):
        t = self._trial(tmp_path)
        assert trial_state(t) == "new"
        (t.work_dir / "checkpoints").mkdir(parents=True)
        (t.work_dir / "checkpoints" / "last.ckpt").write_bytes(b"x")
        assert trial_state(t) == "resume"
        t.metrics_path.parent.mkdir(parents=True)
        t.metrics_path.write_text(json.dumps({"aggregate": {}, "per_frame": [], "notes": {}}))
        assert trial_state(t) == "finished"
        t.status_path.write_text(json.dumps({"status": "done", "args": t.args_record}))
        assert trial_state(t) == "finished"
        t.status_path.write_text(json.dumps({"status": "done", "args": {"train": ["--other"], "val": []}}))
        assert trial_state(t) == "conflict"

    def test_other_arguments_without_progress_start_over(self, tmp_path):
        t = self._trial(tmp_path)
        t.work_dir.mkdir(parents=True)
        t.status_path.write_text(json.dumps({"status": "failed", "args": {"train": ["--bad"], "val": []}}))
        assert trial_state(t) == "new"  # a failed start with other (e.g. since fixed) arguments: no conflict


class TestLastErrorLine:
    def test_error_and_exception_lines_win_over_progress(self, tmp_path):
        log = tmp_path / "trial.log"
        log.write_text(
            "=== train (attempt 1): python run_training.py\n"
            "old stage output\nerror: from an earlier stage\n"
            "=== val (attempt 1): python run_val.py\n"
            "train:  10%|#  | 1/10\rtrain:  20%|## | 2/10\r"
            'Traceback (most recent call last):\n  File "x.py", line 1\n'
            "RuntimeError: 5 consecutive steps had a non-finite loss\n"
            "train:  20%|## | 2/10\n"
        )
        assert last_error_line(log) == "RuntimeError: 5 consecutive steps had a non-finite loss"
        log.write_text("=== train\nsome output\nerror: depth file /d/0001.npy is not a float array\n")
        assert last_error_line(log) == "error: depth file /d/0001.npy is not a float array"

    def test_tyro_box(self, tmp_path):
        log = tmp_path / "trial.log"
        log.write_text(
            "=== train (attempt 1)\n"
            "╭─ Invalid choice ──────────────────────────────╮\n"
            "│ invalid choice 'sideways' for argument        │\n"
            "│ '--data.prior-drift'.                         │\n"
            "│ ───────────────────────────────────────────── │\n"
            "│ For full helptext, run run_training.py --help │\n"
            "╰───────────────────────────────────────────────╯\n"
        )
        assert last_error_line(log) == "Invalid choice: invalid choice 'sideways' for argument '--data.prior-drift'."

    def test_fallback_and_missing(self, tmp_path):
        log = tmp_path / "trial.log"
        log.write_text("=== train\nfirst\nlast words\n\n")
        assert last_error_line(log) == "last words"
        assert last_error_line(tmp_path / "none.log") == ""


def _row(run, seed, status="done", **metrics):
    return {
        "run": run,
        "data": "d",
        "seed": seed,
        "status": status,
        "trial_seconds": 10.0 + seed,
        "s_per_step": None,
        "metrics": metrics,
        "work_dir": f"w/{run}/{seed}",
        "log": f"w/{run}/{seed}/trial.log",
        "error": "error: boom" if status == "failed" else None,
    }


class TestSummary:
    def test_directions(self):
        assert (
            metric_direction("psnr")
            == metric_direction("depth_delta1")
            == metric_direction("ordinal_acc_gt")
            == "higher"
        )
        assert (
            metric_direction("depth_abs_rel")
            == metric_direction("track_epe")
            == metric_direction("s_per_step")
            == "lower"
        )
        assert metric_direction("depth_scale") is None and metric_direction("num_views") is None

    def test_mean_std_bold_and_failures_by_hand(self, tmp_path):
        rows = [
            _row("a", 0, psnr=20.0, depth_abs_rel=0.1, depth_scale=1.0),
            _row("a", 1, psnr=22.0, depth_abs_rel=None, depth_scale=3.0),  # abs_rel not computed (null)
            _row("a", 2, psnr=27.0, depth_abs_rel=0.3, depth_scale=2.0),
            _row("b", 0, psnr=21.0, depth_abs_rel=0.05, prior_abs_rel=0.2),
            _row("b", 1, status="failed"),
        ]
        metrics = ["psnr", "depth_abs_rel", "depth_scale", "trial_seconds"]
        s = summarize(rows, metrics)
        # psnr of a: mean 23, sample std sqrt(((-3)^2 + (-1)^2 + 4^2) / 2) = sqrt(13)
        mean, std, n, _ = s[("d", "a")]["psnr"]
        assert n == 3 and mean == pytest.approx(23.0) and std == pytest.approx(math.sqrt(13.0))
        mean, std, n, _ = s[("d", "a")]["depth_abs_rel"]
        assert n == 2 and mean == pytest.approx(0.2) and std == pytest.approx(0.1 * math.sqrt(2.0))
        assert s[("d", "b")]["psnr"][:3] == (21.0, None, 1)  # the failed seed does not count
        assert s[("d", "prior (reference)")]["depth_abs_rel"][0] == pytest.approx(0.2)
        md = format_summary(rows, metrics)
        lines = {
            ln.split("|")[1].strip(): [c.strip() for c in ln.split("|")[2:-1]]
            for ln in md.splitlines()
            if ln.startswith("| ")
        }
        assert lines["a"] == [
            "3",
            f"**23.00 ± {math.sqrt(13):.2f}**",
            f"0.2000 ± {0.1 * math.sqrt(2):.4f}",
            "2.0000 ± 1.0000",
            "11.00 ± 1.00",
        ]
        assert lines["b"] == ["1", "21.00", "**0.0500**", "–", "**10.00**"]
        assert lines["prior (reference)"] == ["", "–", "0.2000", "–", "–"]
        assert "- b / d / seed 1: error: boom (log: w/b/1/trial.log)" in md

    def test_write_all(self, tmp_path):
        rows = [_row("a", 0, psnr=20.0, lpips=None), _row("a", 1, psnr=21.0, lpips=None), _row("b", 0, status="failed")]
        files = write_all(rows, ["psnr", "lpips"], tmp_path)
        with open(files["results"]) as f:
            table = list(csv.DictReader(f))
        assert [r["status"] for r in table] == ["done", "done", "failed"]
        assert table[1]["psnr"] == "21.0" and table[0]["lpips"] == "" and table[2]["error"] == "error: boom"
        assert files["plot"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert "20.50 ± 0.71" in files["summary"].read_text()


def test_ablation_spec_rows_match_the_benchmark(tmp_path):
    """configs/sweeps/ablation.yaml builds, through run_training.py's own parser, the loss weights and
    Gaussian cap flow3d.benchmarks.ablation gives each row."""
    import run_training
    from flow3d.benchmarks.ablation import DEFAULT_ROWS, overrides_for
    from flow3d.config import TrainConfig, apply_overrides, load_preset

    spec = load_spec(REPO / "configs/sweeps/ablation.yaml")
    assert set(spec.runs) == set(DEFAULT_ROWS) | {"+hinge_ordinal+pearson"}
    assert spec.data == {
        "synthetic_none": ["data:synthetic", "--data.prior-drift", "none"],
        "synthetic_linear": ["data:synthetic", "--data.prior-drift", "linear"],
    }
    assert len(spec.seeds) >= 3
    for t in spec.trials(tmp_path):
        if t.seed != spec.seeds[0]:
            continue
        cfg = run_training.parse_args(list(t.train_argv))
        ref = apply_overrides(TrainConfig(), load_preset("cpu_demo"))
        ref = apply_overrides(ref, {"losses": overrides_for(t.run), "densify": {"max_gaussians": 200_000}})
        assert cfg.losses == ref.losses, t.run
        assert cfg.densify == ref.densify and cfg.init == ref.init and cfg.max_steps == spec.max_steps
        assert cfg.data.prior_drift == t.data.split("_")[1]


def test_missing_ray_names_the_install_command(monkeypatch):
    from flow3d.sweep.driver import import_ray

    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    with pytest.raises(RuntimeError, match=r'pip install -e "\.\[sweep\]"'):
        import_ray()


def test_dry_run_lists_states_and_commands(tmp_path, capsys):
    from flow3d.sweep.__main__ import main

    assert (
        main([str(REPO / "configs/sweeps/example.yaml"), "--out-dir", str(tmp_path), "--dry-run", "--seeds", "3"]) == 0
    )
    out = capsys.readouterr().out
    assert "som_baseline / synthetic / seed 3: new" in out and "defaults / synthetic / seed 3: new" in out
    assert f"--seed 3 --max-steps 4 --work-dir {tmp_path.resolve()}/defaults/synthetic/seed3 data:synthetic" in out
    with pytest.raises(SystemExit, match="error: .*runs \\['nope'\\] not in the spec"):
        main([str(REPO / "configs/sweeps/example.yaml"), "--out-dir", str(tmp_path), "--dry-run", "--runs", "nope"])
