"""What a training does when it is interrupted, locked out, or meets a fault (issue 14, cases 1, 2, 4, 5, 8,
10, 11, 13): signals, the lock and exit codes on the real ``run_training.py`` in subprocesses; recoveries
through ``run_training.main`` in-process, checking that nothing is lost."""

from __future__ import annotations

import contextlib
import json
import logging
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
from reliability_helpers import FAST, REPO, assert_one_error_line, child_env, data_args, main_error, run_cli

import run_training
from flow3d.checkpoint import load_checkpoint
from flow3d.data import cache as data_cache
from flow3d.fileio import owner_tag


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 180) -> None:
    t0 = time.monotonic()
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"the training ended early ({proc.returncode}): {proc.stderr.read()[-3000:]}")
        if time.monotonic() - t0 > timeout:
            proc.kill()
            raise AssertionError(f"{path} did not appear in {timeout} s")
        time.sleep(0.2)


def _start(work: Path, root: Path, *extra: str) -> subprocess.Popen:
    argv = [
        sys.executable,
        "run_training.py",
        "--work-dir",
        str(work),
        *FAST,
        "--max-steps",
        "100000",
        "--save-every",
        "2",
        *extra,
        *data_args(root),
    ]
    return subprocess.Popen(argv, cwd=REPO, env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@contextlib.contextmanager
def _training(work: Path, root: Path, *extra: str) -> Iterator[subprocess.Popen]:
    """A training in a subprocess (see :func:`_start`), killed on the way out if it still runs."""
    proc = _start(work, root, *extra)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def _finish(proc: subprocess.Popen, timeout: float = 120) -> tuple[int, str]:
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise
    return proc.returncode, err


def _no_temporaries(folder: Path) -> None:
    assert not [p.name for p in folder.iterdir() if ".tmp" in p.name], sorted(p.name for p in folder.iterdir())


# ------------------------------------------------------------------ cases 1 and 5: Ctrl-C, SIGTERM, the lock
@pytest.mark.slow  # two trainings in subprocesses, and a third run_training.py
def test_sigint_saves_the_step_lock_refuses_a_second_run_and_sigterm_too(clip_root, tmp_path):
    work = tmp_path / "w"
    with _training(work, clip_root) as proc:
        _wait_for(work / "checkpoints" / "model_2.ckpt", proc)
        # case 5: a second training in the same work dir refuses at once, naming the first
        second = run_cli("run_training.py", "--work-dir", str(work), *FAST, "--max-steps", "10", *data_args(clip_root))
        assert second.returncode == 1
        assert_one_error_line(second.stderr, "in use by another training", f"pid {proc.pid}")
        # case 1: Ctrl-C saves last.ckpt at the current step and exits with 130
        proc.send_signal(signal.SIGINT)
        code, err = _finish(proc)
    assert code == 130, err[-3000:]
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.startswith("interrupted by SIGINT")]
    assert len(lines) == 1, err[-3000:]
    step = load_checkpoint(work / "checkpoints" / "last.ckpt")["step"]
    assert step >= 2 and f"at step {step}:" in lines[0]
    _no_temporaries(work / "checkpoints")

    # the same command resumes from that step; SIGTERM (Ray, SLURM) does the same with 143
    with _training(work, clip_root) as proc:
        _wait_for(work / "checkpoints" / f"model_{step + (2 - step % 2) + 2}.ckpt", proc)
        proc.send_signal(signal.SIGTERM)
        code, err = _finish(proc)
    assert code == 143, err[-3000:]
    assert "Traceback" not in err and "interrupted by SIGTERM" in err
    assert load_checkpoint(work / "checkpoints" / "last.ckpt")["step"] > step


@pytest.mark.slow  # a training in a subprocess
def test_second_sigint_aborts_at_once_and_leaves_whole_files(clip_root, tmp_path):
    work = tmp_path / "w"
    with _training(work, clip_root) as proc:
        _wait_for(work / "checkpoints" / "model_2.ckpt", proc)
        proc.send_signal(signal.SIGINT)
        proc.send_signal(signal.SIGINT)
        code, err = _finish(proc)
    assert code == 130, err[-3000:]
    assert "Traceback" not in err
    assert "SIGINT" in err.splitlines()[-1]
    assert load_checkpoint(work / "checkpoints" / "last.ckpt")["step"] >= 2  # whole, whichever save it holds
    _no_temporaries(work / "checkpoints")


