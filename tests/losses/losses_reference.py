"""Slow, obviously-correct re-implementations of seeds 001, 002 and 003, written from their formulas
with explicit loops over pixels (float64 Python scalars). Only for tiny inputs in tests.

They take nested Python lists / tensors of shape (B, 1, H, W) and return Python floats.
"""

from __future__ import annotations

import math


def _get(x, b, i, j):
    return float(x[b][0][i][j])


def _shape(x):
    return len(x), len(x[0][0]), len(x[0][0][0])


def smooth_l1(d: float, beta: float) -> float:
    a = abs(d)
    return 0.5 * a * a / beta if a < beta else a - 0.5 * beta


# ----------------------------------------------------------------------------------------------- seed 001
def consistency_reference(
    d_pred, d_tgt, mask, conf=None, *, r_out=1, r_edge=1, beta=0.1, w_inside=1.0, w_outside=0.5, w_edge=0.5
):
    """Seed 001 on finite inputs: returns (total, inside, outside, edge)."""
    B, H, W = _shape(d_pred)

    def m(b, i, j):
        return min(max(_get(mask, b, i, j), 0.0), 1.0)

    def mbin(b, i, j):
        return 1.0 if m(b, i, j) > 0.5 else 0.0

    def neigh(i, j, r):  # in-image neighbours of a (2r+1)^2 square (max-pool padding is ignored)
        return [(a, c) for a in range(i - r, i + r + 1) for c in range(j - r, j + r + 1) if 0 <= a < H and 0 <= c < W]

    def dil(b, i, j, r):
        return max(mbin(b, a, c) for a, c in neigh(i, j, r)) if r > 0 else mbin(b, i, j)

    def ero(b, i, j, r):
        return min(mbin(b, a, c) for a, c in neigh(i, j, r)) if r > 0 else mbin(b, i, j)

    def cf(b, i, j):
        return 1.0 if conf is None else min(max(_get(conf, b, i, j), 0.0), 1.0)

    def dx(x, b, i, j):
        return _get(x, b, i, j + 1) - _get(x, b, i, j) if j + 1 < W else 0.0

    def dy(x, b, i, j):
        return _get(x, b, i + 1, j) - _get(x, b, i, j) if i + 1 < H else 0.0

    sums = {k: [0.0, 0.0] for k in ("in", "out", "ex", "ey")}
    for b in range(B):
        for i in range(H):
            for j in range(W):
                v = cf(b, i, j)
                e = smooth_l1(_get(d_pred, b, i, j) - _get(d_tgt, b, i, j), beta)
                w_in = m(b, i, j) * v
                w_out = (1.0 - dil(b, i, j, r_out)) * v
                band = (min(max(dil(b, i, j, r_edge) - ero(b, i, j, r_edge), 0.0), 1.0) if r_edge > 0 else 0.0) * v
                for key, w, val in (
                    ("in", w_in, e),
                    ("out", w_out, e),
                    ("ex", band, smooth_l1(dx(d_pred, b, i, j) - dx(d_tgt, b, i, j), beta)),
                    ("ey", band, smooth_l1(dy(d_pred, b, i, j) - dy(d_tgt, b, i, j), beta)),
                ):
                    sums[key][0] += w * val
                    sums[key][1] += w

    def mean(k):
        return sums[k][0] / max(sums[k][1], 1e-8)

    L_in, L_out = mean("in"), mean("out")
    L_edge = 0.5 * (mean("ex") + mean("ey"))
    return w_inside * L_in + w_outside * L_out + w_edge * L_edge, L_in, L_out, L_edge


# ----------------------------------------------------------------------------------------------- seed 002
def _sobel_at(img, i, j, H, W, pad: str):
    """Sobel (cross-correlation) at (i, j) of a 2-D list with 'zeros' or 'replicate' padding."""
    kx = [[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]]
    ky = [[-1, -2, -1], [0, 0, 0], [1, 2, 1]]
    gx = gy = 0.0
    for a in range(3):
        for c in range(3):
            ii, jj = i + a - 1, j + c - 1
            if pad == "zeros":
                val = img[ii][jj] if (0 <= ii < H and 0 <= jj < W) else 0.0
            else:
                val = img[min(max(ii, 0), H - 1)][min(max(jj, 0), W - 1)]
            gx += kx[a][c] * val
            gy += ky[a][c] * val
    return gx, gy


