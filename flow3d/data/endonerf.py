"""EndoNeRF clips in their own layout: ``data:endonerf``.

Layout under ``root_dir`` (as EndoNeRF's ``load_llff.py`` and the EndoGaussian / Deform3DGS
``scene/endo_loader.py`` read it; frames are matched by *sorted file order*, not by name, since EndoNeRF
names them ``frame-000000.color.png``, ``frame-000000.depth.png``, ``frame-000000.mask.png``)::

    images/*.png          the frames
    depth/*.png           stereo z-depth, 8- or 16-bit, 0 = hole; stored value / depth_scale = depth
    masks/*.png           255 = instrument (ignored: valid_masks False), 0 = tissue
    poses_bounds.npy      (T, 17) float: per frame a 3x5 matrix (row-major) and near, far
    <prior_dir>/*.npy|png optional: a per-frame depth prior of kind prior_kind (e.g. a monocular one)

Cameras (``poses_bounds.npy``): row t holds ``M = row[:15].reshape(3, 5)`` and the bounds ``row[15:17]``.
``M[:, :4]`` is the camera-to-world matrix in the axes EndoNeRF hands to NeRF (x right, y up, z towards
the viewer; EndoNeRF sets ``davinci_endoscopic`` and skips LLFF's column reordering), and ``M[:, 4]`` is
``(H, W, focal)`` in pixels of the images the poses were made for. To OpenCV axes (x right, y down, z
forward) the second and third columns flip sign, as Deform3DGS's loader does:
``c2w_opencv = [M0, -M1, -M2, M3]``. Intrinsics at the loaded size (W', H'): ``fx = focal W' / W``,
``fy = focal H' / H``, principal point at the image centre ``((W' - 1) / 2, (H' - 1) / 2)`` in the
OpenCV pixel-centre convention (where NeRF's rays and the Gaussian rasterisers put it; EndoGaussian and
Deform3DGS back-project with ``(W // 2, H // 2)``, half a pixel off). The bounds only check the depth's
units: when most stereo depths (stored value / depth_scale) fall outside [near / 2, 2 far] of their frame,
a warning gives the power-of-ten depth_scale that would put them inside (:func:`check_depth_scale`).

What the :class:`~flow3d.data.sequence.VideoSequence` holds:

* ``fg_masks`` = 1 on tissue (all of it deforms) and 0 on instruments; ``valid_masks`` = not instrument;
* the depth prior: by default the stereo ``depth/`` (kind depth, holes invalid); with ``prior_dir`` the
  maps in ``ROOT/<prior_dir>`` (``.npy``, or 16-bit ``.png`` divided by ``prior_png_scale``) of kind
  ``prior_kind``;
* ``gt_depth`` = the stereo depth (0 at holes) with ``gt_depth_source = "stereo"``: the reference that
  ``run_val.py`` scores depth against. It is a stereo reconstruction, not ground truth;
* 2D tracks chained from optical flow as ``data:custom`` builds them when it has none
  (:func:`flow3d.data.casual.flow_tracks`): queries never start on an instrument, and a track ends where
  it lands on one;
* the split of :mod:`flow3d.data.split` (frames 1, 9, 17, ... held out), as the public loaders do.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional

import numpy as np
import torch
from tqdm import tqdm

from flow3d import depth as depth_lib
from flow3d.data import io
from flow3d.data.cache import (
    cache_dir_usable,
    cache_key,
    cache_stem,
    cached_sequence,
    default_cache_dir,
    files_signature,
)
from flow3d.data.casual import check_frame_size, flow_tracks
from flow3d.data.common import FileDataConfig, finish_file_sequence
from flow3d.data.endoscopy import read_ignore_mask, read_value_map
from flow3d.data.sequence import VideoSequence
from flow3d.data.split import split_frames
from flow3d.data.tracks import dense_tracks_from_pairs
from flow3d.log import get_logger

logger = get_logger(__name__)

POSES_FILE = "poses_bounds.npy"
GL_TO_CV = np.diag([1.0, -1.0, -1.0, 1.0])
"""Right-multiplying a camera-to-world matrix by this flips its y and z columns (OpenGL <-> OpenCV axes)."""


@dataclass(kw_only=True)
class EndoNeRFDataConfig(FileDataConfig):
    """An EndoNeRF clip in its own layout (images/, depth/, masks/, poses_bounds.npy)."""

    root_dir: str
    """Folder of the clip (holds images/, depth/, masks/ and poses_bounds.npy)."""
    depth_scale: float = 1.0
    """Stored value of a depth/ PNG / depth_scale = depth in scene units (1 keeps the stored units)."""
    prior_dir: Optional[str] = None
    """Folder under root_dir of per-frame prior maps (.npy, or 16-bit .png) used as the depth prior
    instead of the stereo depth/ (e.g. a monocular estimate); None = the stereo depth."""
    prior_kind: Literal["disparity", "depth"] = "disparity"
    """prior_dir only: whether its maps hold disparity (1/z up to scale and shift) or z-depth."""
    prior_png_scale: float = 1.0
    """prior_dir only: a 16-bit PNG's value / prior_png_scale = the map's value."""
    downscale: int = 1
    """Integer factor to shrink images, masks, depth, prior and intrinsics by (area / nearest)."""
    tracks: Literal["flow", "none"] = "flow"
    """2D tracks: flow (chained from optical flow, as data:custom does without track files) or none."""
    flow_backend: str = "dis"
    """tracks=flow: optical-flow backend passed to flow3d.flow.tracks_from_flow."""
    flow_grid_step: int = 8
    """tracks=flow: pixel spacing of the query grid (on tissue pixels only)."""
    flow_query_stride: int = 1
    """tracks=flow: every k-th train frame is a query frame."""

    def load(self) -> VideoSequence:
        """Load the whole clip (cached); see the module docstring for the layout and conventions."""
        return load_endonerf(self)


# ------------------------------------------------------------------------------------------------
def read_poses_bounds(path: Path, num_frames: int, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """``poses_bounds.npy`` -> ``w2cs`` (T, 4, 4) OpenCV world->camera and ``Ks`` (T, 3, 3) for images of
    (height, width); see the module docstring for the convention. Errors name the file."""
    if not path.is_file():
        raise ValueError(f"poses file not found: {path} (the EndoNeRF layout has ROOT/{POSES_FILE})")
    try:
        arr = np.asarray(np.load(path, allow_pickle=False), dtype=np.float64)
    except Exception as e:  # noqa: BLE001 - any failure of np.load means an unreadable file
        raise ValueError(f"cannot read poses file {path}: {e}") from None
    if arr.ndim != 2 or arr.shape[1] != 17:
        raise ValueError(
            f"poses file {path}: expected (N, 17) rows (a 3x5 matrix and near, far per frame), got {arr.shape}"
        )
    if arr.shape[0] != num_frames:
        raise ValueError(
            f"frame-count mismatch: poses file {path} has {arr.shape[0]} rows, the images folder has {num_frames} frames"
        )
    if not np.isfinite(arr).all():
        raise ValueError(f"poses file {path}: holds NaN/Inf")
    M = arr[:, :15].reshape(-1, 3, 5)
    hwf = M[:, :, 4]  # (T, 3): H, W, focal
    if (hwf <= 0).any():
        raise ValueError(
            f"poses file {path}: the last column (H, W, focal) must be positive, got {hwf[(hwf <= 0).any(1)][0]}"
        )
    ratio = (hwf[:, 1] / hwf[:, 0]) / (width / height)
    if np.abs(ratio - 1).max() > 0.01:
        raise ValueError(
            f"poses file {path}: its image size (H, W) = {tuple(hwf[0, :2])} has another aspect ratio than the images' {(height, width)}"
        )
    c2w = np.tile(np.eye(4), (arr.shape[0], 1, 1))
    c2w[:, :3, :4] = M[:, :, :4]
    c2w = c2w @ GL_TO_CV
    R = c2w[:, :3, :3]
    err = np.abs(R @ R.transpose(0, 2, 1) - np.eye(3)).max()
    if err > 1e-2:
        raise ValueError(f"poses file {path}: the rotations are not orthonormal (max |R R^T - I| = {err:.3g})")
    Ks = np.zeros((arr.shape[0], 3, 3))
    Ks[:, 0, 0] = hwf[:, 2] * width / hwf[:, 1]
    Ks[:, 1, 1] = hwf[:, 2] * height / hwf[:, 0]
    Ks[:, 0, 2], Ks[:, 1, 2], Ks[:, 2, 2] = (width - 1) / 2.0, (height - 1) / 2.0, 1.0
    return np.linalg.inv(c2w), Ks


def read_bounds(path: Path) -> Optional[np.ndarray]:
    """The (T, 2) near/far bounds of a ``poses_bounds.npy`` that :func:`read_poses_bounds` accepted, or None
    when they are not usable (not positive, far <= near)."""
    nf = np.asarray(np.load(path, allow_pickle=False), dtype=np.float64)[:, 15:17]
    if not (np.isfinite(nf).all() and (nf[:, 0] > 0).all() and (nf[:, 1] > nf[:, 0]).all()):
        return None
    return nf


BOUNDS_SLACK = 2.0
"""A depth counts as inside its frame's bounds within [near / BOUNDS_SLACK, far * BOUNDS_SLACK]."""


