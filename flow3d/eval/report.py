"""Metric reports: ``metrics.json`` and ``per_frame.csv`` written atomically, and a printable table.

Values may be Python/numpy numbers, 0-d tensors, None, or :class:`flow3d.eval.metrics.Unavailable`.
Non-finite values and unavailable metrics are written as JSON ``null`` (an empty CSV cell) and shown
as ``n/a`` with the reason: the reason given in ``notes`` (or the :class:`Unavailable`), else
"nan" / "inf" / "missing".

``metrics.json`` layout::

    {"aggregate": {name: number | null}, "per_frame": [{name: number | str | null}],
     "notes": {name: reason or remark}}
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

from flow3d.eval.metrics import Unavailable
from flow3d.fileio import write_text


def _scalar(v: Any) -> tuple[Any, str | None]:
    """(JSON-safe value, reason if it is null)."""
    if isinstance(v, Unavailable):
        return None, v.reason
    if v is None:
        return None, "missing"
    if hasattr(v, "detach"):
        if v.numel() != 1:
            raise ValueError(f"metric values must be scalars, got a tensor of shape {tuple(v.shape)}")
        v = v.item()
    if hasattr(v, "item") and not isinstance(v, (str, bytes)):  # numpy scalar
        v = v.item()
    if isinstance(v, bool):
        return v, None
    if isinstance(v, int):
        return v, None
    if isinstance(v, float):
        if math.isfinite(v):
            return v, None
        return None, "nan" if math.isnan(v) else "inf"
    if isinstance(v, str):
        return v, None
    raise ValueError(f"metric values must be numbers, strings, None or Unavailable, got {type(v).__name__}")


def aggregate_per_frame(
    per_frame: Sequence[Mapping[str, Any]], skip: Sequence[str] = ("frame",)
) -> tuple[dict[str, float], dict[str, str]]:
    """Mean of every numeric column over the frames where it is finite.

    Returns (aggregate, notes): notes say "mean over k of n frames" when some frames had no finite
    value, and the reason when none had (the first Unavailable reason seen, else "no finite value").
    """
    agg: dict[str, float] = {}
    notes: dict[str, str] = {}
    keys: list[str] = []
    for row in per_frame:
        keys += [k for k in row if k not in keys and k not in skip]
    n = len(per_frame)
    for k in keys:
        vals, reason = [], None
        for row in per_frame:
            v, r = _scalar(row.get(k))
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                vals.append(float(v))
            elif r is not None and reason is None and r not in ("nan", "inf", "missing"):
                reason = r
        if vals:
            agg[k] = sum(vals) / len(vals)
            if len(vals) < n:
                notes[k] = f"mean over {len(vals)} of {n} frames"
        elif any(isinstance(_scalar(row.get(k))[0], str) for row in per_frame):
            continue  # a text column
        else:
            agg[k] = float("nan")
            notes[k] = reason or "no finite value in any frame"
    return agg, notes


def write_metrics(
    out_dir: str | Path,
    per_frame: Sequence[Mapping[str, Any]],
    aggregate: Mapping[str, Any],
    notes: Mapping[str, str] | None = None,
) -> tuple[Path, Path]:
    """Write ``out_dir/metrics.json`` and ``out_dir/per_frame.csv`` atomically; returns both paths.

    per_frame: one dict per scored frame (e.g. {"frame": 12, "psnr": 27.1, ...}); aggregate: name ->
    value; notes: name -> remark. Null values get a note with their reason unless one is given.
    CSV columns are the union of the rows' keys in first-seen order; nulls are empty cells.
    """
    out_dir = Path(out_dir)
    all_notes = dict(notes or {})
    agg_json = {}
    for k, v in aggregate.items():
        val, reason = _scalar(v)
        agg_json[str(k)] = val
        if val is None and k not in all_notes:
            all_notes[str(k)] = reason or "missing"
    rows_json = []
    keys: list[str] = []
    for row in per_frame:
        r = {}
        for k, v in row.items():
            val, reason = _scalar(v)
            r[str(k)] = val
            if val is None and reason not in (None, "nan", "inf", "missing") and k not in all_notes:
                all_notes[str(k)] = reason
            if k not in keys:
                keys.append(str(k))
        rows_json.append(r)
    doc = {"aggregate": agg_json, "per_frame": rows_json, "notes": all_notes}
    json_path, csv_path = out_dir / "metrics.json", out_dir / "per_frame.csv"
    write_text(json_path, json.dumps(doc, indent=2, allow_nan=False) + "\n")
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(keys)
    for r in rows_json:
        w.writerow(["" if r.get(k) is None else r[k] for k in keys])
    write_text(csv_path, buf.getvalue())
    return json_path, csv_path


def read_metrics(path: str | Path) -> dict:
    """Load a ``metrics.json`` written by :func:`write_metrics` (nulls come back as None)."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not a readable metrics.json ({e})") from None
    for field in ("aggregate", "per_frame", "notes"):
        if field not in doc:
            raise ValueError(f"{path}: field {field!r} missing (expected aggregate, per_frame, notes)")
    return doc


def format_table(aggregate: Mapping[str, Any], notes: Mapping[str, str] | None = None, digits: int = 4) -> str:
    """Two-column text table of aggregate metrics; missing/non-finite values read "n/a (reason)"."""
    notes = notes or {}
    lines = []
    for k, v in aggregate.items():
        val, reason = _scalar(v)
        if val is None:
            why = notes.get(k, reason)
            text = f"n/a ({why})" if why else "n/a"
        elif isinstance(val, float):
            text = f"{val:.{digits}f}"
            if k in notes:
                text += f"  ({notes[k]})"
        else:
            text = str(val)
        lines.append((str(k), text))
    if not lines:
        return "(no metrics)"
    w = max(len(k) for k, _ in lines)
    header = f"{'metric':<{w}}  value"
    return "\n".join(
        [header, "-" * (w + 2 + max(5, max(len(t) for _, t in lines)))] + [f"{k:<{w}}  {t}" for k, t in lines]
    )
