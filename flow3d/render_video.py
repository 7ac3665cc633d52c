"""``python -m flow3d.render_video``: render a trained scene along a camera path, RGB | depth side by side.

    python -m flow3d.render_video --work-dir outputs/demo --model last --camera-path orbit --out orbit.mp4
    python -m flow3d.render_video --work-dir W --camera-path bullet-time --time 12 --num-frames 90 --out bt.mp4

Camera paths (:mod:`flow3d.vis.camera_paths`), all built from a reference training camera (``--ref-frame``,
default the middle frame) and the training cameras' look-at point:

    orbit        swings about the cameras' up axis through the look-at point (+-degrees/2) while time plays
    spiral       circles around the reference camera, looking at the look-at point, while time plays
    fixed        the reference training camera while time plays
    bullet-time  the orbit with time frozen at ``--time``

The depth panel uses run_val's colouring (:func:`flow3d.eval.video.colorize_depth`: turbo, near = red)
with one fixed range for the whole video: the 2nd-98th percentiles of the rendered depth of up to 8
frames of the path (or ``--depth-range``); pixels with accumulated opacity below 0.05 are black. Panels
under 192 pixels tall are enlarged by an integer factor (nearest neighbour) so the colour bar is legible.
The mp4 is written atomically: stopped by SIGTERM (exit 143) or Ctrl-C (exit 130), the command removes its
partial video and leaves a file already at ``--out`` as it was.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Literal, Optional

import numpy as np
from torch import Tensor
from tqdm import tqdm

from flow3d.cli import run_main
from flow3d.eval.video import colorize_depth, depth_range_for_video, depth_video_frame, to_uint8_rgb, write_video
from flow3d.log import get_logger, setup_logging
from flow3d.vis.camera_paths import (
    cameras_up,
    orbit_path,
    play_times,
    scale_intrinsics,
    scene_look_at,
    spiral_path,
)

logger = get_logger("flow3d.render_video")  # not __name__: "__main__" under python -m

CameraPath = Literal["orbit", "spiral", "fixed", "bullet-time"]
MIN_ALPHA = 0.05  # depth of pixels with less accumulated opacity is shown as invalid (black)
MIN_PANEL_HEIGHT = 192  # as run_val's --video-min-height


@dataclass
class VideoConfig:
    """Render RGB | depth videos of a checkpoint along an orbit, a spiral, a training camera or in bullet time."""

    work_dir: str
    """The training work dir (holds cfg.yaml and checkpoints/)."""
    out: str
    """The .mp4 file to write (written atomically)."""
    model: str = "last"
    """Checkpoint: a step number (checkpoints/model_<step>.ckpt) or 'last'."""
    camera_path: CameraPath = "orbit"
    """orbit / spiral / fixed play the video's time; bullet-time freezes it at --time."""
    time: Optional[int] = None
    """Video frame (0..T-1) shown by bullet-time; default: the middle frame."""
    ref_frame: Optional[int] = None
    """Training frame whose camera the path starts from (and fixed shows); default: the middle frame."""
    num_frames: Optional[int] = None
    """Frames of the output video; default: the video's frame count for fixed, max(T, 60) otherwise."""
    fps: float = 15.0
    """Frames per second of the output video."""
    resolution_scale: float = 1.0
    """Render at this multiple of the training resolution."""
    degrees: float = 20.0
    """Angular size of the path: orbit swings +-degrees/2; the spiral's radius subtends degrees/2."""
    depth_range: Optional[tuple[float, float]] = None
    """Fixed (near, far) of the depth colours in scene units; default: percentiles of the path's depth."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """'auto' takes CUDA when it is available."""
    render_backend: Optional[Literal["auto", "gsplat", "torch"]] = None
    """Rasterizer; default: the one in cfg.yaml."""


@dataclass
class PathPlan:
    """What to render: one camera and one video frame per output frame."""

    w2cs: Tensor  # (N, 4, 4) world -> camera, OpenCV
    K: Tensor  # (3, 3) pixels, at the output resolution
    img_wh: tuple[int, int]
    ts: list[int]  # (N,) video frame shown by each output frame
    look_at: Tensor  # (3,) world point the moving paths look at


def plan_path(cfg: VideoConfig, run, seq) -> PathPlan:
    """Cameras, intrinsics and times of ``cfg.camera_path`` for the trained ``run`` and its sequence ``seq``."""
    T = seq.num_frames
    ref = T // 2 if cfg.ref_frame is None else cfg.ref_frame
    time = T // 2 if cfg.time is None else cfg.time
    for name, v in (("--ref-frame", ref), ("--time", time)):
        if not 0 <= v < T:
            raise ValueError(f"{name} {v} is outside the video's frames 0..{T - 1}")
    if not cfg.resolution_scale > 0:
        raise ValueError(f"--resolution-scale must be > 0, got {cfg.resolution_scale}")
    n = cfg.num_frames if cfg.num_frames is not None else (T if cfg.camera_path == "fixed" else max(T, 60))
    if n < 1:
        raise ValueError(f"--num-frames must be >= 1, got {n}")
    W0, H0 = seq.img_wh
    img_wh = (max(1, round(W0 * cfg.resolution_scale)), max(1, round(H0 * cfg.resolution_scale)))
    K = scale_intrinsics(seq.Ks[ref].double(), img_wh[0] / W0).float()
    ref_w2c = seq.w2cs[ref].double()
    look_at = scene_look_at(seq.w2cs.double(), ref_w2c, seq.Ks[ref].double(), (W0, H0), run.centres_at(ref))
    up = cameras_up(seq.w2cs.double())
    if cfg.camera_path == "fixed":
        w2cs = ref_w2c[None].repeat(n, 1, 1)
    elif cfg.camera_path == "spiral":
        w2cs = spiral_path(ref_w2c, look_at, up, n, cfg.degrees)
    else:
        w2cs = orbit_path(ref_w2c, look_at, up, n, cfg.degrees)
    ts = [time] * n if cfg.camera_path == "bullet-time" else play_times(T, n)
    return PathPlan(w2cs.float(), K, img_wh, ts, look_at.float())


def _depth_range(run, plan: PathPlan, samples: int = 8) -> tuple[float, float]:
    """2nd-98th percentile of the rendered depth (alpha >= MIN_ALPHA) of up to ``samples`` path frames,
    rendered with at most 128 pixels on the longer side."""
    s = min(1.0, 128 / max(plan.img_wh))
    wh = (max(1, round(plan.img_wh[0] * s)), max(1, round(plan.img_wh[1] * s)))
    K = scale_intrinsics(plan.K.double(), wh[0] / plan.img_wh[0]).float()
    idx = sorted(set(np.linspace(0, len(plan.ts) - 1, min(samples, len(plan.ts))).round().astype(int).tolist()))
    depths, valid = [], []
    for i in idx:
        r = run.render(plan.ts[i], plan.w2cs[i], K, wh)
        depths.append(r["depth"])
        valid.append(r["alpha"] >= MIN_ALPHA)
    try:
        return depth_range_for_video(np.stack(depths), np.stack(valid))
    except ValueError:
        logger.warning("nothing renders along this camera path: depth colours use the range (0, 1)")
        return 0.0, 1.0


def video_frames(run, plan: PathPlan, depth_range: tuple[float, float]) -> Iterator[np.ndarray]:
    """Yield the (H', W', 3) uint8 frames: rendered RGB | depth (fixed range) | colour bar, "frame t" label."""
    k = max(1, math.ceil(MIN_PANEL_HEIGHT / plan.img_wh[1]))
    enlarge = lambda im: im if k == 1 else np.repeat(np.repeat(im, k, axis=0), k, axis=1)  # noqa: E731
    with tqdm(total=len(plan.ts), desc="render video", unit="frame", dynamic_ncols=True) as bar:
        for w2c, t in zip(plan.w2cs, plan.ts):
            r = run.render(t, w2c, plan.K, plan.img_wh)
            depth = colorize_depth(r["depth"], *depth_range, invalid=r["alpha"] < MIN_ALPHA)
            panels = [("rendered", enlarge(to_uint8_rgb(r["rgb"]))), ("depth", enlarge(depth))]
            yield depth_video_frame(panels, depth_range, t, units="scene")
            bar.update(1)


def render_video(cfg: VideoConfig) -> Path:
    """Render ``cfg.camera_path`` of ``cfg.model`` to ``cfg.out`` (see the module docstring); returns the path."""
    from flow3d.vis.load import check_output_path, load_trained_run

    out = Path(cfg.out)
    if out.suffix.lower() != ".mp4":
        raise ValueError(f"--out must name an .mp4 file, got {out}")
    check_output_path(out, "--out", folder=False)
    if not (math.isfinite(cfg.fps) and cfg.fps > 0):
        raise ValueError(f"--fps must be > 0, got {cfg.fps}")
    if cfg.depth_range is not None and not (0 <= cfg.depth_range[0] < cfg.depth_range[1]):
        raise ValueError(f"--depth-range needs 0 <= near < far, got {cfg.depth_range}")
    if not (math.isfinite(cfg.resolution_scale) and cfg.resolution_scale > 0):  # before anything loads
        raise ValueError(f"--resolution-scale must be > 0, got {cfg.resolution_scale}")
    if cfg.num_frames is not None and cfg.num_frames < 1:
        raise ValueError(f"--num-frames must be >= 1, got {cfg.num_frames}")
    run = load_trained_run(cfg.work_dir, cfg.model, cfg.device, cfg.render_backend)
    seq = run.load_sequence()
    plan = plan_path(cfg, run, seq)
    depth_range = tuple(cfg.depth_range) if cfg.depth_range is not None else _depth_range(run, plan)
    logger.info(
        "%s: %d frames at %dx%d, look-at point %s, depth range %.3g..%.3g scene units",
        cfg.camera_path,
        len(plan.ts),
        *plan.img_wh,
        [round(float(x), 3) for x in plan.look_at],
        *depth_range,
    )
    frames = video_frames(run, plan, depth_range)
    try:
        return write_video(out, frames, fps=cfg.fps)
    finally:
        frames.close()  # its progress bar ends now, before a failure's one line is printed


def _main(argv: list[str]) -> Path:
    import tyro

    cfg = tyro.cli(VideoConfig, args=argv, description=__doc__, prog="python -m flow3d.render_video")
    setup_logging()
    path = render_video(cfg)
    print(f"wrote {path}")
    return path


def main(argv: list[str] | None = None) -> Path:
    """The command (``argv`` defaults to ``sys.argv[1:]``). Failures leave through ``SystemExit`` with one
    ``error: ...`` line (:func:`flow3d.cli.run_main`; ``--debug`` or ``FLOW3D_DEBUG=1`` shows the traceback)."""
    return run_main(_main, argv)


if __name__ == "__main__":
    main()
