"""``python -m flow3d.view``: look at a trained scene in the browser (viser), rendered live by our renderer.

    python -m flow3d.view --work-dir outputs/demo
    python -m flow3d.view --work-dir W --model 4000 --port 8080 --host 0.0.0.0

Open the printed address in a browser. The panel has a time slider and play, RGB / depth / foreground,
dynamic / static Gaussians on or off, the training cameras as frustums (click one to look through it at
its frame) and the maximum render resolution; while the camera moves the viewer renders smaller images
so that it stays responsive on a CPU (:mod:`flow3d.vis.viewer`). ``--host 0.0.0.0`` serves other
machines too (by default only this one). Stop with Ctrl+C.
"""

from __future__ import annotations

import socket
import sys
import time
from dataclasses import dataclass
from typing import Literal, Optional

from flow3d.cli import run_main
from flow3d.log import get_logger, setup_logging

logger = get_logger("flow3d.view")  # not __name__: "__main__" under python -m


@dataclass
class ViewConfig:
    """Serve an interactive viewer of a checkpoint (viser) until Ctrl+C."""

    work_dir: str
    """The training work dir (holds cfg.yaml and checkpoints/)."""
    model: str = "last"
    """Checkpoint: a step number (checkpoints/model_<step>.ckpt) or 'last'."""
    port: int = 8080
    """Port to serve on, 0..65535 (viser takes the next free one if it is busy; 0: one the system picks)."""
    host: str = "127.0.0.1"
    """Address to listen on; 0.0.0.0 serves other machines too."""
    max_res: int = 640
    """Longest side of a render once the camera stops moving, in pixels (a slider in the panel too)."""
    target_fps: float = 8.0
    """While the camera moves, renders are made small enough for about this many frames per second."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """'auto' takes CUDA when it is available."""
    render_backend: Optional[Literal["auto", "gsplat", "torch"]] = None
    """Rasterizer; default: the one in cfg.yaml."""


def usage_error(cfg: ViewConfig) -> Optional[str]:
    """The message of a usage error in ``cfg`` (a flag outside its range; exit 2), or None."""
    if not 0 <= cfg.port <= 65535:
        return f"--port must be a TCP port 0..65535, got {cfg.port}"
    if cfg.max_res < 16:
        return f"--max-res must be >= 16 pixels, got {cfg.max_res}"
    if not cfg.target_fps > 0:
        return f"--target-fps must be > 0, got {cfg.target_fps}"
    return None


def check_host(host: str) -> None:
    """ValueError naming ``--host`` unless this machine can listen on ``host`` (a name or an address).

    Binds a throw-away socket to each of the host's addresses on a port the system picks: the port itself
    may be busy (viser then takes the next one), the address must be one of this machine's.
    """
    try:
        infos = socket.getaddrinfo(host or None, 0, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError) as e:
        raise ValueError(
            f"--host {host!r} is not an address of this machine: {getattr(e, 'strerror', None) or e}"
        ) from None
    for family, kind, proto, _, addr in infos:
        try:
            with socket.socket(family, kind, proto) as s:
                s.bind((addr[0], 0) + tuple(addr[2:]))
        except OSError as e:
            raise ValueError(
                f"--host {host!r}: cannot listen on {addr[0]} ({e.strerror or e}); "
                "use an address of this machine, e.g. 127.0.0.1 or 0.0.0.0"
            ) from None


def start_viewer(cfg: ViewConfig):
    """Load the checkpoint and start a :class:`flow3d.vis.viewer.SceneViewer` (returns it, serving)."""
    problem = usage_error(cfg)
    if problem:
        raise ValueError(problem)
    check_host(cfg.host)  # before anything loads: a host that cannot be bound is known at once
    try:
        import viser  # noqa: F401
    except ImportError:
        raise ValueError('the viewer needs viser: pip install "flow3d[viewer]" (or pip install viser)') from None
    from flow3d.vis.load import load_trained_run
    from flow3d.vis.viewer import SceneViewer

    run = load_trained_run(cfg.work_dir, cfg.model, cfg.device, cfg.render_backend)
    seq = run.load_sequence()
    return SceneViewer(run, seq, host=cfg.host, port=cfg.port, max_res=cfg.max_res, target_fps=cfg.target_fps)


def main(argv: list[str] | None = None) -> None:
    """The command (``argv`` defaults to ``sys.argv[1:]``). Failures leave through ``SystemExit`` with one
    ``error: ...`` line (:func:`flow3d.cli.run_main`; ``--debug`` or ``FLOW3D_DEBUG=1`` shows the traceback)."""
    run_main(_main, argv)


def _main(argv: list[str]) -> None:
    import tyro

    cfg = tyro.cli(ViewConfig, args=argv, description=__doc__, prog="python -m flow3d.view")
    problem = usage_error(cfg)
    if problem:  # a usage error: exit 2, as tyro's own
        print(f"error: {problem}", file=sys.stderr, flush=True)
        raise SystemExit(2)
    setup_logging()
    viewer = start_viewer(cfg)
    host = "localhost" if cfg.host in ("127.0.0.1", "0.0.0.0") else cfg.host
    print(
        f"viewer of {cfg.work_dir} (step {viewer.run.step}) at http://{host}:{viewer.port}  (Ctrl+C to stop)",
        flush=True,
    )
    try:
        while True:
            time.sleep(1.0)
    except KeyboardInterrupt:
        pass
    finally:
        viewer.stop()


if __name__ == "__main__":
    main()
