"""A sweep's results: ``results.csv`` (one row per trial), ``summary.md`` (mean ± std over seeds per
run x data, best value per column in bold) and ``summary.png`` (the same as bars with every seed shown).

Statistics are over the seeds whose trial finished and whose metric is a number (run_val.py writes
metrics it could not compute as null): the mean, and the sample standard deviation (n - 1 in the
denominator; shown only when n >= 2). "Best" compares the means of the runs of one data entry, in the
direction :func:`metric_direction` gives; metrics with no direction are never bold.
"""

from __future__ import annotations

import csv
import io
import math
import statistics
from pathlib import Path
from typing import Any, Optional, Sequence

from flow3d.fileio import write_bytes

FIXED_COLUMNS = ("run", "data", "seed", "status", "trial_seconds", "s_per_step")
TAIL_COLUMNS = ("work_dir", "log", "error")
FINISHED = ("done", "skipped")
_LOWER = ("abs_rel", "rmse", "lpips", "temporal_consistency", "epe", "s_per_step", "seconds")
_HIGHER = ("psnr", "ssim", "delta1", "ordinal_acc", "within", "delta_avg", "pck")
#: rows that score the depth prior / the ground truth itself, shown under the runs: name -> column -> metric
REFERENCE_ROWS = {
    "prior (reference)": {
        "depth_abs_rel": "prior_abs_rel",
        "depth_rmse": "prior_rmse",
        "depth_delta1": "prior_delta1",
        "depth_abs_rel_scale_shift": "prior_abs_rel_scale_shift",
    },
    "gt (reference)": {"temporal_consistency": "temporal_consistency_gt"},
}


def metric_direction(name: str) -> Optional[str]:
    """``"lower"`` or ``"higher"`` is better, or None (counts, scales, steps)."""
    if any(k in name for k in _LOWER):
        return "lower"
    if any(k in name for k in _HIGHER):
        return "higher"
    return None


def _number(v: Any) -> Optional[float]:
    if isinstance(v, bool) or v is None or v == "":
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def value_of(row: dict, name: str) -> Optional[float]:
    """A trial's number for ``name``: a fixed column (s_per_step, trial_seconds) or a metric."""
    return _number(row.get(name) if name in FIXED_COLUMNS else row.get("metrics", {}).get(name))


# ---------------------------------------------------------------------------------------------- results.csv


def results_table(rows: Sequence[dict]) -> tuple[list[str], list[list[Any]]]:
    """Header and cells of results.csv: the fixed columns, every metric (first-seen order), log, error."""
    metric_keys: list[str] = []
    for r in rows:
        metric_keys += [k for k in r.get("metrics", {}) if k not in metric_keys]
    header = [*FIXED_COLUMNS, *metric_keys, *TAIL_COLUMNS]
    cells = []
    for r in rows:
        m = r.get("metrics", {})
        line = [r.get(k) for k in FIXED_COLUMNS] + [m.get(k) for k in metric_keys] + [r.get(k) for k in TAIL_COLUMNS]
        cells.append(["" if v is None else v for v in line])
    return header, cells


def write_results_csv(rows: Sequence[dict], path: str | Path) -> Path:
    header, cells = results_table(rows)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(cells)
    write_bytes(path, buf.getvalue().encode())
    return Path(path)


# ---------------------------------------------------------------------------------------------- summary


