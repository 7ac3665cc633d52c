"""DyCheck iPhone sequences as processed by Shape of Motion (``data:iphone``).

Layout under ``data_dir`` (F = ``factor``)::

    splits/train.json, splits/val.json     {"frame_names": [...], "time_ids": [...], ...}
    camera/NAME.json                       Nerfies camera: orientation (3x3 world->camera rotation),
                                           position (camera centre), focal_length, principal_point,
                                           pixel_aspect_ratio, image_size (at 1x)
    rgb/Fx/NAME.png                        RGBA; alpha > 0 = valid pixel
    flow3d_preprocessed/track_anything/Fx/NAME.png     foreground mask (value / 255)
    depth/Fx/NAME.npy                      lidar z-depth (H, W, 1)            (depth_type=lidar)
    flow3d_preprocessed/aligned_<depth_type>/Fx/NAME.npy   disparity           (other depth types)
    flow3d_preprocessed/2d_tracks/Fx/<q>_<t>.npy           TAPIR rows
    flow3d_preprocessed/covisible/Fx/val/NAME.png          covisibility of the val views

The train split is the video; the val split (other cameras at the same timestamps) becomes
``VideoSequence.val_views`` and ``val_ids`` is empty. Only when the val split is empty does
``val_every`` hold out frames of the video. Nerfies cameras put pixel centres at +0.5 (like COLMAP);
intrinsics are divided by F in that convention, then shifted by -0.5 to the OpenCV pixel-centre
convention of this project. Not read: COLMAP-refined cameras, keypoints, distortion (must be zero).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from tqdm import tqdm

from flow3d import depth as depth_lib
from flow3d.data import io
from flow3d.data.cache import cache_key, cached_sequence, default_cache_dir, files_signature
from flow3d.data.common import FileDataConfig, finish_file_sequence
from flow3d.data.sequence import HeldOutViews, VideoSequence
from flow3d.data.split import split_frames
from flow3d.data.tracks import dense_tracks_from_pairs
from flow3d.log import get_logger

logger = get_logger(__name__)


@dataclass(kw_only=True)
class IPhoneDataConfig(FileDataConfig):
    """A DyCheck iPhone sequence in Shape of Motion's processed layout."""

    data_dir: str
    """Folder of the sequence (holds splits/, camera/, rgb/, flow3d_preprocessed/)."""
    start: int = 0
    """First frame of the train split to use."""
    end: int = -1
    """One past the last frame of the train split; -1 = to the end."""
    factor: int = 2
    """Image downsampling factor of the files to read (rgb/<factor>x/...)."""
    depth_type: Literal["lidar", "depth_anything_colmap", "depth_anything", "midas"] = "depth_anything_colmap"
    """Depth prior: lidar (depth/Fx, z-depth) or an aligned monocular disparity (flow3d_preprocessed/aligned_<type>/Fx)."""

    def load(self) -> VideoSequence:
        """Load the train split as the video and the val split as held-out views (cached)."""
        return load_iphone(self)


def _read_json(path: Path, what: str) -> dict:
    if not path.is_file():
        raise ValueError(f"{what} not found: {path}")
    try:
        with open(path) as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{what} {path} is not valid JSON: {e}") from None


def _read_camera(path: Path, factor: int) -> tuple[np.ndarray, np.ndarray]:
    cam = _read_json(path, "camera file")
    try:
        R = np.asarray(cam["orientation"], dtype=np.float64)
        c = np.asarray(cam["position"], dtype=np.float64)
        f = float(cam["focal_length"])
        pp = np.asarray(cam["principal_point"], dtype=np.float64)
    except KeyError as e:
        raise ValueError(f"camera file {path}: missing field {e.args[0]!r}") from None
    if R.shape != (3, 3) or c.shape != (3,) or pp.shape != (2,):
        raise ValueError(
            f"camera file {path}: expected orientation (3, 3), position (3,), principal_point (2,), got {R.shape}, {c.shape}, {pp.shape}"
        )
    for k in ("radial_distortion", "tangential_distortion"):
        if np.any(np.asarray(cam.get(k, 0.0), dtype=np.float64) != 0):
            raise ValueError(f"camera file {path}: field {k!r} is non-zero; undistorted images are expected")
    aspect = float(cam.get("pixel_aspect_ratio", 1.0))
    skew = float(cam.get("skew", 0.0))
    K = np.array([[f, skew, pp[0]], [0, f * aspect, pp[1]], [0, 0, 1.0]])
    K[:2] /= factor
    K[0, 2] -= 0.5  # Nerfies/COLMAP pixel centres at +0.5 -> OpenCV centres at integers
    K[1, 2] -= 0.5
    w2c = np.eye(4)
    w2c[:3, :3] = R
    w2c[:3, 3] = -R @ c
    return w2c, K


