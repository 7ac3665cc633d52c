"""Bundle adjustment over camera poses, one shared focal length and anchored inverse depths.

Parameters (``scipy.optimize.least_squares``, trust-region reflective with LSMR, an analytic sparse
Jacobian; ``jacobian="sparse_fd"`` / ``"dense_fd"`` use finite differences with / without
``jac_sparsity`` instead, the references of the tests and the benchmark):

* per free frame t: the world -> camera pose of frame t as a rotation vector (3) and a translation (3)
  (OpenCV axes, ``x_cam = R x_world + t``); frames in ``fixed_frames`` keep their pose (the gauge);
* optionally the focal length f in pixels (fx = fy = f; the principal point is fixed);
* per point p: its inverse depth rho_p along the ray of its *anchor* observation (frame a_p, pixel
  u_p): ``X_cam_a = [(u_p - c) / f, 1] / rho_p``. Points far away (rho -> 0) stay well conditioned,
  the usual choice for small-baseline video.

Residuals: the reprojection error (pixels) of every observation except the anchor ones, under a robust
loss (soft L1 by default, scale ``loss_scale_px``), plus one weak prior per point ``w (log rho_p -
log rho_p0)`` that fixes the global scale (which the reprojections cannot see) without a dense row.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import least_squares
from scipy.sparse import coo_matrix, csr_matrix
from scipy.spatial.transform import Rotation

from flow3d.log import get_logger

logger = get_logger(__name__)


@dataclass
class Observations:
    """Static-point observations. ``p`` (O,) point index, ``t`` (O,) frame index, ``xy`` (O, 2) pixels."""

    p: np.ndarray
    t: np.ndarray
    xy: np.ndarray

    @classmethod
    def from_tracks(cls, xy: np.ndarray, visible: np.ndarray, frames_ok: np.ndarray | None = None) -> "Observations":
        """From (P, T, 2) positions and (P, T) visibility; ``frames_ok`` (T,) bool limits the frames."""
        vis = visible if frames_ok is None else visible & frames_ok[None, :]
        p, t = np.nonzero(vis)
        return cls(p, t, xy[p, t].astype(np.float64))


@dataclass
class BAResult:
    w2cs: np.ndarray  # (T, 4, 4)
    focal: float
    inv_depth: np.ndarray  # (P,)
    anchor_t: np.ndarray  # (P,)
    anchor_xy: np.ndarray  # (P, 2)
    residuals: np.ndarray  # (O, 2) px, every observation (anchors give 0)
    cost_init: float
    cost_final: float
    nfev: int


def poses_to_vec(w2cs: np.ndarray) -> np.ndarray:
    """(T, 4, 4) world -> camera -> (T, 6) rotation vector + translation."""
    return np.concatenate([Rotation.from_matrix(w2cs[:, :3, :3]).as_rotvec(), w2cs[:, :3, 3]], axis=1)


def vec_to_poses(v: np.ndarray) -> np.ndarray:
    """(T, 6) -> (T, 4, 4) world -> camera."""
    out = np.tile(np.eye(4), (len(v), 1, 1))
    out[:, :3, :3] = Rotation.from_rotvec(v[:, :3]).as_matrix()
    out[:, :3, 3] = v[:, 3:]
    return out


def skew(v: np.ndarray) -> np.ndarray:
    """(..., 3) -> (..., 3, 3) cross-product matrices ``[v]_x``."""
    z = np.zeros(v.shape[:-1])
    return np.stack(
        [
            np.stack([z, -v[..., 2], v[..., 1]], -1),
            np.stack([v[..., 2], z, -v[..., 0]], -1),
            np.stack([-v[..., 1], v[..., 0], z], -1),
        ],
        -2,
    )


def left_jacobian(w: np.ndarray) -> np.ndarray:
    """(..., 3) rotation vectors -> (..., 3, 3) left Jacobians of SO(3): exp(w + d) ~ exp(J_l(w) d) exp(w)."""
    th = np.linalg.norm(w, axis=-1)[..., None, None]
    K = skew(w)
    small = th < 1e-6
    ths = np.where(small, 1.0, th)
    a = np.where(small, 0.5, (1 - np.cos(ths)) / ths**2)
    b = np.where(small, 1.0 / 6.0, (ths - np.sin(ths)) / ths**3)
    return np.eye(3) + a * K + b * K @ K


def anchor_points(
    w2cs: np.ndarray,
    focal: float,
    center: np.ndarray,
    inv_depth: np.ndarray,
    anchor_t: np.ndarray,
    anchor_xy: np.ndarray,
) -> np.ndarray:
    """World points (P, 3) of anchored inverse depths (see the module docstring)."""
    rays = np.concatenate([(anchor_xy - center) / focal, np.ones((len(anchor_xy), 1))], axis=1)
    X_a = rays / inv_depth[:, None]
    R, t = w2cs[anchor_t, :3, :3], w2cs[anchor_t, :3, 3]
    return np.einsum("pji,pj->pi", R, X_a - t)  # R^T (X - t)


def project(
    w2cs: np.ndarray, focal: float, center: np.ndarray, X: np.ndarray, t: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Project world points X (O, 3) into frames t (O,) -> pixels (O, 2) and camera z (O,)."""
    Xc = np.einsum("oij,oj->oi", w2cs[t, :3, :3], X) + w2cs[t, :3, 3]
    z = Xc[:, 2]
    zs = np.where(z > 1e-9, z, 1e-9)
    return focal * Xc[:, :2] / zs[:, None] + center, z