def check_depth_scale(
    depth: np.ndarray, near_far: Optional[np.ndarray], depth_scale: float, source: Path
) -> Optional[float]:
    """Warn when most valid depths (``depth`` (T, H, W), 0 = hole) fall outside their frame's bounds
    (``near_far`` (T, 2) from poses_bounds.npy, with :data:`BOUNDS_SLACK`): the stored units are likely not
    what ``depth_scale`` says. Returns the likely depth_scale (``depth_scale`` times the power of ten that
    brings the median depth nearest the bounds' geometric mean), or None when the depth fits."""
    if near_far is None or len(near_far) != len(depth):
        return None
    valid = depth > 0
    if not valid.any():
        return None
    lo = (near_far[:, 0] / BOUNDS_SLACK)[:, None, None]
    hi = (near_far[:, 1] * BOUNDS_SLACK)[:, None, None]
    inside = float(((depth >= lo) & (depth <= hi) & valid).sum() / valid.sum())
    if inside >= 0.5:
        return None
    med = float(np.median(depth[valid]))
    mid = float(np.median(np.sqrt(near_far[:, 0] * near_far[:, 1])))
    likely = depth_scale * 10.0 ** round(np.log10(med / mid))
    logger.warning(
        "stereo depth %s at depth_scale %g: median depth %.4g, but %s's near/far bounds are %.4g to %.4g "
        "(only %.0f%% of the depths fall between half the near and twice the far bound): the stored values "
        "are likely in other units; depth_scale %g would fit (--data.depth-scale, or --depth-scale of "
        "python -m flow3d.preprocess.endonerf)",
        source,
        depth_scale,
        med,
        POSES_FILE,
        float(near_far[:, 0].min()),
        float(near_far[:, 1].max()),
        100.0 * inside,
        likely,
    )
    return likely


