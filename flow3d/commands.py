"""The installed commands (``[project.scripts]`` in pyproject.toml): one launcher per tool.

Each launcher sets the process-wide options every command wants before torch is imported, then runs the
tool's ``main()``. A console script exits with what its function returns (``sys.exit(f())``), while the
tools' ``main()`` return their results (training stats, paths) for callers in Python; the launchers
return 0 instead, or the tool's exit code when it returns one.

    flow3d-train --preset cpu_demo --work-dir outputs/demo data:synthetic   # = python run_training.py ...
    flow3d-val --work-dir outputs/demo                                      # = python run_val.py ...

Every tool also runs as ``python -m <module>`` (the module is in :data:`COMMANDS`).
"""

from __future__ import annotations

import importlib
import os

# command name -> the module whose main() it runs; pyproject.toml's [project.scripts] maps each name to
# the function of the same name below with "-" as "_" (tests/test_packaging.py checks both agree).
COMMANDS = {
    "flow3d-train": "flow3d.train.command",
    "flow3d-val": "flow3d.eval.command",
    "flow3d-view": "flow3d.view",
    "flow3d-export": "flow3d.export",
    "flow3d-render-video": "flow3d.render_video",
    "flow3d-sweep": "flow3d.sweep.__main__",
    "flow3d-sweep-depth-order-table": "flow3d.sweep.depth_order_table",
    "flow3d-preprocess-flow": "flow3d.preprocess.flow",
    "flow3d-preprocess-cameras": "flow3d.preprocess.cameras",
    "flow3d-preprocess-endonerf": "flow3d.preprocess.endonerf",
    "flow3d-preprocess-synthetic": "flow3d.preprocess.synthetic",
    "flow3d-preprocess-stereo": "flow3d.preprocess.stereo",
    "flow3d-coverage": "flow3d.eval.coverage",
    "flow3d-bench-ablation": "flow3d.benchmarks.ablation",
    "flow3d-bench-cameras": "flow3d.benchmarks.cameras",
    "flow3d-bench-data": "flow3d.benchmarks.data",
    "flow3d-bench-flow": "flow3d.benchmarks.flow",
    "flow3d-bench-losses": "flow3d.benchmarks.losses",
    "flow3d-bench-raster": "flow3d.benchmarks.raster",
    "flow3d-bench-step": "flow3d.benchmarks.step",
    "flow3d-gpu-check": "flow3d.benchmarks.gpu_check",
}


def run(command: str) -> int:
    """Run the tool of ``command`` (a key of :data:`COMMANDS`) on ``sys.argv[1:]``; returns the exit code."""
    # torch's OpenMP threads otherwise spin against OpenCV's thread pool (several times slower on a busy
    # machine); it must be set before torch is imported, which the tool's import does.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    result = importlib.import_module(COMMANDS[command]).main()
    return result if isinstance(result, int) and not isinstance(result, bool) else 0


def train() -> int:
    """``flow3d-train``: fit a scene (:mod:`flow3d.train.command`)."""
    return run("flow3d-train")


def val() -> int:
    """``flow3d-val``: evaluate a checkpoint (:mod:`flow3d.eval.command`)."""
    return run("flow3d-val")


def view() -> int:
    """``flow3d-view``: the browser viewer (:mod:`flow3d.view`)."""
    return run("flow3d-view")


def export() -> int:
    """``flow3d-export``: splats, point clouds and trajectories (:mod:`flow3d.export`)."""
    return run("flow3d-export")


def render_video() -> int:
    """``flow3d-render-video``: a video along a camera path (:mod:`flow3d.render_video`)."""
    return run("flow3d-render-video")


def sweep() -> int:
    """``flow3d-sweep``: train and score a sweep spec on Ray (:mod:`flow3d.sweep`)."""
    return run("flow3d-sweep")


def sweep_depth_order_table() -> int:
    """``flow3d-sweep-depth-order-table``: the per-family table of a sweep (:mod:`flow3d.sweep.depth_order_table`)."""
    return run("flow3d-sweep-depth-order-table")


def preprocess_flow() -> int:
    """``flow3d-preprocess-flow``: flows, fb masks and tracks (:mod:`flow3d.preprocess.flow`)."""
    return run("flow3d-preprocess-flow")


def preprocess_cameras() -> int:
    """``flow3d-preprocess-cameras``: cameras of a video without poses (:mod:`flow3d.preprocess.cameras`)."""
    return run("flow3d-preprocess-cameras")


def preprocess_endonerf() -> int:
    """``flow3d-preprocess-endonerf``: an EndoNeRF clip to the casual layout (:mod:`flow3d.preprocess.endonerf`)."""
    return run("flow3d-preprocess-endonerf")


def preprocess_synthetic() -> int:
    """``flow3d-preprocess-synthetic``: a synthetic scene on disk (:mod:`flow3d.preprocess.synthetic`)."""
    return run("flow3d-preprocess-synthetic")


def bench_ablation() -> int:
    """``flow3d-bench-ablation``: the depth-order ablation (:mod:`flow3d.benchmarks.ablation`)."""
    return run("flow3d-bench-ablation")


def bench_cameras() -> int:
    """``flow3d-bench-cameras``: camera estimation accuracy and cost (:mod:`flow3d.benchmarks.cameras`)."""
    return run("flow3d-bench-cameras")


def bench_data() -> int:
    """``flow3d-bench-data``: data loading time (:mod:`flow3d.benchmarks.data`)."""
    return run("flow3d-bench-data")


def bench_flow() -> int:
    """``flow3d-bench-flow``: speed of the flow machinery (:mod:`flow3d.benchmarks.flow`)."""
    return run("flow3d-bench-flow")


def bench_losses() -> int:
    """``flow3d-bench-losses``: speed of the depth losses (:mod:`flow3d.benchmarks.losses`)."""
    return run("flow3d-bench-losses")


def bench_raster() -> int:
    """``flow3d-bench-raster``: speed of the CPU rasterizers (:mod:`flow3d.benchmarks.raster`)."""
    return run("flow3d-bench-raster")


def bench_step() -> int:
    """``flow3d-bench-step``: seconds per training step (:mod:`flow3d.benchmarks.step`)."""
    return run("flow3d-bench-step")


def gpu_check() -> int:
    """``flow3d-gpu-check``: the device check (:mod:`flow3d.benchmarks.gpu_check`)."""
    return run("flow3d-gpu-check")


def preprocess_stereo() -> int:
    """``flow3d-preprocess-stereo``: a depth prior from rectified stereo pairs (:mod:`flow3d.preprocess.stereo`)."""
    return run("flow3d-preprocess-stereo")


def coverage() -> int:
    """``flow3d-coverage``: holes in the rendered tissue (:mod:`flow3d.eval.coverage`)."""
    return run("flow3d-coverage")
