"""Seconds per training step: ``python -m flow3d.benchmarks.step [--steps 20] [--threads 2] [--profile] [--full]``.

1. The README demo configuration (``--preset cpu_demo data:synthetic``) with the compiled CPU rasterizer
   (``render_backend="cpu"``) and the PyTorch one (``"torch"``) in the same run: s/step split as the
   trainer times it (render = batch sampling + rendering; losses; backward + optimiser +
   densification), after ``--warmup`` steps; the process CPU time per step (all threads: with
   ``--threads 1`` the steadiest measure on a shared machine); and the speed-up.
2. The same configuration at ``--sizes`` (default 128x96, 320x256, 640x512) with the Gaussian count
   of the initial scene (no densification happens in the measured steps) and the track count of
   128x96 (the track grid spacing grows with the width), for both backends unless
   ``--skip-torch-sizes``, so that the cost can be read as a function of the pixel count.
3. ``--profile``: torch.profiler over a few demo steps with the compiled rasterizer, plus timers around
   the parts outside the rasterizer (batch sampling, motion-basis blending, each loss term, the
   per-parameter Adam steps, densification statistics).
4. ``--full``: trains the whole demo (all steps) with both backends and prints wall time and held-out
   PSNR (several minutes).
5. ``--neighbour-render``: compiled-backend demo steps with the hinge's neighbour frames rendered
   depth-only (the trainer's way) and with every channel (as before issue 23), in alternation.

The first line names the torch version and the backends that ran; without the compiled rasterizer
(no C++ compiler, or ``FLOW3D_DISABLE_COMPILED=1``) only the PyTorch backend runs, and the line says why.

Each trainer starts from the same seed; the synthetic scene and its flows are made once and shared.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch: see run_training.py

import dataclasses  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections import defaultdict  # noqa: E402
from contextlib import contextmanager  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

from flow3d.cli import run_main  # noqa: E402
from flow3d.config import TrainConfig, apply_overrides, load_preset  # noqa: E402
from flow3d.render import compiled  # noqa: E402

PARTS = ("render", "losses", "backward_optim")


def demo_config(work_dir: Path, backend: str, width: int | None = None, height: int | None = None) -> TrainConfig:
    """The README demo's config (``--preset cpu_demo data:synthetic``), with a backend and an image size."""
    cfg = apply_overrides(TrainConfig(), load_preset("cpu_demo"), where="preset cpu_demo")
    data = cfg.data
    if width is not None:
        # the same number of 2D tracks (hence Gaussians and track-term cost) as at 128x96
        grid = max(data.track_grid_step, round(data.track_grid_step * width / 128))
        data = dataclasses.replace(data, width=width, height=height, track_grid_step=grid)
    order = dataclasses.replace(cfg.losses.order, flow_cache_dir=str(work_dir / "flow_cache"))
    losses = dataclasses.replace(cfg.losses, order=order)
    return dataclasses.replace(cfg, work_dir=str(work_dir / backend), render_backend=backend, data=data, losses=losses)


def time_steps(cfg: TrainConfig, seq, steps: int, warmup: int):
    """(trainer, {part: s/step}) over ``steps`` steps after ``warmup`` steps."""
    from flow3d.train.trainer import Trainer

    trainer = Trainer(cfg, seq=seq)
    for _ in range(warmup):
        trainer.train_step()
    trainer.timing = {k: 0.0 for k in PARTS} | {"steps": 0}
    cpu0 = time.process_time()
    for _ in range(steps):
        trainer.train_step()
    cpu = time.process_time() - cpu0
    n = max(trainer.timing["steps"], 1)
    per = {k: trainer.timing[k] / n for k in PARTS}
    per["total"] = sum(per.values())
    per["cpu"] = cpu / n  # process CPU seconds per step, all threads: steadier than wall time on a shared machine
    return trainer, per


