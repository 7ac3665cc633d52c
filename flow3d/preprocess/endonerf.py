"""Convert an EndoNeRF clip into Shape of Motion's casual layout, so ``data:custom`` trains on it unchanged.

    python -m flow3d.preprocess.endonerf --src ROOT --out-root R --seq-name pulling
    python run_training.py --work-dir W data:custom --data.seq-name pulling --data.root-dir R --data.is-train True

Reads ``ROOT`` as ``data:endonerf`` does (:mod:`flow3d.data.endonerf`, same options for the depth scale
and the prior) and writes, under ``R`` (every file atomically):

    images/SEQ/NAME.png                 the frames
    masks/SEQ/NAME.png                  255 = tissue: all of it is dynamic foreground
    ignore_masks/SEQ/NAME.png           255 = instrument (data:custom sets valid_masks False there)
    <depth-type>/SEQ/NAME.npy           the prior as disparity (0 = invalid)
    droid_recon/SEQ.npy                 the cameras of poses_bounds.npy, OpenCV c2w and intrinsics
    gt_depth/SEQ/NAME.npy + source.txt  the stereo depth as the reference for run_val.py ("stereo")

No track files: ``data:custom`` chains them from optical flow, avoiding the instruments. Existing
output folders of SEQ are an error unless ``--overwrite`` (which deletes them first: only SEQ's own
folders and camera file listed above, never another sequence's; ``--seq-name`` and ``--depth-type`` must
each be a single folder name).
"""

from __future__ import annotations

import os

if __name__ == "__main__":
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch: see run_training.py

import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional

from flow3d.cli import run_main
from flow3d.log import get_logger, setup_logging

logger = get_logger(__name__)


@dataclass
class ConvertArgs:
    """Convert an EndoNeRF clip (images/, depth/, masks/, poses_bounds.npy) into the casual layout."""

    src: str
    """The EndoNeRF clip's folder."""
    out_root: str
    """Root of the casual layout to write into (created if missing)."""
    seq_name: str
    """Sequence name: the sub-folder under each data folder of the casual layout."""
    depth_scale: float = 1.0
    """Stored value of a depth/ PNG / depth_scale = depth (as data:endonerf --data.depth-scale)."""
    prior_dir: Optional[str] = None
    """Folder under src of the prior to convert instead of the stereo depth (as --data.prior-dir)."""
    prior_kind: Literal["disparity", "depth"] = "disparity"
    """prior_dir only: disparity or depth (as --data.prior-kind)."""
    prior_png_scale: float = 1.0
    """prior_dir only: a 16-bit PNG's value / this = the map's value (as --data.prior-png-scale)."""
    downscale: int = 1
    """Integer factor to shrink everything by while converting."""
    depth_type: str = "aligned_depth_anything"
    """Folder name of the prior in the casual layout (data:custom's default --data.depth-type)."""
    overwrite: bool = False
    """Delete this sequence's existing output folders first instead of stopping with an error."""


def convert(args: ConvertArgs) -> Path:
    """Load ``args.src`` with data:endonerf's reader and write it in the casual layout; returns the root."""
    from flow3d.data.endonerf import EndoNeRFDataConfig  # noqa: PLC0415 - keep --help fast
    from flow3d.data.io import check_seq_name  # noqa: PLC0415
    from flow3d.data.synthetic import write_custom_layout  # noqa: PLC0415

    check_seq_name(args.seq_name, "--seq-name")  # --overwrite deletes ROOT/<folder>/SEQ: SEQ must be one name
    check_seq_name(args.depth_type, "--depth-type")
    root = Path(args.out_root)
    targets = [root / d / args.seq_name for d in ("images", "masks", "ignore_masks", args.depth_type, "gt_depth")]
    targets.append(root / "droid_recon" / f"{args.seq_name}.npy")
    existing = [p for p in targets if p.exists()]
    if existing and not args.overwrite:
        raise ValueError(f"output exists: {', '.join(map(str, existing))} (pass --overwrite to replace it)")
    cfg = EndoNeRFDataConfig(
        root_dir=args.src,
        depth_scale=args.depth_scale,
        prior_dir=args.prior_dir,
        prior_kind=args.prior_kind,
        prior_png_scale=args.prior_png_scale,
        downscale=args.downscale,
        tracks="none",
        normalize_scene=False,
        use_cache=False,
    )
    seq = cfg.load()
    for p in existing:
        shutil.rmtree(p) if p.is_dir() else p.unlink()
    write_custom_layout(seq, root, args.seq_name, args.depth_type, track_type=None)
    logger.info("converted %d frames of %dx%d from %s", seq.num_frames, *seq.img_wh, args.src)
    return root


def main(argv: list[str] | None = None) -> None:
    """The command (``argv`` defaults to ``sys.argv[1:]``). Failures leave through ``SystemExit`` with one
    ``error: ...`` line (:func:`flow3d.cli.run_main`; ``--debug`` or ``FLOW3D_DEBUG=1`` shows the traceback)."""
    run_main(_main, argv)


def _main(argv: list[str]) -> None:
    import tyro  # noqa: PLC0415

    setup_logging()
    args = tyro.cli(ConvertArgs, args=argv, description=__doc__, prog="python -m flow3d.preprocess.endonerf")
    root = convert(args)
    print(
        f"wrote {root}; train with: run_training.py --work-dir W data:custom --data.seq-name {args.seq_name} "
        f"--data.root-dir {root} --data.is-train True"
        + (f" --data.depth-type {args.depth_type}" if args.depth_type != "aligned_depth_anything" else "")
    )


if __name__ == "__main__":
    main(sys.argv[1:])
