"""Sweeps end to end on a real (local) Ray: the issue's example spec and its re-run, a trial killed
mid-training and resumed from its last.ckpt, a failing trial among good ones, and no process left behind.

The example runs through the CLI as a user runs it (a Ray instance of its own, checked to leave no
process behind); the kill / failure test runs in-process on a module Ray instance, then through the CLI
connected to that instance with --address. Trials are a few steps: most of their time is the two
processes' start-up and run_val.py.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import pytest

pytest.importorskip("ray", reason='the sweep tests need Ray: pip install -e ".[sweep]"')

from flow3d.sweep import last_error_line, parse_spec, run_sweep  # noqa: E402

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
# a trial small enough for tests: fewer Gaussians and initial fitting steps, no video
SMALL = ["--preset", "cpu_demo", "--init.init-fit-steps", "20", "--init.num-fg", "300", "--init.num-bg", "1000"]
SMALL_DATA = ["data:synthetic", "--data.num-frames", "12", "--data.width", "64", "--data.height", "48"]
BAD_DATA = ["data:synthetic", "--data.prior-drift", "sideways"]


@pytest.fixture(scope="module")
def ray_address():
    """A local Ray instance for the module (temp dir of its own: short, for Ray's socket paths)."""
    import ray

    from flow3d.sweep import init_ray

    tmp = tempfile.mkdtemp(prefix="r", dir="/tmp")
    old = os.environ.get("RAY_TMPDIR")
    os.environ["RAY_TMPDIR"] = tmp
    try:
        assert init_ray("local", num_cpus=2)  # never a cluster named by $RAY_ADDRESS
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()
        if old is None:
            os.environ.pop("RAY_TMPDIR", None)
        else:
            os.environ["RAY_TMPDIR"] = old
        shutil.rmtree(tmp, ignore_errors=True)


def _sweep_cli(args: list[str], env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "flow3d.sweep", *args], cwd=REPO, capture_output=True, text=True, env=env, timeout=900
    )


def _results(out: Path) -> list[dict]:
    with open(out / "results.csv") as f:
        return list(csv.DictReader(f))


def _processes_with(marker: str) -> list[int]:
    """Processes whose environment holds ``marker`` (NAME=VALUE): a command's whole process tree."""
    found = []
    for p in Path("/proc").iterdir():
        if not p.name.isdigit() or int(p.name) == os.getpid():
            continue
        try:
            if marker.encode() + b"\0" in (p / "environ").read_bytes():
                found.append(int(p.name))
        except OSError:  # gone, or not ours to read
            continue
    return found


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds leftover processes through /proc")
def test_example_spec_end_to_end_then_rerun_skips_everything(tmp_path):
    out = tmp_path / "sweep"
    marker = f"FLOW3D_SWEEP_TEST={uuid.uuid4().hex}"
    ray_tmp = tempfile.mkdtemp(prefix="r", dir="/tmp")  # short: Ray's socket paths live under it
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(RAY_TMPDIR=ray_tmp, FLOW3D_SWEEP_TEST=marker.split("=", 1)[1])
    try:
        first = _sweep_cli(["configs/sweeps/example.yaml", "--out-dir", str(out)], env=env)
        deadline = time.time() + 30
        while _processes_with(marker) and time.time() < deadline:
            time.sleep(0.5)
        assert _processes_with(marker) == [], "processes of the sweep (Ray or trials) outlived the command"
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert first.returncode == 0, first.stdout + first.stderr
    progress = [ln for ln in first.stdout.splitlines() if re.match(r"\[\d/4\] ", ln)]
    assert len(progress) == 4 and all(": done, " in ln for ln in progress), first.stdout
    rows = _results(out)
    assert {(r["run"], r["data"], r["seed"]) for r in rows} == {
        (run, "synthetic", s) for run in ("som_baseline", "defaults") for s in ("0", "1")
    }
    for r in rows:
        assert r["status"] == "done" and r["step"] == "4" and float(r["trial_seconds"]) > 0
        assert 5.0 < float(r["psnr"]) < 60.0 and float(r["s_per_step"]) > 0
        metrics = json.loads((Path(r["work_dir"]) / "val" / "4" / "heldout" / "metrics.json").read_text())["aggregate"]
        assert float(r["psnr"]) == metrics["psnr"]
    # summary.md against a hand computation from results.csv (two seeds: sample std = |a - b| / sqrt(2))
    summary = (out / "summary.md").read_text()
    for run in ("som_baseline", "defaults"):
        a, b = (float(r["depth_abs_rel"]) for r in rows if r["run"] == run)
        line = next(ln for ln in summary.splitlines() if ln.startswith(f"| {run} |"))
        assert f"{(a + b) / 2:.4f} ± {abs(a - b) / math.sqrt(2):.4f}" in line, (line, a, b)
    assert (out / "summary.png").read_bytes()[:4] == b"\x89PNG"
    logs = {r["log"]: Path(r["log"]).read_text() for r in rows}
    mtimes = {
        r["work_dir"]: (Path(r["work_dir"]) / "val" / "4" / "heldout" / "metrics.json").stat().st_mtime_ns for r in rows
    }

    again = _sweep_cli(["configs/sweeps/example.yaml", "--out-dir", str(out)], env=env)
    assert again.returncode == 0, again.stdout + again.stderr
    assert sum(": skipped" in ln for ln in again.stdout.splitlines()) == 4, again.stdout
    assert "4 finished (4 skipped" in again.stdout
    assert {log: Path(log).read_text() for log in logs} == logs  # nothing ran: no new attempt in any log
    assert {w: (Path(w) / "val" / "4" / "heldout" / "metrics.json").stat().st_mtime_ns for w in mtimes} == mtimes
    assert [r["status"] for r in _results(out)] == ["skipped"] * 4


