"""The sweep spec (YAML, data rather than code) and the trials it expands to.

A spec names rows of ``run_training.py`` arguments, data subcommands, seeds and a step count::

    runs:                        # required: name -> run_training.py arguments (presets, overrides)
      som_baseline: [--preset, cpu_demo, --preset, som_baseline]
      defaults: [--preset, cpu_demo]
    data:                        # required: name -> a data subcommand and its arguments
      synthetic: [data:synthetic, --data.num-frames, "12"]
    seeds: [0, 1]                # required: training seeds (run_training.py --seed)
    max_steps: 4                 # required: run_training.py --max-steps
    train_args: [--save-every, "100"]   # optional: put before every run's own arguments
    val_args: [--no-video]              # optional: extra run_val.py arguments
    metrics: [psnr, depth_abs_rel]      # optional: columns of summary.md and the plot

Every (run, data, seed) is a :class:`Trial` with its own work dir ``OUT/<run>/<data>/seed<S>``:

    run_training.py <train_args> <run args> --seed S --max-steps N --work-dir WORK <data args>
    run_val.py --work-dir WORK --model last --data.is-train False <val_args>

The seed is the training seed only: the data arguments alone define the sequence, so every seed of a
(run, data) pair fits the same scene. Scalars in argument lists (``12``, ``1.0``, ``false``) are passed as
their text (YAML ``false`` becomes ``False``, as tyro spells booleans).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

#: summary.md / plot columns when the spec names none (run_val.py's metric names, plus seconds per step)
DEFAULT_METRICS = ("psnr", "depth_abs_rel", "depth_delta1", "temporal_consistency", "ordinal_acc_gt", "s_per_step")
REQUIRED_KEYS = ("runs", "data", "seeds", "max_steps")
OPTIONAL_KEYS = ("train_args", "val_args", "metrics")
#: flags the sweep sets itself for every trial
SWEEP_TRAIN_FLAGS = ("--seed", "--max-steps", "--work-dir")
SWEEP_VAL_FLAGS = ("--work-dir", "--model")
_NAME = re.compile(r"^[A-Za-z0-9_+=-][A-Za-z0-9_.+=-]*$")


@dataclass(frozen=True)
class Trial:
    """One (run, data, seed) combination: what to run and where its files live."""

    run: str
    data: str
    seed: int
    max_steps: int
    work_dir: Path
    """Absolute: OUT/<run>/<data>/seed<S>."""
    train_argv: tuple[str, ...]
    """Arguments of run_training.py."""
    val_argv: tuple[str, ...]
    """Arguments of run_val.py."""

    @property
    def name(self) -> str:
        return f"{self.run} / {self.data} / seed {self.seed}"

    @property
    def metrics_path(self) -> Path:
        """run_val.py's metrics of the final step: the trial is finished once this file exists."""
        return self.work_dir / "val" / str(self.max_steps) / "heldout" / "metrics.json"  # run_val.py's val_dir

    @property
    def status_path(self) -> Path:
        return self.work_dir / "sweep_status.json"

    @property
    def log_path(self) -> Path:
        return self.work_dir / "trial.log"

    @property
    def args_record(self) -> dict[str, list[str]]:
        """The arguments as stored in the status file (the work dir is implied by the file's place)."""
        return {"train": list(self.train_argv), "val": list(self.val_argv)}


@dataclass
class SweepSpec:
    """A parsed sweep spec; :meth:`trials` expands it."""

    runs: dict[str, list[str]]
    data: dict[str, list[str]]
    seeds: list[int]
    max_steps: int
    train_args: list[str] = field(default_factory=list)
    val_args: list[str] = field(default_factory=list)
    metrics: list[str] = field(default_factory=lambda: list(DEFAULT_METRICS))
    source: str = "<spec>"

    def select(self, runs=None, data=None, seeds=None, max_steps=None) -> "SweepSpec":
        """A copy restricted to some runs / data / seeds, or with another step count (names must exist)."""

        def pick(table: dict, names, what: str) -> dict:
            if not names:
                return dict(table)
            unknown = [n for n in names if n not in table]
            if unknown:
                raise ValueError(f"{self.source}: {what} {unknown} not in the spec; it has {list(table)}")
            return {n: table[n] for n in names}

        return SweepSpec(
            runs=pick(self.runs, runs, "runs"),
            data=pick(self.data, data, "data"),
            seeds=list(seeds) if seeds else list(self.seeds),
            max_steps=max_steps or self.max_steps,
            train_args=list(self.train_args),
            val_args=list(self.val_args),
            metrics=list(self.metrics),
            source=self.source,
        )

    def trials(self, out_dir: str | Path) -> list[Trial]:
        """Every (run, data, seed), seed-major: an interrupted sweep has all rows at its first seeds."""
        out = Path(out_dir).resolve()
        trials = []
        for seed in self.seeds:
            for run, run_args in self.runs.items():
                for data, data_args in self.data.items():
                    work = out / run / data / f"seed{seed}"
                    train = [
                        *self.train_args,
                        *run_args,
                        "--seed",
                        str(seed),
                        "--max-steps",
                        str(self.max_steps),
                        "--work-dir",
                        str(work),
                        *data_args,
                    ]
                    val = ["--work-dir", str(work), "--model", "last", "--data.is-train", "False", *self.val_args]
                    trials.append(Trial(run, data, seed, self.max_steps, work, tuple(train), tuple(val)))
        return trials


