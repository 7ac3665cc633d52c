r"""Fit a dynamic Gaussian-splat scene to one monocular video.

    python run_training.py --work-dir outputs/demo --preset cpu_demo data:synthetic
    python run_training.py --work-dir ./outputs/pulling_60_ordinal data:custom \
        --data.seq-name pulling --data.root-dir /data/pulling --data.is-train True

``--preset NAME`` (a file in configs/, or a path to a YAML file; repeatable, applied left to right) sets
defaults first; every other flag overrides them field by field. Re-running the same command resumes from WORK_DIR/checkpoints/last.ckpt.
Ctrl-C (or SIGTERM) saves last.ckpt at the current step and exits with code 130 (143); a second Ctrl-C
aborts at once. Errors are one line (exit code 1); --debug (or FLOW3D_DEBUG=1) shows the traceback.
"""

from __future__ import annotations

import os

# torch's OpenMP threads otherwise spin against OpenCV's thread pool: measured here 0.4 s/step with
# this setting and 5 s/step without it on 2 cores. Must be set before torch is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import tyro  # noqa: E402

from flow3d.cli import run_main  # noqa: E402
from flow3d.config import TrainConfig, apply_overrides, available_presets, load_preset, validate_config  # noqa: E402
from flow3d.log import setup_logging  # noqa: E402


def split_presets(argv: list[str]) -> tuple[list[str], list[str]]:
    """Take every ``--preset NAME`` / ``--preset=NAME`` out of the arguments (tyro must not see them)."""
    rest, presets, i = [], [], 0
    while i < len(argv):
        a = argv[i]
        if a == "--preset":
            if i + 1 >= len(argv):
                raise SystemExit(f"--preset needs a name; available: {available_presets()}")
            presets.append(argv[i + 1])
            i += 2
            continue
        if a.startswith("--preset="):
            presets.append(a.split("=", 1)[1])
        else:
            rest.append(a)
        i += 1
    return presets, rest


def parse_args(argv: list[str]) -> TrainConfig:
    """Presets first (left to right), then every other flag on top of them."""
    presets, rest = split_presets(argv)
    default = TrainConfig()
    for preset in presets:
        try:
            default = apply_overrides(default, load_preset(preset), where=f"preset {preset}")
        except ValueError as e:
            raise SystemExit(f"error: {e}") from None
    description = (__doc__ or "") + f"\nPresets (--preset NAME, repeatable): {', '.join(available_presets())}"
    return tyro.cli(TrainConfig, default=default, args=rest, description=description)


def _main(argv: list[str]) -> dict:
    cfg = validate_config(parse_args(argv))  # out-of-range values: one error naming the field, before anything loads
    setup_logging()
    from flow3d.train.trainer import train

    return train(cfg)


def main(argv: list[str] | None = None) -> dict:
    """The command (``argv`` defaults to ``sys.argv[1:]``); returns the training stats. Failures leave through
    ``SystemExit`` with one ``error: ...`` line (:func:`flow3d.cli.run_main`)."""
    return run_main(_main, argv)


if __name__ == "__main__":
    main()