def points_from_world(
    w2cs: np.ndarray, focal: float, center: np.ndarray, X: np.ndarray, anchor_t: np.ndarray, anchor_xy: np.ndarray
) -> np.ndarray:
    """Inverse depths (P,) of world points X (P, 3) along their anchor rays (z of X in the anchor camera)."""
    Xc = np.einsum("pij,pj->pi", w2cs[anchor_t, :3, :3], X) + w2cs[anchor_t, :3, 3]
    return 1.0 / np.maximum(Xc[:, 2], 1e-9)


class _Problem:
    """The residual function and its Jacobian pattern for one bundle adjustment."""

    def __init__(
        self,
        obs: Observations,
        w2cs,
        focal,
        center,
        inv_depth,
        anchor_t,
        anchor_xy,
        fixed,
        optimize_focal,
        prior_weight,
    ):
        T = len(w2cs)
        self.T, self.center, self.anchor_t, self.anchor_xy = T, center, anchor_t, anchor_xy
        self.free = np.array([t for t in range(T) if t not in set(fixed)], dtype=int)
        self.base = poses_to_vec(w2cs)
        self.focal0, self.opt_f = focal, optimize_focal
        not_anchor = obs.t != anchor_t[obs.p]
        self.op, self.ot, self.oxy = obs.p[not_anchor], obs.t[not_anchor], obs.xy[not_anchor]
        self.P = len(inv_depth)
        self.log_rho0 = np.log(inv_depth)
        self.prior_weight = prior_weight
        self.nf = len(self.free)
        self._csr = None

    def pack(self, vec, focal, inv_depth) -> np.ndarray:
        parts = [vec[self.free].ravel()] + ([np.array([focal])] if self.opt_f else []) + [inv_depth]
        return np.concatenate(parts)

    def unpack(self, x):
        vec = self.base.copy()
        vec[self.free] = x[: 6 * self.nf].reshape(-1, 6)
        k = 6 * self.nf
        focal = x[k] if self.opt_f else self.focal0
        return vec, focal, x[-self.P :]

    def residuals(self, x) -> np.ndarray:
        vec, focal, rho = self.unpack(x)
        w2cs = vec_to_poses(vec)
        X = anchor_points(w2cs, focal, self.center, rho, self.anchor_t, self.anchor_xy)
        uv, _ = project(w2cs, focal, self.center, X[self.op], self.ot)
        prior = self.prior_weight * (np.log(np.maximum(rho, 1e-12)) - self.log_rho0)
        return np.concatenate([(uv - self.oxy).ravel(), prior])

    def jacobian(self, x) -> csr_matrix:
        """Analytic Jacobian of :meth:`residuals` (same sparsity as :meth:`sparsity`)."""
        vec, f, rho = self.unpack(x)
        w2cs = vec_to_poses(vec)
        R, Jl = w2cs[:, :3, :3], left_jacobian(vec[:, :3])
        op, ot = self.op, self.ot
        a = self.anchor_t[op]
        d = self.anchor_xy[op] - self.center  # (O, 2)
        r = np.concatenate([d / f, np.ones((len(op), 1))], axis=1)  # anchor rays (O, 3)
        y = r / rho[op, None] - w2cs[a, :3, 3]  # X_a - t_a
        Ra_T = np.swapaxes(R[a], -1, -2)
        Xw = np.einsum("oij,oj->oi", Ra_T, y)
        RXw = np.einsum("oij,oj->oi", R[ot], Xw)
        Xc = RXw + w2cs[ot, :3, 3]
        z = np.where(Xc[:, 2] > 1e-9, Xc[:, 2], 1e-9)
        dproj = np.zeros((len(op), 2, 3))  # d uv / d X_c
        dproj[:, 0, 0] = dproj[:, 1, 1] = f / z
        dproj[:, :, 2] = -f * Xc[:, :2] / z[:, None] ** 2
        blocks = {}
        blocks["rot_t"] = -dproj @ skew(RXw) @ Jl[ot]
        blocks["tr_t"] = dproj
        A = dproj @ R[ot] @ Ra_T  # d uv / d (quantities in the anchor camera)
        blocks["rot_a"] = A @ skew(y) @ Jl[a]
        blocks["tr_a"] = -A
        dr_df = np.concatenate([-d / f**2, np.zeros((len(op), 1))], axis=1)
        d_f = np.einsum("oij,oj->oi", A, dr_df / rho[op, None]) + Xc[:, :2] / z[:, None]
        d_rho = np.einsum("oij,oj->oi", A, -r / rho[op, None] ** 2)
        rows, cols, vals = [], [], []
        r2 = 2 * np.arange(len(op))
        col_of_frame = np.full(self.T, -1)
        col_of_frame[self.free] = np.arange(self.nf) * 6
        for frames, rot, tr in ((ot, blocks["rot_t"], blocks["tr_t"]), (a, blocks["rot_a"], blocks["tr_a"])):
            c0 = col_of_frame[frames]
            ok = c0 >= 0
            J6 = np.concatenate([rot, tr], axis=2)[ok]  # (n, 2, 6)
            rr = np.broadcast_to(r2[ok, None, None] + np.arange(2)[None, :, None], J6.shape)
            cc = np.broadcast_to(c0[ok, None, None] + np.arange(6)[None, None, :], J6.shape)
            rows.append(rr.ravel()), cols.append(cc.ravel()), vals.append(J6.ravel())
        k = 6 * self.nf
        if self.opt_f:
            (
                rows.append(np.stack([r2, r2 + 1], 1).ravel()),
                cols.append(np.full(2 * len(op), k)),
                vals.append(d_f.ravel()),
            )
            k += 1
        rows.append(np.stack([r2, r2 + 1], 1).ravel()), cols.append(np.repeat(k + op, 2)), vals.append(d_rho.ravel())
        (
            rows.append(2 * len(op) + np.arange(self.P)),
            cols.append(k + np.arange(self.P)),
            vals.append(self.prior_weight / rho),
        )
        vals = np.concatenate(vals)
        if self._csr is None:  # the pattern never changes: sort it into CSR order once
            n = 6 * self.nf + int(self.opt_f) + self.P
            order = coo_matrix(
                (np.arange(1, len(vals) + 1, dtype=np.float64), (np.concatenate(rows), np.concatenate(cols))),
                shape=(2 * len(op) + self.P, n),
            ).tocsr()
            self._csr = (order.data.astype(np.int64) - 1, order.indices, order.indptr, order.shape)
        perm, indices, indptr, shape = self._csr
        return csr_matrix((vals[perm], indices, indptr), shape=shape)

    def sparsity(self) -> coo_matrix:
        O, nf = len(self.op), self.nf
        col_of_frame = np.full(self.T, -1)
        col_of_frame[self.free] = np.arange(nf) * 6
        rows, cols = [], []
        r = np.repeat(np.arange(O) * 2, 2) + np.tile([0, 1], O)  # (2 O,) rows, obs-major
        for frames in (self.ot, self.anchor_t[self.op]):
            c0 = np.repeat(col_of_frame[frames], 2)
            ok = c0 >= 0
            for k in range(6):
                rows.append(r[ok])
                cols.append(c0[ok] + k)
        k = 6 * nf
        if self.opt_f:
            rows.append(r)
            cols.append(np.full(2 * O, k))
            k += 1
        rows.append(r)
        cols.append(k + np.repeat(self.op, 2))
        rows.append(2 * O + np.arange(self.P))  # the per-point priors
        cols.append(k + np.arange(self.P))
        rows, cols = np.concatenate(rows), np.concatenate(cols)
        n = 6 * nf + int(self.opt_f) + self.P
        return coo_matrix((np.ones(len(rows), dtype=np.int8), (rows, cols)), shape=(2 * O + self.P, n))


