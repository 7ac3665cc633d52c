"""Initial cameras for the bundle adjustment: focal length, two-view start, incremental registration.

All with OpenCV and numpy, in the conventions of :mod:`flow3d` (``w2cs`` world -> camera, OpenCV axes,
pixels with centres at integers; the principal point is fixed at the image centre):

* :func:`estimate_focal` -- focal length from fundamental matrices of several frame pairs: the
  essential matrix ``K^T F K`` of the right focal length has two equal singular values (Mendonca and
  Cipolla 1999); pairs that a homography explains as well as F (camera rotation, or a plane) score the
  focal length by how close ``K^-1 H K`` is to a rotation instead.
* :func:`initial_pair` -- the frame pair whose essential matrix (RANSAC) triangulates the most points
  with a triangulation angle above ``min_angle_deg``; its relative pose (``cv2.recoverPose``) starts
  the reconstruction.
* :func:`register_incrementally` -- every other frame by PnP RANSAC (``cv2.solvePnPRansac``) on the points
  triangulated so far, new points triangulated (``cv2.triangulatePoints``) after each frame.
* :func:`rotation_only_init` -- when no pair has parallax (a panning or static camera): rotations
  chained from homographies, zero translations.
"""

from __future__ import annotations

import cv2
import numpy as np

from flow3d.log import get_logger

logger = get_logger(__name__)


def intrinsics(focal: float, center: np.ndarray) -> np.ndarray:
    """(3, 3) pinhole matrix with fx = fy = ``focal`` and principal point ``center`` (2,)."""
    return np.array([[focal, 0.0, center[0]], [0.0, focal, center[1]], [0.0, 0.0, 1.0]])


def focal_from_fov(fov_deg: float, width: int) -> float:
    """Focal length in pixels for a horizontal field of view over ``width`` pixels."""
    return (width / 2.0) / np.tan(np.radians(fov_deg) / 2.0)


def nearest_rotation(A: np.ndarray) -> np.ndarray:
    """Closest rotation (Frobenius) to a (3, 3) matrix."""
    U, _, Vt = np.linalg.svd(A)
    R = U @ Vt
    if np.linalg.det(R) < 0:
        R = U @ np.diag([1.0, 1.0, -1.0]) @ Vt
    return R


