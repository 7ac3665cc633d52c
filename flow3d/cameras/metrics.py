"""Trajectory errors of estimated cameras against reference poses (camera-to-world, OpenCV axes).

* :func:`align_similarity` -- Umeyama similarity (scale, rotation, translation) taking the estimated
  camera centres onto the reference ones (``roma.rigid_points_registration`` with scaling);
* :func:`trajectory_errors` -- absolute trajectory error (rmse of the aligned centres, reference units),
  relative rotation error (deg) and relative translation-direction error (deg) over consecutive frames
  and over all frame pairs, and the focal-length error when both focal lengths are given.
"""

from __future__ import annotations

import numpy as np
import roma
import torch


def align_similarity(centers_est: np.ndarray, centers_ref: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """(s, R (3, 3), t (3,)) minimising sum |s R c_est + t - c_ref|^2 over (T, 3) centres (Umeyama)."""
    x = torch.as_tensor(centers_est, dtype=torch.float64)
    y = torch.as_tensor(centers_ref, dtype=torch.float64)
    R, t, s = roma.rigid_points_registration(x, y, compute_scaling=True)
    return float(s), R.numpy(), t.numpy()


def rotation_angle_deg(R: np.ndarray) -> np.ndarray:
    """Angle (deg) of rotation matrices (..., 3, 3)."""
    c = (np.trace(R, axis1=-2, axis2=-1) - 1.0) / 2.0
    return np.degrees(np.arccos(np.clip(c, -1.0, 1.0)))


def _direction_error_deg(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    na, nb = np.linalg.norm(a, axis=-1), np.linalg.norm(b, axis=-1)
    cos = (a * b).sum(-1) / np.maximum(na * nb, 1e-12)
    return np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))


def trajectory_errors(
    c2w_est: np.ndarray, c2w_ref: np.ndarray, focal_est: float | None = None, focal_ref: float | None = None
) -> dict:
    """Errors of (T, 4, 4) estimated camera-to-world poses against the reference (see the module doc)."""
    c2w_est, c2w_ref = np.asarray(c2w_est, np.float64), np.asarray(c2w_ref, np.float64)
    if c2w_est.shape != c2w_ref.shape or c2w_est.shape[1:] != (4, 4):
        raise ValueError(f"poses must both be (T, 4, 4), got {c2w_est.shape} and {c2w_ref.shape}")
    T = len(c2w_est)
    out: dict = {"num_frames": T}
    if T >= 3:
        s, R, t = align_similarity(c2w_est[:, :3, 3], c2w_ref[:, :3, 3])
        aligned = c2w_est[:, :3, 3] @ R.T * s + t
        out["ate_rmse"] = float(np.sqrt(np.mean(np.sum((aligned - c2w_ref[:, :3, 3]) ** 2, axis=-1))))
        out["trajectory_length"] = float(np.linalg.norm(np.diff(c2w_ref[:, :3, 3], axis=0), axis=-1).sum())
        out["sim3_scale"] = s
    i, j = np.triu_indices(T, k=1)
    consecutive = j == i + 1
    rel_est = np.linalg.inv(c2w_est[j]) @ c2w_est[i]  # camera i -> camera j
    rel_ref = np.linalg.inv(c2w_ref[j]) @ c2w_ref[i]
    rot_err = rotation_angle_deg(rel_est[:, :3, :3] @ np.swapaxes(rel_ref[:, :3, :3], -1, -2))
    dir_err = _direction_error_deg(rel_est[:, :3, 3], rel_ref[:, :3, 3])
    out["rel_rot_err_deg_consecutive"] = float(np.mean(rot_err[consecutive]))
    out["rel_rot_err_deg_all_pairs"] = float(np.mean(rot_err))
    out["rel_trans_dir_err_deg_consecutive"] = float(np.mean(dir_err[consecutive]))
    out["rel_trans_dir_err_deg_all_pairs"] = float(np.mean(dir_err))
    out["rel_rot_ref_deg_all_pairs"] = float(np.mean(rotation_angle_deg(rel_ref[:, :3, :3])))
    if focal_est is not None and focal_ref is not None:
        out["focal_rel_err"] = float(abs(focal_est - focal_ref) / focal_ref)
    return out
