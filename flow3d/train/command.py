r"""Fit a dynamic Gaussian-splat scene to one monocular video.

    flow3d-train --work-dir outputs/demo --preset cpu_demo data:synthetic
    flow3d-train --work-dir outputs/pulling_60_ordinal data:custom \
        --data.seq-name pulling --data.root-dir /data/pulling --data.is-train True

(``python run_training.py ...`` in a clone is the same command.) ``--preset NAME`` (a shipped preset, listed
below, or a path to a YAML file; repeatable, applied left to right) sets defaults first; every other flag
overrides them field by field. Re-running the same command resumes from WORK_DIR/checkpoints/last.ckpt.
Options that shape the model or its optimisation must then be the checkpoint's (else one error naming them:
use another --work-dir, or --resume-with-changes); --max-steps may grow, logging and saving may change.
Ctrl-C (or SIGTERM) saves last.ckpt at the current step and exits with code 130 (143); a second Ctrl-C
aborts at once. Errors are one line (exit code 1); --debug (or FLOW3D_DEBUG=1) shows the traceback.
"""

from __future__ import annotations

import os
import sys

# torch's OpenMP threads otherwise spin against OpenCV's thread pool: measured here 0.4 s/step with
# this setting and 5 s/step without it on 2 cores. Must be set before torch is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import tyro  # noqa: E402

from flow3d.cli import run_main  # noqa: E402
from flow3d.config import (  # noqa: E402
    TrainConfig,
    apply_overrides,
    available_presets,
    load_preset,
    preset_path,
    presets_help,
    validate_config,
)
from flow3d.log import setup_logging  # noqa: E402


def usage_error(message: str) -> None:
    """A usage error: one ``error:`` line on stderr and exit code 2 (as tyro's own)."""
    print(f"error: {message}", file=sys.stderr, flush=True)
    raise SystemExit(2)


def split_presets(argv: list[str]) -> tuple[list[str], list[str]]:
    """Take every ``--preset NAME`` / ``--preset=NAME`` out of the arguments (tyro must not see them)."""
    rest, presets, i = [], [], 0
    while i < len(argv):
        a = argv[i]
        if a == "--preset" or a.startswith("--preset="):
            name = argv[i + 1] if a == "--preset" and i + 1 < len(argv) else a.partition("=")[2]
            if not name or name.startswith("-") or name.startswith("data:"):
                usage_error(f"--preset needs a name; available: {', '.join(available_presets())}")
            presets.append(name)
            i += 2 if a == "--preset" else 1
            continue
        rest.append(a)
        i += 1
    return presets, rest


def description() -> str:
    """The ``--help`` text above the flags: this module's docstring and what every preset sets."""
    return (__doc__ or "") + "\nPresets (--preset NAME, repeatable; what each sets):\n" + presets_help()


def parse_args(argv: list[str]) -> TrainConfig:
    """Presets first (left to right), then every other flag on top of them."""
    presets, rest = split_presets(argv)
    default = TrainConfig()
    for preset in presets:
        try:
            default = apply_overrides(default, load_preset(preset), where=f"preset {preset_path(preset)}")
        except ValueError as e:
            raise SystemExit(f"error: {e}") from None
    return tyro.cli(TrainConfig, default=default, args=rest, description=description())


def _main(argv: list[str]) -> dict:
    cfg = validate_config(parse_args(argv))  # out-of-range values: one error naming the field, before anything loads
    setup_logging()
    from flow3d.train.trainer import train

    return train(cfg)


def main(argv: list[str] | None = None) -> dict:
    """Run the command (``argv`` defaults to ``sys.argv[1:]``) and return the training stats.

    Failures leave through ``SystemExit`` with one ``error: ...`` line (:func:`flow3d.cli.run_main`).
    """
    return run_main(_main, argv)


if __name__ == "__main__":
    main()
