"""Casual videos in Shape of Motion's layout: ``data:custom`` and ``data:davis``.

Layout under ``root_dir`` (``RES`` is ``res``, empty for custom; DAVIS also accepts ``JPEGImages/SEQ`` and
the flat ``JPEGImages/*.jpg`` directly under the root)::

    <image_type>/RES/SEQ/NAME.jpg|png      frames, sorted by name
    <mask_type>/RES/SEQ/NAME.png           foreground >= 128 (palette / 0-1 / index PNGs: > 0), io.read_mask
    <depth_type>/RES/SEQ/NAME.npy|png      depth prior (see ``depth_format``)
    <camera_type>/SEQ.npy                  droid_recon dict: traj_c2w, img_shape, intrinsics, tstamps
    <track_type>/RES/SEQ/<q>_<t>.npy       (P, 4) TAPIR rows of query frame q located in frame t
    <ignore_type>/RES/SEQ/NAME.png         optional: 255 = pixel to ignore (e.g. an instrument)
    <gt_depth_type>/RES/SEQ/NAME.npy       optional: reference z-depth for run_val.py (source.txt says what)

Beyond Shape of Motion: a train/validation split; 2D tracks from optical flow when the track folder is
missing; cameras estimated from the video (or a static camera) when the camera file is missing, and the
geometric depth cue as the prior when the depth folder is missing too (:mod:`flow3d.cameras.loader`); depth as disparity/depth ``.npy`` or 16-bit
PNG; integer downscaling; one clear error per bad input; an ``.npz`` cache keyed on the config and the
input files; ignore masks (``valid_masks == False``: flow tracks never start on an ignored pixel and end
where they land on one) and reference depth (``gt_depth``), see :mod:`flow3d.data.endoscopy`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional

import numpy as np
import torch
from tqdm import tqdm

from flow3d import depth as depth_lib
from flow3d.cameras import loader as camload
from flow3d.cameras.estimate import CameraEstimateConfig
from flow3d.data import io
from flow3d.data.cache import (
    cache_dir_usable,
    cache_key,
    cache_stem,
    cached_sequence,
    default_cache_dir,
    files_signature,
)
from flow3d.data.common import FileDataConfig, finish_file_sequence
from flow3d.data.endoscopy import count_stopped, read_depth_folder, read_ignore_folder, stop_tracks_on_ignored
from flow3d.data.sequence import VideoSequence
from flow3d.data.split import split_frames
from flow3d.data.tracks import dense_tracks_from_pairs
from flow3d.flow import fill_ignored
from flow3d.log import get_logger

logger = get_logger(__name__)


@dataclass(kw_only=True)
class CustomDataConfig(FileDataConfig):
    """A casual video in Shape of Motion's custom layout (``images/SEQ``, ``masks/SEQ``, ...)."""

    seq_name: str
    """Sequence name: the sub-folder under each data folder (``images/SEQ``, ...)."""
    root_dir: str
    """Root folder of the dataset."""
    start: int = 0
    """First frame of the clip (index into the sorted frames)."""
    end: int = -1
    """One past the last frame of the clip; -1 = to the end."""
    res: str = ""
    """Resolution sub-folder between the data folder and SEQ (e.g. 480p); empty = none."""
    image_type: str = "images"
    """Folder name of the frames."""
    mask_type: str = "masks"
    """Folder name of the foreground masks (foreground where the largest channel is >= 128, half of 255; a
    palette PNG's non-zero indices; PNGs without a value >= 128, e.g. 0/1 masks: > 0)."""
    depth_type: str = "aligned_depth_anything"
    """Folder name of the depth prior."""
    depth_format: io.DepthFormat = "disp_npy"
    """Depth prior files: disp_npy (disparity .npy), depth_npy (z-depth .npy), depth_png (16-bit depth
    PNG, value / depth_png_scale), or constant (no files: a flat prior at constant_depth, a placeholder
    for videos without a depth estimate)."""
    depth_png_scale: float = 1000.0
    """depth_png only: PNG value / this = depth (1000 for millimetres to metres)."""
    constant_depth: float = 1.0
    """constant only: the depth of the flat prior."""
    camera_type: str = "droid_recon"
    """Camera file ROOT/<camera_type>/SEQ.npy (flow3d_cameras: the one python -m flow3d.preprocess.cameras
    writes); when missing, see missing_camera."""
    missing_camera: camload.MissingCamera = "estimate"
    """Without a camera file: estimate (cameras from the video itself with the default options, or those of
    flow3d_cameras/SEQ.npy when it exists -- python -m flow3d.preprocess.cameras has every option; a camera
    found static keeps identity poses), static (identity poses) or error."""
    focal_length: Optional[float] = None
    """Without a camera file: focal length in pixels of the loaded images (fixed when cameras are
    estimated); None = estimated, or from default_fov_deg for a static camera."""
    default_fov_deg: float = 60.0
    """Static camera only: horizontal field of view used when focal_length is None."""
    track_type: str = "bootstapir"
    """Folder name of the 2D tracks."""
    missing_tracks: Literal["flow", "none", "error"] = "flow"
    """When the track folder is missing: flow (chain optical flow, flow3d.flow), none (no tracks) or error."""
    flow_backend: str = "dis"
    """missing_tracks=flow: optical-flow backend passed to flow3d.flow.tracks_from_flow."""
    flow_grid_step: int = 8
    """missing_tracks=flow: pixel spacing of the query grid."""
    flow_query_stride: int = 1
    """missing_tracks=flow: every k-th train frame is a query frame."""
    downscale: int = 1
    """Integer factor to shrink images, masks, depth, intrinsics and tracks by (area/nearest)."""
    ignore_type: str = "ignore_masks"
    """Optional folder of ignore masks (PNG, 255 = ignore, e.g. instruments): valid_masks is False there."""
    gt_depth_type: str = "gt_depth"
    """Optional folder of reference z-depth .npy (0 = unknown) for run_val.py's depth metrics; a source.txt
    in it says "ground truth" (the default) or "stereo"."""

    def load(self) -> VideoSequence:
        """Load the whole clip (cached); see the module docstring for the layout."""
        return load_casual(self)


