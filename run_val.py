"""Evaluate a checkpoint of a training work dir: metrics, depth export and depth videos.

    python run_val.py --work-dir OUT --model 4000 data:custom --data.seq-name S --data.root-dir R --data.is-train False
    python run_val.py --work-dir outputs/demo --data.is-train False --save-depth

``--model`` is a checkpoint step or ``last`` (default). Without a data subcommand the data config saved
in OUT/cfg.yaml is used (``--data.*`` options still override it). Everything is written to
OUT/val/<step>/ (metrics.json, per_frame.csv, per_frame.png, depth.mp4, contact_sheet.png, depth/ with
--save-depth); the flows of the temporal-consistency metric are cached in OUT/flow_cache/.
"""

from __future__ import annotations

import os
import sys

# torch's OpenMP threads otherwise spin against OpenCV's thread pool (see run_training.py).
# Must be set before torch is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from flow3d.log import setup_logging  # noqa: E402


def main(argv: list[str] | None = None):
    from flow3d.eval.report import format_table
    from flow3d.eval.validate import evaluate, parse_val_args

    cfg = parse_val_args(sys.argv[1:] if argv is None else argv, description=__doc__)
    setup_logging()
    try:
        result = evaluate(cfg)
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None
    print(f"step {result.step}, {result.notes.get('num_views', '')}: {result.out_dir}")
    print(format_table(result.aggregate, result.notes))
    return result


if __name__ == "__main__":
    main()