def write_poses_bounds(
    path: Path, w2cs: np.ndarray, Ks: np.ndarray, img_hw: tuple[int, int], near_far: np.ndarray
) -> None:
    """Inverse of :func:`read_poses_bounds` (square pixels, principal point at the image centre):
    ``w2cs`` (T, 4, 4), ``Ks`` (T, 3, 3), ``img_hw`` (H, W), ``near_far`` (T, 2). Written atomically."""
    c2w = np.linalg.inv(np.asarray(w2cs, dtype=np.float64)) @ GL_TO_CV
    H, W = img_hw
    hwf = np.stack(
        [np.full(len(Ks), float(H)), np.full(len(Ks), float(W)), np.asarray(Ks, dtype=np.float64)[:, 0, 0]], -1
    )
    M = np.concatenate([c2w[:, :3, :4], hwf[:, :, None]], -1)  # (T, 3, 5)
    io.save_npy_atomic(path, np.concatenate([M.reshape(-1, 15), near_far], -1))


def _folder_files(
    root: Path, sub: str, exts: tuple[str, ...], what: str, num_frames: int, images_dir: Path
) -> list[Path]:
    files = io.list_files(root / sub, exts, what)
    if len(files) != num_frames:
        raise ValueError(
            f"frame-count mismatch: {what} folder {root / sub} has {len(files)} files, the images folder {images_dir} has {num_frames}"
        )
    return files