@dataclass(kw_only=True)
class DavisDataConfig(CustomDataConfig):
    """A DAVIS sequence: JPEGImages/480p/SEQ, Annotations/480p/SEQ (or the flat JPEGImages/, Annotations/)."""

    res: str = "480p"
    """Resolution sub-folder (DAVIS: 480p or Full-Resolution); a flat layout without it is accepted."""
    image_type: str = "JPEGImages"
    """Folder name of the frames."""
    mask_type: str = "Annotations"
    """Folder name of the object masks (a palette PNG's non-zero indices are foreground; see mask_type)."""


# ------------------------------------------------------------------------------------------------
def _resolve(root: Path, kind: str, res: str, seq: str, exts: tuple[str, ...]) -> Optional[Path]:
    """First existing candidate: root/kind/res/seq, root/kind/seq, root/kind (flat, if it holds files)."""
    cands = [root / kind / res / seq] if res else []
    cands += [root / kind / seq]
    for c in cands:
        if c.is_dir():
            return c
    flat = root / kind
    if flat.is_dir() and any(p.suffix.lower() in exts for p in flat.iterdir() if p.is_file()):
        return flat
    return None


def _tried(root: Path, kind: str, res: str, seq: str) -> str:
    c = ([str(root / kind / res / seq)] if res else []) + [str(root / kind / seq), str(root / kind)]
    return ", ".join(c)


def _by_stem(files: list[Path], what: str) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for p in files:
        if p.stem in out:
            raise ValueError(f"{what}: two files for frame {p.stem!r}: {out[p.stem].name} and {p.name}")
        out[p.stem] = p
    return out


