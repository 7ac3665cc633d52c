"""Start a server whose own start can block forever, without blocking forever.

viser's ``ViserServer`` starts its web server in a thread and waits on a semaphore that only that thread
releases once it listens: when the thread dies (``--port`` 65535 busy: viser moves on to 65536 and
``bind`` raises ``OverflowError``) or gives up (no address to bind), the wait never ends and the thread's
traceback is the only output. :func:`start_within` turns both into one ``ValueError``.
"""

from __future__ import annotations

import threading
import time
from typing import Callable, TypeVar

T = TypeVar("T")

SERVER_START_TIMEOUT_S = 60.0
"""How long a server may take to start listening (normally well under a second)."""


def start_within(factory: Callable[[], T], timeout_s: float, what: str) -> T:
    """``factory()`` run in a helper thread; its result, or ValueError when a thread it started dies with
    an exception (viser's server thread: its caller would wait for it forever) or when it neither returns
    nor raises within ``timeout_s`` seconds. Exceptions of other threads during the start are taken as
    the server's (recorded, not printed as a thread traceback). The helper thread is a daemon: a blocked
    one does not keep the process alive."""
    box: dict[str, object] = {}
    died: list[BaseException] = []
    previous_hook = threading.excepthook

    def hook(args) -> None:
        if args.exc_value is not None and not isinstance(args.exc_value, SystemExit):
            died.append(args.exc_value)
        else:
            previous_hook(args)

    def target() -> None:
        try:
            box["value"] = factory()
        except BaseException as e:  # handed to the caller's thread
            box["error"] = e

    t = threading.Thread(target=target, daemon=True, name="flow3d-view-start")
    threading.excepthook = hook
    try:
        t.start()
        deadline = time.monotonic() + timeout_s
        while t.is_alive() and not died and time.monotonic() < deadline:
            t.join(0.05)
    finally:
        threading.excepthook = previous_hook
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    if died and "value" not in box:
        e = died[0]
        raise ValueError(f"{what} failed to start ({type(e).__name__}: {e})")
    if "value" not in box:
        raise ValueError(f"{what} did not start within {timeout_s:g} s")
    return box["value"]


__all__ = ["SERVER_START_TIMEOUT_S", "start_within"]
