"""Depth prior from a rectified stereo pair, without learned weights (OpenCV's semi-global matching).

    python -m flow3d.preprocess.stereo --root-dir ROOT --seq-name SEQ --baseline 0.05
    python run_training.py ... data:custom --data.root-dir ROOT --data.seq-name SEQ --data.depth-type stereo_disp

Reads the left views ``ROOT/<left_type>/SEQ/NAME.png|jpg`` (the video the trainer sees) and the right views
``ROOT/<right_type>/SEQ/NAME.png|jpg`` (same names), both already rectified (epipolar lines are image rows,
same K: what a stereo endoscope's calibration gives). Per frame:

1. disparity of the left view with ``cv2.StereoSGBM`` (``P1 = 8 C b^2``, ``P2 = 32 C b^2`` for C = 3
   channels and block size b, as OpenCV's documentation suggests), with its speckle filter
   (``speckle_window``, ``speckle_range``) and uniqueness check;
2. disparity of the right view by the same matcher on the mirrored pair, and a left-right consistency
   check: a left pixel x with disparity d is kept when ``|d - d_right(x - d)| <= lr_max_diff`` px;
3. depth ``z = f_x baseline / d``; the prior written is the inverse depth ``1 / z = d / (f_x baseline)``
   (float32 ``.npy``, the custom layout's ``disp_npy`` format, in the units of ``baseline``), with 0 on
   every invalid pixel (no match, failed consistency check, speckle, the unmatched band of
   search range on the left where SGBM finds no match): 0 is how the loaders mark an invalid prior pixel
   (:func:`flow3d.depth.is_valid`).

The output goes to ``ROOT/<out_type>/SEQ/NAME.npy``; train on it with ``--data.depth-type <out_type>``
(``--data.depth-format disp_npy``, the default). The focal length ``f_x`` is ``--focal-length`` (pixels of
these images) or, without it, read from the camera file ``ROOT/<camera_type>/SEQ.npy``. The fraction of
valid pixels per frame is logged. A left/right size mismatch (not a rectified pair of one camera model), a
missing baseline or focal length, missing folders or a right view missing for a left frame are one
``error:`` line naming it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import cv2
import numpy as np
import tyro
from tqdm import tqdm

from flow3d.cli import run_main
from flow3d.data import io
from flow3d.log import get_logger

logger = get_logger(__name__)


@dataclass
class StereoArgs:
    """Disparity prior from rectified left/right views with OpenCV's StereoSGBM (no learned weights)."""

    root_dir: str
    """Root folder of the dataset (custom layout)."""
    seq_name: str
    """Sequence name: the sub-folder under each data folder."""
    baseline: Optional[float] = None
    """Distance between the two camera centres (required), in the units the depth should have."""
    focal_length: Optional[float] = None
    """Horizontal focal length f_x in pixels of these images; None = from the camera file."""
    left_type: str = "images"
    """Folder name of the left views (the video that is trained on)."""
    right_type: str = "images_right"
    """Folder name of the right views."""
    out_type: str = "stereo_disp"
    """Folder name of the written prior (train with --data.depth-type <out_type>)."""
    camera_type: str = "droid_recon"
    """Camera file ROOT/<camera_type>/SEQ.npy read for f_x when --focal-length is not given."""
    num_disparities: int = 0
    """Disparity search range in pixels, a multiple of 16; 0 = the image width / 8 rounded up to 16."""
    min_disparity: int = 0
    """Smallest disparity searched (pixels)."""
    block_size: int = 5
    """Matching block size (odd, pixels)."""
    uniqueness: int = 10
    """SGBM uniqueness ratio (percent margin of the best match over the second best)."""
    speckle_window: int = 50
    """Largest connected blob of similar disparity that is removed as speckle (pixels); 0 = no filter."""
    speckle_range: int = 2
    """Largest disparity step (pixels) within one blob for the speckle filter."""
    lr_max_diff: float = 1.0
    """Left-right consistency: largest |d_left - d_right| kept (pixels); negative = no check."""


def sgbm_matcher(args: StereoArgs, width: int):
    """The configured ``cv2.StereoSGBM`` and its number of disparities."""
    nd = args.num_disparities or 16 * max(1, math.ceil(width / 8 / 16))
    if nd <= 0 or nd % 16:
        raise ValueError(
            f"--num-disparities must be a positive multiple of 16 (or 0 = auto), got {args.num_disparities}"
        )
    if args.block_size < 1 or args.block_size % 2 == 0:
        raise ValueError(f"--block-size must be odd and >= 1, got {args.block_size}")
    b = args.block_size
    sgbm = cv2.StereoSGBM_create(
        minDisparity=args.min_disparity,
        numDisparities=nd,
        blockSize=b,
        P1=8 * 3 * b * b,
        P2=32 * 3 * b * b,
        disp12MaxDiff=-1,
        uniquenessRatio=args.uniqueness,
        speckleWindowSize=args.speckle_window,
        speckleRange=args.speckle_range,
        mode=cv2.STEREO_SGBM_MODE_SGBM,
    )
    return sgbm, nd


