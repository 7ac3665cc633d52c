"""The command-line tools the way users and their machines break them (issue 22, the tools' cases): the viewer,
export, render_video, the sweep, run_val's flags and labels, help texts. Each case ends with ONE ``error: ...``
line naming the flag or the file and exit 1 (usage errors 2), or with the documented recovery; nothing a
user made is lost; the former hangs run in subprocesses with timeouts."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import torch
from reliability_helpers import FAST, REPO, assert_one_error_line, child_env, data_args, main_error

import run_training
import run_val
from flow3d import export, render_video
from flow3d.sweep import __main__ as sweep_main
from flow3d.sweep import depth_order_table

HANG_TIMEOUT = 90  # seconds: far above the few seconds each case needs, far below "forever"


def _popen(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, *args], cwd=REPO, env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _run(*args: str) -> subprocess.CompletedProcess:
    """``python <args>``; a hang fails the test (subprocess.TimeoutExpired) instead of blocking CI."""
    return subprocess.run(
        [sys.executable, *args], cwd=REPO, env=child_env(), capture_output=True, text=True, timeout=HANG_TIMEOUT
    )


def _files(folder) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


# ------------------------------------------------------------------ the viewer: no hang, one error
def test_view_port_out_of_range_is_a_usage_error(trained):
    r = _run("-m", "flow3d.view", "--work-dir", str(trained), "--port", "70000")
    assert r.returncode == 2, r.stderr[-2000:]
    assert_one_error_line(r.stderr, "--port", "70000")
    assert "Exception in thread" not in r.stderr


def test_view_host_that_cannot_be_bound_is_one_error(trained):
    # 192.0.2.1 (TEST-NET-1, RFC 5737) is nobody's address: binding it fails with EADDRNOTAVAIL
    r = _run("-m", "flow3d.view", "--work-dir", str(trained), "--host", "192.0.2.1", "--device", "cpu")
    assert r.returncode == 1, r.stderr[-2000:]
    assert_one_error_line(r.stderr, "--host", "192.0.2.1")


def test_view_host_name_that_does_not_resolve_is_one_error(trained):
    r = _run("-m", "flow3d.view", "--work-dir", str(trained), "--host", "no-such-host.invalid", "--device", "cpu")
    assert r.returncode == 1, r.stderr[-2000:]
    assert_one_error_line(r.stderr, "--host", "no-such-host.invalid")


@pytest.mark.slow
def test_view_server_thread_that_dies_while_starting_is_one_error(trained):
    """Port 65535 busy: viser moves on to 65536, its server thread dies (OverflowError) and viser's start
    waits for it forever. The viewer notices the dead thread: one error, exit 1, no thread traceback."""
    pytest.importorskip("viser")
    with socket.socket() as busy:
        try:
            busy.bind(("127.0.0.1", 65535))
        except OSError:
            pytest.skip("port 65535 is in use on this machine")
        busy.listen()
        r = _run("-m", "flow3d.view", "--work-dir", str(trained), "--port", "65535", "--device", "cpu")
    assert r.returncode == 1, r.stderr[-2000:]
    line = assert_one_error_line(r.stderr, "--port 65535", "failed to start")
    assert "OverflowError" in line and "Exception in thread" not in r.stderr


def test_view_start_that_blocks_is_an_error_after_the_timeout():
    from flow3d.vis.server_start import start_within

    release = threading.Event()
    t0 = time.monotonic()
    with pytest.raises(ValueError, match="the server did not start within 0.3 s"):
        start_within(lambda: release.wait(30), 0.3, "the server")
    assert time.monotonic() - t0 < 5
    release.set()
    assert start_within(lambda: 7, 5, "x") == 7


def test_view_start_whose_thread_dies_is_an_error_at_once():
    from flow3d.vis.server_start import start_within

    def factory():  # a server whose worker thread dies while the caller waits for it
        threading.Thread(target=lambda: 1 / 0).start()
        threading.Event().wait(30)

    t0 = time.monotonic()
    with pytest.raises(ValueError, match=r"the server failed to start \(ZeroDivisionError"):
        start_within(factory, 60, "the server")
    assert time.monotonic() - t0 < 10


# ------------------------------------------------------------------ export
@pytest.fixture(scope="module")
def trained_without_bg(clip_root, tmp_path_factory):
    """A work dir trained 2 steps with no static (background) Gaussians at all (--init.num-bg 0)."""
    work = tmp_path_factory.mktemp("nobg") / "w"
    argv = [
        "--work-dir",
        str(work),
        *FAST,
        "--init.num-bg",
        "0",
        "--max-steps",
        "2",
        "--save-every",
        "2",
        *data_args(clip_root),
    ]
    run_training.main(argv)
    return work


def test_export_bg_without_background_gaussians(trained_without_bg, tmp_path):
    out = tmp_path / "export"
    main_error(
        export.main,
        ["--work-dir", str(trained_without_bg), "--out-dir", str(out), "--gaussians", "bg"],
        "--gaussians bg",
        "last.ckpt",
        "no static",
    )
    assert not out.exists()  # refused before anything is written
    # the dynamic ones still export
    assert (
        export.main(
            [
                "--work-dir",
                str(trained_without_bg),
                "--out-dir",
                str(out),
                "--gaussians",
                "fg",
                "--frames",
                "0",
                "--no-trajectories",
            ]
        )["per_frame"]["0"]["bg"]
        == 0
    )


def test_export_min_opacity_that_leaves_nothing(trained, tmp_path):
    out = tmp_path / "export"
    main_error(
        export.main,
        ["--work-dir", str(trained), "--out-dir", str(out), "--min-opacity", "1"],
        "--min-opacity",
        "largest opacity",
    )
    assert not out.exists()


def test_export_out_dir_that_is_a_file(trained, tmp_path):
    f = tmp_path / "export"
    f.write_text("mine")
    main_error(export.main, ["--work-dir", str(trained), "--out-dir", str(f)], "--out-dir", str(f), "is a file")
    assert f.read_text() == "mine"


def test_export_out_dir_under_a_file(trained, tmp_path):
    f = tmp_path / "file"
    f.write_text("mine")
    main_error(export.main, ["--work-dir", str(trained), "--out-dir", str(f / "sub")], "--out-dir", str(f))
    assert f.read_text() == "mine"


# ------------------------------------------------------------------ all three tools on a broken work dir
def _tool_argv(tool: str, work, tmp_path) -> tuple:
    if tool == "export":
        return export.main, ["--work-dir", str(work), "--out-dir", str(tmp_path / "export")]
    if tool == "render_video":
        return render_video.main, ["--work-dir", str(work), "--out", str(tmp_path / "v.mp4")]
    from flow3d import view

    return view.main, ["--work-dir", str(work), "--port", "0", "--device", "cpu"]


@pytest.mark.parametrize("tool", ["export", "render_video", "view"])
def test_tool_on_a_work_dir_without_checkpoints(tool, work, tmp_path):
    if tool == "view":
        pytest.importorskip("viser")
    shutil.rmtree(work / "checkpoints")
    main_fn, argv = _tool_argv(tool, work, tmp_path)
    main_error(main_fn, argv, str(work / "checkpoints" / "last.ckpt"), "not found", "none")
    assert not (tmp_path / "export").exists() and not (tmp_path / "v.mp4").exists()


@pytest.mark.parametrize("tool", ["export", "render_video", "view"])
def test_tool_whose_checkpoint_is_a_folder(tool, work, tmp_path):
    if tool == "view":
        pytest.importorskip("viser")
    last = work / "checkpoints" / "last.ckpt"
    last.unlink()
    last.mkdir()
    main_fn, argv = _tool_argv(tool, work, tmp_path)
    main_error(main_fn, argv, str(last), "is a folder")


# ------------------------------------------------------------------ render_video
def test_render_video_out_under_a_file(trained, tmp_path):
    f = tmp_path / "file"
    f.write_text("mine")
    main_error(render_video.main, ["--work-dir", str(trained), "--out", str(f / "v.mp4")], "--out", str(f), "is a file")
    assert f.read_text() == "mine"


def test_render_video_out_that_is_a_folder(trained, tmp_path):
    d = tmp_path / "v.mp4"
    d.mkdir()
    (d / "keep").write_text("mine")
    main_error(render_video.main, ["--work-dir", str(trained), "--out", str(d)], "--out", str(d), "is a folder")
    assert (d / "keep").read_text() == "mine"


@pytest.mark.slow
def test_write_video_sigterm_during_a_frame_write_is_the_interrupt(tmp_path):
    """SIGTERM while a frame is in ffmpeg's pipe: the command's interrupt (exit 143), never imageio's IOError
    with ffmpeg's text (exit 1). Big frames keep the main thread inside the pipe write most of the time."""
    from flow3d.cli import sigterm_raises
    from flow3d.errors import Interrupted
    from flow3d.eval.video import write_video

    out = tmp_path / "out.mp4"
    out.write_bytes(b"the user's earlier video")
    frame = np.random.default_rng(0).integers(0, 256, (1024, 1024, 3), dtype=np.uint8)
    timers = []

    def frames():
        for i in range(400):
            if i == 3:
                timers.append(threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGTERM)))
                timers[0].start()
            yield frame

    with pytest.raises(Interrupted) as e:
        with sigterm_raises():
            write_video(out, frames(), fps=10)
    timers[0].join()
    assert e.value.exit_code == 143
    assert out.read_bytes() == b"the user's earlier video"
    assert _files(tmp_path) == {"out.mp4"}  # the partial video is removed


