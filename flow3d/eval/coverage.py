"""Holes in a reconstructed surface: rendered alpha on the pixels where the true surface is, inside the
training cameras' view, on held-out frames and on orbit views around the training camera.

    python -m flow3d.eval.coverage --work-dir W [--model last] [--degrees 15] [--num-orbit 7]

Needs a sequence with a ground-truth surface (``gt_surface_points``: the synthetic tissue scene). For
each view, the true surface points (the scene's dense material grid, about one point per pixel) at that
view's time that lie inside some training camera's image are projected into the view; the pixels they
land on, eroded by ``erode_px`` (the frustum's edge is half covered by construction), are the pixels
that must be covered. A hole is such a pixel with rendered alpha below ``min_alpha`` (0.99). Orbit views
swing the camera of the middle training frame about its up axis through the point on its optical axis
at the median depth of the surface, to -degrees, ..., +degrees (:func:`flow3d.vis.camera_paths.orbit_path`
is the video's path; this samples its angles evenly), at every held-out frame's time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import cv2
import numpy as np
import roma
import torch
from torch import Tensor

from flow3d.geometry import project_points
from flow3d.log import get_logger

logger = get_logger(__name__)


def surface_in_frustum_mask(
    seq, t: int, w2c: Tensor, K: Tensor, img_wh: tuple[int, int], erode_px: int = 2
) -> np.ndarray:
    """Bool (H, W): pixels of the camera (``w2c``, ``K``) where the true surface at frame ``t``'s time lies,
    restricted to surface points inside some training camera's image (module docstring)."""
    if seq.gt_surface_points is None:
        raise ValueError(f"sequence {seq.name!r} has no ground-truth surface (gt_surface_points)")
    W, H = img_wh
    pts = seq.gt_surface_points[t].reshape(-1, 3).double()
    inside_any = torch.zeros(pts.shape[0], dtype=torch.bool)
    Ws, Hs = seq.img_wh
    for tt in seq.train_ids.tolist():
        xy, z = project_points(pts, seq.Ks[tt].double(), seq.w2cs[tt].double())
        inside_any |= (
            (z > 0) & (xy[:, 0] >= -0.5) & (xy[:, 0] <= Ws - 0.5) & (xy[:, 1] >= -0.5) & (xy[:, 1] <= Hs - 0.5)
        )
    xy, z = project_points(pts[inside_any], K.double(), w2c.double())
    px = xy.round().long()
    ok = (z > 0) & (px[:, 0] >= 0) & (px[:, 0] < W) & (px[:, 1] >= 0) & (px[:, 1] < H)
    m = np.zeros((H, W), np.uint8)
    m[px[ok, 1].numpy(), px[ok, 0].numpy()] = 1
    m = cv2.morphologyEx(m, cv2.MORPH_CLOSE, np.ones((3, 3), np.uint8))  # sampling gaps of the grid
    if erode_px > 0:
        m = cv2.erode(
            m, np.ones((2 * erode_px + 1, 2 * erode_px + 1), np.uint8), borderType=cv2.BORDER_CONSTANT, borderValue=1
        )
    return m > 0