def summarize(rows: Sequence[dict], metrics: Sequence[str]) -> dict[tuple[str, str], dict[str, tuple]]:
    """(data, run) -> metric -> (mean, std or None, n, values) over the finished seeds; also the
    reference rows of :data:`REFERENCE_ROWS` as runs named after them (when their metric exists)."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["data"], r["run"]), []).append(r)
    out: dict[tuple[str, str], dict[str, tuple]] = {}

    def stats(vals: list[float]) -> tuple:
        if not vals:
            return (None, None, 0, [])
        return (statistics.fmean(vals), statistics.stdev(vals) if len(vals) > 1 else None, len(vals), vals)

    for key, group in groups.items():
        done = [r for r in group if r["status"] in FINISHED]
        out[key] = {m: stats([v for r in done if (v := value_of(r, m)) is not None]) for m in metrics}
    for data in dict.fromkeys(d for d, _ in groups):
        done = [r for r in rows if r["data"] == data and r["status"] in FINISHED]
        for ref, cols in REFERENCE_ROWS.items():
            ref_stats = {
                m: stats([v for r in done if (v := value_of(r, cols[m])) is not None])
                if m in cols
                else (None, None, 0, [])
                for m in metrics
            }
            if any(s[2] for s in ref_stats.values()):
                out[(data, ref)] = ref_stats
    return out


def _fmt(mean: Optional[float], std: Optional[float]) -> str:
    if mean is None:
        return "–"
    digits = 2 if abs(mean) >= 10 else 4
    return f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if std is not None else "")


def format_summary(rows: Sequence[dict], metrics: Sequence[str], title: str = "Sweep summary", note: str = "") -> str:
    """summary.md: one table per data entry; rows are runs (then reference rows), columns the metrics."""
    table = summarize(rows, metrics)
    n_failed = sum(r["status"] not in FINISHED for r in rows)
    arrows = {"lower": " ↓", "higher": " ↑", None: ""}
    lines = [
        f"# {title}",
        "",
        f"{len(rows)} trials, {len(rows) - n_failed} finished, {n_failed} failed. Each cell is the mean ± "
        "the sample standard deviation over the seeds that finished (n in the `seeds` column); the best "
        "mean of each column is in bold (↑ higher is better, ↓ lower)." + (f" {note}" if note else ""),
        "",
    ]
    for data in dict.fromkeys(r["data"] for r in rows):
        runs = [run for (d, run) in table if d == data]
        best = {}
        for m in metrics:
            direction = metric_direction(m)
            means = [table[(data, run)][m][0] for run in runs if run not in REFERENCE_ROWS]
            means = [v for v in means if v is not None]
            if direction and means:
                best[m] = min(means) if direction == "lower" else max(means)
        lines += [
            f"## {data}",
            "",
            "| run | seeds | " + " | ".join(m + arrows[metric_direction(m)] for m in metrics) + " |",
            "|---" * (len(metrics) + 2) + "|",
        ]
        for run in runs:
            cells = []
            for m in metrics:
                mean, std, n, _ = table[(data, run)][m]
                text = _fmt(mean, None if run in REFERENCE_ROWS else std)  # references: the same data, one value
                bold = run not in REFERENCE_ROWS and m in best and mean is not None and mean == best[m]
                cells.append(f"**{text}**" if bold else text)
            n_seeds = "" if run in REFERENCE_ROWS else str(max((s[2] for s in table[(data, run)].values()), default=0))
            lines.append(f"| {run} | {n_seeds} | " + " | ".join(cells) + " |")
        lines.append("")
    failed = [r for r in rows if r["status"] not in FINISHED]
    if failed:
        lines += ["## Failed trials", ""]
        lines += [
            f"- {r['run']} / {r['data']} / seed {r['seed']}: {r.get('error') or r['status']} (log: {r['log']})"
            for r in failed
        ]
        lines.append("")
    return "\n".join(lines)


def write_summary(rows: Sequence[dict], metrics: Sequence[str], path: str | Path, **kwargs) -> Path:
    write_bytes(path, format_summary(rows, metrics, **kwargs).encode())
    return Path(path)


def plot_summary(rows: Sequence[dict], metrics: Sequence[str], path: str | Path) -> Optional[Path]:
    """summary.png: per metric, the mean of each (run, data) with the std as an error bar, and every
    seed as a grey dot beside it. Returns None (and writes nothing) when no trial finished."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    table = {k: v for k, v in summarize(rows, metrics).items() if k[1] not in REFERENCE_ROWS}
    keys = [k for k in table if any(s[2] for s in table[k].values())]
    shown = [m for m in metrics if any(table[k][m][2] for k in keys)]
    if not keys or not shown:
        return None
    runs = list(dict.fromkeys(run for _, run in keys))
    colors = {run: f"C{i % 10}" for i, run in enumerate(runs)}
    ncols = min(3, len(shown))
    nrows = -(-len(shown) // ncols)
    fig = Figure(figsize=(4.2 * ncols, 3.2 * nrows + 0.6), dpi=100)
    FigureCanvasAgg(fig)
    for i, m in enumerate(shown):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        for x, key in enumerate(keys):
            mean, std, n, vals = table[key][m]
            if not n:
                continue
            ax.errorbar(x, mean, yerr=std if std is not None else None, fmt="o", ms=7, capsize=4, color=colors[key[1]])
            ax.plot([x + 0.15] * n, vals, ".", ms=5, color="0.35")
        ax.set_xlim(-0.6, len(keys) - 0.4)
        ax.set_xticks(range(len(keys)))
        ax.set_xticklabels(
            [f"{run}\n{data}" if len({d for d, _ in keys}) > 1 else run for data, run in keys],
            rotation=45,
            ha="right",
            fontsize=7,
        )
        ax.grid(axis="y", alpha=0.3)
        ax.set_title(
            m + {"lower": " (lower is better)", "higher": " (higher is better)", None: ""}[metric_direction(m)],
            fontsize=9,
        )
    fig.suptitle("mean ± std over seeds (grey dots: the seeds)", fontsize=10)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    write_bytes(path, buf.getvalue())
    return Path(path)


def write_all(rows: Sequence[dict], metrics: Sequence[str], out_dir: str | Path, note: str = "") -> dict[str, Path]:
    """results.csv, summary.md and summary.png in ``out_dir``."""
    out = Path(out_dir)
    files = {
        "results": write_results_csv(rows, out / "results.csv"),
        "summary": write_summary(rows, metrics, out / "summary.md", note=note),
    }
    plot = plot_summary(rows, metrics, out / "summary.png")
    if plot is not None:
        files["plot"] = plot
    return files
