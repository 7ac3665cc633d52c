"""One trial, run where Ray places it: training then evaluation (the commands of ``run_training.py`` and
``run_val.py``, run as ``python -m flow3d.train.command`` and ``python -m flow3d.eval.command``), each a subprocess.

The CLIs run as child processes (not imported): a crash, a segfault or a leak in one trial cannot take
the Ray worker or the driver down, and each trial's output goes to its own log ``WORK/trial.log``
(appended per attempt, with a header line naming the command). Each child gets ``OMP_NUM_THREADS`` (and
MKL/OpenBLAS/OpenCV's) set to the trial's CPU share, and on Linux dies with its Ray worker
(``PR_SET_PDEATHSIG``), so cancelling a sweep leaves no training process behind.

State lives in the work dir, so a re-run of the sweep knows what to do without any other record:

* ``val/<max_steps>/heldout/metrics.json`` exists -> finished, skipped;
* otherwise it runs: ``run_training.py`` resumes from ``checkpoints/last.ckpt`` by itself (training is
  skipped when ``train_stats.json`` already reports ``max_steps``), then ``run_val.py`` scores it;
* ``sweep_status.json`` (written atomically) records the status (``running``, ``done``, ``failed``), the
  arguments, the attempt count, the stage and the pid of the running child, seconds per training step,
  the trial's wall time summed over its completed attempts, the log path and the last error line.
  A trial whose folder holds a checkpoint made with other arguments is refused (``conflict``), not mixed.
"""

from __future__ import annotations

import ctypes
import json
import math
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional

from flow3d.fileio import write_bytes
from flow3d.sweep.spec import Trial

_LIBC = None
if sys.platform.startswith("linux"):
    try:
        _LIBC = ctypes.CDLL(None, use_errno=True)  # loaded here: the child only calls prctl after fork
    except OSError:  # pragma: no cover
        _LIBC = None
_PR_SET_PDEATHSIG = 1
_ERROR_LINE = re.compile(r"^(error:|[A-Za-z_][\w.]*(Error|Exception|Interrupt)\b)")


TRAIN_MODULE = "flow3d.train.command"  # run_training.py's command
VAL_MODULE = "flow3d.eval.command"  # run_val.py's command


def module_command(module: str) -> list[str]:
    """The command line that runs a tool of the installed package with this Python (a clone, an editable
    install or a wheel alike): ``python -m <module>``."""
    return [sys.executable, "-m", module]


# ---------------------------------------------------------------------------------------------- status


def read_status(trial: Trial) -> Optional[dict]:
    """The trial's ``sweep_status.json``, or None when there is none (or it is unreadable)."""
    try:
        return json.loads(trial.status_path.read_text())
    except (OSError, ValueError):
        return None


def write_status(trial: Trial, status: dict) -> None:
    write_bytes(trial.status_path, (json.dumps(status, indent=2) + "\n").encode())


def trial_state(trial: Trial) -> str:
    """``finished`` (final metrics exist), ``resume`` (a checkpoint exists), ``new``, or ``conflict``
    (the folder holds a checkpoint or metrics of a trial with other arguments)."""
    status = read_status(trial)
    has_progress = trial.metrics_path.is_file() or (trial.work_dir / "checkpoints" / "last.ckpt").is_file()
    if status is not None and has_progress and status.get("args") != trial.args_record:
        return "conflict"
    if trial.metrics_path.is_file():
        return "finished"
    return "resume" if has_progress else "new"


def conflict_message(trial: Trial) -> str:
    return (
        f"{trial.work_dir} holds a run made with other arguments (see its sweep_status.json): delete the "
        "folder, or give the changed run or data a new name"
    )


def last_error_line(log_path: Path, max_bytes: int = 65536) -> str:
    """What went wrong, from the output of the last stage in a trial log: the last ``error: ...`` line,
    exception line (``ValueError: ...``) or tyro argument-error box (``╭─ Invalid choice ─╮``, given as
    "Invalid choice: <its message>"), whichever comes last; else the last non-empty line (tqdm's
    carriage-return updates count as lines)."""
    try:
        with open(log_path, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - max_bytes))
            text = f.read().decode(errors="replace")
    except OSError:
        return ""
    text = text[max(0, text.rfind("\n=== ")) :]  # the last stage's output (from its header line on)
    lines = [ln.strip() for ln in re.split(r"[\r\n]+", text) if ln.strip() and not ln.startswith("=== ")]
    for i in range(len(lines) - 1, -1, -1):
        if _ERROR_LINE.match(lines[i]):
            return lines[i]
        if lines[i].startswith("╭─"):  # tyro: title in the top border, message until a rule or the bottom
            body = []
            for ln in lines[i + 1 :]:
                inner = ln.strip("│").strip()
                if ln.startswith("╰") or inner.startswith("─"):
                    break
                body.append(inner)
            return f"{lines[i].strip('╭─╮ ')}: {' '.join(body)}"
    return lines[-1] if lines else ""


# ---------------------------------------------------------------------------------------------- running


