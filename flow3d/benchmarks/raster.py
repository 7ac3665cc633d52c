"""Benchmark of the CPU rasterizers: ``python -m flow3d.benchmarks.raster [--threads 2] [--quick] [--profile]``.

Prints, for realistic random scenes (Gaussians of a few pixels' radius spread over the image, depths
2-10 scene units, opacities 0.1-0.9), forward and forward+backward wall time of the whole
``rasterization`` call (projection, tile lists, compositing), the peak resident-memory increase and
(Gaussian, pixel) pairs per second, where pairs = tile-list entries x 256 pixels (every pair the PyTorch
tile rasterizer evaluates; the compiled one skips the pixels outside each Gaussian's ellipse), for the
compiled backend ("cpu") and the PyTorch backend ("torch") in the same run, with the speed-up of "cpu"
over "torch". A naive dense reference (every pixel against every depth-sorted Gaussian, one Gaussian at
a time, plain autograd) renders a small scene, and the last lines give both backends' speed-up over it.

Peak memory: Linux ``/proc/self/status`` VmHWM after resetting it through ``/proc/self/clear_refs``
(so each row has its own peak), minus the resident size before the row, with glibc told to return
every buffer over 64 kB to the system when freed (``mallopt``) so that RSS follows live tensors; when
the reset is not permitted it falls back to ``resource.getrusage`` maxrss deltas (which only show new
process-wide peaks) and says so. Times are the best of ``--repeats`` runs (the machine may be shared).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch, as run_training.py: no spinning threads

import dataclasses  # noqa: E402
import math  # noqa: E402
import time  # noqa: E402

import torch  # noqa: E402

from flow3d.cli import run_main  # noqa: E402
from flow3d.render import compiled, rasterization  # noqa: E402
from flow3d.render.projection import project_gaussians, quat_scale_to_covar  # noqa: E402


def make_benchmark_scene(n: int, width: int, height: int, n_channels: int, seed: int = 0, dtype=torch.float32) -> dict:
    """Random scene: projected sigma 0.7-4 px (log-uniform, anisotropic), depth 2-10, 10% margin."""
    gen = torch.Generator().manual_seed(seed)
    rnd = lambda *s: torch.rand(*s, generator=gen, dtype=dtype)  # noqa: E731
    f = 0.9 * width
    K = torch.tensor([[f, 0.0, width / 2], [0.0, f, height / 2], [0.0, 0.0, 1.0]], dtype=dtype)
    u = (-0.1 + 1.2 * rnd(n)) * width
    v = (-0.1 + 1.2 * rnd(n)) * height
    z = 2.0 + 8.0 * rnd(n)
    means = torch.stack([(u - width / 2) * z / f, (v - height / 2) * z / f, z], dim=-1)
    sigma_px = torch.exp(math.log(0.7) + (math.log(4.0) - math.log(0.7)) * rnd(n))
    aniso = torch.exp(0.7 * (rnd(n, 3) - 0.5))
    scales = (sigma_px * z / f)[:, None] * aniso
    return {
        "means": means.requires_grad_(True),
        "quats": torch.randn(n, 4, generator=gen, dtype=dtype).requires_grad_(True),
        "scales": scales.requires_grad_(True),
        "opacities": (0.1 + 0.8 * rnd(n)).requires_grad_(True),
        "colors": rnd(n, n_channels).requires_grad_(True),
        "viewmats": torch.eye(4, dtype=dtype)[None],
        "Ks": K[None],
        "width": width,
        "height": height,
    }


def naive_render(scene: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Dense reference: every pixel against every depth-sorted Gaussian (gsplat's rules), autograd."""
    W, H = scene["width"], scene["height"]
    covars = quat_scale_to_covar(scene["quats"], scene["scales"])
    p = project_gaussians(scene["means"], covars, scene["opacities"], scene["viewmats"], scene["Ks"], W, H)
    m2d, con, z, op = p["means2d"][0], p["conics"][0], p["depths"][0], p["opacities"][0]
    cols = scene["colors"]
    ys, xs = torch.meshgrid(
        torch.arange(H, dtype=m2d.dtype) + 0.5, torch.arange(W, dtype=m2d.dtype) + 0.5, indexing="ij"
    )
    px, py = xs.reshape(-1), ys.reshape(-1)
    T = torch.ones_like(px)
    done = torch.zeros_like(px, dtype=torch.bool)
    acc = torch.zeros(px.numel(), cols.shape[-1], dtype=m2d.dtype)
    zd = z.detach()
    for g in torch.argsort(zd).tolist():
        if not (0.01 <= float(zd[g]) <= 1e10):
            continue
        dx, dy = m2d[g, 0] - px, m2d[g, 1] - py
        sigma = 0.5 * (con[g, 0] * dx * dx + con[g, 2] * dy * dy) + con[g, 1] * dx * dy
        alpha = torch.clamp(op[g] * torch.exp(-sigma), max=0.999)
        skip = (sigma < 0) | (alpha < 1 / 255) | done
        nT = T * (1 - alpha)
        stop = ~skip & (nT <= 1e-4)
        use = ~skip & ~stop
        done = done | stop
        acc = acc + torch.where(use, alpha * T, torch.zeros_like(T))[:, None] * cols[g]
        T = torch.where(use, nT, T)
    return acc.reshape(1, H, W, -1), (1 - T).reshape(1, H, W, 1)