@dataclass
class _Inputs:
    """The files of one clip, found before anything is read (their names, sizes and times key the cache)."""

    names: list[str]  # frame names of the clip (start:end), sorted
    n_all: int  # frames in the images folder
    img_dir: Path
    images: dict[str, Path]  # frame name -> image file
    mask_dir: Path
    depth_dir: Optional[Path]  # None for depth_format constant, or when the depth cue is made on the fly
    depth_format: str  # cfg.depth_format, or disp_npy for the geometric depth cue
    cam_path: Path  # may not exist (estimated or static camera)
    track_dir: Optional[Path]  # None when missing
    ignore_dir: Optional[Path]  # optional ignore masks
    gt_dir: Optional[Path]  # optional reference depth
    estimate_now: bool = False  # no camera file: estimate the cameras while loading
    geodepth_now: bool = False  # no depth folder either: the geometric depth cue of that estimation is the prior
    geodepth_read: bool = False  # the prior is the depth cue written by python -m flow3d.preprocess.cameras

    def signature(self) -> list:
        dirs = [self.img_dir, self.mask_dir, self.depth_dir, self.track_dir, self.ignore_dir, self.gt_dir]
        sig = [files_signature(sorted(p for p in d.iterdir() if p.is_file())) for d in dirs if d is not None]
        if self.cam_path.exists():
            sig.append(files_signature([self.cam_path]))
        elif self.estimate_now:
            sig.append(["camera estimation", camload.ESTIMATE_VERSION])
        return sig


def load_casual(cfg: CustomDataConfig) -> VideoSequence:
    """Find the clip's files, then load it through the cache (:func:`flow3d.data.cache.cached_sequence`)."""
    inputs = _find_inputs(cfg)
    key = cache_key(cfg, exclude=("is_train", "cache_dir", "use_cache"), extra=inputs.signature())
    stem = cache_stem(cfg.seq_name, key)  # bounded: a 255-byte sequence name still makes a legal file name
    cache_path = Path(cfg.cache_dir or default_cache_dir()) / f"{stem}.npz"
    flow_dir = cache_path.parent / f"{stem}_flow"
    disk = cfg.use_cache and cache_dir_usable(cache_path.parent)  # else one warning, and no disk cache at all
    return cached_sequence(
        key, cache_path, lambda: _read_sequence(cfg, inputs, flow_dir if disk else None), use_disk=disk
    )


def _find_inputs(cfg: CustomDataConfig) -> _Inputs:
    io.check_seq_name(cfg.seq_name)
    root = Path(cfg.root_dir)
    if not root.is_dir():
        raise ValueError(f"root_dir not found: {root}")
    if cfg.downscale < 1:
        raise ValueError(f"downscale must be >= 1, got {cfg.downscale}")
    img_dir = _resolve(root, cfg.image_type, cfg.res, cfg.seq_name, io.IMAGE_EXTS)
    if img_dir is None:
        raise ValueError(f"images folder not found; tried {_tried(root, cfg.image_type, cfg.res, cfg.seq_name)}")
    images_by = _by_stem(io.list_files(img_dir, io.IMAGE_EXTS, "images"), f"images folder {img_dir}")
    all_names = list(images_by)
    n_all = len(all_names)
    end = n_all if cfg.end == -1 else cfg.end
    if not (0 <= cfg.start < end <= n_all):
        raise ValueError(f"frame range start={cfg.start}, end={cfg.end} is invalid for {n_all} frames in {img_dir}")
    mask_dir = _resolve(root, cfg.mask_type, cfg.res, cfg.seq_name, (".png", ".jpg", ".jpeg"))
    if mask_dir is None:
        raise ValueError(f"masks folder not found; tried {_tried(root, cfg.mask_type, cfg.res, cfg.seq_name)}")
    inp = _Inputs(
        names=all_names[cfg.start : end],
        n_all=n_all,
        img_dir=img_dir,
        images=images_by,
        mask_dir=mask_dir,
        depth_dir=None,
        depth_format=cfg.depth_format,
        cam_path=_camera_path(cfg, root),
        track_dir=_resolve(root, cfg.track_type, cfg.res, cfg.seq_name, (".npy",)),
        ignore_dir=_resolve(root, cfg.ignore_type, cfg.res, cfg.seq_name, (".png",)),
        gt_dir=_resolve(root, cfg.gt_depth_type, cfg.res, cfg.seq_name, (".npy",)),
    )
    inp.estimate_now = not inp.cam_path.exists() and cfg.missing_camera == "estimate"
    if cfg.depth_format != "constant":
        _find_depth(cfg, root, inp)
    return inp


