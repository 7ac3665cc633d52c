"""``python -m flow3d.render_video`` on a checkpoint trained for a few steps: the planned cameras and times,
what is actually rendered, and the written mp4 (read back with imageio)."""

from __future__ import annotations

import math

import imageio.v2 as imageio
import numpy as np
import pytest
import torch

from flow3d.geometry import project_points
from flow3d.render_video import MIN_PANEL_HEIGHT, VideoConfig, main, plan_path, render_video
from flow3d.vis.camera_paths import camera_centers


def _read(path) -> list[np.ndarray]:
    reader = imageio.get_reader(path)
    frames = [f for f in reader]  # not list(reader): its length hint is infinite for ffmpeg
    reader.close()
    return frames


def _cfg(work_dir, tmp_path, **kw) -> VideoConfig:
    return VideoConfig(work_dir=str(work_dir), out=str(tmp_path / "v.mp4"), device="cpu", **kw)


@pytest.mark.parametrize("path", ["orbit", "spiral", "bullet-time"])
def test_moving_paths_look_at_the_look_at_point(trained, work_dir, tmp_path, path):
    run, seq = trained
    plan = plan_path(_cfg(work_dir, tmp_path, camera_path=path, num_frames=24), run, seq)
    assert plan.w2cs.shape == (24, 4, 4) and plan.img_wh == seq.img_wh
    xy, z = project_points(plan.look_at.expand(24, 1, 3), plan.K.expand(24, 3, 3), plan.w2cs)
    torch.testing.assert_close(xy[:, 0], plan.K[:2, 2].expand(24, 2), atol=1e-3, rtol=0)
    assert bool((z > 0).all())
    centres = camera_centers(plan.w2cs.double())
    assert float((centres - centres[0]).norm(dim=-1).max()) > 1e-2  # the camera does move
    # the look-at point lies in front of the reference (middle) training camera, inside the scene
    _, d = project_points(plan.look_at[None].double(), seq.Ks[4].double(), seq.w2cs[4].double())
    assert float(d) > 0


def test_fixed_path_is_the_training_camera_while_time_plays(trained, work_dir, tmp_path):
    run, seq = trained
    plan = plan_path(_cfg(work_dir, tmp_path, camera_path="fixed", ref_frame=2), run, seq)
    assert plan.ts == list(range(seq.num_frames))
    torch.testing.assert_close(plan.w2cs, seq.w2cs[2].expand(seq.num_frames, 4, 4))
    torch.testing.assert_close(plan.K, seq.Ks[2])


def test_resolution_scale_scales_the_intrinsics(trained, work_dir, tmp_path):
    run, seq = trained
    plan = plan_path(_cfg(work_dir, tmp_path, camera_path="fixed", resolution_scale=2.0), run, seq)
    W, H = seq.img_wh
    assert plan.img_wh == (2 * W, 2 * H)
    torch.testing.assert_close(plan.K[0, 0], 2 * seq.Ks[4, 0, 0])
    torch.testing.assert_close(plan.K[:2, 2], (seq.Ks[4, :2, 2] + 0.5) * 2 - 0.5)


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(-10 * np.log10(np.mean((a.astype(np.float64) / 255 - b.astype(np.float64) / 255) ** 2)))


def test_fixed_video_shows_each_frame_from_the_training_camera(trained, work_dir, tmp_path, capsys):
    run, seq = trained
    out = main(
        [
            "--work-dir",
            str(work_dir),
            "--camera-path",
            "fixed",
            "--out",
            str(tmp_path / "fixed.mp4"),
            "--device",
            "cpu",
            "--fps",
            "5",
        ]
    )
    frames = _read(out)
    assert len(frames) == seq.num_frames
    assert "render video" in capsys.readouterr().err  # the progress bar
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fixed.mp4"]  # no temporary file left
    W, H = seq.img_wh
    k = math.ceil(MIN_PANEL_HEIGHT / H)
    title = frames[0].shape[0] - k * H  # the title strip above the panels
    for t in (0, 5):
        r = run.render(t, seq.w2cs[4], seq.Ks[4], (W, H))
        expected = np.repeat(np.repeat(np.round(r["rgb"] * 255).astype(np.uint8), k, 0), k, 1)
        panel = frames[t][title : title + k * H, : k * W]
        assert _psnr(panel, expected) > 26, t  # H.264 (yuv420p) at quality 8: 28.6 dB measured
        other = run.render((t + 4) % 8, seq.w2cs[4], seq.Ks[4], (W, H))["rgb"]  # another time: 23-24 dB measured
        assert (
            _psnr(panel, np.repeat(np.repeat(np.round(other * 255).astype(np.uint8), k, 0), k, 1))
            < _psnr(panel, expected) - 2
        )


def test_bullet_time_renders_one_time_with_one_depth_range(trained, work_dir, tmp_path, monkeypatch):
    run, seq = trained
    calls = []
    original = type(run).render

    def recording(self, t, w2c, K, img_wh, fg=True, bg=True):
        calls.append((int(t), img_wh))
        return original(self, t, w2c, K, img_wh, fg, bg)

    monkeypatch.setattr(type(run), "render", recording)
    path = render_video(_cfg(work_dir, tmp_path, camera_path="bullet-time", time=3, num_frames=10))
    assert len(calls) >= 10 and {t for t, _ in calls} == {3}  # every render (depth range, frames) shows frame 3
    frames = _read(path)
    assert len(frames) == 10
    # the depth colour bar (right-most strip) is the same image in every frame: one fixed range
    bar = [f[:, -40:].astype(np.int16) for f in frames]
    assert max(float(np.abs(b - bar[0]).mean()) for b in bar) < 2.0
    # while the picture changes as the camera moves
    assert float(np.abs(frames[0].astype(np.int16) - frames[3].astype(np.int16)).mean()) > 2.0


def test_depth_range_option_is_used_as_given(trained, work_dir, tmp_path, monkeypatch):
    import flow3d.render_video as rv

    seen = []
    monkeypatch.setattr(
        rv, "colorize_depth", lambda d, vmin, vmax, **kw: seen.append((vmin, vmax)) or np.zeros((*d.shape, 3), np.uint8)
    )
    render_video(_cfg(work_dir, tmp_path, camera_path="fixed", num_frames=3, depth_range=(1.0, 9.0)))
    assert seen == [(1.0, 9.0)] * 3


@pytest.mark.parametrize(
    "args, message",
    [
        (["--out", "x.avi"], r"--out must name an .mp4 file"),
        (["--camera-path", "bullet-time", "--time", "8"], r"--time 8 is outside the video's frames 0..7"),
        (["--ref-frame", "-1"], r"--ref-frame -1 is outside"),
        (["--resolution-scale", "0"], r"--resolution-scale must be > 0"),
        (["--model", "3"], r"checkpoint .*model_3.ckpt not found"),
    ],
)
def test_cli_errors_are_one_line(work_dir, tmp_path, args, message):
    argv = ["--work-dir", str(work_dir), "--out", str(tmp_path / "v.mp4"), "--device", "cpu", *args]
    with pytest.raises(SystemExit, match="^error: " + message):
        main(argv)
    assert not any(tmp_path.iterdir())
