"""Fit a dynamic Gaussian-splat scene to one monocular video: ``python run_training.py --help``.

A thin wrapper kept for users of a clone; the command is :mod:`flow3d.train.command` (installed as
``flow3d-train``).
"""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch is imported (see flow3d.train.command)

from flow3d.train.command import main, parse_args, split_presets  # noqa: E402

__all__ = ["main", "parse_args", "split_presets"]

if __name__ == "__main__":
    main()