def _load_frames(d: Path, names: list[str], factor: int, want_masks: bool, desc: str):
    imgs, valids, masks = [], [], []
    for n in tqdm(names, desc=desc, leave=False):
        rgb, alpha = io.read_image_rgba(d / "rgb" / f"{factor}x" / f"{n}.png")
        imgs.append(rgb)
        valids.append(alpha)
        if want_masks:
            masks.append(
                io.read_mask(d / "flow3d_preprocessed" / "track_anything" / f"{factor}x" / f"{n}.png", rgb.shape[:2])
            )
    shapes = {i.shape for i in imgs}
    if len(shapes) != 1:
        raise ValueError(f"{d}/rgb/{factor}x: frames have different sizes {sorted(shapes)}")
    return np.stack(imgs), np.stack(valids), (np.stack(masks) if want_masks else None)


def load_iphone(cfg: IPhoneDataConfig) -> VideoSequence:
    """Read the splits, key the cache on the input files, then load through
    :func:`flow3d.data.cache.cached_sequence`."""
    d = Path(cfg.data_dir)
    if not d.is_dir():
        raise ValueError(f"data_dir not found: {d}")
    train, val = _read_splits(d)
    n_all = len(train["frame_names"])
    end = n_all if cfg.end == -1 else min(cfg.end, n_all)
    if not 0 <= cfg.start < end:
        raise ValueError(f"frame range start={cfg.start}, end={cfg.end} is invalid for {n_all} train frames")
    names = train["frame_names"][cfg.start : end]
    time_ids = np.asarray(train["time_ids"][cfg.start : end], dtype=np.int64)
    depth_dir, fmt = _depth_source(d, cfg)
    sig_dirs = [d / "splits", d / "camera", d / "rgb" / f"{cfg.factor}x", depth_dir]
    sig = [files_signature(sorted(p for p in x.iterdir() if p.is_file())) for x in sig_dirs if x.is_dir()]
    key = cache_key(cfg, exclude=("is_train", "cache_dir", "use_cache"), extra=[str(d.resolve()), sig])
    cache_path = Path(cfg.cache_dir or default_cache_dir()) / f"iphone_{d.name}_{key}.npz"
    build = lambda: _read_sequence(cfg, d, names, time_ids, val, depth_dir, fmt)  # noqa: E731
    return cached_sequence(key, cache_path, build, use_disk=cfg.use_cache)


def _read_splits(d: Path) -> tuple[dict, dict]:
    train = _read_json(d / "splits" / "train.json", "split file")
    val_path = d / "splits" / "val.json"
    val = _read_json(val_path, "split file") if val_path.exists() else {"frame_names": [], "time_ids": []}
    for name, sp in (("train", train), ("val", val)):
        if "frame_names" not in sp or "time_ids" not in sp or len(sp["frame_names"]) != len(sp["time_ids"]):
            raise ValueError(f"split file splits/{name}.json: needs 'frame_names' and 'time_ids' of equal length")
    return train, val


def _depth_source(d: Path, cfg: IPhoneDataConfig) -> tuple[Path, str]:
    F = cfg.factor
    if cfg.depth_type == "lidar":
        depth_dir, fmt = d / "depth" / f"{F}x", "depth_npy"
    else:
        depth_dir, fmt = d / "flow3d_preprocessed" / f"aligned_{cfg.depth_type}" / f"{F}x", "disp_npy"
    if not depth_dir.is_dir():
        raise ValueError(f"depth folder not found: {depth_dir} (depth_type={cfg.depth_type!r})")
    return depth_dir, fmt