def _camera_path(cfg: CustomDataConfig, root: Path) -> Path:
    """ROOT/<camera_type>/SEQ.npy, or (missing_camera estimate) the file python -m flow3d.preprocess.cameras wrote."""
    if cfg.missing_camera not in ("estimate", "static", "error"):
        raise ValueError(f"missing_camera must be one of estimate, static, error; got {cfg.missing_camera!r}")
    cam_path = root / cfg.camera_type / f"{cfg.seq_name}.npy"
    estimated = root / camload.CAMERA_DIR / f"{cfg.seq_name}.npy"
    if not cam_path.exists() and cfg.missing_camera == "estimate" and estimated.exists():
        logger.warning(
            "no camera file at %s: using %s written by python -m flow3d.preprocess.cameras",
            root / cfg.camera_type,
            estimated,
        )
        return estimated
    return cam_path


def _find_depth(cfg: CustomDataConfig, root: Path, inp: _Inputs) -> None:
    """The prior's folder: ROOT/<depth_type>, else the geometric depth cue (written, or made while loading)."""
    inp.depth_dir = _resolve(root, cfg.depth_type, cfg.res, cfg.seq_name, (".npy", ".png"))
    if inp.depth_dir is not None:
        return
    geo_dir = _resolve(root, camload.GEODEPTH_DIR, cfg.res, cfg.seq_name, (".npy",))
    if inp.cam_path.exists() and inp.cam_path.parent.name == camload.CAMERA_DIR and geo_dir is not None:
        inp.depth_dir, inp.depth_format, inp.geodepth_read = geo_dir, "disp_npy", True
        logger.warning(
            "no depth folder %s: using the geometric depth cue in %s (the cameras' scale)",
            root / cfg.depth_type,
            geo_dir,
        )
    elif inp.estimate_now:
        inp.geodepth_now = True
    else:
        raise ValueError(
            f"depth folder not found; tried {_tried(root, cfg.depth_type, cfg.res, cfg.seq_name)}. Write a monocular "
            "depth estimate there (--data.depth-type names the folder, --data.depth-format its kind), use "
            "--data.depth-format constant for a flat placeholder prior, or run python -m flow3d.preprocess.cameras "
            "for cameras and a geometric depth cue"
        )


def _read_sequence(cfg: CustomDataConfig, inp: _Inputs, flow_dir: Optional[Path]) -> VideoSequence:
    """Read every input of the clip (images, masks, depth prior, cameras, tracks) into a sequence."""
    images, shape0 = _read_images(cfg, inp)  # (T, H, W, 3) uint8; shape0 = (H0, W0) before downscaling
    T, H, W = images.shape[:3]
    masks = _read_masks(cfg, inp, shape0, (T, H, W))
    ignore = (
        read_ignore_folder(inp.ignore_dir, inp.names, shape0, cfg.downscale) if inp.ignore_dir is not None else None
    )
    gt_depth, gt_source = (
        read_depth_folder(inp.gt_dir, inp.names, shape0, cfg.downscale)
        if inp.gt_dir is not None
        else (None, "ground truth")
    )
    disp, disp_valid = _read_depth(cfg, inp, shape0, (T, H, W), masks, ignore, gt_depth)
    w2cs, Ks, disp, disp_valid = _read_cameras(cfg, inp, shape0, images, masks, disp, disp_valid, flow_dir)
    train_ids, val_ids = split_frames(T, cfg.val_every)
    xy, vis, conf, qt = _read_tracks(cfg, inp, images, masks, ignore, train_ids, shape0, flow_dir)
    seq = VideoSequence(
        name=cfg.seq_name,
        images=torch.from_numpy(images).float() / 255.0,
        fg_masks=torch.from_numpy(masks).float(),
        valid_masks=torch.ones(T, H, W, dtype=torch.bool) if ignore is None else torch.from_numpy(~ignore),
        prior_disp=torch.from_numpy(disp),
        prior_valid=torch.from_numpy(disp_valid),
        w2cs=torch.from_numpy(w2cs).float(),
        Ks=torch.from_numpy(Ks).float(),
        time_ids=torch.arange(cfg.start, cfg.start + T),
        train_ids=train_ids,
        val_ids=val_ids,
        tracks_xy=xy,
        tracks_visible=vis,
        tracks_conf=conf,
        tracks_query_t=qt,
        gt_depth=None if gt_depth is None else torch.from_numpy(gt_depth),
        gt_depth_source=gt_source,
        frame_names=inp.names,
    )
    return finish_file_sequence(seq, cfg)


