"""Speed of the flow machinery: ``python -m flow3d.benchmarks.flow [--width 854 --height 480]``.

Prints three tables, each with a reference measured in the same run:
1. flow + fb check per frame pair (forward flow, backward flow, fb mask) at 854x480 for every backend
   available here (RAFT with random weights, only when torchvision imports), against DIS medium;
2. the vectorised fb check against a naive per-pixel Python loop on a small crop (per-pixel cost);
3. the pixel-pair sampler against a naive Python-loop sampler.
Inputs are synthetic (a smooth random texture shifted by a sub-pixel amount), so no data is needed.
"""

from __future__ import annotations

import os

if __name__ == "__main__":
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the preprocess command does (see there)

import random
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
import tyro

from flow3d.flow import estimate_flow, fb_consistency_mask, sample_pixel_pairs


def _texture_pair(height: int, width: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    small = rng.uniform(0, 255, (height // 4 + 4, width // 4 + 4, 3)).astype(np.float32)
    big = cv2.GaussianBlur(cv2.resize(small, (width + 16, height + 16), interpolation=cv2.INTER_CUBIC), (0, 0), 1.0)
    shift = np.float32([[1, 0, 2.3], [0, 1, -1.1]])
    moved = cv2.warpAffine(big, shift, (width + 16, height + 16), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    crop = (slice(8, 8 + height), slice(8, 8 + width))
    return (np.clip(big[crop], 0, 255).astype(np.uint8), np.clip(moved[crop], 0, 255).astype(np.uint8))


def _time(fn, repeats: int) -> float:
    fn()  # warm-up
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - t0) / repeats


def _naive_fb(fw: np.ndarray, bw: np.ndarray, alpha=0.01, beta=0.5) -> np.ndarray:
    """Per-pixel loop of the squared fb rule (bilinear sample written out)."""
    H, W = fw.shape[:2]
    out = np.zeros((H, W), bool)
    for i in range(H):
        for j in range(W):
            fx, fy = float(fw[i, j, 0]), float(fw[i, j, 1])
            x, y = j + fx, i + fy
            if not (0 <= x <= W - 1 and 0 <= y <= H - 1):
                continue
            x0, y0 = min(int(x), W - 2), min(int(y), H - 2)
            ax, ay = x - x0, y - y0
            b = (
                (1 - ax) * (1 - ay) * bw[y0, x0]
                + ax * (1 - ay) * bw[y0, x0 + 1]
                + (1 - ax) * ay * bw[y0 + 1, x0]
                + ax * ay * bw[y0 + 1, x0 + 1]
            )
            sx, sy = fx + b[0], fy + b[1]
            out[i, j] = sx * sx + sy * sy < alpha * (fx * fx + fy * fy + b[0] * b[0] + b[1] * b[1]) + beta
    return out


def _naive_pairs(valid: np.ndarray, num_pairs: int, seed: int = 0) -> list:
    rnd = random.Random(seed)
    ys, xs = np.nonzero(valid)
    pts = list(zip(xs.tolist(), ys.tolist()))
    out = []
    while len(out) < num_pairs:
        a, b = rnd.choice(pts), rnd.choice(pts)
        if a != b:
            out.append((a, b))
    return out


def _backends(tmp: Path) -> list[tuple[str, str, dict]]:
    rows = [
        ("dis", "DIS ultrafast", {"preset": "ultrafast"}),
        ("dis", "DIS fast", {"preset": "fast"}),
        ("dis", "DIS medium (default)", {"preset": "medium"}),
        ("farneback", "Farneback", {}),
    ]
    try:
        from torchvision.models import optical_flow
    except Exception as err:  # noqa: BLE001 -- any import failure means "not available here"
        rows.append(("raft", f"RAFT: unavailable ({type(err).__name__}: torchvision)", {}))
        return rows
    for name in ("raft_small", "raft_large"):
        path = tmp / f"{name}.pth"
        torch.save(getattr(optical_flow, name)(weights=None, progress=False).state_dict(), path)
        rows.append(("raft", f"{name} (12 updates, random weights)", {"weights": path, "model": name}))
    return rows


@dataclass
class FlowBenchArgs:
    """Options of the flow benchmark (see the module docstring)."""

    width: int = 854
    """Width of the synthetic frames."""
    height: int = 480
    """Height of the synthetic frames."""
    repeats: int = 5
    """Timed repetitions of each measurement (after one warm-up call; their mean is reported)."""
    crop: int = 64
    """Side of the crop for the naive fb loop."""
    pairs: int = 20000
    """Pixel pairs per sampler call."""


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark (``argv`` defaults to ``sys.argv[1:]``) and print its three tables."""
    args = tyro.cli(FlowBenchArgs, args=argv, description=__doc__)
    img0, img1 = _texture_pair(args.height, args.width)
    print(
        f"torch {torch.__version__}, threads {torch.get_num_threads()}, "
        f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '(unset)')}, OpenCV {cv2.__version__}; "
        f"{args.width}x{args.height}, {args.repeats} repeats"
    )

    print("\n1. flow + fb check per frame pair (forward + backward flow + fb mask)")
    print(f"{'backend':44s} {'ms/pair':>9s} {'pairs/s':>8s} {'vs DIS medium':>14s}")
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for backend, label, opts in _backends(Path(tmp)):
            if backend == "raft" and not opts:
                results.append((label, None))
                continue

            def run():
                fw = estimate_flow(img0, img1, backend, **opts)
                bw = estimate_flow(img1, img0, backend, **opts)
                return fb_consistency_mask(fw, bw)

            repeats = 1 if backend == "raft" else args.repeats
            results.append((label, _time(run, repeats)))
    ref = dict(results)["DIS medium (default)"]
    for label, sec in results:
        if sec is None:
            print(f"{label:44s} {'-':>9s} {'-':>8s} {'-':>14s}")
        else:
            print(f"{label:44s} {sec * 1e3:9.1f} {1 / sec:8.2f} {ref / sec:13.2f}x")

    print(f"\n2. fb check: vectorised vs naive Python loop (squared rule; naive on a {args.crop}x{args.crop} crop)")
    fw = estimate_flow(img0, img1, preset="fast")
    bw = estimate_flow(img1, img0, preset="fast")
    c = args.crop
    fwc, bwc = np.ascontiguousarray(fw[:c, :c]), np.ascontiguousarray(bw[:c, :c])
    assert (fb_consistency_mask(fwc, bwc) == _naive_fb(fwc, bwc)).mean() > 0.999  # same answer
    t_naive = _time(lambda: _naive_fb(fwc, bwc), 1) / (c * c)
    t_vec_crop = _time(lambda: fb_consistency_mask(fwc, bwc), args.repeats) / (c * c)
    t_vec_full = _time(lambda: fb_consistency_mask(fw, bw), args.repeats)
    n_full = args.width * args.height
    print(f"{'implementation':44s} {'ns/pixel':>9s} {'speed-up':>9s}")
    print(f"{'naive Python loop (crop)':44s} {t_naive * 1e9:9.0f} {1.0:8.1f}x")
    print(f"{'vectorised torch (crop)':44s} {t_vec_crop * 1e9:9.0f} {t_naive / t_vec_crop:8.1f}x")
    print(
        f"{f'vectorised torch (full {args.width}x{args.height})':44s} {t_vec_full / n_full * 1e9:9.1f} "
        f"{t_naive / (t_vec_full / n_full):8.0f}x   ({t_vec_full * 1e3:.1f} ms per mask)"
    )

    print(f"\n3. pixel-pair sampler ({args.pairs} pairs per call, fb mask of the pair above as valid set)")
    valid = torch.from_numpy(fb_consistency_mask(fw, bw))
    prior = torch.rand(args.height, args.width) + 0.1
    gen = torch.Generator().manual_seed(0)
    valid_np = valid.numpy()
    t_naive = _time(lambda: _naive_pairs(valid_np, args.pairs), 1)
    rows = [("naive Python loop (global)", t_naive)]
    for strategy in ("global", "local"):
        rows.append(
            (
                f"sample_pixel_pairs {strategy}",
                _time(
                    lambda s=strategy: sample_pixel_pairs(valid, args.pairs, strategy=s, generator=gen), args.repeats
                ),
            )
        )
    rows.append(
        (
            "sample_pixel_pairs global + prior + flow",
            _time(
                lambda: sample_pixel_pairs(
                    valid, args.pairs, prior=prior, min_rel_diff=0.05, flow=torch.from_numpy(fw), generator=gen
                ),
                args.repeats,
            ),
        )
    )
    print(f"{'sampler':44s} {'ms/call':>9s} {'Mpairs/s':>9s} {'speed-up':>9s}")
    for label, sec in rows:
        print(f"{label:44s} {sec * 1e3:9.2f} {args.pairs / sec / 1e6:9.2f} {t_naive / sec:8.1f}x")


if __name__ == "__main__":
    main()