def _die_with_parent() -> None:  # runs in the child between fork and exec
    if _LIBC is not None:
        _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def child_env(cpus: float) -> dict[str, str]:
    """The environment of a trial's processes: threads limited to the trial's CPU share."""
    env = dict(os.environ)
    n = str(max(1, int(math.floor(cpus))))
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "OPENCV_FOR_THREADS_NUM"):
        env[var] = n
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _run_stage(
    trial: Trial, status: dict, stage: str, module: str, argv: tuple[str, ...], env: dict[str, str], cwd: str
) -> int:
    """Run one CLI as a child process, its output appended to the trial log; returns its exit code."""
    cmd = [*module_command(module), *argv]
    with open(trial.log_path, "ab") as log:
        log.write(
            f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} {stage} (attempt {status['attempts']}, "
            f"{socket.gethostname()}): {' '.join(cmd)}\n".encode()
        )
        log.flush()
        proc = subprocess.Popen(
            cmd,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=cwd,
            preexec_fn=_die_with_parent if _LIBC is not None else None,
        )
        write_status(trial, {**status, "stage": stage, "pid": proc.pid})
        try:
            return proc.wait()
        finally:
            if proc.poll() is None:  # the task was cancelled: stop the child before leaving
                proc.terminate()
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


def _training_done(trial: Trial) -> bool:
    try:
        stats = json.loads((trial.work_dir / "train_stats.json").read_text())
    except (OSError, ValueError):
        return False
    return int(stats.get("steps", -1)) >= trial.max_steps and (trial.work_dir / "checkpoints" / "last.ckpt").is_file()


def _seconds_per_step(trial: Trial) -> Optional[float]:
    """Training wall time per step of the last training run (train_stats.json; the resumed part only)."""
    try:
        stats = json.loads((trial.work_dir / "train_stats.json").read_text())
        n = int(stats["steps_this_run"])
        return float(stats["wall_seconds"]) / n if n > 0 else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _failed_message(code: int, stage: str) -> str:
    if code < 0:
        try:
            return f"{stage} killed by signal {signal.Signals(-code).name}"
        except ValueError:
            return f"{stage} killed by signal {-code}"
    return f"{stage} exited with code {code}"


def run_trial(trial: Trial, cpus: float = 1.0, cwd: Optional[str] = None) -> dict[str, Any]:
    """Train and validate one trial (the body of a Ray task); returns its result row (:func:`result_row`).

    Never raises for a failing trial: the failure is recorded in its status file and returned.
    ``cpus`` is the trial's CPU share (threads of its processes); ``cwd`` the folder relative paths in
    the arguments refer to (the sweep's working directory; the work dir when it does not exist here).
    """
    state = trial_state(trial)
    if state == "finished":
        return result_row(trial, skipped=True)
    trial.work_dir.mkdir(parents=True, exist_ok=True)
    if state == "conflict":
        return {**result_row(trial), "status": "failed", "error": conflict_message(trial)}
    old = read_status(trial) or {}
    status = {
        "status": "running",
        "args": trial.args_record,
        "attempts": int(old.get("attempts", 0)) + 1,
        "host": socket.gethostname(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "stage": None,
        "pid": None,
        "trial_seconds": float(old.get("trial_seconds") or 0.0),
        "s_per_step": old.get("s_per_step"),
        "log": str(trial.log_path),
        "error": None,
        "returncode": None,
    }
    write_status(trial, status)
    t0 = time.perf_counter()
    run_dir = cwd if cwd and os.path.isdir(cwd) else str(trial.work_dir)
    try:
        env = child_env(cpus)
        stages = [] if _training_done(trial) else [("train", TRAIN_MODULE, trial.train_argv)]
        stages.append(("val", VAL_MODULE, trial.val_argv))
        for stage, module, argv in stages:
            code = _run_stage(trial, status, stage, module, argv, env, run_dir)
            if stage == "train" and code == 0:
                status["s_per_step"] = _seconds_per_step(trial)
            if code != 0:
                error = last_error_line(trial.log_path) or _failed_message(code, stage)
                status.update(
                    status="failed",
                    stage=stage,
                    returncode=code,
                    error=f"{_failed_message(code, stage)}: {error}" if code < 0 else error,
                )
                break
        else:
            if not trial.metrics_path.is_file():
                status.update(status="failed", error=f"run_val.py wrote no {trial.metrics_path}")
            else:
                status.update(status="done", stage=None)
    except Exception as e:  # noqa: BLE001 - a broken trial must not take the sweep down
        status.update(status="failed", error=f"{type(e).__name__}: {e}")
    status.update(pid=None, trial_seconds=status["trial_seconds"] + time.perf_counter() - t0)
    write_status(trial, status)
    return result_row(trial)


# ---------------------------------------------------------------------------------------------- results


def read_aggregate(trial: Trial) -> dict[str, Any]:
    """The ``aggregate`` dict of the trial's final metrics (empty when there is none)."""
    if not trial.metrics_path.is_file():
        return {}
    from flow3d.eval.report import read_metrics

    try:
        return dict(read_metrics(trial.metrics_path)["aggregate"])
    except ValueError:
        return {}


def result_row(trial: Trial, skipped: bool = False) -> dict[str, Any]:
    """One row of results.csv: run, data, seed, status, timings, log, error and every metric."""
    status = read_status(trial) or {}
    metrics = read_aggregate(trial)
    state = status.get("status", "new")
    if metrics:  # run_val.py swaps its folder in only once everything is written: metrics mean done
        state = "skipped" if skipped else "done"
    return {
        "run": trial.run,
        "data": trial.data,
        "seed": trial.seed,
        "status": state,
        "trial_seconds": status.get("trial_seconds"),
        "s_per_step": status.get("s_per_step"),
        "metrics": metrics,
        "work_dir": str(trial.work_dir),
        "log": str(trial.log_path),
        "error": status.get("error") if state == "failed" else None,
    }