class PeakRSS:
    """Peak resident-memory increase (MB) of the block it wraps."""

    def __init__(self):
        self.reset_ok = True

    @staticmethod
    def _status(key: str) -> float:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(key):
                    return float(line.split()[1]) / 1024.0
        return float("nan")

    def __enter__(self):
        import resource

        try:
            with open("/proc/self/clear_refs", "w") as fh:
                fh.write("5")
        except OSError:
            self.reset_ok = False
        self.base = self._status("VmRSS:")
        self.base_ru = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
        return self

    def __exit__(self, *exc):
        import resource

        if self.reset_ok:
            self.peak_mb = self._status("VmHWM:") - self.base
        else:
            self.peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0 - self.base_ru
        return False


def _release_freed_memory() -> None:
    """glibc: serve allocations over 64 kB with mmap so that freeing them lowers RSS (Linux only)."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 64 * 1024)  # M_MMAP_THRESHOLD (also disables its dynamic growth)
        libc.mallopt(-1, 128 * 1024)  # M_TRIM_THRESHOLD
    except (OSError, AttributeError):
        pass


def time_fast(scene: dict, repeats: int, backend: str = "torch", **kw) -> dict:
    """Best-of-``repeats`` forward and forward+backward seconds of one backend, and pairs."""
    fwd, fb, fb_cpu = [], [], []
    with torch.no_grad():
        rasterization(**scene, backend=backend, **kw)  # warm-up
    for _ in range(repeats):
        t0 = time.perf_counter()
        with torch.no_grad():
            _, _, meta = rasterization(**scene, backend=backend, **kw)
        fwd.append(time.perf_counter() - t0)
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        rc, ra, _ = rasterization(**scene, backend=backend, **kw)
        (rc.sum() + ra.sum()).backward()
        fb.append(time.perf_counter() - t0)
        fb_cpu.append(time.process_time() - c0)
    pairs = meta["n_isects"] * meta["tile_size"] ** 2
    return {"fwd_s": min(fwd), "fb_s": min(fb), "fb_cpu_s": min(fb_cpu), "pairs": pairs}


def peak_memory(scene: dict, backend: str = "torch", **kw) -> tuple[float, float, str]:
    """Peak resident-memory increase (MB) of a forward and of a forward+backward."""
    with PeakRSS() as mem_f:
        with torch.no_grad():
            rasterization(**scene, backend=backend, **kw)
    with PeakRSS() as mem_fb:
        rc, ra, _ = rasterization(**scene, backend=backend, **kw)
        (rc.sum() + ra.sum()).backward()
    return mem_f.peak_mb, mem_fb.peak_mb, "" if mem_fb.reset_ok else " (maxrss delta)"


@dataclasses.dataclass
class Args:
    """Benchmark of the CPU rasterizers: the compiled one, the PyTorch one and a naive reference."""

    threads: int = 2
    """torch.set_num_threads."""
    repeats: int = 3
    """Timed runs per row (the best is kept)."""
    quick: bool = False
    """Only the 256x192 scenes."""
    profile: bool = False
    """Print torch.profiler's top ops for 480x270, D=3."""