def orbit_cameras(seq, degrees: float, num: int) -> tuple[Tensor, list[float]]:
    """(num, 4, 4) w2c and their angles: the middle training camera swung about its up axis (-y) through
    the point on its optical axis at the surface's median depth, evenly from -degrees to +degrees."""
    ref = int(seq.train_ids[len(seq.train_ids) // 2])
    w2c = seq.w2cs[ref].double()
    c2w = torch.linalg.inv(w2c)
    if seq.gt_depth is not None:
        med = float(seq.gt_depth[ref][seq.gt_depth[ref] > 0].median())
    else:
        med = 1.0
    target = c2w[:3, 3] + med * c2w[:3, 2]
    up = -c2w[:3, 1]
    angles = np.linspace(-degrees, degrees, num).tolist() if num > 1 else [degrees]
    out = []
    for a in angles:
        R = roma.rotvec_to_rotmat(torch.tensor(math.radians(a), dtype=torch.float64) * up)
        new_c2w = torch.eye(4, dtype=torch.float64)
        new_c2w[:3, :3] = R @ c2w[:3, :3]
        new_c2w[:3, 3] = target + R @ (c2w[:3, 3] - target)
        out.append(torch.linalg.inv(new_c2w))
    return torch.stack(out).float(), angles


@dataclass
class CoverageResult:
    """Per view: name, the fraction of surface-in-frustum pixels with alpha < min_alpha, their count, the
    smallest alpha on them."""

    rows: list[dict]

    def worst(self, kind: str) -> dict:
        rows = [r for r in self.rows if r["kind"] == kind]
        return max(rows, key=lambda r: r["hole_frac"]) if rows else {}

    @property
    def max_hole_frac(self) -> float:
        return max((r["hole_frac"] for r in self.rows), default=float("nan"))


@torch.no_grad()
def coverage(
    model,
    seq,
    degrees: float = 15.0,
    num_orbit: int = 7,
    min_alpha: float = 0.99,
    erode_px: int = 2,
    bg: Optional[Tensor] = None,
    backend: str = "auto",
    frames: Optional[list[int]] = None,
) -> CoverageResult:
    """Holes of ``model`` on ``seq``'s held-out frames (``frames``, default ``val_ids``) seen from their own
    cameras and from the orbit views (module docstring)."""
    W, H = seq.img_wh
    frames = seq.val_ids.tolist() if frames is None else frames
    orbit, angles = orbit_cameras(seq, degrees, num_orbit)
    bg = torch.zeros(3) if bg is None else bg
    rows = []
    for t in frames:
        views = [("held_out", f"frame {t}", seq.w2cs[t], 0.0)] + [
            ("orbit", f"frame {t} orbit {a:+.1f} deg", w, a) for w, a in zip(orbit, angles)
        ]
        for kind, name, w2c, ang in views:
            mask = surface_in_frustum_mask(seq, t, w2c, seq.Ks[t], (W, H), erode_px)
            out = model.render(
                torch.tensor([t]), w2c[None].float(), seq.Ks[t][None].float(), (W, H), bg_color=bg, backend=backend
            )
            alpha = out.alpha[0, ..., 0].float().cpu().numpy()
            holes = mask & (alpha < min_alpha)
            rows.append(
                dict(
                    kind=kind,
                    view=name,
                    frame=t,
                    angle=ang,
                    num_pixels=int(mask.sum()),
                    hole_px=int(holes.sum()),
                    hole_frac=float(holes.sum() / max(1, mask.sum())),
                    min_alpha=float(alpha[mask].min()) if mask.any() else float("nan"),
                )
            )
    return CoverageResult(rows)


def load_run(work_dir, model: str = "last"):
    """(model, sequence, background colour, render backend) of a training run's checkpoint, on the CPU."""
    from pathlib import Path  # noqa: PLC0415

    from flow3d.checkpoint import load_checkpoint, resolve_checkpoint  # noqa: PLC0415
    from flow3d.config import load_config  # noqa: PLC0415
    from flow3d.scene.model import SceneModel  # noqa: PLC0415

    work_dir = Path(work_dir)
    if not (work_dir / "cfg.yaml").is_file():
        raise ValueError(f"--work-dir {work_dir} holds no cfg.yaml")
    cfg = load_config(work_dir / "cfg.yaml")
    payload = load_checkpoint(resolve_checkpoint(work_dir, model), map_location="cpu")
    net = SceneModel.from_state_dict(payload["model"]).eval()
    return net, cfg.data.load(), torch.tensor(cfg.bg_color, dtype=torch.float32), cfg.render_backend


def _main(argv: list[str]) -> None:
    import json  # noqa: PLC0415
    from pathlib import Path  # noqa: PLC0415

    import tyro  # noqa: PLC0415

    from flow3d.log import setup_logging  # noqa: PLC0415

    @dataclass
    class Args:
        work_dir: str
        """Work dir of a training run (cfg.yaml, checkpoints/)."""
        model: str = "last"
        """Checkpoint step or 'last'."""
        degrees: float = 15.0
        """Orbit views from -degrees to +degrees."""
        num_orbit: int = 7
        """Number of orbit views per held-out frame."""
        min_alpha: float = 0.99
        """A surface pixel with rendered alpha below this is a hole."""

    setup_logging()
    a = tyro.cli(Args, args=argv, description=__doc__, prog="python -m flow3d.eval.coverage")
    model, seq, bg, backend = load_run(a.work_dir, a.model)
    res = coverage(model, seq, a.degrees, a.num_orbit, a.min_alpha, bg=bg, backend=backend)
    summary = {
        kind: {
            "views": sum(r["kind"] == kind for r in res.rows),
            "max_hole_frac": max(r["hole_frac"] for r in res.rows if r["kind"] == kind),
            "hole_px": sum(r["hole_px"] for r in res.rows if r["kind"] == kind),
            "pixels": sum(r["num_pixels"] for r in res.rows if r["kind"] == kind),
            "min_alpha": min(r["min_alpha"] for r in res.rows if r["kind"] == kind),
        }
        for kind in ("held_out", "orbit")
    }
    (Path(a.work_dir) / "coverage.json").write_text(
        json.dumps({"summary": summary, "views": res.rows}, indent=1) + "\n"
    )
    print(json.dumps(summary, indent=1))


def main(argv: list[str] | None = None) -> None:
    """``python -m flow3d.eval.coverage``; failures are one ``error:`` line."""
    from flow3d.cli import run_main  # noqa: PLC0415

    run_main(_main, argv)


if __name__ == "__main__":
    main()
