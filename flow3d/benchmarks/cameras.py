"""Camera estimation: accuracy against reference poses and cost per frame, and the bundle adjustment's
analytic sparse Jacobian against finite-difference Jacobians.

``python -m flow3d.benchmarks.cameras [--real-dir DIR] [--skip-real]``

Accuracy rows (each a full :func:`flow3d.cameras.estimate_cameras` run: flow tracks, focal length,
registration, adjustment), with the errors of :func:`flow3d.cameras.trajectory_errors`:

* ``synthetic``: the embedded scene with a moving camera (``data:synthetic``, 24 frames 128x96, its
  foreground masks), ground-truth cameras and focal length;
* ``7scenes``: the 20 real Kinect frames of ``7scenes_tsdf_fusion`` (KinectFusion reference poses;
  nominal focal 585 px at 640x480) at 320x240 and 160x120, no masks (a static scene);
* ``tum``: the TUM fr2 pair at 320x240, focal known, against the RGB-D PnP reference of its SOURCE.md
  (rotation 4.1 deg, translation direction (-0.137, -0.004, 0.065)).

The ratio rows time one bundle adjustment of the same problem (synthetic points, 12 frames) with the
analytic sparse Jacobian (ours), the finite-difference Jacobian with ``jac_sparsity``, and the dense
finite-difference Jacobian (the reference, on a problem small enough for it).
"""

from __future__ import annotations

import glob
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
import tyro

from flow3d.cameras import estimate_cameras, trajectory_errors
from flow3d.cameras.bundle import Observations, bundle_adjust, points_from_world, project, vec_to_poses
from flow3d.data import SyntheticDataConfig, make_synthetic_sequence

_REAL = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "real"


@dataclass
class Args:
    real_dir: str = str(_REAL)
    """Folder of the real datasets (7scenes_tsdf_fusion, tum_fr2_pair_slambook2)."""
    skip_real: bool = False
    """Only the synthetic rows."""


def _rgb(path: Path, size: tuple[int, int]) -> np.ndarray:
    return cv2.resize(cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB), size, interpolation=cv2.INTER_AREA)


def _row(name, est, seconds, err) -> dict:
    T = len(est.w2cs)
    return {"data": name, "frames": T, "size": f"{est.img_wh[0]}x{est.img_wh[1]}", "s/frame": seconds / T, **err}


def accuracy_rows(args: Args) -> list[dict]:
    rows = []
    seq = make_synthetic_sequence(SyntheticDataConfig(num_frames=24, width=128, height=96, camera_motion=1.0))
    imgs, fg = (seq.images * 255).round().byte().numpy(), (seq.fg_masks > 0.5).numpy()
    t0 = time.perf_counter()
    est = estimate_cameras(imgs, fg)
    err = trajectory_errors(
        np.linalg.inv(est.w2cs), torch.linalg.inv(seq.w2cs.double()).numpy(), est.K[0, 0], float(seq.Ks[0, 0, 0])
    )
    rows.append(_row("synthetic", est, time.perf_counter() - t0, err))
    if args.skip_real:
        return rows
    src = Path(args.real_dir) / "7scenes_tsdf_fusion"
    if src.is_dir():
        names = sorted(Path(p).name.split(".")[0] for p in glob.glob(str(src / "frame-*.color.jpg")))
        c2w = np.stack([np.loadtxt(src / f"{n}.pose.txt") for n in names])
        for ds in (2, 4):
            imgs = np.stack([_rgb(src / f"{n}.color.jpg", (640 // ds, 480 // ds)) for n in names])
            t0 = time.perf_counter()
            est = estimate_cameras(imgs, np.zeros(imgs.shape[:3], bool))
            err = trajectory_errors(np.linalg.inv(est.w2cs), c2w, est.K[0, 0] * ds, 585.0)
            rows.append(_row("7scenes", est, time.perf_counter() - t0, err))
    src = Path(args.real_dir) / "tum_fr2_pair_slambook2"
    if src.is_dir():
        imgs = np.stack([_rgb(src / f"{i}.png", (320, 240)) for i in (1, 2)])
        t0 = time.perf_counter()
        est = estimate_cameras(imgs, np.zeros(imgs.shape[:3], bool), focal=520.9 / 2)
        rel = est.w2cs[1] @ np.linalg.inv(est.w2cs[0])
        ang = float(np.degrees(np.arccos(np.clip((np.trace(rel[:3, :3]) - 1) / 2, -1, 1))))
        t_ref = np.array([-0.137, -0.004, 0.065])
        cos = rel[:3, 3] @ t_ref / np.linalg.norm(rel[:3, 3]) / np.linalg.norm(t_ref)
        rows.append(
            _row(
                "tum (focal known)",
                est,
                time.perf_counter() - t0,
                {
                    "rel_rot_deg (ref 4.1)": ang,
                    "rel_trans_dir_err_deg_all_pairs": float(np.degrees(np.arccos(np.clip(cos, -1, 1)))),
                },
            )
        )
    return rows


def jacobian_rows(T: int = 12, n: int = 150) -> list[tuple[str, float]]:
    rng = np.random.default_rng(0)
    s = np.linspace(0, 1, T)
    vec = np.stack([0.1 * s, 0.3 * s, 0.05 * s, -1.2 * s, 0.1 * s, -0.4 * s], 1)
    w2cs = vec_to_poses(vec)
    X = np.stack([rng.uniform(-3, 3, n), rng.uniform(-1.5, 1.5, n), rng.uniform(4, 8, n)], 1)
    center, f = np.array([159.5, 119.5]), 260.0
    xy = np.stack([project(w2cs, f, center, X, np.full(n, t))[0] for t in range(T)], 1) + rng.normal(0, 0.3, (n, T, 2))
    vis = np.ones((n, T), bool)
    anchor_t = np.zeros(n, int)
    rho = points_from_world(w2cs, f, center, X, anchor_t, xy[:, 0]) * rng.uniform(0.9, 1.1, n)
    pert = vec + np.concatenate([np.zeros((1, 6)), rng.normal(0, 0.01, (T - 1, 6))])
    obs = Observations.from_tracks(xy, vis)
    out = []
    for jac in ("analytic", "sparse_fd", "dense_fd"):
        t0 = time.perf_counter()
        res = bundle_adjust(
            obs, vec_to_poses(pert), f * 1.05, center, rho, anchor_t, xy[:, 0], jacobian=jac, max_nfev=60
        )
        out.append((jac, time.perf_counter() - t0, float(np.sqrt(np.mean(res.residuals**2)))))
    return out


def main() -> None:
    args = tyro.cli(Args)
    rows = accuracy_rows(args)
    keys = [
        "frames",
        "size",
        "s/frame",
        "ate_rmse",
        "trajectory_length",
        "rel_rot_err_deg_all_pairs",
        "rel_trans_dir_err_deg_all_pairs",
        "focal_rel_err",
        "rel_rot_deg (ref 4.1)",
    ]
    print(f"{'data':20s}" + "".join(f"{k[:22]:>24s}" for k in keys))
    for r in rows:
        cells = [r.get(k, float("nan")) for k in keys]
        print(f"{r['data']:20s}" + "".join(f"{c:>24.4f}" if isinstance(c, float) else f"{str(c):>24s}" for c in cells))
    print("\nbundle adjustment, 12 frames x 150 points, same start, at most 60 evaluations:")
    jac = jacobian_rows()
    ref = jac[-1][1]
    for name, sec, rms in jac:
        print(f"  {name:10s} {sec:8.3f} s   {ref / sec:7.1f}x the dense finite-difference reference   rms {rms:.3f} px")


if __name__ == "__main__":
    main()