@contextmanager
def _full_neighbour_render():
    """Within the block, ``SceneModel.render(depth_only=True)`` renders every channel (colours, foreground,
    depth), as the hinge's neighbour render did before issue 23 (the trainer reads only the depth)."""
    from flow3d.scene.model import SceneModel

    render = SceneModel.render

    def full(self, *a, depth_only=False, **k):
        return render(self, *a, **k)

    SceneModel.render = full
    try:
        yield
    finally:
        SceneModel.render = render


def time_neighbour_render(cfg: TrainConfig, seq, steps: int, warmup: int) -> tuple[dict, dict]:
    """({part: s/step} with the depth-only neighbour render, the same with the full one): two trainers from
    the same seed, stepped alternately (one step each in turn) so that a shared machine's load falls on both."""
    from flow3d.train.trainer import Trainer

    trainers = {"depth_only": Trainer(cfg, seq=seq)}
    with _full_neighbour_render():
        trainers["full"] = Trainer(cfg, seq=seq)
    if "neighbor_render" not in trainers["full"].needs:
        raise ValueError("the demo configuration renders no neighbour frames (the hinge term is off)")
    cpu = dict.fromkeys(trainers, 0.0)

    def one_step(name):
        if name == "full":
            with _full_neighbour_render():
                trainers[name].train_step()
        else:
            trainers[name].train_step()

    for _ in range(warmup):
        for name in trainers:
            one_step(name)
    for t in trainers.values():
        t.timing = {k: 0.0 for k in PARTS} | {"steps": 0}
    for _ in range(steps):
        for name in trainers:
            c0 = time.process_time()
            one_step(name)
            cpu[name] += time.process_time() - c0
    res = {}
    for name, t in trainers.items():
        n = max(t.timing["steps"], 1)
        res[name] = {k: t.timing[k] / n for k in PARTS}
        res[name]["total"] = sum(res[name].values())
        res[name]["cpu"] = cpu[name] / n
    return res["depth_only"], res["full"]


def _row(label: str, per: dict, n_gauss: int, ref: dict | None = None) -> str:
    speed = f"x{ref['total'] / per['total']:.2f}" if ref else ""
    return (
        f"{label:>24} {n_gauss:>7} {per['render']:8.3f} {per['losses']:8.3f} {per['backward_optim']:10.3f} "
        f"{per['total']:8.3f} {per['cpu']:10.3f} {speed:>8}"
    )


HEADER = (
    f"{'':>24} {'N':>7} {'render':>8} {'losses':>8} {'bwd+opt':>10} {'s/step':>8} {'CPU-s/step':>10} {'speed-up':>8}"
)


@contextmanager
def _timers(trainer):
    """Wall-time accumulators around the parts of a step outside the rasterizer (forward parts only)."""
    import flow3d.scene.model as model_mod
    import flow3d.train.trainer as trainer_mod
    from flow3d.scene.strategy import DensifyStrategy

    acc: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])

    def wrap(label, fn):
        def inner(*a, **k):
            t0 = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                acc[label][0] += time.perf_counter() - t0
                acc[label][1] += 1

        return inner

    saved = [
        (trainer_mod, "sample_batch", trainer_mod.sample_batch),
        (model_mod, "rasterization", model_mod.rasterization),
        (model_mod.SceneModel, "fg_means_quats_at", model_mod.SceneModel.fg_means_quats_at),
        (torch.optim.Adam, "step", torch.optim.Adam.step),
        (DensifyStrategy, "step_post_backward", DensifyStrategy.step_post_backward),
    ]
    labels = [
        "sample_batch",
        "rasterization (forward, all calls)",
        "motion-basis blending (forward)",
        "Adam.step",
        "densification step_post_backward",
    ]
    for (obj, name, fn), label in zip(saved, labels):
        setattr(obj, name, wrap(label, fn))
    terms = trainer.terms
    trainer.terms = tuple(dataclasses.replace(t, fn=wrap(f"loss term {t.name}", t.fn)) for t in terms)
    try:
        yield acc
    finally:
        for obj, name, fn in saved:
            setattr(obj, name, fn)
        trainer.terms = terms