def bundle_adjust(
    obs: Observations,
    w2cs: np.ndarray,
    focal: float,
    center: np.ndarray,
    inv_depth: np.ndarray,
    anchor_t: np.ndarray,
    anchor_xy: np.ndarray,
    *,
    fixed_frames=(0,),
    optimize_focal: bool = True,
    focal_bounds: tuple[float, float] = (1.0, np.inf),
    loss: str = "soft_l1",
    loss_scale_px: float = 1.0,
    prior_weight: float = 1e-2,
    max_nfev: int = 60,
    jacobian: str = "analytic",
    x_scale="jac",
) -> BAResult:
    """Refine ``w2cs`` (T, 4, 4), ``focal`` and ``inv_depth`` (P,) (anchored at ``anchor_t`` (P,),
    ``anchor_xy`` (P, 2)) to minimise the robust reprojection error of ``obs``. ``center`` (2,) is the
    fixed principal point; ``focal_bounds`` (px) bound the focal length when it is optimised. ``jacobian``: "analytic" (default), "sparse_fd" (finite differences with the
    sparsity pattern) or "dense_fd" (finite differences without it; a slow reference). Returns a
    :class:`BAResult`."""
    if loss not in ("linear", "huber", "soft_l1", "cauchy", "arctan"):
        raise ValueError(f"loss must be one of linear, huber, soft_l1, cauchy, arctan; got {loss!r}")
    if jacobian not in ("analytic", "sparse_fd", "dense_fd"):
        raise ValueError(f"jacobian must be analytic, sparse_fd or dense_fd; got {jacobian!r}")
    if not np.all(inv_depth > 0):
        raise ValueError("inv_depth must be positive (points in front of their anchor camera)")
    prob = _Problem(
        obs,
        w2cs,
        float(focal),
        np.asarray(center, float),
        inv_depth,
        anchor_t,
        anchor_xy,
        fixed_frames,
        optimize_focal,
        prior_weight,
    )
    x0 = prob.pack(prob.base, float(focal), inv_depth)
    lo = np.full_like(x0, -np.inf)
    lo[-prob.P :] = 1e-6 * np.median(inv_depth)
    hi = np.full_like(x0, np.inf)
    if optimize_focal:
        lo[6 * prob.nf], hi[6 * prob.nf] = focal_bounds
    with np.errstate(invalid="ignore"):
        inside_lo = np.where(np.isfinite(lo), lo + 1e-9 * np.abs(lo) + 1e-12, lo)
        inside_hi = np.where(np.isfinite(hi), hi - 1e-9 * np.abs(hi), hi)
    x0 = np.clip(x0, inside_lo, inside_hi)  # strictly feasible start
    res = least_squares(
        prob.residuals,
        x0,
        jac=prob.jacobian if jacobian == "analytic" else "2-point",
        jac_sparsity=prob.sparsity() if jacobian == "sparse_fd" else None,
        bounds=(lo, hi),
        method="trf",
        tr_solver="exact" if jacobian == "dense_fd" else "lsmr",
        loss=loss,
        f_scale=loss_scale_px,
        x_scale=x_scale,
        max_nfev=max_nfev,
        ftol=1e-6,
        xtol=1e-8,
        gtol=1e-8,
    )
    vec, f, rho = prob.unpack(res.x)
    poses = vec_to_poses(vec)
    X = anchor_points(poses, f, prob.center, rho, anchor_t, anchor_xy)
    uv, _ = project(poses, f, prob.center, X[obs.p], obs.t)
    cost0 = float(0.5 * (prob.residuals(x0) ** 2).sum())
    logger.debug(
        "bundle adjustment: %d frames, %d points, %d residuals, cost %.4g -> %.4g in %d evaluations",
        len(poses),
        prob.P,
        2 * len(prob.op),
        cost0,
        res.cost,
        res.nfev,
    )
    return BAResult(poses, float(f), rho, anchor_t, anchor_xy, uv - obs.xy, cost0, float(res.cost), int(res.nfev))