# ------------------------------------------------------------------ case 13: exit codes, --debug
def test_error_is_one_line_and_debug_shows_the_traceback(clip_root, tmp_path):
    argv = ["run_training.py", "--work-dir", str(tmp_path / "w"), "--max-steps", "-5", *data_args(clip_root)]
    plain = run_cli(*argv)
    assert plain.returncode == 1
    assert_one_error_line(plain.stderr, "--max-steps", "-5")
    assert plain.stderr.strip().count("\n") == 0  # nothing else was printed
    debug = run_cli(*argv, env=child_env(FLOW3D_DEBUG="1"))
    assert debug.returncode == 1 and "Traceback" in debug.stderr and "ValueError: --max-steps" in debug.stderr
    with pytest.raises(ValueError, match="--max-steps must be >= 1"):  # --debug: the exception itself
        run_training.main([*argv[1:], "--debug"])


def test_disk_full_during_a_save_keeps_last_ckpt_and_no_temporary(work, clip_root):
    """A full disk is simulated in a subprocess: every write of torch_save raises OSError(ENOSPC)."""
    last = work / "checkpoints" / "last.ckpt"
    before = last.read_bytes()
    argv = ["--work-dir", str(work), *FAST, "--max-steps", "6", "--save-every", "0", *data_args(clip_root)]
    script = textwrap.dedent(f"""
        import errno, flow3d.fileio as fileio
        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")
        fileio._RecordingWriter.write = write
        import run_training
        run_training.main({argv!r})
    """)
    r = run_cli("-c", script)
    assert r.returncode == 1, r.stderr[-3000:]
    assert_one_error_line(r.stderr, "No space left on device", "model_6.ckpt", "disk is full")
    assert last.read_bytes() == before
    _no_temporaries(work / "checkpoints")


def test_five_nonfinite_steps_in_a_row_is_one_error(work, clip_root, monkeypatch):
    from flow3d.train import trainer

    real = trainer.weighted_total
    monkeypatch.setattr(trainer, "weighted_total", lambda values, weights: real(values, weights) * float("nan"))
    argv = ["--work-dir", str(work), *FAST, "--max-steps", "20", "--save-every", "0", *data_args(clip_root)]
    main_error(run_training.main, argv, "5 consecutive steps had a non-finite loss")


# ------------------------------------------------------------------ case 2: the schedule follows --max-steps
def test_resume_with_more_steps_ends_with_the_learning_rates_of_a_straight_run(work, trained, clip_root, tmp_path):
    args = [*FAST, "--save-every", "0", "--max-steps", "8", *data_args(clip_root)]
    run_training.main(["--work-dir", str(work), *args])  # 4 steps done, resumed to 8
    run_training.main(["--work-dir", str(tmp_path / "straight"), *args])
    resumed = load_checkpoint(work / "checkpoints" / "last.ckpt")
    straight = load_checkpoint(tmp_path / "straight" / "checkpoints" / "last.ckpt")
    lrs = {k: [g["lr"] for g in o["param_groups"]] for k, o in resumed["optimizers"].items()}
    assert lrs == {k: [g["lr"] for g in o["param_groups"]] for k, o in straight["optimizers"].items()}
    # hand value: the means' rate decays to lr_final_factor (0.01) of --optim.lr-means at the last step
    from flow3d.config import load_config

    cfg = load_config(work / "cfg.yaml")
    assert lrs["fg.means"][0] == pytest.approx(cfg.optim.lr_means * cfg.optim.lr_final_factor, rel=1e-12)


# ------------------------------------------------------------------ case 4: a corrupt last.ckpt
def test_corrupt_last_ckpt_falls_back_to_the_newest_intact_one(work, clip_root, caplog):
    last = work / "checkpoints" / "last.ckpt"
    last.write_bytes(last.read_bytes()[:1000])  # truncated
    (work / "checkpoints" / "model_4.ckpt").write_bytes(b"")  # the newest numbered one is damaged too
    with caplog.at_level(logging.WARNING, logger="flow3d"):
        stats = run_training.main(
            ["--work-dir", str(work), *FAST, "--max-steps", "6", "--save-every", "0", *data_args(clip_root)]
        )
    warned = [r.getMessage() for r in caplog.records if "newest intact" in r.getMessage()]
    assert len(warned) == 1 and "last.ckpt" in warned[0] and "model_2.ckpt" in warned[0], warned
    assert stats["steps"] == 6 and stats["steps_this_run"] == 4  # resumed from step 2
    assert (work / "checkpoints" / "last.ckpt.unreadable").is_file()  # the user's file is kept
    assert load_checkpoint(last)["step"] == 6