def profile_demo(cfg: TrainConfig, seq, steps: int) -> None:
    from torch.profiler import ProfilerActivity, profile

    from flow3d.train.trainer import Trainer

    trainer = Trainer(cfg, seq=seq)
    for _ in range(2):
        trainer.train_step()
    trainer.timing = {k: 0.0 for k in PARTS} | {"steps": 0}
    with _timers(trainer) as acc:
        t0 = time.perf_counter()
        for _ in range(steps):
            trainer.train_step()
        wall = (time.perf_counter() - t0) / steps
    print(f"\nwhere a compiled-backend demo step goes ({steps} steps, {wall:.3f} s/step wall; forward timers):")
    for label, (sec, calls) in sorted(acc.items(), key=lambda kv: -kv[1][0]):
        print(f"  {label:>45}: {sec / steps * 1e3:8.1f} ms/step ({calls / steps:.0f} calls/step)")
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            trainer.train_step()
    avg = prof.key_averages()
    print("\ntorch.profiler, top ops by self CPU time:")
    print(avg.table(sort_by="self_cpu_time_total", row_limit=25))
    bwd = [e for e in avg if e.key.startswith("autograd::engine::evaluate_function")]
    bwd.sort(key=lambda e: -e.cpu_time_total)
    print("backward by autograd node (total CPU ms per step):")
    for e in bwd[:20]:
        print(
            f"  {e.key.split(': ', 1)[-1]:>50}: {e.cpu_time_total / 1e3 / steps:8.1f} ms ({e.count // steps} calls/step)"
        )


@dataclasses.dataclass
class Args:
    """Seconds per training step of the README demo with the compiled and the PyTorch CPU rasterizers."""

    steps: int = 20
    """Measured steps per row."""
    warmup: int = 3
    """Steps before the measured ones."""
    threads: int = 2
    """torch.set_num_threads."""
    sizes: str = "128x96,320x256,640x512"
    """Image sizes WxH for the scaling rows ('' to skip)."""
    size_steps: int = 5
    """Measured steps per scaling row."""
    skip_torch_sizes: bool = False
    """Scaling rows with the compiled backend only."""
    profile: bool = False
    """Profile compiled-backend demo steps."""
    full: bool = False
    """Train the whole demo with both backends (minutes)."""
    neighbour_render: bool = False
    """Also time compiled-backend demo steps with the hinge's neighbour frames rendered depth-only (now)
    and with every channel (before issue 23), stepped alternately."""


def _parse_sizes(text: str) -> list[tuple[int, int]]:
    try:
        sizes = [tuple(int(v) for v in s.split("x")) for s in text.split(",") if s]
    except ValueError:
        sizes = [()]
    if any(len(wh) != 2 or min(wh) <= 0 for wh in sizes):
        raise ValueError(f"--sizes: expected comma-separated WxH sizes such as 128x96,320x256, got {text!r}")
    return sizes  # type: ignore[return-value]


