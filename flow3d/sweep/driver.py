"""Run a sweep's trials as Ray tasks and write its results.

Why Ray tasks and not Ray Tune: a sweep here is a fixed grid of independent, long trials whose state
already lives in their work dirs (the trainer's ``last.ckpt``, run_val.py's ``metrics.json``). Tune's
strengths (search algorithms, schedulers that stop trials early, its own experiment checkpoints and
``Tuner.restore``) would duplicate that state in a second place that can disagree with the first, and
pull in ``ray[tune]``'s dependencies (pandas, pyarrow). A remote function per trial with
``num_cpus``/``num_gpus`` gives the same placement on one machine or a cluster, ``ray.wait`` a progress
line per finished trial, and skip/resume stays a matter of files any later run (or person) can read.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Callable, Optional

from flow3d.log import get_logger
from flow3d.sweep import results as res
from flow3d.sweep.spec import SweepSpec, Trial
from flow3d.sweep.trial import conflict_message, result_row, run_trial, trial_state

logger = get_logger(__name__)

INSTALL_HINT = 'pip install -e ".[sweep]"'
#: object store of a local Ray instance: trials exchange only small dicts
LOCAL_OBJECT_STORE_BYTES = 128 * 1024**2


def import_ray():
    """``import ray`` with Ray's usage statistics off (nothing may reach the internet); a clear error
    naming the install command when Ray is missing."""
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    try:
        import ray
    except ImportError:
        raise RuntimeError(f"sweeps run on Ray, which is not installed: {INSTALL_HINT}") from None
    return ray


def init_ray(address: Optional[str] = None, num_cpus: Optional[int] = None) -> bool:
    """Connect to Ray: ``address`` (``auto``, ``HOST:PORT``), else ``$RAY_ADDRESS`` (set by ``ray job
    submit``), else a new local instance with ``num_cpus`` CPUs (default: all). Returns False when Ray
    was already initialised in this process (the caller then leaves it running)."""
    ray = import_ray()
    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS") or "local"
    kwargs = dict(address=address, log_to_driver=False, logging_level=logging.WARNING)
    if address == "local":
        kwargs.update(num_cpus=num_cpus, include_dashboard=False, object_store_memory=LOCAL_OBJECT_STORE_BYTES)
    elif num_cpus is not None:
        raise ValueError("--num-cpus only applies to a local Ray instance; a cluster's nodes set their own CPUs")
    ray.init(**kwargs)
    return True


def _check_resources(ray, cpus_per_trial: float, gpus_per_trial: float) -> None:
    total = ray.cluster_resources()
    for what, need in (("CPU", cpus_per_trial), ("GPU", gpus_per_trial)):
        if need > total.get(what, 0.0):
            raise ValueError(
                f"each trial asks for {need:g} {what}s but the Ray cluster has {total.get(what, 0.0):g}: "
                f"lower --{what.lower()}s-per-trial"
            )


def format_progress(i: int, n: int, row: dict) -> str:
    """One line per finished trial: status, time and a few metrics, or the error and the log path."""
    head = f"[{i}/{n}] {row['run']} / {row['data']} / seed {row['seed']}:"
    if row["status"] == "failed":
        return f"{head} FAILED: {row.get('error')} (log: {row['log']})"
    secs = row.get("trial_seconds")
    parts = [row["status"]] + ([f"{secs:.0f} s"] if isinstance(secs, (int, float)) else [])
    m = row.get("metrics", {})
    parts += [f"{k} {m[k]:.4g}" for k in ("psnr", "depth_abs_rel") if isinstance(m.get(k), (int, float))]
    return f"{head} " + ", ".join(parts)


def _run_on_ray(
    todo: list[Trial], cpus_per_trial: float, gpus_per_trial: float, report: Callable[[dict], None]
) -> None:
    ray = import_ray()
    _check_resources(ray, cpus_per_trial, gpus_per_trial)
    remote = ray.remote(run_trial).options(num_cpus=cpus_per_trial, num_gpus=gpus_per_trial, max_retries=1)
    cwd = os.getcwd()
    pending = {remote.remote(t, cpus_per_trial, cwd): t for t in todo}
    try:
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            trial = pending.pop(done[0])
            try:
                row = ray.get(done[0])
            except Exception as e:  # noqa: BLE001 - a lost worker or node: report the trial, keep going
                row = {
                    **result_row(trial),
                    "status": "failed",
                    "error": f"{type(e).__name__}: {str(e).strip().splitlines()[-1]}",
                }
            report(row)
    finally:
        for ref in pending:  # interrupted: stop the remaining trials (their children die with them)
            ray.cancel(ref, force=True)


def run_sweep(
    spec: SweepSpec,
    out_dir: str | Path,
    cpus_per_trial: float = 1.0,
    gpus_per_trial: float = 0.0,
    address: Optional[str] = None,
    num_cpus: Optional[int] = None,
    on_result: Optional[Callable[[str], None]] = None,
) -> list[dict]:
    """Run every trial of ``spec`` not finished yet under ``out_dir`` on Ray; write results.csv,
    summary.md and summary.png there (also after each finished trial). Returns the rows in spec order.

    ``on_result`` gets the progress line of each trial (finished ones first, as "skipped"; default: the
    log). Ray is started (or connected to, see :func:`init_ray`) only when something has to run, and
    shut down again unless it was already initialised by the caller.
    """
    if cpus_per_trial <= 0 or gpus_per_trial < 0:
        raise ValueError(
            f"--cpus-per-trial must be > 0 and --gpus-per-trial >= 0, got {cpus_per_trial}, {gpus_per_trial}"
        )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    trials = spec.trials(out)
    say = on_result or logger.info
    rows: dict[Trial, dict] = {}
    note = f"Metrics: run_val.py at step {spec.max_steps} (spec {spec.source})."

    def report(row: dict, trial: Optional[Trial] = None) -> None:
        t = trial or next(t for t in trials if (t.run, t.data, t.seed) == (row["run"], row["data"], row["seed"]))
        rows[t] = row
        say(format_progress(len(rows), len(trials), row))
        res.write_all([rows[t] for t in trials if t in rows], spec.metrics, out, note=note)

    todo = []
    for t in trials:
        state = trial_state(t)
        if state == "finished":
            report(result_row(t, skipped=True), t)
        elif state == "conflict":
            report({**result_row(t), "status": "failed", "error": conflict_message(t)}, t)
        else:
            todo.append(t)
    if todo:
        started = init_ray(address, num_cpus)
        try:
            _run_on_ray(todo, cpus_per_trial, gpus_per_trial, report)
        finally:
            if started:
                import_ray().shutdown()
    final = [rows[t] for t in trials]
    res.write_all(final, spec.metrics, out, note=note)
    return final