def disparity(left: np.ndarray, right: np.ndarray, args: StereoArgs) -> tuple[np.ndarray, np.ndarray]:
    """Left-view disparity (H, W) float32 pixels and validity (H, W) bool of a rectified pair of uint8
    (H, W, 3) images (module docstring, steps 1-2)."""
    H, W = left.shape[:2]
    sgbm, _ = sgbm_matcher(args, W)
    invalid_raw = (args.min_disparity - 1) * 16
    d_l16 = sgbm.compute(left, right)
    # the right view's disparity: the same matcher on the mirrored pair (right becomes the "left" image)
    d_r16 = sgbm.compute(np.ascontiguousarray(right[:, ::-1]), np.ascontiguousarray(left[:, ::-1]))[:, ::-1]
    valid = d_l16 > invalid_raw
    d_l = d_l16.astype(np.float32) / 16.0
    d_r = d_r16.astype(np.float32) / 16.0
    valid &= d_l > 0
    if args.lr_max_diff >= 0:
        xs = np.arange(W, dtype=np.float32)[None, :] - d_l  # where each left pixel lands in the right view
        xr = np.round(xs).astype(np.int64)
        inside = (xr >= 0) & (xr < W)
        d_at = np.take_along_axis(d_r, np.clip(xr, 0, W - 1), axis=1)
        ok_r = np.take_along_axis(d_r16 > invalid_raw, np.clip(xr, 0, W - 1), axis=1)
        valid &= inside & ok_r & (np.abs(d_l - d_at) <= args.lr_max_diff)
    return np.where(valid, d_l, 0.0).astype(np.float32), valid


def _focal(args: StereoArgs, root: Path, num_frames: int, shape: tuple[int, int]) -> float:
    if args.focal_length is not None:
        if not args.focal_length > 0:
            raise ValueError(f"--focal-length must be > 0 pixels, got {args.focal_length}")
        return float(args.focal_length)
    cam = root / args.camera_type / f"{args.seq_name}.npy"
    if not cam.is_file():
        raise ValueError(f"no focal length: pass --focal-length (pixels) or provide the camera file {cam}")
    _, Ks = io.read_droid_recon(cam, num_frames, shape[0], shape[1])
    return float(Ks[0, 0, 0])


def run(args: StereoArgs) -> Path:
    """Compute and write the prior of every frame; returns the output folder."""
    if args.baseline is None:
        raise ValueError(
            "--baseline is missing: the distance between the left and right camera centres is needed "
            "to turn disparity into depth"
        )
    if not (math.isfinite(args.baseline) and args.baseline > 0):
        raise ValueError(f"--baseline must be a positive distance, got {args.baseline}")
    root = Path(args.root_dir)
    left_dir, right_dir = root / args.left_type / args.seq_name, root / args.right_type / args.seq_name
    lefts = io.list_files(left_dir, io.IMAGE_EXTS, "left view")
    rights = {p.stem: p for p in io.list_files(right_dir, io.IMAGE_EXTS, "right view")}
    first = io.read_image(lefts[0])
    f = _focal(args, root, len(lefts), first.shape[:2])
    out_dir = root / args.out_type / args.seq_name
    fracs = []
    for lp in tqdm(lefts, desc="stereo", dynamic_ncols=True):
        rp = rights.get(lp.stem)
        if rp is None:
            raise ValueError(
                f"right view of frame {lp.stem!r} not found in {right_dir} (expected {lp.stem}.png or .jpg)"
            )
        left, right = io.read_image(lp), io.read_image(rp)
        if left.shape != right.shape or left.shape != first.shape:
            raise ValueError(
                f"right view {rp} is {right.shape[1]}x{right.shape[0]} but left view {lp} is "
                f"{left.shape[1]}x{left.shape[0]} (the first left view {first.shape[1]}x{first.shape[0]}): "
                "not a rectified pair of one camera model; rectify the pair first"
            )
        d, valid = disparity(cv2.cvtColor(left, cv2.COLOR_RGB2BGR), cv2.cvtColor(right, cv2.COLOR_RGB2BGR), args)
        inv_depth = np.where(valid, d / (f * args.baseline), 0.0).astype(np.float32)
        io.save_npy_atomic(out_dir / f"{lp.stem}.npy", inv_depth)
        fracs.append(float(valid.mean()))
    logger.info(
        "stereo: %d frames, f_x %.2f px, baseline %g: valid disparity on %.1f%% of pixels (min %.1f%%, frame "
        "%s); invalid pixels are 0 in %s",
        len(lefts),
        f,
        args.baseline,
        100 * np.mean(fracs),
        100 * min(fracs),
        lefts[int(np.argmin(fracs))].stem,
        out_dir,
    )
    return out_dir


def _main(argv: list[str]) -> None:
    from flow3d.log import setup_logging  # noqa: PLC0415

    setup_logging()
    args = tyro.cli(StereoArgs, args=argv, description=__doc__, prog="python -m flow3d.preprocess.stereo")
    out = run(args)
    print(
        f"wrote the stereo prior (inverse depth, 0 = invalid) to {out}\n"
        f"train on it with: data:custom --data.root-dir {args.root_dir} --data.seq-name {args.seq_name} "
        f"--data.depth-type {args.out_type}"
    )


def main(argv: list[str] | None = None) -> None:
    """The command (``argv`` defaults to ``sys.argv[1:]``); failures are one ``error:`` line (:func:`flow3d.cli.run_main`)."""
    run_main(_main, argv)


if __name__ == "__main__":
    main()
