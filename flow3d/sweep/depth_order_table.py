"""The per-family depth-order table of the README from a finished (or partly finished) sweep.

    python -m flow3d.sweep configs/sweeps/depth_order_families.yaml --out-dir OUT --cpus-per-trial 1
    python -m flow3d.sweep.depth_order_table configs/sweeps/depth_order_families.yaml --out-dir OUT

The sweep scores each trial on its HELD-OUT frames (``val/<step>/heldout/``): that gives the PSNR column. The
depth columns score the TRAINING frames, so this command runs ``run_val.py --data.is-train True --no-video``
once per finished trial (into ``val/<step>/train/``; skipped when its metrics.json exists) and
takes from it:

* ``depth_abs_rel``: AbsRel after ONE least-squares depth scale per sequence (absolute depth up to scale);
* ``depth_abs_rel_scale_shift``: AbsRel after ONE least-squares scale and shift of disparity per sequence
  (shape);
* the same two for the raw prior (the ``prior (reference)`` row).

It writes ``OUT/depth_order_table.md``: per data entry, mean ± sample std over the seeds, then the goal check
of every run against ``som_baseline`` (AbsRel ratios under both alignments, ratio to the raw prior, PSNR
difference).
"""

from __future__ import annotations

import statistics
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import tyro

from flow3d.eval.report import read_metrics
from flow3d.fileio import write_bytes
from flow3d.sweep.results import FINISHED, format_summary, value_of
from flow3d.sweep.spec import Trial, load_spec
from flow3d.sweep.trial import VAL_MODULE, module_command, read_aggregate, result_row

DEPTH_KEYS = ("depth_abs_rel", "depth_abs_rel_scale_shift", "prior_abs_rel", "prior_abs_rel_scale_shift")
COLUMNS = ("psnr", "depth_abs_rel", "depth_abs_rel_scale_shift")
BASELINE = "som_baseline"


def train_metrics_path(trial: Trial) -> Path:
    return trial.work_dir / "val" / str(trial.max_steps) / "train" / "metrics.json"  # run_val.py's val_dir


