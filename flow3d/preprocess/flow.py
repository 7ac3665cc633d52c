"""Forward/backward flow, fb-consistency masks and chained tracks for one sequence.

    python -m flow3d.preprocess.flow --root-dir R --seq-name S --backend dis --strides 1 2

Frames are found in ``R/images/S`` (custom), ``R/JPEGImages/480p/S`` or ``R/JPEGImages/S`` (DAVIS), or a
flat ``R/JPEGImages``; foreground masks likewise in ``R/masks/S``, ``R/Annotations/480p/S``,
``R/Annotations/S`` or ``R/Annotations`` (optional: without them tracks are queried over whole frames).
Writes, under ``--out-dir`` (default ``R``):

    flow/S/<backend>-<key>/{settings.json, 00000_00001.npz, ...}   (see :class:`flow3d.flow.FlowCache`)
    flow_tracks/S/<query>_<target>.npy + done.json                (Shape of Motion's TAPIR format)

Pairs already computed are skipped, every file is written under a temporary name and renamed, so the
command can be interrupted and run again. The training data loader calls :func:`preprocess_flow` (or
:func:`flow3d.flow.tracks_from_flow`) itself when flow is missing.
"""

from __future__ import annotations

import os

if __name__ == "__main__":
    # OpenCV's thread pool and torch's OpenMP threads spin against each other on a busy machine; a
    # passive OpenMP wait makes the fb check ~10x faster on a loaded 2-core box. Must precede `import torch`.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import json
import sys
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Literal

import numpy as np
from tqdm import tqdm

from flow3d.cli import run_main
from flow3d.data import io as data_io
from flow3d.flow import FlowCache, tracks_from_flow, write_som_tracks
from flow3d.log import get_logger, setup_logging

logger = get_logger("flow3d.preprocess.flow")

IMAGE_EXTS = (".jpg", ".jpeg", ".png")


@dataclass
class FlowPreprocessConfig:
    root_dir: Path
    """Dataset root (see the module docstring for the folder layouts understood)."""
    seq_name: str
    """Sequence name (also names the output folders)."""
    backend: Literal["dis", "farneback", "raft"] = "dis"
    """Flow estimator."""
    strides: tuple[int, ...] = (1,)
    """Frame gaps k: flows i <-> i+k are computed for every i."""
    out_dir: Path | None = None
    """Write flow/ and flow_tracks/ here instead of under root_dir (for read-only data)."""
    tracks: bool = True
    """Also chain stride-1 flow into tracks (Shape of Motion's .npy format)."""
    grid_step: int = 8
    """Spacing in pixels of the track query grid over the foreground mask."""
    query_stride: int = 1
    """Every query_stride-th frame is a track query frame (Shape of Motion expects every frame: 1)."""
    fb_rule: Literal["squared", "lenient", "fixed"] = "squared"
    """Forward-backward consistency rule (coefficients at their defaults)."""
    dis_preset: Literal["ultrafast", "fast", "medium"] = "medium"
    """DIS preset (backend dis)."""
    raft_weights: Path | None = None
    """Local RAFT state-dict file (backend raft; never downloaded)."""
    raft_model: Literal["raft_small", "raft_large"] = "raft_large"
    """torchvision RAFT variant (backend raft)."""
    num_flow_updates: int = 12
    """RAFT refinement iterations (backend raft)."""


def _candidates(root: Path, seq: str, kind: Literal["images", "masks"]) -> list[Path]:
    name, davis = ("images", "JPEGImages") if kind == "images" else ("masks", "Annotations")
    return [root / name / seq, root / davis / "480p" / seq, root / davis / seq, root / davis]


def _list_images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTS and p.is_file())


def find_frames(root_dir: str | os.PathLike, seq_name: str) -> list[Path]:
    """Sorted frame files of the sequence; FileNotFoundError listing the folders tried when none is found."""
    root = Path(root_dir)
    tried = _candidates(root, seq_name, "images")
    for folder in tried:
        if folder.is_dir() and _list_images(folder):
            return _list_images(folder)
    raise FileNotFoundError(
        f"no frames (.jpg/.png) found for sequence {seq_name!r} under {root}; looked in: "
        + ", ".join(str(p) for p in tried)
    )


def find_masks(root_dir: str | os.PathLike, seq_name: str, frames: list[Path]) -> list[Path] | None:
    """Mask files matching ``frames`` by name (``<stem>.png``), or None when no mask folder exists."""
    root = Path(root_dir)
    for folder in _candidates(root, seq_name, "masks"):
        if folder.is_dir() and _list_images(folder):
            by_stem = {p.stem: p for p in _list_images(folder)}
            missing = [f.name for f in frames if f.stem not in by_stem]
            if missing:
                raise FileNotFoundError(f"mask folder {folder} has no mask for frame(s) {missing[:5]}")
            return [by_stem[f.stem] for f in frames]
    return None


def load_rgb(path: Path) -> np.ndarray:
    """(H, W, 3) uint8 RGB (gray frames are repeated, alpha dropped); :func:`flow3d.data.io.read_image`, so a
    truncated or corrupt image is an error naming the file."""
    return data_io.read_image(Path(path))


def load_mask(path: Path) -> np.ndarray:
    """(H, W) bool foreground, as the loaders read masks (:func:`flow3d.data.io.read_mask`: a palette PNG's non-zero
    indices, 0/1 or index PNGs > 0, otherwise at or above half of 255, so JPEG noise is not foreground)."""
    return data_io.read_mask(Path(path), None)


