"""Loading time of the DAVIS horsejump-high frames (50 x 854x480) through ``data:davis``.

``python -m flow3d.benchmarks.data [--davis-dir DIR] [--flow-tracks True]``

Rows: the reference (decoding the 50 JPEGs and 50 mask PNGs with OpenCV, nothing else); the first load
(decode, checks, split, static-camera default, flat depth prior, optional flow tracks, scene
normalisation, writing the cache); a load from the on-disk cache in a fresh state (what a new process
pays); the in-process memo; and one pass over the frames of the loaded sequence. Ratios are against the
reference measured in the same run.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import tyro

from flow3d.data import DavisDataConfig
from flow3d.data import cache as data_cache

_DEFAULT = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "real" / "davis_horsejump_high"


@dataclass
class Args:
    davis_dir: str = str(_DEFAULT)
    """Flat DAVIS folder with JPEGImages/ and Annotations/."""
    flow_tracks: tyro.conf.FlagConversionOff[bool] = True
    """Build 2D tracks from optical flow on the first load (data:davis default when tracks are missing)."""
    downscale: int = 1
    """Downscale factor of the loader."""


def main() -> None:
    args = tyro.cli(Args)
    src = Path(args.davis_dir)
    if not (src / "JPEGImages").is_dir():
        raise SystemExit(f"DAVIS frames not found under {src}")
    tmp = Path(tempfile.mkdtemp(prefix="flow3d_bench_data_"))
    try:
        root = tmp / "root"
        root.mkdir()
        for d in ("JPEGImages", "Annotations"):
            (root / d).symlink_to(src.resolve() / d)
        cfg = DavisDataConfig(
            seq_name="horsejump-high",
            root_dir=str(root),
            depth_format="constant",
            normalize_scene=True,
            missing_camera="static",
            missing_tracks="flow" if args.flow_tracks else "none",
            downscale=args.downscale,
            cache_dir=str(tmp / "cache"),
        )
        t0 = time.perf_counter()
        for p in sorted((src / "JPEGImages").glob("*.jpg")):
            cv2.imread(str(p))
        for p in sorted((src / "Annotations").glob("*.png")):
            cv2.imread(str(p), cv2.IMREAD_UNCHANGED)
        ref = time.perf_counter() - t0

        rows = []
        t0 = time.perf_counter()
        seq = cfg.load()
        rows.append(
            (
                "first load (decode, checks, "
                + ("flow tracks, " if args.flow_tracks else "")
                + "normalise, write cache)",
                time.perf_counter() - t0,
            )
        )
        data_cache.clear_memo()
        t0 = time.perf_counter()
        seq = cfg.load()
        rows.append(("load from the on-disk cache (new process)", time.perf_counter() - t0))
        t0 = time.perf_counter()
        seq = cfg.load()
        rows.append(("load again in the same process (memo)", time.perf_counter() - t0))
        t0 = time.perf_counter()
        acc = 0.0
        for t in range(seq.num_frames):
            acc += float(seq.images[t].mean() + seq.fg_masks[t].mean() + seq.prior_disp[t].mean())
        rows.append(("one pass over the frames (image, mask, prior of each)", time.perf_counter() - t0))

        print(
            f"DAVIS horsejump-high: {seq.num_frames} frames of {seq.img_wh[0]}x{seq.img_wh[1]}, {seq.tracks_xy.shape[0]} tracks"
        )
        print(f"{'step':<68} {'seconds':>9} {'x reference':>12}")
        print(f"{'reference: cv2.imread of 50 JPEGs + 50 mask PNGs':<68} {ref:>9.3f} {1.0:>12.2f}")
        for name, sec in rows:
            print(f"{name:<68} {sec:>9.3f} {sec / ref:>12.2f}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