def _read_images(cfg: CustomDataConfig, inp: _Inputs) -> tuple[np.ndarray, tuple[int, int]]:
    imgs = []
    shape0 = None
    for n in tqdm(inp.names, desc="images", leave=False):
        im = io.read_image(inp.images[n])
        if shape0 is None:
            shape0 = im.shape[:2]
            check_frame_size(shape0, cfg.downscale, inp.img_dir, _flow_needed(cfg, inp), cfg.flow_backend)
        elif im.shape[:2] != shape0:
            raise ValueError(
                f"image {inp.images[n]}: size (H, W) = {im.shape[:2]} differs from the first frame's {shape0}"
            )
        imgs.append(io.resize_image(im, cfg.downscale))
    return np.stack(imgs), shape0


def _flow_needed(cfg: CustomDataConfig, inp: _Inputs) -> Optional[str]:
    """Why loading computes optical flow (tracks without a track folder, cameras estimated), or None."""
    if inp.estimate_now:
        return "the cameras are estimated from the video (no camera file)"
    if inp.track_dir is None and cfg.missing_tracks == "flow":
        return "the 2D tracks are chained from optical flow (no track folder)"
    return None


def check_frame_size(
    shape0: tuple[int, int],
    downscale: int,
    source: Path,
    flow_reason: Optional[str],
    backend: str = "dis",
    flag: str = "--data.downscale",
) -> tuple[int, int]:
    """The loaded size (H, W) of frames of ``shape0`` shrunk by ``downscale``, checked when the first frame is read:
    one error naming ``flag`` when no pixel is left, or when the frames are smaller than the optical flow that
    loading runs (``flow_reason`` says why it does; None: it does not) accepts
    (:func:`flow3d.flow.estimate.check_flow_size`)."""
    h, w = io.check_downscaled_size(shape0, downscale, source, flag)
    if flow_reason is not None:
        from flow3d.flow.estimate import check_flow_size  # noqa: PLC0415

        try:
            check_flow_size(h, w, backend)
        except ValueError as e:
            shrunk = f" ({shape0[1]}x{shape0[0]} / {flag} {downscale})" if downscale > 1 else ""
            raise ValueError(
                f"{source}: {e}{shrunk}; {flow_reason}. Use larger frames"
                + (f" or a smaller {flag}" if downscale > 1 else "")
            ) from None
    return h, w


def _read_masks(cfg: CustomDataConfig, inp: _Inputs, shape0: tuple[int, int], thw: tuple[int, int, int]) -> np.ndarray:
    """(T, H, W) bool foreground."""
    exts = (".png", ".jpg", ".jpeg")
    mask_files = _by_stem(io.list_files(inp.mask_dir, exts, "masks"), f"masks folder {inp.mask_dir}")
    if len(mask_files) != inp.n_all:
        raise ValueError(
            f"frame-count mismatch: masks folder {inp.mask_dir} has {len(mask_files)} masks, images "
            f"folder {inp.img_dir} has {inp.n_all} frames"
        )
    masks = np.zeros(thw, dtype=bool)
    stats = io.MaskStats()
    for t, n in enumerate(inp.names):
        if n not in mask_files:
            raise ValueError(f"mask for frame {n!r} not found in {inp.mask_dir} (expected {n}.png)")
        masks[t] = io.resize_nearest(io.read_mask(mask_files[n], shape0, stats), cfg.downscale)
    io.log_mask_stats(stats, inp.mask_dir)
    if not masks.any():
        raise ValueError(
            f"masks folder {inp.mask_dir}: the foreground is empty in every frame (expected foreground pixels > 0)"
        )
    return masks