def _main(argv: list[str]) -> None:
    import tyro

    args = tyro.cli(Args, args=argv, description=__doc__, prog="python -m flow3d.benchmarks.raster")
    if args.repeats < 1 or args.threads < 1:
        raise ValueError(f"--repeats and --threads must be at least 1, got {args.repeats} and {args.threads}")
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    have_compiled = compiled.load_extension()
    t_load = time.perf_counter() - t0
    backends = ("cpu", "torch") if have_compiled else ("torch",)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; pairs = tile-list entries x 256 pixels")
    if have_compiled:
        print(
            f"backends: cpu (compiled rasterizer, built or loaded in {t_load:.1f} s, cached in "
            f"{compiled.extension_dir()}) and torch (PyTorch)"
        )
    else:
        print(f"backend: torch (PyTorch) only: the compiled rasterizer is unavailable ({compiled.load_error()})")
    print("times: best-of-N wall seconds of rasterization() (projection + tile lists + compositing);")
    print("Mpair/cpu-s divides by process CPU time (all threads), robust to a shared machine\n")

    cases = [(256, 192, 10_000, 3), (256, 192, 10_000, 16)]
    if not args.quick:
        cases += [(480, 270, 50_000, 3), (480, 270, 50_000, 16)]
    timings = {
        (c, b): time_fast(make_benchmark_scene(c[2], c[0], c[1], c[3]), args.repeats, backend=b)
        for c in cases
        for b in backends
    }
    # naive dense reference on a size it can handle, same scene for all
    nW, nH, nn = 128, 96, 1500
    scene = make_benchmark_scene(nn, nW, nH, 3)
    t0 = time.perf_counter()
    rc, ra = naive_render(scene)
    (rc.sum() + ra.sum()).backward()
    t_naive = time.perf_counter() - t0
    naive_fast = {b: time_fast(scene, args.repeats, backend=b)["fb_s"] for b in backends}
    _release_freed_memory()  # after timing: it makes every large allocation an mmap (slow), but RSS exact
    hdr = (
        f"{'scene':>22} {'backend':>7} {'pairs(M)':>9} {'fwd s':>7} {'fwd+bwd s':>9} {'fwd Mpair/s':>11} {'f+b Mpair/s':>11} "
        f"{'f+b Mpair/cpu-s':>15} {'peak MB fwd':>11} {'peak MB f+b':>11} {'cpu/torch f+b':>13}"
    )
    print(hdr)
    for W, H, n, D in cases:
        for b in backends:
            r = timings[((W, H, n, D), b)]
            mem_f, mem_fb, note = peak_memory(make_benchmark_scene(n, W, H, D), backend=b)
            ratio = timings[((W, H, n, D), "torch")]["fb_s"] / r["fb_s"] if b == "cpu" else float("nan")
            print(
                f"{f'{W}x{H} N={n} D={D}':>22} {b:>7} {r['pairs'] / 1e6:9.1f} {r['fwd_s']:7.3f} {r['fb_s']:9.3f} "
                f"{r['pairs'] / r['fwd_s'] / 1e6:11.1f} {r['pairs'] / r['fb_s'] / 1e6:11.1f} {r['pairs'] / r['fb_cpu_s'] / 1e6:15.1f} "
                f"{mem_f:11.0f} {mem_fb:11.0f}{note} {'' if b != 'cpu' else f'x{ratio:.2f}':>13}"
            )
    print(
        f"\nnaive dense reference, {nW}x{nH} N={nn} D=3: fwd+bwd {t_naive:.3f} s; "
        + "; ".join(f"{b} {naive_fast[b]:.4f} s (x{t_naive / naive_fast[b]:.0f})" for b in backends)
        + "\n"
    )

    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        scene = make_benchmark_scene(50_000, 480, 270, 3)
        for b in backends:
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                rc, ra, _ = rasterization(**scene, backend=b)
                (rc.sum() + ra.sum()).backward()
            print(f"backend={b!r}")
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))


def main(argv: list[str] | None = None) -> None:
    """The command; failures leave with one ``error: ...`` line (:func:`flow3d.cli.run_main`)."""
    run_main(_main, argv)


if __name__ == "__main__":
    main()
