"""Benchmark of the depth losses: ``python -m flow3d.benchmarks.losses [--repeats 5] [--threads N]``.

For each loss, forward + backward wall time (median of ``--repeats`` after one warm-up, repetitions of
ours and of the reference interleaved so that a shared machine's load hits both alike) at realistic
sizes -- a batch of 4 maps of 480 x 270 for the dense losses, 1,000,000 pixel pairs for the ordinal
ones -- next to a naive reference measured in the same run, and their ratio (reference / ours; > 1
means ours is faster). The references:

* ``loop/img``: a Python loop over the images with boolean indexing (Pearson, depth-aware scale);
* ``loop/patch``: a Python loop over the patches (patch-wise Pearson);
* ``plain code``: the published formulation written out plainly (depth consistency, G2-MonoDepth,
  scale-adaptive) -- same maths, so a ratio near 1 says our validation / NaN handling / safety costs little;
* ``SoM code``: Shape of Motion's style (``torch.quantile`` + boolean gathers) for the trimmed L1 and
  the disparity-gradient loss;
* ``loop/pair xN``: a per-pair Python loop with autograd on 0-d tensors, timed on a subset of pairs
  and extrapolated linearly to 1,000,000 pairs (marked with the factor N).

For the ordinal losses the peak resident-memory increase of one forward+backward (Linux VmHWM minus
VmRSS before it, each measurement in a fresh process) is printed at 250k and 1M pairs, to show it is
linear in the number of pairs.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn.functional as F
import tyro

from flow3d.losses import (
    depth_aware_scale_loss,
    depth_consistency_loss,
    depth_order_sign,
    disparity_gradient_loss,
    g2_monodepth_loss,
    hinge_ordinal_loss,
    masked_l1_loss,
    modgs_ordinal_loss,
    pearson_depth_loss,
    scale_adaptive_loss,
)

B, H, W = 4, 270, 480
N_PAIRS = 1_000_000


# ------------------------------------------------------------------------------------------- timing
def _once(fn: Callable[[], torch.Tensor]) -> float:
    t0 = time.perf_counter()
    loss = fn()
    if loss.requires_grad:
        loss.backward()
    return time.perf_counter() - t0


def _time(
    fn: Callable[[], torch.Tensor],
    repeats: int,
    ref: Callable[[], torch.Tensor] | None = None,
    ref_repeats: int | None = None,
) -> tuple[float, float | None]:
    """Median wall time of ``fn`` (and of ``ref``), one warm-up each, repetitions interleaved so that
    the load of a shared machine hits both alike."""
    _once(fn)
    if ref is not None:
        _once(ref)
    ts, rs = [], []
    n_ref = repeats if ref_repeats is None else ref_repeats
    for i in range(max(repeats, n_ref if ref is not None else 0)):
        if i < repeats:
            ts.append(_once(fn))
        if ref is not None and i < n_ref:
            rs.append(_once(ref))
    return statistics.median(ts), (statistics.median(rs) if rs else None)


def _read_status(key: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


# ------------------------------------------------------------------------------------------- references
def pearson_loop(pred, prior, mask):
    losses = []
    for b in range(pred.shape[0]):
        x, y = pred[b][mask[b]], prior[b][mask[b]]
        xc, yc = x - x.mean(), y - y.mean()
        losses.append(1 - (xc * yc).sum() / torch.sqrt((xc * xc).sum() * (yc * yc).sum()))
    return torch.stack(losses).mean()


def pearson_patch_loop(pred, prior, corners, p):
    per_img = []
    for b in range(pred.shape[0]):
        vals = []
        for y0, x0 in corners[b].tolist():
            x = pred[b, y0 : y0 + p, x0 : x0 + p].flatten()
            y = prior[b, y0 : y0 + p, x0 : x0 + p].flatten()
            xc, yc = x - x.mean(), y - y.mean()
            vals.append(1 - (xc * yc).sum() / torch.sqrt((xc * xc).sum() * (yc * yc).sum()))
        per_img.append(torch.stack(vals).mean())
    return torch.stack(per_img).mean()


def consistency_seed(d_pred, d_tgt, mask, beta=0.1):
    m = mask.clamp(0, 1)
    mb = (m > 0.5).float()
    valid = (torch.isfinite(d_pred) & torch.isfinite(d_tgt)).float()
    dil = F.max_pool2d(mb, 3, 1, 1)
    ero = 1 - F.max_pool2d(1 - mb, 3, 1, 1)

    def wsl1(a, b, w):
        return (F.smooth_l1_loss(a, b, reduction="none", beta=beta) * w).sum() / w.sum().clamp_min(1e-8)

    def grads(d):
        return F.pad(d[..., :, 1:] - d[..., :, :-1], (0, 1, 0, 0)), F.pad(d[..., 1:, :] - d[..., :-1, :], (0, 0, 0, 1))

    band = (dil - ero).clamp(0, 1) * valid
    (pxd, pyd), (pxt, pyt) = grads(d_pred), grads(d_tgt)
    return (
        wsl1(d_pred, d_tgt, m * valid)
        + 0.5 * wsl1(d_pred, d_tgt, (1 - dil) * valid)
        + 0.5 * 0.5 * (wsl1(pxd, pxt, band) + wsl1(pyd, pyt, band))
    )


def g2_seed(d, g, m):
    def wl1(a, b):
        n = m.sum((1, 2, 3))
        n = torch.where(n == 0, torch.full_like(n, 1e-6), n)
        return ((a - b).abs() * m).sum((1, 2, 3)).div(n).mean()

    def std(x):
        n = m.sum((1, 2, 3), keepdim=True)
        n = torch.where(n == 0, torch.full_like(n, 1e-6), n)
        mu = (x * m).sum((1, 2, 3), keepdim=True) / n
        return (x - mu) / (((x - mu) * m).abs().sum((1, 2, 3), keepdim=True) / n + 1e-6)

    kx = torch.tensor([[-1.0, 0, 1], [-2, 0, 2], [-1, 0, 1]]).view(1, 1, 3, 3)
    sd, sg = std(d), std(g)
    lg = 0.0
    for s in (1, 2, 4, 8):
        ds, gs, ms = (
            (sd, sg, m)
            if s == 1
            else (F.avg_pool2d(sd, s, s), F.avg_pool2d(sg, s, s), (F.avg_pool2d(m, s, s) > 0.5).float())
        )
        num = sum(
            ((F.conv2d(ds, k, padding=1) - F.conv2d(gs, k, padding=1)).abs() * ms).sum()
            for k in (kx, kx.transpose(-1, -2))
        )
        lg = lg + num / (ms.sum() + 1e-6)
    return wl1(d, g) + wl1(sd, sg) + 0.5 * lg / 4


def scale_adaptive_seed(pi, gi, m):
    x, y = 1 / pi.clamp(min=1e-6), 1 / gi.clamp(min=1e-6)

    def norm(z):
        mu = z.mean((2, 3), keepdim=True)
        return (z - mu) / ((z - mu).abs().mean((2, 3), keepdim=True) + 1e-8)

    xn, yn = norm(x), norm(y)
    rel = (xn - yn).abs().mean()
    ab = ((x * m - y * m).abs() * m).sum() / (m.sum((1, 2, 3)).clamp(min=1).sum() + 1e-8)
    kx = torch.tensor([[-1.0, 0, 1], [-2, 0, 2], [-1, 0, 1]]).view(1, 1, 3, 3)
    r = xn - yn
    sg = 0.0
    for k in range(1, 5):
        rk = r if k == 1 else F.interpolate(r, scale_factor=1 / 2 ** (k - 1), mode="bilinear", align_corners=False)
        rp = F.pad(rk, (1, 1, 1, 1), mode="replicate")
        sg = sg + (F.conv2d(rp, kx).abs() + F.conv2d(rp, kx.transpose(-1, -2)).abs()).mean()
    return rel + ab + 0.5 * sg / 4


def depth_scale_loop(mask01, depth, f, k):
    per = []
    for b in range(mask01.shape[0]):
        s_pred = mask01[b].sum().sqrt()
        d = depth[b][mask01[b].detach() > 0.5].median()
        per.append(torch.log((s_pred + 1e-6) / (k * f * d + 1e-6)) ** 2)
    return torch.stack(per).mean()


def trimmed_l1_som(pred, gt, mask, q):
    loss = F.l1_loss(pred, gt, reduction="none").mean(-1, keepdim=True)
    keep = (loss < torch.quantile(loss, q)).squeeze(-1)
    return (loss * mask)[keep].sum() / (mask[keep].sum() + 1e-8)


def disp_grad_som(pred, prior, mask, q):
    mx = mask[:, :, 1:] & mask[:, :, :-1]
    my = mask[:, 1:, :] & mask[:, :-1, :]
    gxp, gyp = pred[:, :, 1:] - pred[:, :, :-1], pred[:, 1:, :] - pred[:, :-1, :]
    gxt, gyt = prior[:, :, 1:] - prior[:, :, :-1], prior[:, 1:, :] - prior[:, :-1, :]
    out = 0.0
    for a, b, m in ((gxp, gxt, mx), (gyp, gyt, my)):
        e = (a[m] - b[m]).abs()
        out = out + e[e < torch.quantile(e, q)].mean()
    return out


def modgs_pair_loop(pa, pb, qa, qb, alpha, min_gap):
    total, n = 0.0, 0
    for i in range(pa.shape[0]):
        d = float(qa[i] - qb[i])
        if abs(d) < min_gap or d == 0:
            continue
        R = 1.0 if d > 0 else -1.0
        total = total + (torch.tanh(alpha * (pa[i] - pb[i])) - R).abs()
        n += 1
    return total / n


def hinge_pair_loop(pa, pb, s, margin, med):
    total, n = 0.0, 0
    for i in range(pa.shape[0]):
        si = int(s[i])
        if si == 0:
            continue
        total = total + torch.relu(margin - si * (pa[i] - pb[i]) / med)
        n += 1
    return total / n


# ------------------------------------------------------------------------------------------- main
@dataclass
class LossBenchArgs:
    """Options of the loss benchmark (see the module docstring)."""

    repeats: int = 5
    """Timed repetitions per row (the median is reported)."""
    threads: Optional[int] = None
    """torch CPU threads (None: torch's choice)."""
    loop_pairs: int = 2000
    """Pairs timed by the per-pair loop reference (then extrapolated)."""


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark (``argv`` defaults to ``sys.argv[1:]``) and print its table."""
    args = tyro.cli(LossBenchArgs, args=argv, description=__doc__)
    if args.threads:
        torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(0)
    rnd = lambda *s: torch.rand(*s, generator=gen)  # noqa: E731

    depth_gt = 1.0 + 4.0 * rnd(B, 1, H, W)
    depth_pred = (depth_gt + 0.3 * torch.randn(B, 1, H, W, generator=gen)).clamp_min(0.1)
    mask = rnd(B, 1, H, W) > 0.2
    fg = torch.zeros(B, 1, H, W)
    fg[:, :, 60:200, 100:330] = 1.0

    def leaf(x):
        return x.clone().requires_grad_(True)

    rows: list[tuple[str, str, float, float | None, str]] = []

    def row(name, size, ours, ref=None, ref_name=""):
        t_ours, t_ref = _time(ours, args.repeats, ref)
        rows.append((name, size, t_ours, t_ref, ref_name))
        ratio = f"{t_ref / t_ours:7.1f}x" if t_ref else "      -"
        ref_s = f"{t_ref * 1e3:10.1f}" if t_ref else "         -"
        print(f"{name:30s} {size:18s} {t_ours * 1e3:10.1f} {ref_s} {ratio}  {ref_name}", flush=True)

    dense = f"{B}x{W}x{H}"
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, float32, fwd+bwd, median of {args.repeats}")
    print(f"{'loss':30s} {'size':18s} {'ours [ms]':>10s} {'ref [ms]':>10s} {'ref/ours':>8s}  reference")

    p3, q3, m3 = depth_pred[:, 0], depth_gt[:, 0], mask[:, 0]
    row(
        "pearson (global)",
        dense,
        lambda: pearson_depth_loss(leaf(p3), q3, m3),
        lambda: pearson_loop(leaf(p3), q3, m3),
        "loop/img",
    )
    corners = torch.stack(
        [torch.randint(0, H - 31, (B, 64), generator=gen), torch.randint(0, W - 31, (B, 64), generator=gen)], -1
    )
    row(
        "pearson (64 patches 32px)",
        dense,
        lambda: pearson_depth_loss(
            leaf(p3), q3, patch_size=32, num_patches=64, generator=torch.Generator().manual_seed(1)
        ),
        lambda: pearson_patch_loop(leaf(p3), q3, corners, 32),
        "loop/patch",
    )
    row(
        "depth_consistency",
        dense,
        lambda: depth_consistency_loss(leaf(depth_pred), depth_gt, fg).total,
        lambda: consistency_seed(leaf(depth_pred), depth_gt, fg),
        "plain code",
    )
    row(
        "depth_consistency scale_shift",
        dense,
        lambda: depth_consistency_loss(leaf(depth_pred), depth_gt, fg, align="scale_shift").total,
    )
    mf = mask.float()
    row(
        "g2_monodepth",
        dense,
        lambda: g2_monodepth_loss(leaf(depth_pred), depth_gt, mf)[0],
        lambda: g2_seed(leaf(depth_pred), depth_gt, mf),
        "plain code",
    )
    row(
        "scale_adaptive",
        dense,
        lambda: scale_adaptive_loss(leaf(1 / depth_pred), 1 / depth_gt, mf)[0],
        lambda: scale_adaptive_seed(leaf(1 / depth_pred), 1 / depth_gt, mf),
        "plain code",
    )
    soft = (0.9 * fg + 0.05).clamp(0, 1)
    row(
        "depth_aware_scale",
        dense,
        lambda: depth_aware_scale_loss(leaf(soft), 1 / depth_gt, 500.0, 0.01)[0],
        lambda: depth_scale_loop(leaf(soft), 1 / depth_gt, 500.0, 0.01),
        "loop/img",
    )
    p4, g4 = depth_pred.permute(0, 2, 3, 1), depth_gt.permute(0, 2, 3, 1)
    row(
        "masked_l1 q=0.98",
        dense,
        lambda: masked_l1_loss(leaf(p4), g4, mf.permute(0, 2, 3, 1), quantile=0.98),
        lambda: trimmed_l1_som(leaf(p4), g4, mf.permute(0, 2, 3, 1), 0.98),
        "SoM code",
    )
    row(
        "disparity_gradient q=0.98",
        dense,
        lambda: disparity_gradient_loss(leaf(1 / p3), 1 / q3, m3),
        lambda: disp_grad_som(leaf(1 / p3), 1 / q3, m3, 0.98),
        "SoM code",
    )

    def pairs(n):
        da, db = 1.0 + 4.0 * rnd(n), 1.0 + 4.0 * rnd(n)
        return da + 0.3 * torch.randn(n, generator=gen), db + 0.3 * torch.randn(n, generator=gen), 1 / da, 1 / db

    pa, pb, qa, qb = pairs(N_PAIRS)
    s = depth_order_sign(qa, qb, "disparity", min_rel_diff=0.05)
    n_loop = args.loop_pairs
    factor = N_PAIRS / n_loop
    gap = 0.1 * float(torch.cat([qa[:n_loop], qb[:n_loop]]).max() - torch.cat([qa[:n_loop], qb[:n_loop]]).min())
    med = float(torch.cat([pa, pb]).median())

    t_modgs, t_modgs_loop = _time(
        lambda: modgs_ordinal_loss(leaf(pa), leaf(pb), qa, qb, prior_kind="disparity"),
        args.repeats,
        lambda: modgs_pair_loop(leaf(pa[:n_loop]), pb[:n_loop], -qa[:n_loop], -qb[:n_loop], 100.0, gap),
        1,
    )
    t_hinge, t_hinge_loop = _time(
        lambda: hinge_ordinal_loss(leaf(pa), leaf(pb), s),
        args.repeats,
        lambda: hinge_pair_loop(leaf(pa[:n_loop]), pb[:n_loop], s[:n_loop], 0.01, med),
        1,
    )
    t_modgs_loop *= factor
    t_hinge_loop *= factor
    for name, t, tr in (("modgs_ordinal", t_modgs, t_modgs_loop), ("hinge_ordinal (median)", t_hinge, t_hinge_loop)):
        rows.append((name, f"{N_PAIRS:,} pairs", t, tr, f"loop/pair x{factor:.0f}"))
        print(
            f"{name:30s} {f'{N_PAIRS:,} pairs':18s} {t * 1e3:10.1f} {tr * 1e3:10.1f} {tr / t:7.1f}x  "
            f"loop/pair x{factor:.0f} (timed on {n_loop} pairs, extrapolated)",
            flush=True,
        )

    print("\nordinal peak memory (peak RSS increase of one fwd+bwd, each in a fresh process):")
    for n in (N_PAIRS // 4, N_PAIRS):
        res = {k: _child_peak(k, n) for k in ("modgs", "hinge")}
        if any(v is None for v in res.values()):
            print("  (not measurable here: no /proc/self/status)")
            break
        print(
            f"  {n:>9,} pairs: " + ", ".join(f"{k} {v:6.1f} MiB ({v * 2**20 / n:5.1f} B/pair)" for k, v in res.items())
        )


def _child_peak(kind: str, n: int) -> float | None:
    code = f"from flow3d.benchmarks.losses import _mem_child; _mem_child({kind!r}, {int(n)})"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    return None if out == "None" else float(out)


def _mem_child(kind: str, n: int) -> None:
    """Runs in a fresh process: prints the peak RSS increase (MiB) of one fwd+bwd of ``kind`` at n pairs."""
    gen = torch.Generator().manual_seed(0)
    da, db = 1.0 + 4.0 * torch.rand(n, generator=gen), 1.0 + 4.0 * torch.rand(n, generator=gen)
    pa, pb = (da + 0.1).requires_grad_(True), (db - 0.1).requires_grad_(True)
    s = depth_order_sign(da, db, "depth")
    # warm up the allocator / kernels on a tiny problem first, then measure the big one
    modgs_ordinal_loss(pa[:10], pb[:10], da[:10], db[:10], prior_kind="depth").backward()
    hinge_ordinal_loss(pa[:10], pb[:10], s[:10]).backward()
    pa.grad = pb.grad = None
    base = _read_status("VmRSS")
    if kind == "modgs":
        loss = modgs_ordinal_loss(pa, pb, da, db, prior_kind="depth")
    else:
        loss = hinge_ordinal_loss(pa, pb, s)
    loss.backward()
    peak = _read_status("VmHWM")
    print(None if base is None or peak is None else (peak - base) / 2**20)


if __name__ == "__main__":
    main()