def _read_depth(
    cfg: CustomDataConfig,
    inp: _Inputs,
    shape0: tuple[int, int],
    thw: tuple[int, int, int],
    masks: np.ndarray,
    ignore: Optional[np.ndarray] = None,
    gt_depth: Optional[np.ndarray] = None,
):
    """(T, H, W) float32 disparity and bool validity (:func:`flow3d.data.io.read_depth_as_disp`). Invalid prior
    pixels are logged with counts: at INFO where they are expected (ignored pixels, e.g. instruments; pixels
    where the reference depth is unknown too, e.g. the holes of a stereo prior), as a WARNING elsewhere."""
    if inp.geodepth_now:  # filled in with the cameras (_read_cameras)
        return np.zeros(thw, np.float32), np.zeros(thw, bool)
    if inp.depth_dir is None:
        logger.warning(
            "no depth files: assuming a flat depth prior at depth %g (--data.depth-format constant)", cfg.constant_depth
        )
        if not cfg.constant_depth > 0:
            raise ValueError(f"constant_depth must be > 0, got {cfg.constant_depth}")
        return np.full(thw, 1.0 / cfg.constant_depth, dtype=np.float32), np.ones(thw, dtype=bool)
    ext = ".png" if inp.depth_format == "depth_png" else ".npy"
    depth_dir = inp.depth_dir
    depth_files = _by_stem(io.list_files(depth_dir, (ext,), f"depth ({inp.depth_format})"), f"depth folder {depth_dir}")
    if len(depth_files) != inp.n_all:
        raise ValueError(
            f"frame-count mismatch: depth folder {depth_dir} has {len(depth_files)} {ext} files, images "
            f"folder {inp.img_dir} has {inp.n_all} frames"
        )
    disp = np.zeros(thw, dtype=np.float32)
    disp_valid = np.zeros(thw, dtype=bool)
    bad_frames = []
    for t, n in enumerate(tqdm(inp.names, desc="depth", leave=False)):
        if n not in depth_files:
            raise ValueError(f"depth for frame {n!r} not found in {depth_dir} (expected {n}{ext})")
        d, v = io.read_depth_as_disp(depth_files[n], inp.depth_format, shape0, cfg.depth_png_scale)
        if not v.all():
            bad_frames.append((n, int((~v).sum())))
        disp[t], disp_valid[t] = io.resize_nearest(d, cfg.downscale), io.resize_nearest(v, cfg.downscale)
    if not disp_valid.any():
        raise ValueError(f"depth folder {depth_dir}: no finite positive value in any frame")
    if inp.geodepth_read:  # the moving foreground has no triangulated depth: the placeholder of flow3d.cameras.loader
        disp, disp_valid, _ = camload.fill_foreground(disp, disp_valid, masks)
    elif bad_frames:
        _log_invalid_prior(depth_dir, disp_valid, ignore, gt_depth, inp.names)
    return disp, disp_valid


