"""Depth colouring, panels, videos, contact sheets and plots: files exist, load back, and look right."""

from __future__ import annotations

import imageio.v2 as imageio
import matplotlib
import numpy as np
import pytest
import torch

from flow3d.eval import video
from flow3d.eval.video import (
    colorbar_image,
    colorize_depth,
    colorize_scalar,
    compose_panels,
    depth_range_for_video,
    depth_video_frame,
    label_frame,
    plot_per_frame_metrics,
    write_contact_sheet,
    write_video,
)


def _turbo(t: float) -> np.ndarray:
    return np.round(np.array(matplotlib.colormaps["turbo"](t)[:3]) * 255)


def test_colorize_depth_near_is_warm_far_is_cold_invalid_black():
    depth = np.array([[1.0, 2.0, 3.0, 0.0, np.nan, 10.0]])
    out = colorize_depth(depth, vmin=1.0, vmax=3.0)
    assert out.dtype == np.uint8 and out.shape == (1, 6, 3)
    np.testing.assert_allclose(out[0, 0], _turbo(1.0), atol=2)  # near -> end of turbo (dark red)
    np.testing.assert_allclose(out[0, 2], _turbo(0.0), atol=2)  # far -> start of turbo (dark blue)
    assert out[0, 0, 0] > out[0, 0, 2] and out[0, 2, 2] > out[0, 2, 0]
    assert (out[0, 3] == 0).all() and (out[0, 4] == 0).all()  # depth 0 and NaN are invalid
    np.testing.assert_array_equal(out[0, 5], out[0, 2])  # beyond vmax clips to far
    invalid = np.zeros((1, 6), bool)
    invalid[0, 1] = True
    assert (colorize_depth(torch.from_numpy(depth), 1.0, 3.0, invalid=invalid)[0, 1] == 0).all()
    with pytest.raises(ValueError, match="vmin < vmax"):
        colorize_depth(depth, 2.0, 2.0)
    with pytest.raises(ValueError, match="cmap"):
        colorize_depth(depth, 1.0, 3.0, cmap="no_such_map")


def test_depth_range_for_video_percentiles_and_invalid():
    d = np.stack([np.full((10, 10), float(v)) for v in range(1, 101)])  # frames of constant 1..100
    d[0, 0, 0] = 0.0
    d[1, 0, 0] = np.inf
    lo, hi = depth_range_for_video(d, percentiles=(0, 100))
    assert lo == 1.0 and hi == 100.0  # 0 and inf are not valid depths
    lo, hi = depth_range_for_video(torch.from_numpy(d), percentiles=(2, 98))
    assert 2.0 < lo < 4.0 and 97.0 < hi < 99.0
    valid = np.zeros_like(d, bool)
    valid[5] = True
    lo, hi = depth_range_for_video(d, valid)
    assert lo < 6.0 < hi and hi - lo < 1e-3  # constant depth: widened to a tiny positive range
    with pytest.raises(ValueError, match="no valid value"):
        depth_range_for_video(np.zeros((2, 3, 3)))


def test_colorbar_compose_and_label_frame():
    bar = colorbar_image(200, 1.0, 3.0, label="depth", units="m")
    assert bar.dtype == np.uint8 and bar.shape[0] == 200 and 20 < bar.shape[1] < 200
    # The bar's colours: near the top the far colour (turbo(0)), near the bottom the near colour.
    col = bar[:, 6]  # inside the bar column (left padding is >= 4 px, bar >= 12 px wide)
    rows = np.where((np.abs(col.astype(int) - _turbo(0.0)).sum(1) < 30))[0]
    rows_near = np.where((np.abs(col.astype(int) - _turbo(1.0)).sum(1) < 30))[0]
    assert rows.size and rows_near.size and rows.mean() < rows_near.mean()
    a = np.full((100, 80, 3), 200, np.uint8)
    b = np.full((90, 60, 3), 50, np.uint8)
    out = compose_panels([("input RGB", a), ("rendered depth", b)])
    title_h = out.shape[0] - 100
    assert out.shape == (100 + title_h, 80 + 2 + 60, 3) and title_h >= 16
    assert (out[title_h:, :80] == 200).all()  # panel content unchanged
    assert (out[title_h + 90 :, 82:] == 0).all()  # shorter panel padded with black
    assert (out[:title_h, :80] > 100).any()  # title text drawn (white on dark grey)
    lab = label_frame(a, "frame 7")
    assert lab.shape == a.shape and (lab != a).any() and (a == 200).all()  # a copy, input untouched
    frame = depth_video_frame(
        [("rgb", a), ("depth", colorize_depth(np.ones((100, 80)) * 2, 1, 3))], (1.0, 3.0), 7, units="m"
    )
    assert frame.shape[0] == 100 + title_h and frame.shape[1] > 80 * 2 + bar.shape[1] // 2