@pytest.mark.slow
def test_render_video_sigterm_exits_143_and_keeps_the_earlier_video(trained, tmp_path):
    out = tmp_path / "orbit.mp4"
    out.write_bytes(b"the user's earlier video")
    p = _popen(
        "-m",
        "flow3d.render_video",
        "--work-dir",
        str(trained),
        "--out",
        str(out),
        "--num-frames",
        "5000",
        "--camera-path",
        "fixed",
        "--device",
        "cpu",
    )
    try:
        t0 = time.monotonic()
        while not any(f.stat().st_size > 0 for f in tmp_path.glob(".orbit.*")):  # frames are being written
            assert p.poll() is None, p.communicate()[1][-2000:]
            assert time.monotonic() - t0 < HANG_TIMEOUT
            time.sleep(0.05)
        time.sleep(0.5)
        p.send_signal(signal.SIGTERM)
        _, err = p.communicate(timeout=HANG_TIMEOUT)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 143, err[-2000:]
    assert err.strip().splitlines()[-1] == "terminated by SIGTERM"
    assert "Traceback" not in err and "FFMPEG" not in err and "error:" not in err
    assert out.read_bytes() == b"the user's earlier video"
    assert _files(tmp_path) == {"orbit.mp4"}


# ------------------------------------------------------------------ the sweep
def test_sweep_out_dir_that_is_a_file(tmp_path):
    f = tmp_path / "results"
    f.write_text("mine")
    spec = REPO / "configs" / "sweeps" / "example.yaml"
    main_error(sweep_main.main, [str(spec), "--out-dir", str(f)], "--out-dir", str(f), "is a file")
    assert f.read_text() == "mine"


