"""Helpers of the reliability catalogue: running a command, and the checks every case makes on its output.

Process behaviour (signals, the lock, exit codes, --debug) is tested on the real entry points in
subprocesses (``run_cli``); bad-input cases call the same entry points' ``main()`` in-process
(``main_error``): the one-line error is built by the same code (:func:`flow3d.cli.run_main`), at a fraction
of the cost of starting Python and torch thirty times on a shared CI machine.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SEQ = "clip"

FAST = [
    "--preset",
    "cpu_demo",
    "--image-every",
    "0",
    "--log-every",
    "1000",
    "--init.num-fg",
    "100",
    "--init.num-bg",
    "100",
    "--init.init-fit-steps",
    "5",
]
"""Training options of every case: a few seconds per run."""


def data_args(root: Path, *extra: str) -> list[str]:
    return ["data:custom", "--data.root-dir", str(root), "--data.seq-name", SEQ, *extra]


def child_env(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "FLOW3D_DEBUG"}
    env.update({"OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), **extra})
    return env


def run_cli(*args: str, timeout: float = 120, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run ``python <args>`` from the repository (``run_training.py ...``, ``-m flow3d.export ...``)."""
    return subprocess.run(
        [sys.executable, *args], cwd=REPO, env=env or child_env(), capture_output=True, text=True, timeout=timeout
    )


def assert_one_error_line(stderr: str, *names: str) -> str:
    """``stderr`` ends a failed command: exactly one ``error: ...`` line, naming each of ``names``, and no
    traceback. Returns that line."""
    assert "Traceback" not in stderr, stderr[-3000:]
    lines = [ln for ln in stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, stderr[-3000:]
    for name in names:
        assert str(name) in lines[0], (name, lines[0])
    return lines[0]


def main_error(main, argv: list[str], *names: str) -> str:
    """Call a command's ``main(argv)`` in-process; it must exit with one ``error: ...`` line naming ``names``."""
    with pytest.raises(SystemExit) as e:
        main(argv)
    msg = e.value.code
    assert isinstance(msg, str) and msg.startswith("error: "), msg
    assert "\n" not in msg and "Traceback" not in msg, msg
    for name in names:
        assert str(name) in msg, (name, msg)
    return msg