def _frames(n=5, h=36, w=50):
    frames = []
    for i in range(n):
        f = np.zeros((h, w, 3), np.uint8)
        f[:, : (i + 1) * w // n] = ((40 * i) % 256, (255 - 40 * i) % 256, 128)
        frames.append(f)
    return frames


def test_write_video_reads_back_with_frame_count_and_size(tmp_path):
    path = write_video(tmp_path / "sub" / "depth.mp4", _frames(5, 36, 50), fps=5)
    assert path.exists() and not list(path.parent.glob(".*tmp*"))
    r = imageio.get_reader(path)
    got = [fr for fr in r]
    r.close()
    assert len(got) == 5 and got[0].shape == (36, 50, 3)
    # content survives compression: frame 4's left part is (160, 95, 128)
    assert np.abs(got[4][18, 5].astype(int) - [160, 95, 128]).max() < 25
    odd = write_video(tmp_path / "odd.mp4", _frames(3, 35, 49), fps=5)
    r = imageio.get_reader(odd)
    shapes = [fr.shape for fr in r]
    r.close()
    assert len(shapes) == 3 and shapes[0] == (36, 50, 3)  # padded to even, not resized


def test_write_video_errors(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="empty"):
        write_video(tmp_path / "e.mp4", [], fps=5)
    with pytest.raises(ValueError, match="frames\\[1\\]"):
        write_video(tmp_path / "m.mp4", [_frames(1)[0], np.zeros((10, 10, 3), np.uint8)], fps=5)
    assert not (tmp_path / "m.mp4").exists() and not list(tmp_path.glob(".*tmp*"))

    import imageio_ffmpeg

    def no_ffmpeg():
        raise RuntimeError("No ffmpeg exe could be found")

    monkeypatch.setattr(imageio_ffmpeg, "get_ffmpeg_exe", no_ffmpeg)
    with pytest.raises(RuntimeError, match="needs an ffmpeg binary.*IMAGEIO_FFMPEG_EXE"):
        write_video(tmp_path / "x.mp4", _frames(2), fps=5)
    assert not (tmp_path / "x.mp4").exists()


def test_contact_sheet_and_plot_files_load(tmp_path):
    frames = _frames(10, 20, 30)
    idx = write_contact_sheet(tmp_path / "sheet.png", frames, num=6)
    assert idx[0] == 0 and idx[-1] == 9 and len(idx) == 6
    sheet = imageio.imread(tmp_path / "sheet.png")
    assert sheet.shape == (2 * 20 + 4, 3 * 30 + 2 * 4, 3)
    np.testing.assert_array_equal(sheet[:20, :30], frames[0])
    np.testing.assert_array_equal(sheet[24:44, 68:98], frames[9])
    table = [{"frame": i, "psnr": 20.0 + i, "abs_rel": 0.1, "lpips": None, "name": f"f{i}"} for i in range(8)]
    table[3]["psnr"] = float("nan")
    p = plot_per_frame_metrics(tmp_path / "plot.png", table)
    img = imageio.imread(p)
    assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 300
    with pytest.raises(ValueError, match="numeric"):
        plot_per_frame_metrics(tmp_path / "none.png", [{"frame": 0, "lpips": None}])


def test_colorize_scalar_for_errors():
    err = np.array([[0.0, 0.5, 1.0]])
    out = colorize_scalar(err, 0.0, 1.0, cmap="magma")
    lut = video._lut("magma")
    np.testing.assert_array_equal(out[0, 0], lut[0])
    np.testing.assert_array_equal(out[0, 2], lut[255])