def score_training_frames(trial: Trial, timeout: float = 1800.0) -> None:
    """run_val on the trial's training frames into ``val/<step>/train/`` (raises on failure, with the log's tail)."""
    cmd = [
        *module_command(VAL_MODULE),
        "--work-dir",
        str(trial.work_dir),
        "--model",
        "last",
        "--data.is-train",
        "True",
        "--no-video",
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if res.returncode != 0:
        tail = (res.stderr or res.stdout).strip().splitlines()[-1:] or ["no output"]
        raise RuntimeError(f"{trial.name}: run_val.py on the training frames failed: {tail[0]}")


def table_row(trial: Trial) -> dict:
    """The sweep's result row with the depth metrics replaced by those of the training frames."""
    row = result_row(trial)
    held_out = read_aggregate(trial)
    train = dict(read_metrics(train_metrics_path(trial))["aggregate"]) if train_metrics_path(trial).is_file() else {}
    row["metrics"] = {"psnr": held_out.get("psnr"), **{k: train.get(k) for k in DEPTH_KEYS}}
    if not train:
        row["status"] = "failed"
        row["error"] = "no training-frame metrics (val/<step>/train)"
    return row


def _mean(rows: list[dict], run: str, data: str, key: str) -> float | None:
    vals = [
        v
        for r in rows
        if r["run"] == run and r["data"] == data and r["status"] in FINISHED and (v := value_of(r, key)) is not None
    ]
    return statistics.fmean(vals) if vals else None


def goal_check(rows: list[dict]) -> str:
    """Issue 12's goal per run and data: AbsRel <= 0.8x som_baseline's under both alignments, <= 0.5x the raw
    prior's, PSNR >= baseline - 0.3 dB (means over seeds)."""
    lines = [
        "## Goal check (means over seeds)",
        "",
        "| data | run | scale AbsRel / baseline | shape AbsRel / baseline | scale / prior | shape / prior "
        "| ΔPSNR vs baseline (dB) | goal met |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for data in dict.fromkeys(r["data"] for r in rows):
        for run in dict.fromkeys(r["run"] for r in rows if r["data"] == data):
            if run == BASELINE:
                continue
            m = {k: _mean(rows, run, data, k) for k in ("psnr", *DEPTH_KEYS)}
            b = {k: _mean(rows, BASELINE, data, k) for k in ("psnr", "depth_abs_rel", "depth_abs_rel_scale_shift")}
            ratios = [
                _ratio(m["depth_abs_rel"], b["depth_abs_rel"]),
                _ratio(m["depth_abs_rel_scale_shift"], b["depth_abs_rel_scale_shift"]),
                _ratio(m["depth_abs_rel"], m["prior_abs_rel"]),
                _ratio(m["depth_abs_rel_scale_shift"], m["prior_abs_rel_scale_shift"]),
            ]
            dpsnr = None if m["psnr"] is None or b["psnr"] is None else m["psnr"] - b["psnr"]
            ok = (
                None not in ratios
                and dpsnr is not None
                and ratios[0] <= 0.8
                and ratios[1] <= 0.8
                and ratios[2] <= 0.5
                and ratios[3] <= 0.5
                and dpsnr >= -0.3
            )
            cells = ["–" if v is None else f"{v:.2f}" for v in ratios] + ["–" if dpsnr is None else f"{dpsnr:+.2f}"]
            lines.append(f"| {data} | {run} | " + " | ".join(cells) + f" | {'yes' if ok else 'no'} |")
    return "\n".join(lines) + "\n"


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


@dataclass
class TableArgs:
    """Options of the per-family table (see the module docstring)."""

    spec: tyro.conf.Positional[Path]
    """The sweep spec (configs/sweeps/depth_order_families.yaml)."""
    out_dir: Path
    """The sweep's --out-dir."""
    runs: Optional[tuple[str, ...]] = None
    """Only these runs of the spec."""
    data: Optional[tuple[str, ...]] = None
    """Only these data entries of the spec."""
    seeds: Optional[tuple[int, ...]] = None
    """These seeds instead of the spec's."""
    max_steps: Optional[int] = None
    """This step count instead of the spec's."""


def main(argv: list[str] | None = None) -> int:
    """Run the command (``argv`` defaults to ``sys.argv[1:]``); returns the exit code (2: no usable spec or trial)."""
    a = tyro.cli(TableArgs, args=sys.argv[1:] if argv is None else argv, description=__doc__)
    try:
        spec = load_spec(a.spec).select(a.runs, a.data, a.seeds, a.max_steps)
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    rows, errors = [], []
    for trial in spec.trials(a.out_dir):
        if not trial.metrics_path.is_file():
            continue  # not finished by the sweep (yet)
        if not train_metrics_path(trial).is_file():
            try:
                score_training_frames(trial)
            except (RuntimeError, subprocess.TimeoutExpired) as e:
                errors.append(str(e))
        rows.append(table_row(trial))
    if not rows:
        print(f"error: no finished trial of {a.spec} under {a.out_dir}: run the sweep first", file=sys.stderr)
        return 1
    note = (
        "PSNR on the held-out frames; depth AbsRel on the training frames, after one depth scale per sequence "
        "(`depth_abs_rel`) or one scale and shift of disparity per sequence (`depth_abs_rel_scale_shift`)."
    )
    text = format_summary(rows, list(COLUMNS), title=f"Depth order per family ({Path(a.spec).name})", note=note)
    text += "\n" + goal_check(rows)
    path = Path(a.out_dir) / "depth_order_table.md"
    write_bytes(path, text.encode())
    print(text)
    print(f"wrote {path}")
    for e in errors:
        print(f"error: {e}", file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    raise SystemExit(main())
