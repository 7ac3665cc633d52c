"""Device check: ``python -m flow3d.benchmarks.gpu_check [--quick] [--work-dir DIR]``.

On a CUDA machine (under 10 minutes on one GPU):

1. the tests of the GPU path: the GPU-marked tests (``pytest -m gpu``: real gsplat kernels against the
   CPU backend) and the tests that run gsplat's Python with CPU stand-ins for its CUDA ops;
2. the README demo (``--preset cpu_demo data:synthetic``) trained on CUDA (gsplat backend) and on the CPU
   (compiled backend) from the same seed: held-out PSNR must agree within ``--psnr-tol`` (0.3 dB);
3. the ``endonerf`` preset on the 640x512 synthetic tissue scene for ``--tissue-steps`` (300) steps:
   seconds per step and peak GPU memory (reported; the run must finish with a finite PSNR).

Without CUDA it runs what it can -- the stand-in tests and the CPU demo -- and lists what it skipped.
``--quick`` (CI) trains the demo for ``--quick-steps`` (60) steps and runs the stand-in tests without the
slow one. Exit code 0 when every check that ran passed, 1 otherwise.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch: see run_training.py

import math  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[2]
STAND_IN_TESTS = ["tests/render/test_render_gsplat_cpu.py", "tests/train/test_train_gsplat_cpu.py"]
DEMO = ["--preset", "cpu_demo", "--save-every", "0", "--image-every", "0"]
TISSUE = [
    "--preset",
    "endonerf",
    "--save-every",
    "0",
    "--image-every",
    "0",
    "data:synthetic",
    "--data.scene",
    "tissue",
    "--data.width",
    "640",
    "--data.height",
    "512",
]


@dataclass
class Check:
    name: str
    status: str  # "pass", "FAIL" or "skipped"
    detail: str


def _pytest(args: list[str]) -> tuple[bool, str]:
    if not (REPO_ROOT / "tests").is_dir():
        return False, f"no tests/ folder beside the package ({REPO_ROOT}): run from a source checkout"
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    tail = [ln for ln in proc.stdout.strip().splitlines() if ln.strip()][-1:] or ["(no output)"]
    # exit code 5: nothing collected (e.g. no GPU-marked test selected)
    return proc.returncode in (0, 5), tail[0]


def _train(argv: list[str]) -> dict:
    """One training run in this process (so that the peak GPU memory can be read); returns its stats."""
    from flow3d.train.command import main as train_main

    t0 = time.perf_counter()
    stats = train_main(argv)
    stats["wall_total"] = time.perf_counter() - t0
    return stats


def _finite(x) -> bool:
    return x is not None and math.isfinite(float(x))


def _db(x) -> str:
    return f"{float(x):.2f} dB" if _finite(x) else "n/a"


def run_checks(args) -> list[Check]:
    cuda = torch.cuda.is_available()
    checks: list[Check] = []
    work = Path(args.work_dir)

    # 1. tests
    selection = [*STAND_IN_TESTS] + (["-m", "not slow"] if args.quick else [])
    ok, tail = _pytest(selection)
    checks.append(Check("gsplat Python on CPU stand-ins (tests)", "pass" if ok else "FAIL", tail))
    if cuda:
        ok, tail = _pytest(["-m", "gpu", "tests"])
        checks.append(Check("GPU-marked tests (real gsplat kernels)", "pass" if ok else "FAIL", tail))
    else:
        checks.append(Check("GPU-marked tests (real gsplat kernels)", "skipped", "no CUDA device"))

    # 2. the README demo on the CPU and on CUDA
    steps = args.quick_steps if args.quick else args.demo_steps
    common = [*DEMO, "--max-steps", str(steps), "--seed", str(args.seed)]
    cpu = _train(
        ["--work-dir", str(work / "demo_cpu"), *common, "--device", "cpu", "--render-backend", "auto", "data:synthetic"]
    )
    ok = _finite(cpu["val_psnr"])
    checks.append(
        Check(
            "demo on the CPU",
            "pass" if ok else "FAIL",
            f"{steps} steps, held-out PSNR {_db(cpu['val_psnr'])}, {cpu['wall_total']:.0f} s",
        )
    )
    if cuda:
        gpu = _train(
            [
                "--work-dir",
                str(work / "demo_cuda"),
                *common,
                "--device",
                "cuda",
                "--render-backend",
                "gsplat",
                "data:synthetic",
            ]
        )
        diff = float(gpu["val_psnr"]) - float(cpu["val_psnr"]) if _finite(gpu["val_psnr"]) else float("nan")
        ok = abs(diff) <= args.psnr_tol
        checks.append(
            Check(
                "demo CUDA vs CPU held-out PSNR",
                "pass" if ok else "FAIL",
                f"CUDA {_db(gpu['val_psnr'])} vs CPU {_db(cpu['val_psnr'])}: {diff:+.2f} dB "
                f"(tolerance {args.psnr_tol} dB); CUDA {gpu['wall_total']:.0f} s",
            )
        )
    else:
        checks.append(Check("demo CUDA vs CPU held-out PSNR", "skipped", "no CUDA device"))

    # 3. endonerf preset on the 640x512 tissue scene
    if cuda:
        torch.cuda.reset_peak_memory_stats()
        st = _train(["--work-dir", str(work / "tissue"), "--max-steps", str(args.tissue_steps), *TISSUE])
        peak = torch.cuda.max_memory_allocated() / 2**30
        sps = sum(st["seconds_per_step"].values())
        ok = _finite(st["val_psnr"]) or _finite(st["train_psnr"])
        checks.append(
            Check(
                "endonerf preset, 640x512 tissue",
                "pass" if ok else "FAIL",
                f"{args.tissue_steps} steps, {sps:.3f} s/step, peak GPU memory {peak:.2f} GiB, "
                f"{st['num_fg'] + st['num_bg']} Gaussians, train PSNR {_db(st['train_psnr'])}",
            )
        )
    else:
        checks.append(Check("endonerf preset, 640x512 tissue", "skipped", "no CUDA device"))
    return checks


@dataclass
class Args:
    """Options of the device check."""

    work_dir: str | None = None
    """Where the runs go (default: a temporary folder, removed)."""
    quick: bool = False
    """CI: a short demo and the fast stand-in tests only."""
    demo_steps: int = 600
    """Demo steps (the README demo: 600)."""
    quick_steps: int = 60
    """Demo steps with --quick."""
    tissue_steps: int = 300
    """endonerf steps on the 640x512 tissue scene."""
    psnr_tol: float = 0.3
    """Allowed CUDA - CPU held-out PSNR difference (dB)."""
    seed: int = 0
    """Seed of the training runs."""


def main(argv: list[str] | None = None) -> int:
    """The command; returns its exit code (1 when a check that ran failed)."""
    import tyro

    args = tyro.cli(Args, args=argv, description=__doc__, prog="python -m flow3d.benchmarks.gpu_check")
    tmp = None
    if args.work_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="flow3d_gpu_check_")
        args.work_dir = tmp.name
    try:
        t0 = time.perf_counter()
        checks = run_checks(args)
    finally:
        if tmp is not None:
            tmp.cleanup()
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none (CPU half only)"
    print(f"\ngpu_check: CUDA device {device}; {time.perf_counter() - t0:.0f} s")
    for c in checks:
        print(f"  {c.status:8s} {c.name}: {c.detail}")
    skipped = [c.name for c in checks if c.status == "skipped"]
    if skipped:
        print(f"skipped (need CUDA): {'; '.join(skipped)}")
    failed = [c for c in checks if c.status == "FAIL"]
    print("gpu_check: FAILED" if failed else "gpu_check: all checks that ran passed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