def _read_sequence(
    cfg: IPhoneDataConfig, d: Path, names: list[str], time_ids: np.ndarray, val: dict, depth_dir: Path, fmt: str
) -> VideoSequence:
    F, T = cfg.factor, len(names)
    images, valid, masks = _load_frames(d, names, F, True, "iphone train")
    H, W = images.shape[1:3]
    cams = [_read_camera(d / "camera" / f"{n}.json", F) for n in names]
    disp, disp_valid = _read_depth(depth_dir, fmt, names, (H, W))
    track_dir = d / "flow3d_preprocessed" / "2d_tracks" / f"{F}x"
    if track_dir.is_dir():
        pairs = io.read_track_dir(track_dir, names)
        queries = sorted(q for (q, t) in pairs if q == t)
        xy, vis, conf, qt = dense_tracks_from_pairs(
            pairs, T, queries, cfg.max_tracks_per_query, cfg.seed, source=f"track folder {track_dir}"
        )
    else:
        logger.warning("iphone: no track folder %s; continuing without 2D tracks", track_dir)
        xy, vis, conf, qt = dense_tracks_from_pairs({}, T, [])
    val_views = _read_val_views(d, F, val, time_ids)
    if val_views is not None:
        train_ids, val_ids = torch.arange(T), torch.zeros(0, dtype=torch.long)
    else:
        train_ids, val_ids = split_frames(T, cfg.val_every)
    seq = VideoSequence(
        name=d.name,
        images=torch.from_numpy(images).float() / 255.0,
        fg_masks=torch.from_numpy(masks).float(),
        valid_masks=torch.from_numpy(valid),
        prior_disp=torch.from_numpy(disp),
        prior_valid=torch.from_numpy(disp_valid),
        w2cs=torch.from_numpy(np.stack([c[0] for c in cams])).float(),
        Ks=torch.from_numpy(np.stack([c[1] for c in cams])).float(),
        time_ids=torch.from_numpy(time_ids),
        train_ids=train_ids,
        val_ids=val_ids,
        tracks_xy=xy,
        tracks_visible=vis,
        tracks_conf=conf,
        tracks_query_t=qt,
        val_views=val_views,
        frame_names=list(names),
    )
    return finish_file_sequence(seq, cfg)


def _read_depth(depth_dir: Path, fmt: str, names: list[str], hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    disp = np.zeros((len(names), *hw), np.float32)
    disp_valid = np.zeros((len(names), *hw), bool)
    for t, n in enumerate(names):
        p = depth_dir / f"{n}.npy"
        if not p.is_file():
            raise ValueError(f"depth for frame {n!r} not found: {p}")
        disp[t], disp_valid[t] = io.read_depth_as_disp(p, fmt, hw)
    n_bad = int((~disp_valid).sum())
    if n_bad:
        logger.warning("iphone depth prior: %d pixels are NaN/Inf or <= %g and are masked out", n_bad, depth_lib.EPS)
    return disp, disp_valid


def _read_val_views(d: Path, F: int, val: dict, time_ids: np.ndarray) -> HeldOutViews | None:
    """The val split's cameras at the video's timestamps (those outside the loaded clip are skipped)."""
    t_of = {int(tid): i for i, tid in enumerate(time_ids)}
    keep = [(n, t_of[int(tid)]) for n, tid in zip(val["frame_names"], val["time_ids"]) if int(tid) in t_of]
    if not keep:
        return None
    vnames = [n for n, _ in keep]
    vimg, vvalid, _ = _load_frames(d, vnames, F, False, "iphone val")
    vcams = [_read_camera(d / "camera" / f"{n}.json", F) for n in vnames]
    cov = None
    cov_dir = d / "flow3d_preprocessed" / "covisible" / f"{F}x" / "val"
    if cov_dir.is_dir():
        cov = torch.from_numpy(np.stack([io.read_mask(cov_dir / f"{n}.png", vimg.shape[1:3]) for n in vnames]))
    return HeldOutViews(
        images=torch.from_numpy(vimg).float() / 255.0,
        valid_masks=torch.from_numpy(vvalid),
        w2cs=torch.from_numpy(np.stack([c[0] for c in vcams])).float(),
        Ks=torch.from_numpy(np.stack([c[1] for c in vcams])).float(),
        t=torch.tensor([t for _, t in keep], dtype=torch.long),
        names=vnames,
        covisible_masks=cov,
    )