def g2_reference(pred, gt, mask, scales=(1, 2, 4, 8)):
    """Seed 002: returns (total, adepth, rdepth, rgrad)."""
    B, H, W = _shape(pred)
    eps = 1e-6
    P = [[[_get(pred, b, i, j) for j in range(W)] for i in range(H)] for b in range(B)]
    G = [[[_get(gt, b, i, j) for j in range(W)] for i in range(H)] for b in range(B)]
    M = [[[_get(mask, b, i, j) for j in range(W)] for i in range(H)] for b in range(B)]

    def wl1(X, Y):
        per = []
        for b in range(B):
            n = sum(M[b][i][j] for i in range(H) for j in range(W))
            s = sum(abs(X[b][i][j] - Y[b][i][j]) * M[b][i][j] for i in range(H) for j in range(W))
            per.append(s / (n if n != 0 else eps))
        return sum(per) / B

    def standardize(X):
        out = []
        for b in range(B):
            n = sum(M[b][i][j] for i in range(H) for j in range(W))
            n = n if n != 0 else eps
            mu = sum(X[b][i][j] * M[b][i][j] for i in range(H) for j in range(W)) / n
            mad = sum(abs((X[b][i][j] - mu) * M[b][i][j]) for i in range(H) for j in range(W)) / n + eps
            out.append([[(X[b][i][j] - mu) / mad for j in range(W)] for i in range(H)])
        return out

    adepth = wl1(P, G)
    SP, SG = standardize(P), standardize(G)
    rdepth = wl1(SP, SG)

    def pool(X, s):
        h, w = H // s, W // s
        return [
            [
                [sum(X[b][i * s + a][j * s + c] for a in range(s) for c in range(s)) / (s * s) for j in range(w)]
                for i in range(h)
            ]
            for b in range(B)
        ]

    rgrad = 0.0
    for s in scales:
        if s > 1:
            d_s, g_s = pool(SP, s), pool(SG, s)
            m_s = [[[1.0 if v > 0.5 else 0.0 for v in row] for row in img] for img in pool(M, s)]
        else:
            d_s, g_s, m_s = SP, SG, M
        h, w = len(d_s[0]), len(d_s[0][0])
        num = den = 0.0
        for b in range(B):
            for i in range(h):
                for j in range(w):
                    gxd, gyd = _sobel_at(d_s[b], i, j, h, w, "zeros")
                    gxg, gyg = _sobel_at(g_s[b], i, j, h, w, "zeros")
                    num += (abs(gxd - gxg) + abs(gyd - gyg)) * m_s[b][i][j]
                    den += m_s[b][i][j]
        rgrad += num / (den + eps)
    rgrad /= len(scales)
    return adepth + rdepth + 0.5 * rgrad, adepth, rdepth, rgrad


# ----------------------------------------------------------------------------------------------- seed 003
def _bilinear_down(img, factor: int):
    """PyTorch's bilinear resize (align_corners=False) by scale_factor 1/factor, written out."""
    H, W = len(img), len(img[0])
    h, w = int(math.floor(H / factor)), int(math.floor(W / factor))

    def src(d, n_in):
        s = max((d + 0.5) * factor - 0.5, 0.0)
        i0 = int(math.floor(s))
        i1 = min(i0 + 1, n_in - 1)
        return i0, i1, s - i0

    out = []
    for i in range(h):
        y0, y1, ly = src(i, H)
        row = []
        for j in range(w):
            x0, x1, lx = src(j, W)
            top = (1 - lx) * img[y0][x0] + lx * img[y0][x1]
            bot = (1 - lx) * img[y1][x0] + lx * img[y1][x1]
            row.append((1 - ly) * top + ly * bot)
        out.append(row)
    return out


def scale_adaptive_reference(
    pred_inv, gt_inv, mask=None, *, lambda_sg=0.5, num_scales=4, use_absolute=True, use_inv_depth=False, epsilon=1e-8
):
    """Seed 003 (PackNet's ScaleAdaptiveLoss.forward): returns (total, relative, absolute, sg)."""
    B, H, W = _shape(pred_inv)
    N = H * W

    def conv(x):
        return x if use_inv_depth else 1.0 / max(x, 1e-6)

    X = [[[conv(_get(pred_inv, b, i, j)) for j in range(W)] for i in range(H)] for b in range(B)]
    Y = [[[conv(_get(gt_inv, b, i, j)) for j in range(W)] for i in range(H)] for b in range(B)]

    def normalize(Z):
        out = []
        for b in range(B):
            mu = sum(Z[b][i][j] for i in range(H) for j in range(W)) / N
            mad = sum(abs(Z[b][i][j] - mu) for i in range(H) for j in range(W)) / N
            out.append([[(Z[b][i][j] - mu) / (mad + epsilon) for j in range(W)] for i in range(H)])
        return out

    XN, YN = normalize(X), normalize(Y)
    relative = sum(abs(XN[b][i][j] - YN[b][i][j]) for b in range(B) for i in range(H) for j in range(W)) / (B * N)
    absolute = 0.0
    if use_absolute and mask is not None:
        num = 0.0
        den = 0.0
        for b in range(B):
            n_b = 0.0
            for i in range(H):
                for j in range(W):
                    mm = _get(mask, b, i, j)
                    num += abs(X[b][i][j] * mm - Y[b][i][j] * mm) * mm
                    n_b += mm
            den += max(n_b, 1.0)
        absolute = num / (den + epsilon)
    sg = 0.0
    for k in range(1, num_scales + 1):
        tot, cnt = 0.0, 0
        for b in range(B):
            R = [[XN[b][i][j] - YN[b][i][j] for j in range(W)] for i in range(H)]
            if k > 1:
                R = _bilinear_down(R, 2 ** (k - 1))
            h, w = len(R), len(R[0])
            for i in range(h):
                for j in range(w):
                    gx, gy = _sobel_at(R, i, j, h, w, "replicate")
                    tot += abs(gx) + abs(gy)
                    cnt += 1
        sg += tot / cnt
    sg /= num_scales
    return relative + absolute + lambda_sg * sg, relative, absolute, sg
