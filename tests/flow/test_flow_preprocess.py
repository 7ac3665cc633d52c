import json
import shutil
import subprocess
import sys

import imageio.v3 as iio
import numpy as np
import pytest
from flow_synthetic import Scene, grid

import flow3d.flow.cache as cache_mod
from flow3d.preprocess.flow import FlowPreprocessConfig, find_frames, main, preprocess_flow

T = 5


def _write_sequence(root, image_dir, mask_dir, ext=".png"):
    s = Scene(height=64, width=80, shift=(1.2, 0.4), side=16, sq0=(30, 20), sq_vel=(3, 1), seed=4)
    image_dir, mask_dir = root / image_dir, root / mask_dir
    image_dir.mkdir(parents=True)
    mask_dir.mkdir(parents=True)
    for k in range(T):
        iio.imwrite(image_dir / f"{k:05d}{ext}", s.frame(k), **({"quality": 95} if ext == ".jpg" else {}))
        iio.imwrite(mask_dir / f"{k:05d}.png", (s.in_square(grid(64, 80), k) * 255).astype(np.uint8))
    return s


@pytest.fixture
def count_calls(monkeypatch):
    calls = []
    real = cache_mod.estimate_flow

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(cache_mod, "estimate_flow", counting)
    return calls


def test_custom_layout_strides_tracks_and_skip(tmp_path, count_calls):
    _write_sequence(tmp_path, "images/seq", "masks/seq")
    out = tmp_path / "out"
    summary = main(
        [
            "--root-dir",
            str(tmp_path),
            "--seq-name",
            "seq",
            "--strides",
            "1",
            "2",
            "--out-dir",
            str(out),
            "--grid-step",
            "4",
        ]
    )
    assert summary["pairs"] == (T - 1) + (T - 2) and summary["pairs_computed"] == summary["pairs"]
    npz = sorted(p.name for p in (out / "flow" / "seq").glob("*/*.npz"))
    assert npz == [
        "00000_00001.npz",
        "00000_00002.npz",
        "00001_00002.npz",
        "00001_00003.npz",
        "00002_00003.npz",
        "00002_00004.npz",
        "00003_00004.npz",
    ]
    assert len(count_calls) == 2 * len(npz)  # the tracks reused the cached stride-1 flows
    with np.load(next((out / "flow" / "seq").glob("*/00000_00002.npz"))) as f:
        assert f["flow_ab"].shape == (64, 80, 2) and f["valid_ba"].dtype == bool
    tracks = sorted((out / "flow_tracks" / "seq").glob("*.npy"))
    assert len(tracks) == T * T and tracks[0].name == "00000_00000.npy"
    q = np.load(out / "flow_tracks" / "seq" / "00002_00002.npy")
    assert q.shape[1] == 4 and len(q) > 5  # grid points on the 16 px foreground square
    assert not (tmp_path / "flow").exists()  # nothing written beside the data with --out-dir
    # a second run skips everything
    again = main(
        [
            "--root-dir",
            str(tmp_path),
            "--seq-name",
            "seq",
            "--strides",
            "1",
            "2",
            "--out-dir",
            str(out),
            "--grid-step",
            "4",
        ]
    )
    assert again["pairs_computed"] == 0 and again["tracks_written"] == 0 and len(count_calls) == 2 * len(npz)
    # other track settings recompute the tracks but not the flows
    third = main(["--root-dir", str(tmp_path), "--seq-name", "seq", "--out-dir", str(out), "--grid-step", "8"])
    assert third["tracks_written"] == T * T and len(count_calls) == 2 * len(npz)
    assert json.loads((out / "flow_tracks" / "seq" / "done.json").read_text())["grid_step"] == 8


def test_interrupted_run_resumes(tmp_path, count_calls):
    _write_sequence(tmp_path, "JPEGImages/480p/seq", "Annotations/480p/seq", ext=".jpg")
    cfg = FlowPreprocessConfig(root_dir=tmp_path, seq_name="seq", tracks=False)
    folder_glob = "flow/seq/*/*.npz"
    preprocess_flow(cfg)
    files = sorted(tmp_path.glob(folder_glob))
    files[-1].unlink()  # as if killed before the last pair; a stray temporary file stays behind
    (files[0].parent / ".00003_00004.npz.abc.tmp").write_bytes(b"partial")
    n = len(count_calls)
    summary = preprocess_flow(cfg)
    assert summary["pairs_computed"] == 1 and len(count_calls) == n + 2
    with np.load(files[-1]) as f:
        assert f["flow_ab"].shape == (64, 80, 2)


def test_flat_davis_layout_and_missing_folder(tmp_path):
    _write_sequence(tmp_path, "JPEGImages", "Annotations", ext=".jpg")
    assert len(find_frames(tmp_path, "anything")) == T
    summary = preprocess_flow(FlowPreprocessConfig(root_dir=tmp_path, seq_name="flat", grid_step=4))
    assert summary["tracks_written"] == T * T and (tmp_path / "flow_tracks" / "flat" / "00004_00000.npy").is_file()
    with pytest.raises(SystemExit, match="no frames .* looked in"):
        main(["--root-dir", str(tmp_path / "nothing"), "--seq-name", "seq"])


def test_real_davis_three_frames(real_data, tmp_path):
    src = real_data / "davis_horsejump_high"
    for sub, ext in (("JPEGImages", ".jpg"), ("Annotations", ".png")):
        (tmp_path / sub).mkdir()
        for k in range(3):
            shutil.copy(src / sub / f"{k:05d}{ext}", tmp_path / sub)
    summary = preprocess_flow(FlowPreprocessConfig(root_dir=tmp_path, seq_name="horsejump-high"))
    assert summary["frames"] == 3 and summary["tracks_written"] == 9
    tr = np.load(tmp_path / "flow_tracks" / "horsejump-high" / "00000_00002.npy")
    mask0 = iio.imread(src / "Annotations" / "00000.png") > 0
    q = np.load(tmp_path / "flow_tracks" / "horsejump-high" / "00000_00000.npy")
    assert len(q) > 100 and mask0[q[:, 1].astype(int), q[:, 0].astype(int)].all()  # queries on the horse
    assert (tr[:, 2] < 0).mean() > 0.5  # most of the horse stays tracked over two frames


@pytest.mark.slow  # a fresh interpreter importing torch: ~3-5 s
def test_module_entry_point(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "flow3d.preprocess.flow", "--root-dir", str(tmp_path), "--seq-name", "nope"],
        capture_output=True,
        text=True,
    )
    assert result.returncode != 0 and "no frames" in result.stderr