def _kill_training_once_checkpointed(trial, killed: dict, stop: threading.Event) -> None:
    """SIGKILL the trial's training process as soon as its first checkpoint exists."""
    ckpt = trial.work_dir / "checkpoints" / "last.ckpt"
    while not stop.is_set():
        if ckpt.is_file():
            status = json.loads(trial.status_path.read_text())
            if status.get("stage") == "train" and status.get("pid"):
                os.kill(status["pid"], signal.SIGKILL)
                killed["pid"] = status["pid"]
            return
        time.sleep(0.02)


def test_killed_trial_resumes_and_failing_trials_do_not_stop_the_others(ray_address, tmp_path):
    from flow3d.checkpoint import load_checkpoint

    spec_doc = {
        "runs": {"small": SMALL + ["--save-every", "2"]},
        "data": {"ok": SMALL_DATA, "bad": BAD_DATA},
        "seeds": [0, 1],
        "max_steps": 6,
        "val_args": ["--no-video", "--max-track-queries", "2"],
    }
    spec = parse_spec(spec_doc)
    trials = {(t.data, t.seed): t for t in spec.trials(tmp_path)}
    victim = trials[("ok", 0)]
    killed, stop = {}, threading.Event()
    killer = threading.Thread(target=_kill_training_once_checkpointed, args=(victim, killed, stop))
    killer.start()
    try:
        rows = {(r["data"], r["seed"]): r for r in run_sweep(spec, tmp_path, on_result=lambda line: None)}
    finally:
        stop.set()
        killer.join()
    assert killed, "the training process was never seen with a checkpoint"
    assert rows[("ok", 0)]["status"] == "failed" and "train killed by signal SIGKILL" in rows[("ok", 0)]["error"]
    assert not victim.metrics_path.exists()
    step_at_kill = int(load_checkpoint(victim.work_dir / "checkpoints" / "last.ckpt", map_location="cpu")["step"])
    assert 2 <= step_at_kill < 6
    # the failing trials are reported with their log and last error line; the other trial finished
    for seed in (0, 1):
        bad = rows[("bad", seed)]
        assert bad["status"] == "failed" and bad["log"] == str(trials[("bad", seed)].log_path)
        assert "invalid choice 'sideways'" in bad["error"] and "--data.prior-drift" in bad["error"]
        assert bad["error"] == last_error_line(Path(bad["log"]))
    assert rows[("ok", 1)]["status"] == "done" and rows[("ok", 1)]["metrics"]["step"] == 6

    # the same sweep again, through the CLI on the same Ray instance
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(json.dumps(spec_doc))  # JSON is YAML
    run = _sweep_cli([str(spec_path), "--out-dir", str(tmp_path), "--address", ray_address])
    assert run.returncode == 1, run.stdout + run.stderr  # the bad trials still fail
    stats = json.loads((victim.work_dir / "train_stats.json").read_text())
    assert stats["steps"] == 6 and stats["steps_this_run"] == 6 - step_at_kill  # resumed, not from step 0
    assert (
        f"resumed from {victim.work_dir / 'checkpoints' / 'last.ckpt'} at step {step_at_kill}"
        in victim.log_path.read_text()
    )
    assert json.loads(victim.status_path.read_text())["attempts"] == 2
    table = {(r["data"], r["seed"]): r for r in _results(tmp_path)}
    assert table[("ok", "0")]["status"] == "done" and table[("ok", "0")]["step"] == "6"
    assert table[("ok", "1")]["status"] == "skipped"
    for seed in (0, 1):
        err, log = table[("bad", str(seed))]["error"], trials[("bad", seed)].log_path
        assert f"small / bad / seed {seed}: FAILED: {err} (log: {log})" in run.stdout
        assert f"FAILED small / bad / seed {seed}: {err} (log: {log})" in run.stdout  # the closing list
        assert f"- small / bad / seed {seed}: {err} (log: {log})" in (tmp_path / "summary.md").read_text()


def test_more_resources_per_trial_than_the_cluster_has_is_an_error(ray_address, tmp_path):
    spec = parse_spec({"runs": {"small": SMALL}, "data": {"ok": SMALL_DATA}, "seeds": [0], "max_steps": 1})
    with pytest.raises(ValueError, match="each trial asks for 1 GPUs but the Ray cluster has 0"):
        run_sweep(spec, tmp_path, gpus_per_trial=1.0)
    with pytest.raises(ValueError, match="each trial asks for 64 CPUs but the Ray cluster has 2"):
        run_sweep(spec, tmp_path, cpus_per_trial=64)
    assert not (tmp_path / "small" / "ok" / "seed0" / "trial.log").exists()  # nothing ran