def test_no_intact_checkpoint_is_one_error(work, clip_root):
    for p in (work / "checkpoints").glob("*.ckpt"):
        p.write_bytes(b"junk")
    argv = ["--work-dir", str(work), *FAST, "--max-steps", "6", *data_args(clip_root)]
    main_error(run_training.main, argv, "no intact model_<step>.ckpt", str(work / "checkpoints"))


# ------------------------------------------------------------------ cases 10 and 11: caches and temporaries
def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait(timeout=60)
    return p.pid


def test_stale_temporaries_removed_and_corrupt_cache_rebuilt(work, trained, clip_root, tmp_path, caplog):
    cache = tmp_path / "cache"
    data = data_args(clip_root, "--data.cache-dir", str(cache))
    data_cache.clear_memo()  # an earlier case may hold this clip in memory
    run_training.parse_args(["--work-dir", str(work), *data]).data.load()  # writes the cache entry
    (broken,) = cache.glob("clip_*.npz")
    broken.write_bytes(broken.read_bytes()[:300])  # BadZipFile on reading
    tag = owner_tag().rsplit("-", 1)[0] + f"-{_dead_pid()}"
    stale = [
        cache / f".clip_x.{tag}.abcd.tmp.npz",
        work / "checkpoints" / f".last.{tag}.efgh.tmp.ckpt",
        work / f".train_stats.{tag}.ijkl.tmp.json",
    ]
    for p in stale:
        p.write_bytes(b"half a file")
    live = cache / f".other.{owner_tag()}.mnop.tmp.npz"  # a write of a running process is left alone
    live.write_bytes(b"in progress")
    data_cache.clear_memo()
    with caplog.at_level(logging.WARNING, logger="flow3d"):
        stats = run_training.main(["--work-dir", str(work), *FAST, "--max-steps", "6", "--save-every", "0", *data])
    assert stats["steps"] == 6
    assert not any(p.exists() for p in stale) and live.exists()
    msgs = " ".join(r.getMessage() for r in caplog.records)
    assert f"data cache file {broken} is unreadable" in msgs
    with np.load(broken) as z:  # rebuilt
        assert "images" in z.files


# ------------------------------------------------------------------ case 8: no held-out frame
def test_no_held_out_frame_writes_valid_json_and_says_so(trained, clip_root, tmp_path, caplog):
    work = tmp_path / "w"
    with caplog.at_level(logging.INFO, logger="flow3d"):
        run_training.main(
            [
                "--work-dir",
                str(work),
                *FAST,
                "--max-steps",
                "2",
                "--save-every",
                "0",
                *data_args(clip_root, "--data.val-every", "0"),
            ]
        )
    text = (work / "train_stats.json").read_text()

    def reject(name):
        raise AssertionError(f"{name} is not JSON")

    stats = json.loads(text, parse_constant=reject)
    assert stats["val_psnr"] is None
    assert any("no held-out frame" in r.getMessage() for r in caplog.records)


def test_write_json_writes_null_for_nonfinite(tmp_path):
    from flow3d.fileio import write_json

    write_json(tmp_path / "s.json", {"a": float("nan"), "b": [1.0, float("inf")], "c": {"d": -float("inf")}})
    assert json.loads((tmp_path / "s.json").read_text(), parse_constant=lambda n: 1 / 0) == {
        "a": None,
        "b": [1.0, None],
        "c": {"d": None},
    }


# ------------------------------------------------------------------ run_val on a data:davis work dir
def test_run_val_reads_the_saved_davis_config(tmp_path):
    from flow3d.config import TrainConfig, save_config
    from flow3d.data import DavisDataConfig
    from flow3d.eval.validate import parse_val_args

    saved = DavisDataConfig(seq_name="bear", root_dir="/data/DAVIS", val_every=3)
    save_config(TrainConfig(work_dir=str(tmp_path), data=saved), tmp_path / "cfg.yaml")
    cfg = parse_val_args(["--work-dir", str(tmp_path), "--data.is-train", "False"])
    assert type(cfg.data) is DavisDataConfig
    assert (cfg.data.seq_name, cfg.data.root_dir, cfg.data.val_every, cfg.data.is_train) == (
        "bear",
        "/data/DAVIS",
        3,
        False,
    )
    cfg = parse_val_args(["--work-dir", str(tmp_path), "data:davis", "--data.is-train", "False"])
    assert (cfg.data.seq_name, cfg.data.res) == ("bear", "480p")
