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
    """Port to serve on (viser takes the next free one if it is busy)."""
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


def start_viewer(cfg: ViewConfig):
    """Load the checkpoint and start a :class:`flow3d.vis.viewer.SceneViewer` (returns it, serving)."""
    try:
        import viser  # noqa: F401
    except ImportError:
        raise ValueError('the viewer needs viser: pip install "flow3d[viewer]" (or pip install viser)') from None
    from flow3d.vis.load import load_trained_run
    from flow3d.vis.viewer import SceneViewer

    if cfg.max_res < 16:
        raise ValueError(f"--max-res must be >= 16 pixels, got {cfg.max_res}")
    run = load_trained_run(cfg.work_dir, cfg.model, cfg.device, cfg.render_backend)
    seq = run.load_sequence()
    return SceneViewer(run, seq, host=cfg.host, port=cfg.port, max_res=cfg.max_res, target_fps=cfg.target_fps)


def main(argv: list[str] | None = None) -> None:
    """The command (``argv`` defaults to ``sys.argv[1:]``). Failures leave through ``SystemExit`` with one
    ``error: ...`` line (:func:`flow3d.cli.run_main`; ``--debug`` or ``FLOW3D_DEBUG=1`` shows the traceback)."""
    run_main(_main, argv)


def _main(argv: list[str]) -> None:
    import tyro

    cfg = tyro.cli(ViewConfig, args=argv, description=__doc__)
    setup_logging()
    viewer = start_viewer(cfg)
    host = "localhost" if cfg.host in ("127.0.0.1", "0.0.0.0") else cfg.host
    print(f"viewer of {cfg.work_dir} (step {viewer.run.step}) at http://{host}:{viewer.port}  (Ctrl+C to stop)", flush=True)
    try:
        while True:
            time.sleep(1.0)
    except KeyboardInterrupt:
        pass
    finally:
        viewer.stop()


if __name__ == "__main__":
    main()
