"""Evaluate a checkpoint of a training work dir: ``python run_val.py --help``.

A thin wrapper kept for users of a clone; the command is :mod:`flow3d.eval.command` (installed as
``flow3d-val``).
"""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch is imported (see flow3d.train.command)

from flow3d.eval.command import main  # noqa: E402

__all__ = ["main"]

if __name__ == "__main__":
    main()
