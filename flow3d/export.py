"""``python -m flow3d.export``: per-frame 3DGS splats, point clouds and trajectories of a trained scene.

    python -m flow3d.export --work-dir outputs/demo --model last --out-dir outputs/demo/export
    python -m flow3d.export --work-dir W --model 4000 --out-dir X --frames 0 10 20 --gaussians fg --min-opacity 0.05

Writes into OUT_DIR (files written atomically; other files there are left alone):

    splats/<t:05d>.ply   the Gaussians at video frame t in the INRIA 3DGS layout (:mod:`flow3d.scene.ply`):
                         dynamic Gaussians moved to frame t by the motion bases, static ones as they are
    points/<t:05d>.ply   the same Gaussians' centres as a coloured point cloud (x y z, red green blue)
    trajectories.npz     the dynamic Gaussians' centres at every frame (layout: TRAJECTORIES_DOC)
    export.json          what was exported: checkpoint, step, frames, counts, units

Positions are in the normalised scene units the model was trained in; ``scene_scale`` and
``scene_transform`` (in trajectories.npz and export.json) map them back to the data's original units:
``x_orig = inv(scene_transform) @ [scene_scale * x, 1]``.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional

import numpy as np
import torch
from tqdm import tqdm

from flow3d.cli import run_main
from flow3d.fileio import write_bytes
from flow3d.log import get_logger, setup_logging
from flow3d.scene.model import SceneModel
from flow3d.scene.ply import Splats, write_point_ply, write_splat_ply

logger = get_logger("flow3d.export")  # not __name__: "__main__" under python -m

TRAJECTORIES_DOC = """\
flow3d trajectories of the dynamic (foreground) Gaussians.
means       (N, T, 3) float32  centre of Gaussian n at video frame t, scene units (normalised world)
quats       (N, T, 4) float32  its orientation at frame t, unit quaternion wxyz
colors      (N, 3)    float32  RGB in [0, 1]
opacities   (N,)      float32  opacity in [0, 1]
index       (N,)      int64    row of the Gaussian in the checkpoint's fg parameters
frames      (T,)      int64    video frame index 0..T-1 of axis 1
time_ids    (T,)      int64    original frame numbers of the video
w2cs        (T, 4, 4) float32  training camera of each frame, world -> camera, OpenCV axes, scene units
Ks          (T, 3, 3) float32  its intrinsics in pixels (pixel centres at integer coordinates)
img_wh      (2,)      int64    image width and height of the cameras
scene_scale ()        float64  x_orig = inv(scene_transform) @ [scene_scale * x, 1]; depth_orig = scene_scale * depth
scene_transform (4, 4) float32 original world -> normalised world, before the division by scene_scale
"""


@dataclass
class ExportConfig:
    """Export a checkpoint as per-frame 3DGS .ply files, coloured point clouds and 3D trajectories."""

    work_dir: str
    """The training work dir (holds cfg.yaml and checkpoints/)."""
    out_dir: str
    """Folder to write splats/, points/, trajectories.npz and export.json into (created if missing)."""
    model: str = "last"
    """Checkpoint: a step number (checkpoints/model_<step>.ckpt) or 'last'."""
    frames: Optional[tuple[int, ...]] = None
    """Video frames (0..T-1) to export splats and point clouds for; default: every frame."""
    gaussians: Literal["all", "fg", "bg"] = "all"
    """Which Gaussians: all, only the dynamic foreground (fg) or only the static background (bg)."""
    min_opacity: float = 0.0
    """Leave out Gaussians whose opacity (in [0, 1]) is below this."""
    splats: bool = True
    """Write splats/<t>.ply (3DGS layout)."""
    points: bool = True
    """Write points/<t>.ply (coloured point clouds of the Gaussians' centres)."""
    trajectories: bool = True
    """Write trajectories.npz (needs the dynamic Gaussians: skipped with --gaussians bg)."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """'auto' takes CUDA when it is available."""


def splats_at(model: SceneModel, t: int, fg: bool = True, bg: bool = True) -> tuple[Splats, torch.Tensor]:
    """The Gaussians at video frame ``t`` in the 3DGS convention, and a (N,) bool that is True for dynamic ones.

    The dynamic Gaussians are moved to frame ``t`` (:meth:`SceneModel.fg_means_quats_at`); the stored log
    scales and opacity logits are taken as they are (so a round trip through a file is exact), colours
    are the activated RGB.
    """
    parts, is_fg = [], []
    with torch.no_grad():
        if fg:
            means, quats = model.fg_means_quats_at(torch.tensor([t], device=model.fg.get_means().device))
            p = model.fg.params
            parts.append(Splats(means[:, 0], quats[:, 0], p["scales"], p["opacities"], model.fg.get_colors()))
            is_fg.append(torch.ones(model.num_fg, dtype=torch.bool))
        if bg and model.bg is not None:
            p = model.bg.params
            parts.append(
                Splats(model.bg.get_means(), model.bg.get_quats(), p["scales"], p["opacities"], model.bg.get_colors())
            )
            is_fg.append(torch.zeros(model.num_bg, dtype=torch.bool))
    if not parts:
        e = torch.zeros(0, 3)
        return Splats(e, torch.zeros(0, 4), e, torch.zeros(0), e), torch.zeros(0, dtype=torch.bool)
    splats = Splats.cat([Splats(*(x.detach().float().cpu() for x in vars(s).values())) for s in parts])
    return splats, torch.cat(is_fg)


def trajectories(model: SceneModel, keep: torch.Tensor, chunk: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Centres (N, T, 3) and wxyz quaternions (N, T, 4) of the dynamic Gaussians ``keep`` (N_fg,) bool at every frame."""
    T = model.num_frames
    dev = model.fg.get_means().device
    means, quats = [], []
    with torch.no_grad():
        for s in range(0, T, chunk):
            m, q = model.fg_means_quats_at(torch.arange(s, min(s + chunk, T), device=dev))  # (N_fg, b, 3), (N_fg, b, 4)
            means.append(m[keep.to(dev)].float().cpu())
            quats.append(q[keep.to(dev)].float().cpu())
    return torch.cat(means, dim=1).numpy(), torch.cat(quats, dim=1).numpy()


def _check_frames(frames: Optional[tuple[int, ...]], T: int) -> list[int]:
    if frames is None:
        return list(range(T))
    bad = [t for t in frames if not 0 <= t < T]
    if bad:
        raise ValueError(f"--frames {bad} are outside the video's frames 0..{T - 1}")
    return sorted(set(int(t) for t in frames))


def _check_selection(
    model: SceneModel, ckpt_path: Path, which: str, use_fg: bool, use_bg: bool, min_opacity: float
) -> None:
    """ValueError naming the flag when ``--gaussians`` / ``--min-opacity`` select no Gaussian of the checkpoint."""
    num = {"fg": model.num_fg if use_fg else 0, "bg": (model.num_bg if model.bg is not None else 0) if use_bg else 0}
    if num["fg"] + num["bg"] == 0:
        kinds = {"bg": "static (background)", "fg": "dynamic (foreground)", "all": ""}[which]
        hint = "; export --gaussians fg or all" if which == "bg" else ""
        raise ValueError(
            f"--gaussians {which}: checkpoint {ckpt_path} has no {kinds + ' ' if kinds else ''}Gaussians{hint}"
        )
    ops = []
    if num["fg"]:
        ops.append(model.fg.get_opacities().detach().float().cpu())
    if num["bg"]:
        ops.append(model.bg.get_opacities().detach().float().cpu())
    top = float(torch.cat(ops).max())
    if not top >= min_opacity:
        raise ValueError(
            f"--min-opacity {min_opacity:g} leaves no Gaussian of --gaussians {which} in {ckpt_path} "
            f"(the largest opacity is {top:.4g})"
        )


def export(cfg: ExportConfig) -> dict:
    """Run the export described by ``cfg`` (see the module docstring); returns the summary written to export.json."""
    from flow3d.vis.load import check_output_path, load_trained_run

    if not 0.0 <= cfg.min_opacity <= 1.0:
        raise ValueError(f"--min-opacity must be in [0, 1], got {cfg.min_opacity}")
    out = check_output_path(cfg.out_dir, "--out-dir", folder=True)
    run = load_trained_run(cfg.work_dir, cfg.model, cfg.device)
    model = run.model
    frames = _check_frames(cfg.frames, model.num_frames)
    use_fg, use_bg = cfg.gaussians in ("all", "fg"), cfg.gaussians in ("all", "bg")
    _check_selection(model, run.ckpt_path, cfg.gaussians, use_fg, use_bg, cfg.min_opacity)
    seq = run.load_sequence()
    out.mkdir(parents=True, exist_ok=True)
    counts: dict[str, dict[str, int]] = {}
    for t in tqdm(frames if (cfg.splats or cfg.points) else [], desc="export", unit="frame", dynamic_ncols=True):
        splats, is_fg = splats_at(model, t, use_fg, use_bg)
        keep = splats.opacities() >= cfg.min_opacity
        splats, is_fg = splats.select(keep), is_fg[keep]
        c = {"fg": int(is_fg.sum()), "bg": int((~is_fg).sum())}
        if cfg.splats:
            c["splats_written"] = write_splat_ply(out / "splats" / f"{t:05d}.ply", splats)
        if cfg.points:
            c["points_written"] = write_point_ply(out / "points" / f"{t:05d}.ply", splats.means, splats.rgb)
        counts[str(t)] = c
    summary = {
        "checkpoint": str(run.ckpt_path),
        "step": run.step,
        "frames": frames,
        "gaussians": cfg.gaussians,
        "min_opacity": cfg.min_opacity,
        "per_frame": counts,
        "scene_scale": seq.scene_scale,
        "scene_transform": seq.scene_transform.tolist(),
        "units": "scene units; x_orig = inv(scene_transform) @ [scene_scale * x, 1]",
    }
    if cfg.trajectories and use_fg:
        summary["trajectories"] = _write_trajectories(out / "trajectories.npz", model, seq, cfg.min_opacity)
    elif cfg.trajectories:
        logger.info("no trajectories.npz: --gaussians bg exports only the static Gaussians")
    write_bytes(out / "export.json", (json.dumps(summary, indent=2) + "\n").encode())
    logger.info("exported %d frames of %s (step %d) to %s", len(counts), run.work_dir, run.step, out)
    return summary


def _write_trajectories(path: Path, model: SceneModel, seq, min_opacity: float) -> dict:
    keep = (model.fg.get_opacities() >= min_opacity).cpu()
    means, quats = trajectories(model, keep)
    arrays = dict(
        means=means,
        quats=quats,
        colors=model.fg.get_colors()[keep.to(model.fg.get_means().device)].float().cpu().numpy(),
        opacities=model.fg.get_opacities()[keep.to(model.fg.get_means().device)].float().cpu().numpy(),
        index=torch.nonzero(keep).squeeze(1).numpy().astype(np.int64),
        frames=np.arange(model.num_frames, dtype=np.int64),
        time_ids=seq.time_ids.numpy().astype(np.int64),
        w2cs=seq.w2cs.float().numpy(),
        Ks=seq.Ks.float().numpy(),
        img_wh=np.asarray(seq.img_wh, dtype=np.int64),
        scene_scale=np.float64(seq.scene_scale),
        scene_transform=seq.scene_transform.float().numpy(),
        README=np.array(TRAJECTORIES_DOC),
    )
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    write_bytes(path, buf.getvalue())
    return {"file": path.name, "num_gaussians": int(means.shape[0]), "num_frames": int(means.shape[1])}


def _main(argv: list[str]) -> dict:
    import tyro

    cfg = tyro.cli(ExportConfig, args=argv, description=__doc__, prog="python -m flow3d.export")
    setup_logging()
    summary = export(cfg)
    n = len(summary["per_frame"])
    print(f"exported {n} frame(s) (step {summary['step']}) to {cfg.out_dir}")
    return summary


def main(argv: list[str] | None = None) -> dict:
    """The command (``argv`` defaults to ``sys.argv[1:]``). Failures leave through ``SystemExit`` with one
    ``error: ...`` line (:func:`flow3d.cli.run_main`; ``--debug`` or ``FLOW3D_DEBUG=1`` shows the traceback)."""
    return run_main(_main, argv)


if __name__ == "__main__":
    main()
