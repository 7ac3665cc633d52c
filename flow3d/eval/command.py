"""Evaluate a checkpoint of a training work dir: metrics, depth export and depth videos.

    flow3d-val --work-dir OUT --model 4000 data:custom --data.seq-name S --data.root-dir R --data.is-train False
    flow3d-val --work-dir outputs/demo --data.is-train False --save-depth

(``python run_val.py ...`` in a clone is the same command.) ``--model`` is a checkpoint step or ``last``
(default). Without a data subcommand the data config saved in OUT/cfg.yaml is used (``--data.*`` options
still override it). Everything is written to OUT/val/<step>/heldout/ (--data.is-train False) or
OUT/val/<step>/train/ (True): metrics.json, per_frame.csv, per_frame.png, depth.mp4, contact_sheet.png,
depth/ with --save-depth; the flows of the temporal-consistency metric are
cached in OUT/flow_cache/. Errors are one line (exit code 1); --debug (or FLOW3D_DEBUG=1) shows the traceback.
"""

from __future__ import annotations

import os

# torch's OpenMP threads otherwise spin against OpenCV's thread pool (see flow3d.train.command).
# Must be set before torch is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from flow3d.log import setup_logging  # noqa: E402


def _main(argv: list[str]):
    from flow3d.eval.report import format_table
    from flow3d.eval.validate import evaluate, parse_val_args

    cfg = parse_val_args(argv, description=__doc__)
    setup_logging()
    result = evaluate(cfg)
    print(f"step {result.step}, {result.notes.get('num_views', '')}: {result.out_dir}")
    print(format_table(result.aggregate, result.notes))
    return result


def main(argv: list[str] | None = None):
    """Run the command (``argv`` defaults to ``sys.argv[1:]``) and return the evaluation result.

    Failures leave through ``SystemExit`` with one ``error: ...`` line (:func:`flow3d.cli.run_main`;
    ``--debug`` shows the traceback).
    """
    from flow3d.cli import run_main

    return run_main(_main, argv)


if __name__ == "__main__":
    main()
