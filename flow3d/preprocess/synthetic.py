"""Write a synthetic scene to disk, so the file loaders can be tried (and tested) on it.

    python -m flow3d.preprocess.synthetic --out-dir data/synthetic_example
    python -m flow3d.preprocess.synthetic --scene tissue --layout custom --out-dir data/tissue_custom
    python -m flow3d.preprocess.synthetic --scene tissue --layout endonerf --out-dir data/tissue_endonerf

Layouts: ``custom`` (Shape of Motion's casual layout, :func:`flow3d.data.write_custom_layout`; both
scenes) and ``endonerf`` (EndoNeRF's own layout, :func:`flow3d.data.endonerf.write_endonerf_layout`;
the tissue scene only: a stereo-like 16-bit ``depth/``, instrument ``masks/``, ``poses_bounds.npy`` and
the drifting monocular-like prior in ``mono_disp/``). Every scene option of ``data:synthetic`` is a flag
here without the ``--data.`` prefix (``--scene``, ``--seed``, ``--num-frames``, ``--prior-drift``, ...).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Annotated, Literal

import tyro

from flow3d.cli import run_main
from flow3d.data.synthetic import SyntheticDataConfig


@dataclass
class WriteArgs:
    """Write a synthetic scene (objects or tissue) to disk in the custom or the EndoNeRF layout."""

    out_dir: str
    """Root folder to write (created if missing)."""
    data: Annotated[SyntheticDataConfig, tyro.conf.OmitArgPrefixes] = dataclasses.field(
        default_factory=SyntheticDataConfig
    )
    """Options of the scene (the fields of data:synthetic)."""
    layout: Literal["custom", "endonerf"] = "custom"
    """custom (Shape of Motion's casual layout; both scenes) or endonerf (EndoNeRF's layout; tissue scene only)."""
    seq_name: str = "synthetic"
    """custom layout: sequence name (sub-folder name)."""
    depth_type: str = "aligned_depth_anything"
    """custom layout: folder name of the disparity prior."""
    track_type: str = "bootstapir"
    """custom layout: folder name of the 2D tracks."""
    depth_scale: float = 1000.0
    """endonerf layout: a depth/ PNG stores depth * depth_scale as 16 bits (read with --data.depth-scale)."""
    stereo_noise: float = 0.01
    """endonerf layout: relative standard deviation of the noise of the stereo-like depth."""
    stereo_holes: float = 0.03
    """endonerf layout: fraction of each frame covered by holes (0) in the stereo-like depth, plus a band on the left."""
    prior_dir: str = "mono_disp"
    """endonerf layout: folder of the drifting monocular-like disparity prior (read with --data.prior-dir)."""
    stereo_baseline: float = 0.0
    """custom layout, tissue scene: > 0 also writes the right view of a rectified stereo pair, the camera
    shifted by this many scene units along its x axis (same K), to ``images_right/SEQ`` (for
    python -m flow3d.preprocess.stereo); 0 = none."""


def write(args: WriteArgs) -> str:
    """Generate the scene and write it; returns the load command for the layout."""
    from flow3d.data.endonerf import write_endonerf_layout  # noqa: PLC0415
    from flow3d.data.synthetic import make_synthetic_sequence, write_custom_layout  # noqa: PLC0415

    if args.data.normalize_scene:
        raise ValueError("--normalize-scene True cannot be written: the layouts store original units")
    if args.layout == "endonerf" and args.data.scene != "tissue":
        raise ValueError(
            "--layout endonerf needs --scene tissue (the objects scene has a moving camera and no instruments)"
        )
    if args.layout == "custom":
        from flow3d.data.io import check_seq_name  # noqa: PLC0415

        check_seq_name(args.seq_name, "--seq-name")
    if args.stereo_baseline != 0 and (args.layout != "custom" or args.data.scene != "tissue"):
        raise ValueError("--stereo-baseline needs --scene tissue --layout custom")
    seq = make_synthetic_sequence(args.data)
    if args.layout == "custom":
        root = write_custom_layout(seq, args.out_dir, args.seq_name, args.depth_type, args.track_type)
        how = f"data:custom --data.root-dir {root} --data.seq-name {args.seq_name} --data.depth-type {args.depth_type} --data.track-type {args.track_type}"
        if args.stereo_baseline != 0:
            from flow3d.data.tissue import write_right_views  # noqa: PLC0415

            write_right_views(args.data, root, args.seq_name, args.stereo_baseline, seq.frame_names)
            how += (
                f"\nstereo prior: python -m flow3d.preprocess.stereo --root-dir {root} --seq-name {args.seq_name} "
                f"--baseline {args.stereo_baseline:g}, then --data.depth-type stereo_disp"
            )
    else:
        root = write_endonerf_layout(
            seq, args.out_dir, args.depth_scale, args.prior_dir, args.stereo_noise, args.stereo_holes, args.data.seed
        )
        how = (
            f"data:endonerf --data.root-dir {root} --data.depth-scale {args.depth_scale:g}"
            f"  (monocular prior: add --data.prior-dir {args.prior_dir} --data.prior-kind disparity)"
        )
    return f"wrote {seq.num_frames} frames of {seq.img_wh[0]}x{seq.img_wh[1]} ({args.data.scene} scene, {args.layout} layout) to {root}\nload it with: {how}"


def _main(argv: list[str]) -> None:
    from flow3d.log import setup_logging  # noqa: PLC0415

    setup_logging()
    args = tyro.cli(WriteArgs, args=argv, description=__doc__, prog="python -m flow3d.preprocess.synthetic")
    print(write(args))


def main(argv: list[str] | None = None) -> None:
    """The command (``argv`` defaults to ``sys.argv[1:]``). Failures leave through ``SystemExit`` with one
    ``error: ...`` line (:func:`flow3d.cli.run_main`; ``--debug`` or ``FLOW3D_DEBUG=1`` shows the traceback)."""
    run_main(_main, argv)


if __name__ == "__main__":
    main()