def _log_invalid_prior(
    depth_dir: Path, valid: np.ndarray, ignore: Optional[np.ndarray], gt_depth: Optional[np.ndarray], names: list[str]
) -> None:
    invalid = ~valid
    expected = np.zeros_like(invalid)
    if ignore is not None:
        expected |= ignore
    if gt_depth is not None:
        expected |= gt_depth <= 0
    n_exp, unexpected = int((invalid & expected).sum()), invalid & ~expected
    if n_exp:
        logger.info(
            "depth prior %s: %d pixels without a value (NaN/Inf or <= %g) are ignored pixels or have no reference "
            "depth either, and are masked out (prior_valid=False)",
            depth_dir,
            n_exp,
            depth_lib.EPS,
        )
    per_frame = unexpected.reshape(len(unexpected), -1).sum(1)
    if per_frame.any():
        first = [f"{names[t]} ({int(per_frame[t])})" for t in np.flatnonzero(per_frame)[:5]]
        logger.warning(
            "depth prior %s: %d pixels in %d of %d frames are NaN/Inf or <= %g and are masked out "
            "(prior_valid=False); first: %s",
            depth_dir,
            int(per_frame.sum()),
            int((per_frame > 0).sum()),
            len(per_frame),
            depth_lib.EPS,
            ", ".join(first),
        )


def _read_cameras(
    cfg: CustomDataConfig,
    inp: _Inputs,
    shape0: tuple[int, int],
    images: np.ndarray,
    masks: np.ndarray,
    disp: np.ndarray,
    disp_valid: np.ndarray,
    flow_dir: Path,
):
    """w2cs (T, 4, 4), Ks (T, 3, 3) of the loaded frames and the prior (replaced by the geometric depth cue
    when it is made now): from the camera file, estimated from the video, or a static camera."""
    (H0, W0), (T, H, W) = shape0, images.shape[:3]
    if inp.cam_path.exists():
        w2cs_all, Ks_all = io.read_droid_recon(inp.cam_path, inp.n_all, H0, W0)
        sl = slice(cfg.start, cfg.start + T)
        return w2cs_all[sl], _scale_Ks(Ks_all[sl], W / W0, H / H0), disp, disp_valid
    if cfg.missing_camera == "error":
        raise ValueError(
            f"camera file not found: {inp.cam_path} (--data.missing-camera error); pass --data.missing-camera estimate or static"
        )
    if inp.estimate_now:
        has_prior = not inp.geodepth_now and inp.depth_dir is not None
        cams = camload.estimate_for_loader(
            images,
            masks,
            disp if has_prior else None,
            disp_valid if has_prior else None,
            focal=cfg.focal_length,
            default_fov_deg=cfg.default_fov_deg,
            cfg=CameraEstimateConfig(),
            want_depth=inp.geodepth_now,
            flow_cache_dir=flow_dir,
        )
        if inp.geodepth_now and cams.disp is not None:
            disp, disp_valid = cams.disp, cams.disp_valid
        elif inp.geodepth_now:
            logger.warning(
                "no depth folder and a static camera (nothing to triangulate): a flat depth prior at depth %g",
                cfg.constant_depth,
            )
            disp, disp_valid = np.full((T, H, W), 1.0 / cfg.constant_depth, np.float32), np.ones((T, H, W), bool)
        return cams.w2cs, cams.Ks, disp, disp_valid
    w2cs, Ks, f = camload.static_cameras(T, W, H, cfg.focal_length, cfg.default_fov_deg)
    logger.warning(
        "no camera file at %s: assuming a static camera (identity poses), focal length %.1f px (%s), principal point at the image centre",
        inp.cam_path,
        f,
        "--data.focal-length"
        if cfg.focal_length is not None
        else f"{cfg.default_fov_deg:g} deg horizontal field of view",
    )
    return w2cs, Ks, disp, disp_valid


