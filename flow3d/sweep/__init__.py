"""Sweeps: many sequences, configurations and seeds, trained and scored as Ray tasks.

    python -m flow3d.sweep SPEC.yaml --out-dir OUT [--cpus-per-trial 1] [--gpus-per-trial 0] [--address ADDR]

* :mod:`flow3d.sweep.spec` -- the YAML spec (runs x data x seeds, max_steps) and the :class:`Trial` s it expands to.
* :mod:`flow3d.sweep.trial` -- one trial: ``run_training.py`` then ``run_val.py`` as subprocesses, its
  status file, skip / resume / failure.
* :mod:`flow3d.sweep.driver` -- :func:`run_sweep`: the trials as Ray tasks (why not Ray Tune: see there).
* :mod:`flow3d.sweep.results` -- ``results.csv``, ``summary.md`` (mean ± std over seeds), ``summary.png``.

Ray is optional (``pip install -e ".[sweep]"``) and imported only when trials have to run.
"""

from flow3d.sweep.driver import format_progress, init_ray, run_sweep
from flow3d.sweep.results import format_summary, metric_direction, summarize, write_all
from flow3d.sweep.spec import DEFAULT_METRICS, SweepSpec, Trial, load_spec, parse_spec
from flow3d.sweep.trial import last_error_line, read_status, result_row, run_trial, trial_state

__all__ = [
    "DEFAULT_METRICS",
    "SweepSpec",
    "Trial",
    "format_progress",
    "format_summary",
    "init_ray",
    "last_error_line",
    "load_spec",
    "metric_direction",
    "parse_spec",
    "read_status",
    "result_row",
    "run_sweep",
    "run_trial",
    "summarize",
    "trial_state",
    "write_all",
]