def _arg_list(value: Any, where: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise ValueError(f"{where}: expected a list of arguments, got {type(value).__name__} {value!r}")
    out = []
    for i, v in enumerate(value):
        if isinstance(v, (dict, list)) or v is None:
            raise ValueError(f"{where}[{i}]: arguments are strings or numbers, got {v!r}")
        out.append(str(v))  # YAML true/false -> "True"/"False" (tyro's spelling), 12 -> "12"
    return out


def _reject_flags(args: list[str], flags: tuple[str, ...], where: str) -> None:
    for a in args:
        if a.split("=", 1)[0] in flags:
            raise ValueError(f"{where}: {a.split('=', 1)[0]} is set by the sweep for every trial; remove it")


def _named_lists(value: Any, where: str) -> dict[str, list[str]]:
    if not isinstance(value, dict) or not value:
        raise ValueError(f"{where}: expected a non-empty mapping of name -> argument list, got {value!r}")
    out = {}
    for name, args in value.items():
        if not isinstance(name, str) or not _NAME.match(name):
            raise ValueError(
                f"{where}: name {name!r} must be non-empty letters, digits and _ . + = - (it names a folder)"
            )
        out[name] = _arg_list(args, f"{where}.{name}")
    return out


def parse_spec(doc: Any, source: str = "<spec>") -> SweepSpec:
    """Check a spec's fields and build a :class:`SweepSpec`; ``ValueError`` names the field."""
    if not isinstance(doc, dict):
        raise ValueError(f"{source}: a sweep spec is a mapping with {REQUIRED_KEYS}, got {type(doc).__name__}")
    unknown = [k for k in doc if k not in REQUIRED_KEYS + OPTIONAL_KEYS]
    if unknown:
        raise ValueError(f"{source}: unknown field(s) {unknown}; fields are {REQUIRED_KEYS + OPTIONAL_KEYS}")
    missing = [k for k in REQUIRED_KEYS if k not in doc]
    if missing:
        raise ValueError(f"{source}: missing field(s) {missing}")
    runs = _named_lists(doc["runs"], f"{source}: runs")
    data = _named_lists(doc["data"], f"{source}: data")
    train_args = _arg_list(doc.get("train_args"), f"{source}: train_args")
    val_args = _arg_list(doc.get("val_args"), f"{source}: val_args")
    for name, args in runs.items():
        _reject_flags(args, SWEEP_TRAIN_FLAGS, f"{source}: runs.{name}")
        if any(a.startswith("data:") for a in args):
            raise ValueError(f"{source}: runs.{name}: a data subcommand belongs in `data`, not in a run")
    for name, args in data.items():
        _reject_flags(args, SWEEP_TRAIN_FLAGS, f"{source}: data.{name}")
        if args and not args[0].startswith("data:"):
            raise ValueError(
                f"{source}: data.{name}: the first argument must be a data subcommand "
                f"(data:synthetic, data:custom, data:davis, data:iphone), got {args[0]!r}"
            )
    _reject_flags(train_args, SWEEP_TRAIN_FLAGS, f"{source}: train_args")
    _reject_flags(val_args, SWEEP_VAL_FLAGS, f"{source}: val_args")
    seeds = doc["seeds"]
    if (
        not isinstance(seeds, list)
        or not seeds
        or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds)
    ):
        raise ValueError(f"{source}: seeds: expected a non-empty list of integers, got {seeds!r}")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"{source}: seeds: {seeds} repeats a seed")
    max_steps = doc["max_steps"]
    if not isinstance(max_steps, int) or isinstance(max_steps, bool) or max_steps < 1:
        raise ValueError(f"{source}: max_steps: expected a positive integer, got {max_steps!r}")
    metrics = doc.get("metrics", list(DEFAULT_METRICS))
    if not isinstance(metrics, list) or not metrics or not all(isinstance(m, str) for m in metrics):
        raise ValueError(f"{source}: metrics: expected a non-empty list of metric names, got {metrics!r}")
    return SweepSpec(runs, data, list(seeds), max_steps, train_args, val_args, list(metrics), source)


def load_spec(path: str | Path) -> SweepSpec:
    """Read and check a sweep spec YAML file (``ValueError`` naming the file and the field)."""
    path = Path(path)
    try:
        doc = yaml.safe_load(path.read_text())
    except OSError as e:
        raise ValueError(f"sweep spec {path}: cannot read it ({e.strerror or e})") from None
    except UnicodeDecodeError as e:
        raise ValueError(f"sweep spec {path}: not UTF-8 text (byte {e.start}: {e.reason}); save it as UTF-8") from None
    except yaml.YAMLError as e:
        raise ValueError(f"sweep spec {path}: not valid YAML ({' '.join(str(e).split())})") from None
    return parse_spec(doc, str(path))