def backend_options(cfg: FlowPreprocessConfig) -> dict:
    """The ``estimate_flow`` options the chosen backend takes from the config."""
    if cfg.backend == "dis":
        return {"preset": cfg.dis_preset}
    if cfg.backend == "raft":
        return {
            "weights": str(cfg.raft_weights) if cfg.raft_weights else None,
            "model": cfg.raft_model,
            "num_flow_updates": cfg.num_flow_updates,
        }
    return {}


def preprocess_flow(cfg: FlowPreprocessConfig) -> dict:
    """Compute (or skip) all flows and tracks of one sequence. Returns a summary dict (paths, counts, seconds)."""
    if any(int(s) < 1 for s in cfg.strides) or not cfg.strides:
        raise ValueError(f"strides must be positive integers, got {cfg.strides}")
    if cfg.grid_step < 1 or cfg.query_stride < 1:
        raise ValueError(f"grid_step and query_stride must be >= 1, got {cfg.grid_step}, {cfg.query_stride}")
    data_io.check_seq_name(cfg.seq_name, "--seq-name")
    frames = find_frames(cfg.root_dir, cfg.seq_name)
    mask_files = find_masks(cfg.root_dir, cfg.seq_name, frames) if cfg.tracks else None
    out_root = Path(cfg.out_dir) if cfg.out_dir is not None else Path(cfg.root_dir)
    flow_dir, tracks_dir = out_root / "flow" / cfg.seq_name, out_root / "flow_tracks" / cfg.seq_name
    options = backend_options(cfg)
    cache = FlowCache(flow_dir, cfg.backend, fb_rule=cfg.fb_rule, **options)
    T = len(frames)
    H, W = load_rgb(frames[0]).shape[:2]
    logger.info("%s: %d frames %dx%d from %s", cfg.seq_name, T, W, H, frames[0].parent)

    image = lru_cache(maxsize=8)(lambda i: load_rgb(frames[i]))
    pairs = [(i, i + int(s)) for s in sorted(set(cfg.strides)) for i in range(T - int(s))]
    todo = [p for p in pairs if not cache.has(*p, H, W)]
    t0 = time.perf_counter()
    for i, j in tqdm(todo, desc=f"flow {cfg.backend}", unit="pair"):
        cache.get(i, j, image(i), image(j))
    summary = {
        "frames": T,
        "pairs": len(pairs),
        "pairs_computed": len(todo),
        "flow_dir": str(cache.folder(H, W)),
        "flow_seconds": time.perf_counter() - t0,
    }
    logger.info(
        "flow: %d pairs (%d computed, %d already done) in %s",
        len(pairs),
        len(todo),
        len(pairs) - len(todo),
        summary["flow_dir"],
    )
    if cfg.tracks:
        summary.update(_tracks(cfg, frames, mask_files, cache, tracks_dir, options, (H, W)))
    return summary


def _tracks(cfg, frames, mask_files, cache, tracks_dir: Path, options: dict, hw) -> dict:
    names = [f.stem for f in frames]
    queries = list(range(0, len(frames), cfg.query_stride))
    stamp = {
        "backend": cfg.backend,
        "options": options,
        "fb_rule": cfg.fb_rule,
        "grid_step": cfg.grid_step,
        "queries": queries,
        "frame_names": names,
        "frame_size_hw": list(hw),
        "mask_files": mask_files is not None,
    }
    done = tracks_dir / "done.json"
    if done.is_file():
        try:
            if json.loads(done.read_text()) == json.loads(json.dumps(stamp, default=str)):
                logger.info("tracks: already done in %s", tracks_dir)
                return {"tracks_dir": str(tracks_dir), "tracks_written": 0, "tracks_seconds": 0.0}
        except json.JSONDecodeError:
            pass
        logger.info("tracks: %s was made with other settings; recomputing", tracks_dir)
        done.unlink()
    t0 = time.perf_counter()
    images = np.stack([load_rgb(f) for f in frames])
    if mask_files is None:
        logger.warning("no foreground masks found for %s: track queries cover whole frames", cfg.seq_name)
        masks = np.ones(images.shape[:3], bool)
    else:
        masks = np.stack([load_mask(m) for m in mask_files])
    tracks = tracks_from_flow(
        images,
        masks,
        queries,
        grid_step=cfg.grid_step,
        backend=cfg.backend,
        cache_dir=cache.cache_dir,
        fb_rule=cfg.fb_rule,
        flow_options=options,
        progress=True,
    )
    paths = write_som_tracks(tracks_dir, tracks, frame_names=names)
    done.write_text(json.dumps(stamp, indent=2, default=str) + "\n")
    visible = np.mean([float((a[:, 2] < 0).mean()) for (q, t), a in tracks.items() if q != t and len(a)] or [0.0])
    logger.info(
        "tracks: %d files in %s (mean visible fraction over (query, target) pairs %.2f)",
        len(paths),
        tracks_dir,
        visible,
    )
    return {
        "tracks_dir": str(tracks_dir),
        "tracks_written": len(paths),
        "tracks_seconds": time.perf_counter() - t0,
        "tracks_visible_fraction": visible,
    }


def _main(argv: list[str]) -> dict:
    import tyro

    setup_logging()
    cfg = tyro.cli(FlowPreprocessConfig, args=argv, description=__doc__, prog="python -m flow3d.preprocess.flow")
    summary = preprocess_flow(cfg)
    logger.info("done: %s", json.dumps({k: (round(v, 2) if isinstance(v, float) else v) for k, v in summary.items()}))
    return summary


def main(argv: list[str] | None = None) -> dict:
    """The command (``argv`` defaults to ``sys.argv[1:]``). Failures leave through ``SystemExit`` with one
    ``error: ...`` line (:func:`flow3d.cli.run_main`; ``--debug`` or ``FLOW3D_DEBUG=1`` shows the traceback)."""
    return run_main(_main, argv)


if __name__ == "__main__":
    main(sys.argv[1:])