def common(xy: np.ndarray, vis: np.ndarray, i: int, j: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Track ids visible in frames i and j and their positions there: (ids (n,), x_i (n, 2), x_j (n, 2))."""
    ids = np.nonzero(vis[:, i] & vis[:, j])[0]
    return ids, xy[ids, i].astype(np.float64), xy[ids, j].astype(np.float64)


def _focal_cost_curves(x1, x2, cands, center, ransac_px) -> np.ndarray | None:
    F, fmask = cv2.findFundamentalMat(x1, x2, cv2.FM_RANSAC, ransac_px, 0.999)
    H, hmask = cv2.findHomography(x1, x2, cv2.RANSAC, ransac_px)
    if F is None or F.shape != (3, 3) or fmask is None or fmask.sum() < 20:
        return None
    homography_like = H is not None and hmask is not None and hmask.sum() >= 0.9 * fmask.sum()
    costs = np.empty(len(cands))
    for k, f in enumerate(cands):
        K = intrinsics(f, center)
        if homography_like:
            A = np.linalg.inv(K) @ H @ K
            det = np.linalg.det(A)
            if abs(det) < 1e-12:
                return None
            A = A / np.cbrt(det)
            costs[k] = np.linalg.norm(A @ A.T - np.eye(3))
        else:
            s = np.linalg.svd(K.T @ F @ K, compute_uv=False)
            costs[k] = (s[0] - s[1]) / max(s[0] + s[1], 1e-12)
    return costs / max(costs.mean(), 1e-12)


def estimate_focal(
    xy, vis, width: int, height: int, *, pairs, ransac_px: float = 1.0, fov_range=(20.0, 120.0)
) -> float | None:
    """Focal length (px) minimising the summed, per-pair normalised self-calibration costs over ``pairs``
    (list of (i, j)); None when no pair has 20 fundamental-matrix inliers."""
    center = np.array([(width - 1) / 2.0, (height - 1) / 2.0])
    fovs = np.linspace(fov_range[1], fov_range[0], 201)
    cands = focal_from_fov(fovs, width)
    total, used = np.zeros(len(cands)), 0
    for i, j in pairs:
        ids, x1, x2 = common(xy, vis, i, j)
        if len(ids) < 30:
            continue
        c = _focal_cost_curves(x1, x2, cands, center, ransac_px)
        if c is not None:
            total += c
            used += 1
    if used == 0:
        return None
    k = int(np.argmin(total))
    logger.info(
        "focal length from %d frame pairs: %.1f px (%.1f deg horizontal field of view)", used, cands[k], fovs[k]
    )
    return float(cands[k])


def triangulate(P1: np.ndarray, P2: np.ndarray, x1: np.ndarray, x2: np.ndarray) -> np.ndarray:
    """Linear triangulation (``cv2.triangulatePoints``) with (3, 4) projection matrices -> (n, 3) points."""
    if len(x1) == 0:
        return np.zeros((0, 3))
    Xh = cv2.triangulatePoints(P1, P2, x1.T.astype(np.float64), x2.T.astype(np.float64))
    w = np.where(np.abs(Xh[3]) > 1e-12, Xh[3], 1e-12)
    return (Xh[:3] / w).T


def ray_angle_deg(X: np.ndarray, c1: np.ndarray, c2: np.ndarray) -> np.ndarray:
    """Angle (deg) at points X (n, 3) between the rays to camera centres c1 and c2 ((n, 3) or (3,))."""
    a, b = X - c1, X - c2
    cos = (a * b).sum(-1) / np.maximum(np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1), 1e-12)
    return np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))


def check_points(X, w2cs_list, xs_list, K, max_px, min_angle_deg) -> np.ndarray:
    """(n,) bool: in front of every camera, reprojection below ``max_px`` in every view and an angle
    between the first two views' rays of at least ``min_angle_deg``."""
    ok = np.ones(len(X), dtype=bool)
    centers = []
    for w2c, x in zip(w2cs_list, xs_list):
        Xc = X @ w2c[:3, :3].T + w2c[:3, 3]
        z = Xc[:, 2]
        uv = Xc @ K.T
        uv = uv[:, :2] / np.where(np.abs(uv[:, 2:]) > 1e-12, uv[:, 2:], 1e-12)
        ok &= (z > 0) & (np.linalg.norm(uv - x, axis=-1) < max_px)
        centers.append(-w2c[:3, :3].T @ w2c[:3, 3])
    return ok & (ray_angle_deg(X, centers[0], centers[1]) >= min_angle_deg)


def initial_pair(xy, vis, K, *, ransac_px: float, min_angle_deg: float, max_pairs: int = 40):
    """Best two-view start. Returns (a, b, w2c_b (4, 4), ids (n,), X (n, 3)) with frame a at the identity
    and |t_b| = 1, or None when no pair triangulates at least 15 points."""
    T = vis.shape[1]
    cands = []
    for a in sorted({0, T // 3, (2 * T) // 3}):
        for b in range(a + 1, T):
            if (vis[:, a] & vis[:, b]).sum() >= 30:
                cands.append((a, b))
    if len(cands) > max_pairs:
        cands = [cands[k] for k in np.linspace(0, len(cands) - 1, max_pairs).round().astype(int)]
    best, best_score, best_n = None, 0.0, 0
    for a, b in cands:
        ids, x1, x2 = common(xy, vis, a, b)
        E, mask = cv2.findEssentialMat(x1, x2, K, cv2.RANSAC, 0.999, ransac_px)
        if E is None or E.shape != (3, 3):
            continue
        _, R, t, mask = cv2.recoverPose(E, x1, x2, K, mask=mask)
        inl = mask.ravel() > 0
        w2c_b = np.eye(4)
        w2c_b[:3, :3], w2c_b[:3, 3] = R, t.ravel() / max(np.linalg.norm(t), 1e-12)
        X = triangulate(K @ np.eye(4)[:3], K @ w2c_b[:3], x1[inl], x2[inl])
        good = check_points(X, [np.eye(4), w2c_b], [x1[inl], x2[inl]], K, 2 * ransac_px, min_angle_deg)
        score = float(good.sum())
        if good.sum() >= 15 and score > best_score:
            best, best_score, best_n = (a, b, w2c_b, ids[inl][good], X[good]), score, int(good.sum())
    if best is not None:
        logger.info("initial pair: frames %d and %d, %d points triangulated", best[0], best[1], best_n)
    return best


def _pnp(X, x, K, guess: np.ndarray, ransac_px: float):
    rvec0, _ = cv2.Rodrigues(guess[:3, :3])
    ok, rvec, tvec, inliers = cv2.solvePnPRansac(
        X.astype(np.float64),
        x.astype(np.float64),
        K,
        None,
        rvec=rvec0.copy(),
        tvec=guess[:3, 3:].copy(),
        useExtrinsicGuess=True,
        iterationsCount=200,
        reprojectionError=ransac_px,
        confidence=0.999,
        flags=cv2.SOLVEPNP_ITERATIVE,
    )
    if not ok or inliers is None:
        return None, 0
    inl = inliers.ravel()
    rvec, tvec = cv2.solvePnPRefineLM(X[inl].astype(np.float64), x[inl].astype(np.float64), K, None, rvec, tvec)
    w2c = np.eye(4)
    w2c[:3, :3], w2c[:3, 3] = cv2.Rodrigues(rvec)[0], tvec.ravel()
    return w2c, len(inl)


def triangulate_new(xy, vis, K, w2cs, registered, X, has_X, *, ransac_px, min_angle_deg) -> int:
    """Triangulate tracks without a point that two registered frames see (first and last of them);
    fills ``X`` / ``has_X`` in place. Returns how many points were added."""
    reg_vis = vis & registered[None, :]
    cand = np.nonzero(~has_X & (reg_vis.sum(1) >= 2))[0]
    if len(cand) == 0:
        return 0
    T = vis.shape[1]
    first = np.argmax(reg_vis[cand], axis=1)
    last = T - 1 - np.argmax(reg_vis[cand][:, ::-1], axis=1)
    added = 0
    for i, j in set(zip(first.tolist(), last.tolist())):
        sel = cand[(first == i) & (last == j)]
        Xn = triangulate(K @ w2cs[i][:3], K @ w2cs[j][:3], xy[sel, i], xy[sel, j])
        good = check_points(Xn, [w2cs[i], w2cs[j]], [xy[sel, i], xy[sel, j]], K, 2 * ransac_px, min_angle_deg)
        X[sel[good]] = Xn[good]
        has_X[sel[good]] = True
        added += int(good.sum())
    return added


def register_incrementally(xy, vis, K, start, *, ransac_px: float, min_angle_deg: float, on_registered=None):
    """Register every frame from the two-view ``start`` of :func:`initial_pair`.

    Returns (w2cs (T, 4, 4), X (P, 3), has_X (P,) bool, pnp_ok (T,) bool). A frame PnP cannot register
    (fewer than 8 inliers) takes the pose of its nearest registered frame (``pnp_ok`` False, logged).
    ``on_registered(w2cs, registered, X, has_X)`` is called after each frame (e.g. a local adjustment).
    """
    P, T = vis.shape
    a, b, w2c_b, ids, Xab = start
    w2cs = np.tile(np.eye(4), (T, 1, 1))
    w2cs[b] = w2c_b
    registered = np.zeros(T, dtype=bool)
    registered[[a, b]] = True
    pnp_ok = registered.copy()
    X, has_X = np.zeros((P, 3)), np.zeros(P, dtype=bool)
    X[ids], has_X[ids] = Xab, True
    while not registered.all():
        todo = np.nonzero(~registered)[0]
        counts = np.array([(vis[:, f] & has_X).sum() for f in todo])
        dist = np.array([np.abs(np.nonzero(registered)[0] - f).min() for f in todo])
        f = int(todo[np.argmax(1000 * counts - dist)])  # most points seen; the nearest frame among equals
        near = np.nonzero(registered)[0]
        guess = w2cs[near[np.argmin(np.abs(near - f))]]
        sel = np.nonzero(vis[:, f] & has_X)[0]
        pose, n_inl = (None, 0) if len(sel) < 8 else _pnp(X[sel], xy[sel, f], K, guess, ransac_px)
        if pose is not None and n_inl >= 8:
            w2cs[f], pnp_ok[f] = pose, True
        else:
            w2cs[f] = guess
            logger.warning(
                "frame %d: PnP found %d inliers among %d points; it starts from its neighbour's pose",
                f,
                n_inl,
                len(sel),
            )
        registered[f] = True
        triangulate_new(xy, vis, K, w2cs, registered, X, has_X, ransac_px=ransac_px, min_angle_deg=min_angle_deg)
        if on_registered is not None:
            on_registered(w2cs, registered, X, has_X)
    return w2cs, X, has_X, pnp_ok


def rotation_only_init(xy, vis, K, ransac_px: float) -> np.ndarray:
    """(T, 4, 4) w2cs with rotations chained from consecutive-frame homographies (``R = K^-1 H K`` made a
    rotation) and zero translations; frame 0 at the identity. A pair without a homography keeps the
    previous rotation."""
    T = vis.shape[1]
    Kinv = np.linalg.inv(K)
    w2cs = np.tile(np.eye(4), (T, 1, 1))
    for t in range(T - 1):
        ids, x1, x2 = common(xy, vis, t, t + 1)
        R_rel = np.eye(3)
        if len(ids) >= 8:
            H, _ = cv2.findHomography(x1, x2, cv2.RANSAC, ransac_px)
            if H is not None:
                R_rel = nearest_rotation(Kinv @ H @ K)
        w2cs[t + 1, :3, :3] = R_rel @ w2cs[t, :3, :3]
    return w2cs
