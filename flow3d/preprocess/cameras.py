"""Cameras and a geometric depth cue for a casual video without camera poses.

    python -m flow3d.preprocess.cameras --root-dir R --seq-name S [--out-dir D] [--downscale 2]

Frames and foreground masks are found as :mod:`flow3d.preprocess.flow` finds them (``R/images/S``,
``R/JPEGImages[/480p]/S`` or a flat ``R/JPEGImages``; masks likewise, optional: without them every pixel
counts as static). A depth prior ``R/<depth-type>/S/*.npy`` (disparity), when present, sets the scale.
Writes, under ``--out-dir`` (default ``R``):

    flow3d_cameras/S.npy           Shape of Motion's droid_recon format (traj_c2w, intrinsics, img_shape,
                                   tstamps); train with --data.camera-type flow3d_cameras
    flow3d_cameras/S_points.npz    the static tracks, their 3D points and confidences
    flow3d_geodepth/S/<frame>.npy  the geometric depth cue, disparity at the frames' size, 0 = invalid
                                   (read automatically when no depth-prior folder exists)

A camera found static gets identity poses and no depth cue. Every file is written atomically; the flow
is cached in ``flow/S`` (shared with ``python -m flow3d.preprocess.flow``).
"""

from __future__ import annotations

import os

if __name__ == "__main__":
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see flow3d.preprocess.flow

import dataclasses
import io as _io
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from flow3d.cameras import CameraEstimateConfig, GeoDepthConfig, estimate_cameras, geometric_depth, write_camera_file
from flow3d.cameras.io import write_npy
from flow3d.cameras.loader import CAMERA_DIR, GEODEPTH_DIR
from flow3d.cli import run_main
from flow3d.data import io as data_io
from flow3d.data.casual import check_frame_size
from flow3d.fileio import write_bytes
from flow3d.log import get_logger, setup_logging
from flow3d.preprocess.flow import find_frames, find_masks

logger = get_logger("flow3d.preprocess.cameras")


@dataclass
class CamerasPreprocessConfig:
    root_dir: Path
    """Dataset root (see the module docstring for the folder layouts understood)."""
    seq_name: str
    """Sequence name (also names the output files)."""
    out_dir: Optional[Path] = None
    """Write flow3d_cameras/ and flow3d_geodepth/ here instead of under root_dir (for read-only data)."""
    downscale: int = 1
    """Estimate on frames shrunk by this integer factor (faster); the files are still for the full frames."""
    depth_type: str = "aligned_depth_anything"
    """Folder of a disparity prior (.npy) that sets the scale when it exists; without it the median
    static-point depth is 1."""
    focal_length: Optional[float] = None
    """Known focal length in pixels of the full-size frames (then fixed); None = estimated."""
    depth_cue: bool = True
    """Also write the geometric depth cue (flow3d_geodepth)."""
    estimate: CameraEstimateConfig = dataclasses.field(default_factory=CameraEstimateConfig)
    """Options of the estimation."""
    geodepth: GeoDepthConfig = dataclasses.field(default_factory=GeoDepthConfig)
    """Options of the depth cue."""


def _load(cfg: CamerasPreprocessConfig):
    data_io.check_seq_name(cfg.seq_name, "--seq-name")
    frames = find_frames(cfg.root_dir, cfg.seq_name)
    mask_files = find_masks(cfg.root_dir, cfg.seq_name, frames)
    first = data_io.read_image(frames[0])
    H0, W0 = first.shape[:2]
    # before the other frames are read: the estimation chains optical flow on the shrunk frames
    check_frame_size(
        (H0, W0),
        cfg.downscale,
        frames[0].parent,
        "the cameras are estimated from optical flow",
        cfg.estimate.flow_backend,
        flag="--downscale",
    )
    imgs = [first] + [data_io.read_image(p) for p in frames[1:]]
    for p, im in zip(frames, imgs):
        if im.shape[:2] != (H0, W0):
            raise ValueError(f"image {p}: size {im.shape[:2]} differs from the first frame's {(H0, W0)}")
    images = np.stack([data_io.resize_image(im, cfg.downscale) for im in imgs])
    if mask_files is None:
        logger.warning("no foreground masks found for %s: every pixel is treated as static", cfg.seq_name)
        masks = np.zeros(images.shape[:3], bool)
    else:
        stats = data_io.MaskStats()
        masks = np.stack(
            [data_io.resize_nearest(data_io.read_mask(m, (H0, W0), stats), cfg.downscale) for m in mask_files]
        )
        data_io.log_mask_stats(stats, mask_files[0].parent)
    prior = valid = None
    depth_dir = Path(cfg.root_dir) / cfg.depth_type / cfg.seq_name
    if depth_dir.is_dir():
        by_stem = {p.stem: p for p in depth_dir.glob("*.npy")}
        missing = [f.name for f in frames if f.stem not in by_stem]
        if missing:
            raise ValueError(f"depth folder {depth_dir} has no .npy for frame(s) {missing[:5]}")
        pairs = [data_io.read_depth_as_disp(by_stem[f.stem], "disp_npy", (H0, W0)) for f in frames]
        prior = np.stack([data_io.resize_nearest(d, cfg.downscale) for d, _ in pairs])
        valid = np.stack([data_io.resize_nearest(v, cfg.downscale) for _, v in pairs])
        logger.info("depth prior %s sets the scale", depth_dir)
    return frames, images, masks, prior, valid, (W0, H0)