def _main(argv: list[str]) -> None:
    import tyro

    args = tyro.cli(Args, args=argv, description=__doc__, prog="python -m flow3d.benchmarks.step")
    if min(args.steps, args.threads, args.size_steps) < 1 or args.warmup < 0:
        raise ValueError("--steps, --size-steps and --threads must be at least 1 and --warmup at least 0")
    sizes = _parse_sizes(args.sizes)
    torch.set_num_threads(args.threads)
    from flow3d.log import setup_logging

    setup_logging("WARNING")
    t0 = time.perf_counter()
    have_compiled = compiled.load_extension()
    if have_compiled:
        print(
            f"torch {torch.__version__}, {torch.get_num_threads()} threads; backends: cpu (compiled rasterizer, "
            f"ready in {time.perf_counter() - t0:.1f} s) and torch (PyTorch)"
        )
        backends = ("cpu", "torch")
    else:
        print(
            f"torch {torch.__version__}, {torch.get_num_threads()} threads; backend: torch (PyTorch) only: "
            f"the compiled rasterizer is unavailable ({compiled.load_error()})"
        )
        backends = ("torch",)
        if args.profile:
            print("--profile needs the compiled rasterizer: skipped", file=sys.stderr)

    with tempfile.TemporaryDirectory(prefix="flow3d_bench_step_") as tmp:
        work = Path(tmp)
        seq = demo_config(work, "torch").data.load()
        print(
            f"\nREADME demo configuration (cpu_demo, synthetic {seq.img_wh[0]}x{seq.img_wh[1]}, {seq.num_frames} frames): "
            f"s/step over {args.steps} steps after {args.warmup}"
        )
        print(HEADER)
        res = {}
        for backend in backends:
            trainer, res[backend] = time_steps(demo_config(work, backend), seq, args.steps, args.warmup)
            n_gauss = trainer.model.num_fg + trainer.model.num_bg
            print(
                _row(
                    f"demo, backend={backend}",
                    res[backend],
                    n_gauss,
                    res["torch"] if backend == "cpu" and "torch" in res else None,
                )
            )
        if have_compiled:
            print(
                f"{'':>24} compiled vs PyTorch backend: x{res['torch']['total'] / res['cpu']['total']:.2f} per step, "
                f"x{res['torch']['render'] / res['cpu']['render']:.2f} render, "
                f"x{res['torch']['backward_optim'] / res['cpu']['backward_optim']:.2f} backward+optimiser, "
                f"x{res['torch']['cpu'] / res['cpu']['cpu']:.2f} process CPU time"
            )

        if args.neighbour_render and have_compiled:
            only, full = time_neighbour_render(demo_config(work, "cpu"), seq, args.steps, args.warmup)
            print(
                f"\nthe hinge's neighbour render, compiled backend, {args.steps} steps each after {args.warmup}, alternated:"
            )
            print(HEADER)
            print(_row("neighbour every channel", full, n_gauss))
            print(_row("neighbour depth only", only, n_gauss, full))
            print(
                f"{'':>24} depth-only vs every channel: x{full['total'] / only['total']:.3f} per step, "
                f"x{full['render'] / only['render']:.3f} render, x{full['cpu'] / only['cpu']:.3f} process CPU time"
            )

        if sizes:
            print(f"\ncost against image size (same Gaussian count, {args.size_steps} steps after {args.warmup}):")
            print(HEADER)
        size_backends = ("cpu",) if args.skip_torch_sizes and have_compiled else backends
        for W, H in sizes:
            sub = work / f"{W}x{H}"
            seq_wh = demo_config(sub, "torch", W, H).data.load()
            row = {}
            for backend in size_backends:
                trainer, row[backend] = time_steps(
                    demo_config(sub, backend, W, H), seq_wh, args.size_steps, args.warmup
                )
                n_gauss = trainer.model.num_fg + trainer.model.num_bg
            for backend, per in row.items():
                ref = row.get("torch") if backend == "cpu" else None
                print(_row(f"{W}x{H}, backend={backend}", per, n_gauss, ref))

        if args.profile and have_compiled:
            profile_demo(demo_config(work, "cpu"), seq, steps=5)

        if args.full:
            from flow3d.train.trainer import Trainer

            print("\nthe whole demo with each backend:")
            for backend in backends:
                t0 = time.perf_counter()
                stats = Trainer(demo_config(work / "full", backend), seq=seq).fit()
                print(
                    f"  backend={backend}: {time.perf_counter() - t0:.0f} s wall ({stats['steps']} steps), "
                    f"held-out PSNR {stats['val_psnr']:.2f} dB, per step {stats['seconds_per_step']}"
                )


def main(argv: list[str] | None = None) -> None:
    """The command; failures leave with one ``error: ...`` line (:func:`flow3d.cli.run_main`)."""
    run_main(_main, argv)


if __name__ == "__main__":
    main()
