"""The one logger of the package.

Library code calls ``logger = get_logger(__name__)`` and logs; it never prints. The command-line
entry points call :func:`setup_logging` once.
"""

from __future__ import annotations

import logging

_ROOT = "flow3d"


def get_logger(name: str = _ROOT) -> logging.Logger:
    """Return the package logger (or a child of it for ``flow3d.*`` module names)."""
    if not name.startswith(_ROOT):
        name = f"{_ROOT}.{name}"
    return logging.getLogger(name)


def setup_logging(level: int | str = logging.INFO) -> None:
    """Send the package's log records to stderr with a short format (idempotent)."""
    root = logging.getLogger(_ROOT)
    root.setLevel(level)
    if not any(getattr(h, "_flow3d", False) for h in root.handlers):
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("[%(asctime)s %(levelname)s %(name)s] %(message)s", "%H:%M:%S"))
        handler._flow3d = True  # type: ignore[attr-defined]
        root.addHandler(handler)