def test_sweep_out_dir_under_a_file(tmp_path):
    f = tmp_path / "file"
    f.write_text("mine")
    spec = REPO / "configs" / "sweeps" / "example.yaml"
    main_error(sweep_main.main, [str(spec), "--out-dir", str(f / "sub"), "--dry-run"], "--out-dir", str(f), "is a file")
    assert f.read_text() == "mine"


def test_sweep_spec_that_is_not_utf8(tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_bytes("runs: {a: [--preset, cpu_demo]}\n# caf\xe9 in Latin-1\n".encode("latin-1"))
    main_error(sweep_main.main, [str(spec), "--out-dir", str(tmp_path / "out"), "--dry-run"], str(spec), "UTF-8")
    assert not (tmp_path / "out").exists()


def test_depth_order_table_expected_failures_exit_1(tmp_path, capsys):
    spec = tmp_path / "spec.yaml"
    spec.write_bytes(b"runs: \xff\n")
    assert depth_order_table.main([str(spec), "--out-dir", str(tmp_path / "out")]) == 1
    assert_one_error_line(capsys.readouterr().err, str(spec))
    good = REPO / "configs" / "sweeps" / "example.yaml"
    assert depth_order_table.main([str(good), "--out-dir", str(tmp_path / "out")]) == 1  # nothing finished yet
    assert_one_error_line(capsys.readouterr().err, "no finished trial")


# ------------------------------------------------------------------ run_val: flags before any work
@pytest.mark.parametrize(
    "flag, value",
    [
        ("--video-min-height", "100000"),
        ("--fps", "0"),
        ("--fps", "nan"),
        ("--video-min-height", "-1"),
        ("--contact-sheet-frames", "0"),
    ],
)
def test_run_val_flag_out_of_range_before_any_work(trained, monkeypatch, flag, value):
    from flow3d.eval import validate

    def no_work(*a, **k):
        raise AssertionError("run_val loaded the checkpoint before checking its flags")

    monkeypatch.setattr(validate, "load_checkpoint", no_work)
    before = _files(trained)
    main_error(run_val.main, ["--work-dir", str(trained), flag, value], flag, value)
    assert _files(trained) == before  # no val/ folder, no flow cache


@pytest.mark.slow
def test_run_val_largest_video_min_height_is_capped_with_a_warning(work, caplog):
    """--video-min-height 2160 on 32x24 frames would enlarge x90: frames 17630 px wide, which ffmpeg's
    libx264 refuses (a broken pipe after all the rendering). The panels are enlarged less, with a warning."""
    import imageio.v2 as imageio

    from flow3d.eval.validate import MAX_VIDEO_WIDTH

    result = run_val.main(
        [
            "--work-dir",
            str(work),
            "--video-min-height",
            "2160",
            "--contact-sheet-frames",
            "1",
            "--data.is-train",
            "False",
        ]
    )  # the one held-out frame: a short video
    warning = [
        r.getMessage()
        for r in caplog.records
        if r.levelname == "WARNING" and "--video-min-height 2160" in r.getMessage()
    ]
    assert len(warning) == 1 and "x90" in warning[0], caplog.text[-2000:]
    reader = imageio.get_reader(result.out_dir / "depth.mp4")
    w, h = reader.get_meta_data()["size"]
    reader.close()
    assert 4000 < w <= MAX_VIDEO_WIDTH and h > 24 * 30  # enlarged as far as the width allows (x37)


# ------------------------------------------------------------------ run_val: what the labels and the log say
@pytest.fixture(scope="module")
def tissue_stereo(tmp_path_factory):
    """The synthetic tissue scene in EndoNeRF's layout (stereo reference depth, instrument masks), trained 2 steps."""
    from flow3d.preprocess import synthetic as writer

    base = tmp_path_factory.mktemp("tissue")
    root = base / "tissue"
    writer.main(
        [
            "--scene",
            "tissue",
            "--layout",
            "endonerf",
            "--out-dir",
            str(root),
            "--num-frames",
            "6",
            "--width",
            "32",
            "--height",
            "24",
        ]
    )
    data = ["data:endonerf", "--data.root-dir", str(root), "--data.depth-scale", "1000", "--data.use-cache", "False"]
    work = base / "work"
    run_training.main(
        [
            "--work-dir",
            str(work),
            "--preset",
            "cpu_endonerf",
            "--max-steps",
            "2",
            "--save-every",
            "2",
            "--image-every",
            "0",
            "--init.num-fg",
            "100",
            "--init.num-motion-bases",
            "4",
            "--init.init-fit-steps",
            "5",
            *data,
        ]
    )
    return work, data


@pytest.mark.slow
def test_run_val_labels_name_the_stereo_reference_tissue_pixels_and_no_background(tissue_stereo, caplog, capfd):
    from flow3d.eval.report import format_table

    work, data = tissue_stereo
    result = run_val.main(["--work-dir", str(work), "--no-video", *data, "--data.is-train", "False"])
    agg, notes = result.aggregate, result.notes
    assert agg["depth_reference"] == "stereo"
    # the keys stay (results files and sweeps read them); the labels say what the reference is
    for key in ("ordinal_acc_gt", "temporal_consistency_gt"):
        assert key in agg and "stereo depth" in notes[key] and "not ground truth" in notes[key], notes.get(key)
    assert "tissue pixels" in notes["psnr"]
    for key in ("bg_psnr", "bg_ssim", "bg_lpips"):
        assert "no background" in notes[key]
    table = format_table(agg, notes)
    assert "no finite value in any frame" not in table
    doc = json.loads((result.out_dir / "metrics.json").read_text())
    assert doc["notes"]["ordinal_acc_gt"] == notes["ordinal_acc_gt"]
    out = capfd.readouterr()
    assert "evaluating last.ckpt" in caplog.text  # the log was captured
    assert ".partial" not in out.out + out.err + caplog.text  # the log names no temporary folder


@pytest.mark.slow
def test_run_val_log_names_final_paths_only(work, caplog, capfd):
    import imageio.v2 as imageio

    result = run_val.main(["--work-dir", str(work), "--fps", "5", "--contact-sheet-frames", "3"])
    out = capfd.readouterr()
    reader = imageio.get_reader(result.out_dir / "depth.mp4")
    video = [f for f in reader]
    reader.close()
    # the frames are streamed into the video; the contact sheet keeps frames 0, 2, 4 of the 5 (evenly spaced)
    assert len(video) == 5
    sheet = imageio.imread(result.out_dir / "contact_sheet.png").astype(np.float64)
    h = (sheet.shape[0] - 2 * 4) // 3
    for row, t in enumerate((0, 2, 4)):
        cell = sheet[row * (h + 4) : row * (h + 4) + h]
        assert np.abs(cell - video[t][:h, : cell.shape[1]]).mean() < 12
    logged = out.out + out.err + caplog.text
    assert "depth.mp4: 5 frames" in caplog.text  # the log was captured
    assert ".partial" not in logged, [ln for ln in logged.splitlines() if ".partial" in ln]
    assert str(result.out_dir) in out.out
    assert "ground-truth depth" in result.notes["ordinal_acc_gt"]  # synthetic data: it is ground truth
    assert "tissue" not in result.notes["psnr"] and "bg_psnr" not in result.notes  # nothing ignored here


def test_error_panel_masks_the_pixels_the_metrics_ignore():
    """The depth video's |error| panel: NaN (drawn black) exactly where the depth metrics do not score --
    no reference depth, or an ignored (instrument) pixel -- and its colour range from the scored pixels."""
    from flow3d.eval.metrics import depth_valid_mask
    from flow3d.eval.validate import depth_error_maps
    from flow3d.eval.video import colorize_scalar

    rng = np.random.default_rng(0)
    gt = rng.uniform(1.0, 2.0, (3, 8, 10))
    gt[0, 0, :3] = 0.0  # holes in the reference
    pred = gt + rng.normal(0, 0.01, gt.shape)
    valid = np.ones_like(gt, dtype=bool)
    valid[:, 4:, 6:] = False  # an instrument
    pred[:, 4:, 6:] = 50.0  # rendered depth there is far off, and must not show
    errs, (lo, hi) = depth_error_maps(pred, gt, valid, 1.0)
    scored = depth_valid_mask(torch.from_numpy(gt), torch.from_numpy(pred), torch.from_numpy(valid)).numpy()
    assert np.array_equal(np.isfinite(errs), scored)
    np.testing.assert_allclose(errs[scored], np.abs(pred - gt)[scored])
    assert lo == 0 and hi == pytest.approx(np.percentile(np.abs(pred - gt)[scored], 98)) and hi < 0.1
    img = colorize_scalar(errs[0], lo, hi, cmap="magma")
    assert (img[4:, 6:] == 0).all()  # black, not the colour of the maximum error
    assert (img[~np.isfinite(errs[0])] == 0).all() and img[np.isfinite(errs[0])].any()


# ------------------------------------------------------------------ help texts and the repository
@pytest.mark.parametrize(
    "main_fn, prog",
    [
        ("flow3d.preprocess.flow", "python -m flow3d.preprocess.flow"),
        ("flow3d.preprocess.synthetic", "python -m flow3d.preprocess.synthetic"),
        ("flow3d.preprocess.cameras", "python -m flow3d.preprocess.cameras"),
        ("flow3d.preprocess.endonerf", "python -m flow3d.preprocess.endonerf"),
        ("flow3d.preprocess.stereo", "python -m flow3d.preprocess.stereo"),
        ("flow3d.eval.coverage", "python -m flow3d.eval.coverage"),
        ("flow3d.export", "python -m flow3d.export"),
        ("flow3d.render_video", "python -m flow3d.render_video"),
        ("flow3d.view", "python -m flow3d.view"),
        ("flow3d.sweep.__main__", "python -m flow3d.sweep"),
    ],
)
def test_help_names_the_python_m_command(main_fn, prog, capsys):
    import importlib

    mod = importlib.import_module(main_fn)
    with pytest.raises(SystemExit) as e:
        mod.main(["--help"])
    assert e.value.code in (0, None)
    out = capsys.readouterr().out
    assert out.startswith(f"usage: {prog} "), out[:200]


def test_run_training_help_keeps_the_example_line_break(capsys):
    with pytest.raises(SystemExit):
        run_training.main(["--help"])
    lines = capsys.readouterr().out.splitlines()
    i = next(i for i, ln in enumerate(lines) if "outputs/pulling_60_ordinal data:custom" in ln)
    assert lines[i].rstrip().endswith("data:custom \\"), lines[i]
    assert lines[i + 1].strip().startswith("--data.seq-name pulling"), lines[i + 1]


def test_gitignore_covers_the_readme_outputs():
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    paths = ["outputs/demo/cfg.yaml", "data/tissue_endonerf/images/frame-000000.color.png", "data/example/x.png"]
    for p in paths:
        r = subprocess.run(["git", "check-ignore", "-q", "--no-index", p], cwd=REPO)
        assert r.returncode == 0, f"{p} is not ignored"
    # the package's own data code is not
    r = subprocess.run(["git", "check-ignore", "-q", "--no-index", "flow3d/data/sequence.py"], cwd=REPO)
    assert r.returncode == 1


@pytest.mark.parametrize(
    "flag, value",
    [
        ("--fps", "0"),
        ("--fps", "inf"),
        ("--num-frames", "0"),
        ("--resolution-scale", "0"),
        ("--resolution-scale", "nan"),
    ],
)
def test_render_video_flag_out_of_range_before_any_work(trained, tmp_path, monkeypatch, flag, value):
    from flow3d.vis import load

    def no_work(*a, **k):
        raise AssertionError("render_video loaded the checkpoint before checking its flags")

    monkeypatch.setattr(load, "load_trained_run", no_work)
    main_error(
        render_video.main, ["--work-dir", str(trained), "--out", str(tmp_path / "v.mp4"), flag, value], flag, value
    )
    assert _files(tmp_path) == set()


@pytest.mark.parametrize("flag, value", [("--port", "-1"), ("--max-res", "8"), ("--target-fps", "0")])
def test_view_flag_out_of_range_is_a_usage_error_before_anything_loads(tmp_path, capsys, flag, value):
    from flow3d import view

    with pytest.raises(SystemExit) as e:  # the work dir does not exist: the flag is named first
        view.main(["--work-dir", str(tmp_path / "nothing"), flag, value])
    assert e.value.code == 2
    assert_one_error_line(capsys.readouterr().err, flag, value)


@pytest.mark.parametrize("height", [16, 2200])
def test_write_video_that_ffmpeg_refuses_is_one_error_naming_the_file(tmp_path, height):
    """Frames wider than libx264 accepts: small ones fill the pipe's buffer and ffmpeg's refusal used to pass
    silently (a 0-byte .mp4); big ones broke the pipe with imageio's message holding ffmpeg's whole command
    line and the temporary file's name. Both: one OSError naming the final file, and no file left."""
    from flow3d.cli import describe
    from flow3d.eval.video import write_video

    out = tmp_path / "wide.mp4"
    with pytest.raises(OSError) as e:
        write_video(out, [np.zeros((height, 17000, 3), np.uint8)] * 4)
    line = describe(e.value)
    assert str(out) in line and "ffmpeg could not encode the video" in line, line
    assert "FFMPEG COMMAND" not in line and ".tmp" not in line, line
    assert _files(tmp_path) == set()
