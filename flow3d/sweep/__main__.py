r"""Train and score every (run, data, seed) of a sweep spec on Ray.

    python -m flow3d.sweep configs/sweeps/example.yaml --out-dir outputs/sweep_example
    python -m flow3d.sweep configs/sweeps/ablation.yaml --out-dir outputs/ablation --runs som_baseline defaults \
        --data synthetic_linear --max-steps 50

Each trial trains in OUT/<run>/<data>/seed<S> and is scored by run_val.py; OUT/results.csv (one row per
trial), OUT/summary.md (mean ± std over seeds) and OUT/summary.png are rewritten after every trial. Running
the same command again skips finished trials and resumes interrupted ones from their last.ckpt. Exit code
1 when a trial failed (each failure is listed with its log and last error line).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch is imported (see run_training.py)

import tyro  # noqa: E402

from flow3d.log import setup_logging  # noqa: E402


@dataclass
class SweepArgs:
    spec: tyro.conf.Positional[Path]
    """The sweep spec (YAML: runs, data, seeds, max_steps; see flow3d/sweep/spec.py)."""
    out_dir: Path
    """Folder of the trials' work dirs, results.csv, summary.md and summary.png."""
    cpus_per_trial: float = 1.0
    """CPUs Ray reserves per trial (fractions allowed); its processes use that many threads."""
    gpus_per_trial: float = 0.0
    """GPUs Ray reserves per trial; 0.5 runs two trials per GPU."""
    address: Optional[str] = None
    """An existing Ray cluster ('auto' or HOST:PORT); default $RAY_ADDRESS, else a local Ray instance."""
    num_cpus: Optional[int] = None
    """CPUs of the local Ray instance (default: all of this machine's)."""
    runs: Optional[tuple[str, ...]] = None
    """Only these runs of the spec."""
    data: Optional[tuple[str, ...]] = None
    """Only these data entries of the spec."""
    seeds: Optional[tuple[int, ...]] = None
    """These seeds instead of the spec's."""
    max_steps: Optional[int] = None
    """This step count instead of the spec's."""
    dry_run: bool = False
    """Print each trial's state and commands; run nothing."""


def _dry_run(spec, out_dir: Path) -> None:
    from flow3d.sweep.trial import trial_state

    for t in spec.trials(out_dir):
        print(f"{t.name}: {trial_state(t)}")
        print("    run_training.py " + " ".join(t.train_argv))
        print("    run_val.py " + " ".join(t.val_argv))


def main(argv: list[str] | None = None) -> int:
    args = tyro.cli(
        SweepArgs, args=sys.argv[1:] if argv is None else argv, description=__doc__, prog="python -m flow3d.sweep"
    )
    setup_logging()
    from flow3d.cli import describe
    from flow3d.sweep import load_spec, run_sweep

    try:
        if args.out_dir.exists() and not args.out_dir.is_dir():
            raise ValueError(f"--out-dir {args.out_dir} is a file, not a folder")
        existing = next(p for p in args.out_dir.absolute().parents if p.exists())
        if not existing.is_dir():
            raise ValueError(f"--out-dir {args.out_dir} cannot be created: {existing} is a file")
        spec = load_spec(args.spec).select(args.runs, args.data, args.seeds, args.max_steps)
        if args.dry_run:
            _dry_run(spec, args.out_dir)
            return 0
        rows = run_sweep(
            spec,
            args.out_dir,
            args.cpus_per_trial,
            args.gpus_per_trial,
            args.address,
            args.num_cpus,
            on_result=lambda line: print(line, flush=True),
        )
    except (ValueError, RuntimeError, OSError) as e:
        raise SystemExit(f"error: {describe(e)}") from None
    except KeyboardInterrupt:
        print("interrupted: run the same command again to resume", file=sys.stderr)
        return 130
    failed = [r for r in rows if r["status"] == "failed"]
    skipped = sum(r["status"] == "skipped" for r in rows)
    print(
        f"{len(rows)} trials: {len(rows) - len(failed)} finished ({skipped} skipped as finished before), "
        f"{len(failed)} failed. Results: {args.out_dir / 'results.csv'}, {args.out_dir / 'summary.md'}"
    )
    for r in failed:
        print(f"FAILED {r['run']} / {r['data']} / seed {r['seed']}: {r['error']} (log: {r['log']})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