def _read_tracks(
    cfg: CustomDataConfig,
    inp: _Inputs,
    images: np.ndarray,
    masks: np.ndarray,
    ignore: Optional[np.ndarray],
    train_ids,
    shape0: tuple[int, int],
    flow_dir: Path,
):
    """Dense tracks (xy, visible, conf, query_t) from the track folder, or chained from optical flow."""
    T, H, W = images.shape[:3]
    root = Path(cfg.root_dir)
    if inp.track_dir is not None:
        pairs = io.read_track_dir(inp.track_dir, inp.names)
        queries = sorted(q for (q, t) in pairs if q == t)
        if not queries:
            raise ValueError(
                f"track folder {inp.track_dir}: no <q>_<q>.npy file for any frame of the clip (query points)"
            )
        xy, vis, conf, qt = dense_tracks_from_pairs(
            pairs, T, queries, cfg.max_tracks_per_query, cfg.seed, source=f"track folder {inp.track_dir}"
        )
        if cfg.downscale > 1:
            H0, W0 = shape0
            xy = (xy + 0.5) * torch.tensor([W / W0, H / H0]) - 0.5
        return xy, vis, conf, qt
    if cfg.missing_tracks == "error":
        raise ValueError(f"track folder not found; tried {_tried(root, cfg.track_type, cfg.res, cfg.seq_name)}")
    if cfg.missing_tracks == "none":
        logger.warning("no track folder under %s/%s: continuing without 2D tracks", root, cfg.track_type)
        return dense_tracks_from_pairs({}, T, [])
    queries = train_ids[:: max(cfg.flow_query_stride, 1)].tolist()
    logger.info(
        "no track folder under %s/%s: building 2D tracks from optical flow (%s) for %d query frames "
        "(--data.missing-tracks flow, the default)",
        root,
        cfg.track_type,
        cfg.flow_backend,
        len(queries),
    )
    return flow_tracks(cfg, images, masks, queries, flow_dir, ignore)


def _scale_Ks(Ks: np.ndarray, sx: float, sy: float) -> np.ndarray:
    """Rescale intrinsics (..., 3, 3) in the OpenCV pixel-centre convention."""
    out = Ks.copy()
    out[..., 0, 0] *= sx
    out[..., 1, 1] *= sy
    out[..., 0, 2] = (Ks[..., 0, 2] + 0.5) * sx - 0.5
    out[..., 1, 2] = (Ks[..., 1, 2] + 0.5) * sy - 0.5
    return out


def flow_tracks(
    cfg, images: np.ndarray, masks: np.ndarray, queries: list[int], cache_dir: Path, ignore: Optional[np.ndarray] = None
):
    """2D tracks chained from optical flow (:func:`flow3d.flow.tracks_from_flow`) as the dense arrays of
    :func:`flow3d.data.tracks.dense_tracks_from_pairs`. ``cfg`` gives ``flow_grid_step``, ``flow_backend``,
    ``max_tracks_per_query`` and ``seed``; images (T, H, W, 3) uint8, masks (T, H, W) bool foreground.
    With ``ignore`` (T, H, W) bool, the flow is estimated on frames whose ignored pixels are inpainted
    (:func:`flow3d.flow.fill_ignored`: it does not depend on their values), queries never start on an
    ignored pixel and a track ends where it lands on one (:func:`flow3d.data.endoscopy.stop_tracks_on_ignored`)."""
    pairs = _tracks_from_flow(
        cfg, fill_ignored(images, ignore), masks if ignore is None else masks & ~ignore, queries, cache_dir
    )
    if ignore is not None:
        stopped = stop_tracks_on_ignored(pairs, ignore)
        logger.info("flow tracks: %d entries ended on ignored pixels", count_stopped(pairs, stopped))
        pairs = stopped
    return dense_tracks_from_pairs(
        pairs, images.shape[0], queries, cfg.max_tracks_per_query, cfg.seed, source="flow tracks"
    )


def _tracks_from_flow(cfg, images: np.ndarray, masks: np.ndarray, queries: list[int], cache_dir: Path):
    try:
        from flow3d.flow import tracks_from_flow  # noqa: PLC0415 - optional dependency on the flow module
    except ImportError:
        try:
            from flow3d.flow.tracks import tracks_from_flow  # noqa: PLC0415
        except ImportError as e:
            raise ValueError(
                f"no 2D tracks and flow-based tracks are unavailable ({e}); write track files or turn flow tracks off"
            ) from None
    return tracks_from_flow(
        images, masks, queries, grid_step=cfg.flow_grid_step, backend=cfg.flow_backend, cache_dir=cache_dir
    )
