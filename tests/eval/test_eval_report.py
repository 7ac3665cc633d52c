"""metrics.json / per_frame.csv round trip, non-finite values, the printed table."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch

from flow3d.eval.metrics import Unavailable
from flow3d.eval.report import aggregate_per_frame, format_table, read_metrics, write_metrics


def test_write_metrics_round_trip_with_non_finite(tmp_path):
    per_frame = [
        {"frame": 0, "psnr": torch.tensor(25.5), "abs_rel": np.float32(0.25), "lpips": Unavailable("no weights")},
        {"frame": 1, "psnr": float("nan"), "abs_rel": 0.5, "fg_psnr": float("inf")},
    ]
    aggregate = {"psnr": 25.5, "abs_rel": 0.375, "lpips": Unavailable("no weights"), "fg_psnr": float("nan"), "n": 2}
    jp, cp = write_metrics(tmp_path / "val" / "4000", per_frame, aggregate, notes={"fg_psnr": "empty foreground mask"})
    raw = jp.read_text()
    assert "NaN" not in raw and "Infinity" not in raw  # strict JSON
    doc = read_metrics(jp)
    assert doc["aggregate"] == {"psnr": 25.5, "abs_rel": 0.375, "lpips": None, "fg_psnr": None, "n": 2}
    assert doc["notes"]["lpips"] == "no weights" and doc["notes"]["fg_psnr"] == "empty foreground mask"
    assert doc["per_frame"][0] == {"frame": 0, "psnr": 25.5, "abs_rel": 0.25, "lpips": None}
    assert doc["per_frame"][1]["psnr"] is None and doc["per_frame"][1]["fg_psnr"] is None
    with open(cp, newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["frame", "psnr", "abs_rel", "lpips", "fg_psnr"]
    assert rows[1] == ["0", "25.5", "0.25", "", ""] and rows[2] == ["1", "", "0.5", "", ""]
    assert not [p for p in jp.parent.iterdir() if p.name.startswith(".")]  # no temp files left
    # rewriting replaces the files
    write_metrics(jp.parent, per_frame[:1], {"psnr": 1.0})
    assert read_metrics(jp)["aggregate"] == {"psnr": 1.0}


def test_read_metrics_rejects_bad_files(tmp_path):
    p = tmp_path / "metrics.json"
    p.write_text("{not json")
    with pytest.raises(ValueError, match="metrics.json"):
        read_metrics(p)
    p.write_text(json.dumps({"aggregate": {}}))
    with pytest.raises(ValueError, match="per_frame"):
        read_metrics(p)


def test_write_metrics_rejects_non_scalar(tmp_path):
    with pytest.raises(ValueError, match="scalars"):
        write_metrics(tmp_path, [{"psnr": torch.ones(3)}], {})


def test_aggregate_per_frame_skips_nan_and_explains():
    rows = [
        {"frame": 0, "psnr": 20.0, "fg_psnr": float("nan"), "lpips": Unavailable("no weights"), "tag": "a"},
        {"frame": 1, "psnr": 30.0, "fg_psnr": 10.0, "lpips": Unavailable("no weights"), "tag": "b"},
        {"frame": 2, "psnr": float("nan"), "fg_psnr": float("nan"), "lpips": Unavailable("no weights"), "tag": "c"},
    ]
    agg, notes = aggregate_per_frame(rows)
    assert agg["psnr"] == 25.0 and notes["psnr"] == "mean over 2 of 3 frames"
    assert agg["fg_psnr"] == 10.0 and notes["fg_psnr"] == "mean over 1 of 3 frames"
    assert math.isnan(agg["lpips"]) and notes["lpips"] == "no weights"
    assert "frame" not in agg and "tag" not in agg


def test_format_table_shows_na_with_reason():
    text = format_table(
        {"psnr": 25.123456, "lpips": Unavailable("no local LPIPS weights"), "mssim": float("nan"), "n": 3},
        {"mssim": "no covisibility masks"},
    )
    lines = text.splitlines()
    assert lines[0].split() == ["metric", "value"]
    row = {ln.split()[0]: ln.split(None, 1)[1] for ln in lines[2:]}
    assert row["psnr"] == "25.1235"
    assert row["lpips"] == "n/a (no local LPIPS weights)"
    assert row["mssim"] == "n/a (no covisibility masks)"
    assert row["n"] == "3"
    assert format_table({"x": float("inf")}).splitlines()[-1].split(None, 1)[1] == "n/a (inf)"