def preprocess_cameras(cfg: CamerasPreprocessConfig) -> dict:
    """Estimate and write the cameras (and depth cue) of one sequence. Returns a summary dict."""
    if cfg.downscale < 1:
        raise ValueError(f"downscale must be >= 1, got {cfg.downscale}")
    t0 = time.perf_counter()
    frames, images, masks, prior, valid, (W0, H0) = _load(cfg)
    out_root = Path(cfg.out_dir) if cfg.out_dir is not None else Path(cfg.root_dir)
    H, W = images.shape[1:3]
    focal = None if cfg.focal_length is None else cfg.focal_length * W / W0
    t_load = time.perf_counter()
    est = estimate_cameras(
        images,
        masks,
        prior_disp=prior,
        prior_valid=valid,
        focal=focal,
        cfg=cfg.estimate,
        flow_cache_dir=out_root / "flow" / cfg.seq_name,
    )
    cam_path = write_camera_file(out_root / CAMERA_DIR / f"{cfg.seq_name}.npy", est.w2cs, est.K, est.img_wh)
    summary = {
        "frames": len(frames),
        "estimation_size_wh": [W, H],
        "static_camera": est.is_static,
        "camera_file": str(cam_path),
        "focal_px_full_size": float(est.K[0, 0] * W0 / W),
        "fov_deg": float(np.degrees(2 * np.arctan(W / 2.0 / est.K[0, 0]))),
    }
    if not est.is_static:
        buf = _io.BytesIO()
        np.savez_compressed(
            buf,
            xy=est.tracks.xy,
            visible=est.obs_visible,
            points=est.points,
            point_ok=est.point_ok,
            angle_deg=est.point_angle_deg,
            rms_px=est.point_rms_px,
            img_wh=np.array(est.img_wh),
        )
        write_bytes(out_root / CAMERA_DIR / f"{cfg.seq_name}_points.npz", buf.getvalue())
        summary.update(
            points=est.info["num_points"], rms_px=est.info["rms_final_px"], scale_from=est.info["scale_from"]
        )
        if cfg.depth_cue:
            disp, ok = geometric_depth(est, masks, (H0, W0), cfg.geodepth)
            geo_dir = out_root / GEODEPTH_DIR / cfg.seq_name
            for f, d in zip(frames, disp):
                write_npy(geo_dir / f"{f.stem}.npy", d)
            summary.update(depth_cue_dir=str(geo_dir), depth_cue_valid_fraction=float(ok.mean()))
    else:
        summary["static_reason"] = est.info.get("static_reason")
    wall = time.perf_counter() - t0
    summary.update(
        seconds=wall,
        seconds_estimate=est.info["seconds"]["total"],
        seconds_load=t_load - t0,
        seconds_per_frame=wall / len(frames),
    )
    return summary


def _main(argv: list[str]) -> dict:
    import tyro

    setup_logging()
    cfg = tyro.cli(CamerasPreprocessConfig, args=argv, description=__doc__, prog="python -m flow3d.preprocess.cameras")
    summary = preprocess_cameras(cfg)
    print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in summary.items()}, indent=2))
    return summary


def main(argv: list[str] | None = None) -> dict:
    """The command (``argv`` defaults to ``sys.argv[1:]``). Failures leave through ``SystemExit`` with one
    ``error: ...`` line (:func:`flow3d.cli.run_main`; ``--debug`` or ``FLOW3D_DEBUG=1`` shows the traceback)."""
    return run_main(_main, argv)


if __name__ == "__main__":
    main(sys.argv[1:])