def _read_prior(files: list[Path], cfg: EndoNeRFDataConfig, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Disparity (T, H', W') float32 and validity from the prior_dir maps."""
    exts = {p.suffix.lower() for p in files}
    if len(exts) > 1:
        raise ValueError(f"prior folder {files[0].parent}: mixes {' and '.join(sorted(exts))} files; keep one kind")
    disp, valid = [], []
    for p in files:
        v = read_value_map(p, shape, f"prior ({cfg.prior_kind})", png_dtypes=(np.uint16,))
        if p.suffix.lower() == ".png":
            v = v / cfg.prior_png_scale
        ok = np.isfinite(v) & (v > 0)
        d = np.where(ok, v, 0.0) if cfg.prior_kind == "disparity" else np.where(ok, 1.0 / np.where(ok, v, 1.0), 0.0)
        disp.append(io.resize_nearest(d, cfg.downscale))
        valid.append(io.resize_nearest(ok, cfg.downscale))
    disp, valid = np.stack(disp).astype(np.float32), np.stack(valid)
    if (~valid).any():
        logger.warning(
            "prior %s: %d pixels are NaN/Inf or <= 0 and are masked out (prior_valid=False)",
            files[0].parent,
            int((~valid).sum()),
        )
    return disp, valid


def _stereo_prior(stereo: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Disparity (T, H, W) float32 and validity of the stereo depth: 1 / depth, holes invalid."""
    disp, valid = depth_lib.depth_to_disp(torch.from_numpy(stereo))
    return disp.numpy().astype(np.float32), valid.numpy()


@dataclass
class _Files:
    """The files of one EndoNeRF clip, found before anything is read (they key the cache)."""

    root: Path
    images: list[Path]
    masks: list[Path]
    depth: list[Path]  # stereo depth; empty when the folder is missing
    prior: list[Path]  # --data.prior-dir; empty for the stereo prior
    poses: Path

    def signature(self) -> list:
        sig = [files_signature(f) for f in (self.images, self.masks, self.depth, self.prior)]
        sig.append(files_signature([self.poses]) if self.poses.exists() else None)
        return sig


def load_endonerf(cfg: EndoNeRFDataConfig) -> VideoSequence:
    """Find the clip's files, then load it through the cache (:func:`flow3d.data.cache.cached_sequence`)."""
    files = _find_files(cfg)
    key = cache_key(cfg, exclude=("is_train", "cache_dir", "use_cache"), extra=files.signature())
    stem = cache_stem(f"endonerf_{files.root.name}", key)
    cache_path = Path(cfg.cache_dir or default_cache_dir()) / f"{stem}.npz"
    flow_dir = cache_path.parent / f"{stem}_flow"
    disk = cfg.use_cache and cache_dir_usable(cache_path.parent)  # else one warning, and no disk cache at all
    return cached_sequence(
        key, cache_path, lambda: _read_sequence(cfg, files, flow_dir if disk else None), use_disk=disk
    )


def _find_files(cfg: EndoNeRFDataConfig) -> _Files:
    root = Path(cfg.root_dir)
    if not root.is_dir():
        raise ValueError(f"root_dir not found: {root}")
    if cfg.downscale < 1:
        raise ValueError(f"downscale must be >= 1, got {cfg.downscale}")
    if not cfg.depth_scale > 0 or not cfg.prior_png_scale > 0:
        raise ValueError(
            f"depth_scale and prior_png_scale must be > 0, got {cfg.depth_scale} and {cfg.prior_png_scale}"
        )
    img_files = io.list_files(root / "images", io.IMAGE_EXTS, "images")
    T = len(img_files)
    has_depth = (root / "depth").is_dir()
    if not has_depth and cfg.prior_dir is None:
        raise ValueError(
            f"depth folder not found: {root / 'depth'} (stereo depth); pass --data.prior-dir NAME for another prior"
        )
    return _Files(
        root=root,
        images=img_files,
        masks=_folder_files(root, "masks", (".png",), "masks", T, root / "images"),
        depth=_folder_files(root, "depth", (".png",), "depth", T, root / "images") if has_depth else [],
        prior=_folder_files(root, cfg.prior_dir, (".npy", ".png"), "prior", T, root / "images")
        if cfg.prior_dir
        else [],
        poses=root / POSES_FILE,
    )


def _read_sequence(cfg: EndoNeRFDataConfig, files: _Files, flow_dir: Optional[Path]) -> VideoSequence:
    """Read images, instrument masks, cameras, the stereo depth, the prior and flow tracks into a sequence."""
    root, T = files.root, len(files.images)
    flow_reason = "the 2D tracks are chained from optical flow (--data.tracks flow)" if cfg.tracks == "flow" else None
    images, shape0 = _read_images(files.images, cfg.downscale, flow_reason, cfg.flow_backend)
    H, W = images.shape[1:3]
    w2cs, Ks = read_poses_bounds(files.poses, T, H, W)
    ignore = np.stack([io.resize_nearest(read_ignore_mask(p, shape0), cfg.downscale) for p in files.masks])  # (T, H, W)
    stereo = None
    if files.depth:
        stereo = np.stack(
            [io.resize_nearest(_read_stereo_depth(p, shape0, cfg.depth_scale), cfg.downscale) for p in files.depth]
        )
        logger.info(
            "stereo depth %s: %.1f%% of pixels are holes (0) and are masked",
            root / "depth",
            100.0 * (stereo <= 0).mean(),
        )
        check_depth_scale(stereo, read_bounds(files.poses), cfg.depth_scale, root / "depth")
    disp, disp_valid = _read_prior(files.prior, cfg, shape0) if files.prior else _stereo_prior(stereo)
    if not disp_valid.any():
        raise ValueError(f"{root / (cfg.prior_dir or 'depth')}: no finite positive prior value in any frame")
    train_ids, val_ids = split_frames(T, cfg.val_every)
    if cfg.tracks == "flow":
        queries = train_ids[:: max(cfg.flow_query_stride, 1)].tolist()
        xy, vis, conf, qt = flow_tracks(cfg, images, ~ignore, queries, flow_dir, ignore)
    else:
        xy, vis, conf, qt = dense_tracks_from_pairs({}, T, [])
    logger.info(
        "endonerf %s: %d frames %dx%d, instruments on %.1f%% of pixels, %d tracks",
        root,
        T,
        W,
        H,
        100.0 * ignore.mean(),
        xy.shape[0],
    )
    seq = VideoSequence(
        name=root.name,
        images=torch.from_numpy(images).float() / 255.0,
        fg_masks=torch.from_numpy(~ignore).float(),
        valid_masks=torch.from_numpy(~ignore),
        prior_disp=torch.from_numpy(disp),
        prior_valid=torch.from_numpy(disp_valid),
        w2cs=torch.from_numpy(w2cs).float(),
        Ks=torch.from_numpy(Ks).float(),
        time_ids=torch.arange(T),
        train_ids=train_ids,
        val_ids=val_ids,
        tracks_xy=xy,
        tracks_visible=vis,
        tracks_conf=conf,
        tracks_query_t=qt,
        gt_depth=None if stereo is None else torch.from_numpy(stereo),
        gt_depth_source="stereo",
        frame_names=[p.stem for p in files.images],
    )
    return finish_file_sequence(seq, cfg)


def _read_images(
    files: list[Path], downscale: int, flow_reason: Optional[str] = None, backend: str = "dis"
) -> tuple[np.ndarray, tuple[int, int]]:
    """Frames (T, H', W', 3) uint8 and the size (H, W) of the files; all frames must share it. The loaded size is
    checked on the first frame (:func:`flow3d.data.casual.check_frame_size`)."""
    imgs, shape0 = [], None
    for p in tqdm(files, desc="images", leave=False):
        im = io.read_image(p)
        if shape0 is None:
            shape0 = im.shape[:2]
            check_frame_size(shape0, downscale, p.parent, flow_reason, backend)
        elif im.shape[:2] != shape0:
            raise ValueError(f"image {p}: size (H, W) = {im.shape[:2]} differs from the first frame's {shape0}")
        imgs.append(io.resize_image(im, downscale))
    return np.stack(imgs), shape0


def _read_stereo_depth(path: Path, shape: tuple[int, int], depth_scale: float) -> np.ndarray:
    """z-depth (H, W) float32 from an 8- or 16-bit depth PNG: value / depth_scale, 0 = hole."""
    if path.suffix.lower() != ".png":
        raise ValueError(f"depth file {path}: expected an 8- or 16-bit PNG")
    v = read_value_map(path, shape, "depth")
    return (v / depth_scale).astype(np.float32)


# ------------------------------------------------------------------------------------------------
# Writing a sequence in the EndoNeRF layout (the synthetic tissue scene, for tests and examples)
# ------------------------------------------------------------------------------------------------
def stereo_like_depth(
    depth: np.ndarray, rng: np.random.Generator, noise: float = 0.01, hole_frac: float = 0.03, band_frac: float = 0.03
) -> np.ndarray:
    """A stereo-like copy of true z-depth ``depth`` (T, H, W): multiplicative Gaussian noise of relative
    std ``noise``, then holes (0): random discs covering about ``hole_frac`` of each frame and a band of
    ``band_frac`` of the width on the left (no match there in the right view)."""
    T, H, W = depth.shape
    out = depth * (1.0 + noise * rng.normal(size=depth.shape))
    ys, xs = np.mgrid[0:H, 0:W]
    r = max(2.0, 0.04 * W)
    n_discs = int(round(hole_frac * H * W / (np.pi * r * r)))
    for t in range(T):
        for cx, cy in zip(rng.uniform(0, W, n_discs), rng.uniform(0, H, n_discs)):
            out[t][(xs - cx) ** 2 + (ys - cy) ** 2 <= r * r] = 0.0
        out[t][:, : int(round(band_frac * W))] = 0.0
    return out


def write_endonerf_layout(
    seq: VideoSequence,
    root: Path | str,
    depth_scale: float = 1000.0,
    prior_dir: Optional[str] = "mono_disp",
    stereo_noise: float = 0.01,
    hole_frac: float = 0.03,
    seed: int = 0,
) -> Path:
    """Write ``seq`` (un-normalised, with ``gt_depth``) in the EndoNeRF layout under ``root``, every file
    atomically: ``images/frame-NNNNNN.color.png``; ``depth/frame-NNNNNN.depth.png``, a 16-bit stereo-like
    copy of ``gt_depth`` (:func:`stereo_like_depth`; stored value = depth * ``depth_scale``, 0 = hole);
    ``masks/frame-NNNNNN.mask.png`` (255 = ignored pixel, i.e. ``valid_masks`` False);
    ``poses_bounds.npy`` (:func:`write_poses_bounds`, bounds from the depth); and, unless ``prior_dir`` is
    None, ``<prior_dir>/frame-NNNNNN.npy``: the sequence's disparity prior (0 = invalid). Returns ``root``."""
    root = Path(root)
    if seq.gt_depth is None:
        raise ValueError("write_endonerf_layout needs a sequence with gt_depth (the stereo depth is made from it)")
    if seq.scene_scale != 1.0 or not torch.equal(seq.scene_transform, torch.eye(4)):
        raise ValueError("write_endonerf_layout needs an un-normalised sequence (scene_scale 1, identity transform)")
    T = seq.num_frames
    W, H = seq.img_wh
    K0 = seq.Ks[0]
    if (
        abs(float(K0[0, 0] - K0[1, 1])) > 1e-4 * float(K0[0, 0])
        or abs(float(K0[0, 2]) - (W - 1) / 2) > 1e-3
        or abs(float(K0[1, 2]) - (H - 1) / 2) > 1e-3
    ):
        raise ValueError(
            "write_endonerf_layout: poses_bounds stores one focal length and a centred principal point; the sequence's Ks differ"
        )
    gt = seq.gt_depth.double().numpy()
    stereo = stereo_like_depth(gt, np.random.default_rng(seed), stereo_noise, hole_frac)
    stored = np.clip(np.round(stereo * depth_scale), 0, 65535).astype(np.uint16)
    imgs = (seq.images.clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    for t in range(T):
        io.write_png_atomic(root / "images" / f"frame-{t:06d}.color.png", imgs[t])
        io.write_png_atomic(root / "depth" / f"frame-{t:06d}.depth.png", stored[t])
        io.write_png_atomic(
            root / "masks" / f"frame-{t:06d}.mask.png", (~seq.valid_masks[t]).numpy().astype(np.uint8) * 255
        )
        if prior_dir is not None:
            io.save_npy_atomic(
                root / prior_dir / f"frame-{t:06d}.npy",
                torch.where(seq.prior_valid[t], seq.prior_disp[t], 0.0).numpy().astype(np.float32),
            )
    near_far = np.stack([0.9 * gt.reshape(T, -1).min(1), 1.1 * gt.reshape(T, -1).max(1)], -1)
    write_poses_bounds(root / POSES_FILE, seq.w2cs.double().numpy(), seq.Ks.double().numpy(), (H, W), near_far)
    return root
