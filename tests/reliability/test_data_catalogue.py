"""The data-input cases of issue 22: every one ends with ONE ``error:`` line naming the file or the flag, or with
the documented recovery and a log line with counts; nothing a user made is lost.

Frames smaller than the optical flow accepts, the camera file's ``img_shape``, damaged JPEGs, masks that are not
0/255, a complex prior, NaN tracks, sequence names that are paths (and the converter's ``--overwrite``), long
names and unusable cache folders, a flow-cache entry without its CRC, the converter's ``--depth-scale``, the
converter's output loading without warnings, and a changed prior named as such on resume.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from reliability_helpers import FAST, SEQ, data_args, main_error

import run_training
from flow3d.data import CustomDataConfig, EndoNeRFDataConfig, SyntheticDataConfig, content_record
from flow3d.data import cache as data_cache
from flow3d.data import io as data_io
from flow3d.data.endonerf import write_endonerf_layout
from flow3d.data.fingerprint import content_differences
from flow3d.data.synthetic import make_synthetic_sequence
from flow3d.flow import FlowCache
from flow3d.flow.cache import npz_bytes
from flow3d.flow.estimate import check_flow_size, dis_flow
from flow3d.preprocess import cameras as cameras_cli
from flow3d.preprocess import endonerf as convert_cli

DEPTH = "aligned_depth_anything"


@pytest.fixture(autouse=True)
def _no_memo():
    data_cache.clear_memo()  # every case loads its own (damaged) copy
    yield
    data_cache.clear_memo()


def _train(work, root, *extra):
    return ["--work-dir", str(work), *FAST, "--max-steps", "4", *data_args(root, *extra)]


def _load(root: Path, tmp_path: Path, **kw):
    kw.setdefault("cache_dir", str(tmp_path / "cache"))
    return CustomDataConfig(root_dir=str(root), seq_name=kw.pop("seq_name", SEQ), **kw).load()


def _messages(caplog, level):
    return [r.getMessage() for r in caplog.records if r.levelno == level and r.name.startswith("flow3d")]


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------ frames smaller than the optical flow accepts
def test_flow_size_rule_is_what_dis_accepts():
    """The check agrees with OpenCV's DIS itself on every size up to 20x20 (the reference: DIS run on the frames)."""
    rng = np.random.default_rng(0)
    for h in range(1, 21):
        for w in range(1, 21):
            img = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
            try:
                dis_flow(img, img)
                dis_ok = True
            except cv2.error:
                dis_ok = False
            try:
                check_flow_size(h, w, "dis")
                ok = True
            except ValueError as e:
                ok = False
                assert f"{w}x{h}" in str(e)
            assert ok == dis_ok, (h, w)
    check_flow_size(8, 12)  # the measured minimum at DIS's default patch size
    with pytest.raises(ValueError, match="8x8 pixels are too small"):
        check_flow_size(8, 8)


def test_downscale_that_leaves_no_pixel_is_one_error(tmp_path, clip):
    main_error(
        run_training.main,
        _train(tmp_path / "w", clip, "--data.downscale", "1000"),
        "--data.downscale 1000",
        "32x24",
        str(clip / "images" / SEQ),
        "0x0",
    )
    assert not (tmp_path / "w" / "checkpoints").exists()


def test_downscale_below_the_flow_size_is_one_error_before_the_flow(tmp_path, clip):
    shutil.rmtree(clip / "bootstapir")  # the tracks are chained from optical flow
    main_error(
        run_training.main,
        _train(tmp_path / "w", clip, "--data.downscale", "4"),
        "--data.downscale",
        "8x6",
        "too small",
        "optical flow",
    )


def test_small_frames_in_the_trainers_flow_is_one_error(tmp_path, clip):
    # tracks on disk: loading needs no flow; the hinge term's neighbour flows at 10x8 do
    main_error(run_training.main, _train(tmp_path / "w", clip, "--data.downscale", "3"), "10x8", "too small")


def test_synthetic_8x8_that_the_config_rule_passes_is_one_error_at_the_flow(tmp_path):
    argv = [
        "--work-dir",
        str(tmp_path / "w"),
        *FAST,
        "--max-steps",
        "2",
        "data:synthetic",
        "--data.width",
        "8",
        "--data.height",
        "8",
        "--data.num-frames",
        "4",
        "--data.track-grid-step",
        "1",
    ]
    main_error(run_training.main, argv, "8x8", "too small", "optical flow")


def test_preprocess_cameras_downscale(tmp_path, clip):
    argv = ["--root-dir", str(clip), "--seq-name", SEQ, "--out-dir", str(tmp_path / "o")]
    main_error(cameras_cli.main, [*argv, "--downscale", "1000"], "--downscale 1000", "0x0")
    main_error(cameras_cli.main, [*argv, "--downscale", "3"], "--downscale", "10x8", "too small")
    assert not (tmp_path / "o").exists()


# ------------------------------------------------------------------ the camera file's img_shape
@pytest.mark.parametrize("img_shape", [(0, 0), (-24, -32), "24 32", ("a", "b"), None])
def test_camera_img_shape_is_one_error_naming_the_file(tmp_path, clip, img_shape):
    cam = clip / "droid_recon" / f"{SEQ}.npy"
    recon = np.load(cam, allow_pickle=True).item()
    recon["img_shape"] = img_shape
    np.save(cam, np.array(recon, dtype=object), allow_pickle=True)
    main_error(run_training.main, _train(tmp_path / "w", clip), str(cam), "img_shape")


def test_camera_intrinsics_as_text_is_one_error(tmp_path, clip):
    cam = clip / "droid_recon" / f"{SEQ}.npy"
    recon = np.load(cam, allow_pickle=True).item()
    recon["intrinsics"] = "fx fy cx cy"
    np.save(cam, np.array(recon, dtype=object), allow_pickle=True)
    main_error(run_training.main, _train(tmp_path / "w", clip), str(cam), "intrinsics")


# ------------------------------------------------------------------ damaged JPEGs
def _jpeg(clip: Path, t: int = 3) -> tuple[Path, bytes]:
    png = clip / "images" / SEQ / f"{t:05d}.png"
    jpg = png.with_suffix(".jpg")
    big = cv2.resize(cv2.imread(str(png)), (128, 96), interpolation=cv2.INTER_CUBIC)  # enough entropy data to damage
    cv2.imwrite(str(jpg), cv2.resize(big, (32, 24), interpolation=cv2.INTER_AREA), [cv2.IMWRITE_JPEG_QUALITY, 95])
    png.unlink()
    return jpg, jpg.read_bytes()


@pytest.mark.parametrize("damage", ["corrupt_middle", "truncated_reterminated"])
def test_damaged_jpeg_is_one_error_naming_it(tmp_path, clip, damage):
    jpg, data = _jpeg(clip)
    sos = data.index(b"\xff\xda")
    mid = (sos + len(data)) // 2
    if damage == "corrupt_middle":
        data = data[:mid] + bytes([0x5A]) * 24 + data[mid + 24 :]
    else:
        data = data[:mid] + b"\xff\xd9"  # cut, then given its end marker back: the tail check passes
    jpg.write_bytes(data)
    assert cv2.imread(str(jpg)) is not None  # OpenCV alone decodes it (greyed) with a nameless warning
    main_error(run_training.main, _train(tmp_path / "w", clip), str(jpg), "corrupt")


def test_intact_jpeg_reads_and_stderr_is_given_back(tmp_path, clip, capfd):
    jpg, _ = _jpeg(clip)
    img = data_io.read_image(jpg)
    np.testing.assert_array_equal(img, cv2.cvtColor(cv2.imread(str(jpg)), cv2.COLOR_BGR2RGB))
    import os

    os.write(2, b"after the read\n")
    assert "after the read" in capfd.readouterr().err


# ------------------------------------------------------------------ masks that are not 0/255
def _masks(clip: Path) -> list[Path]:
    return sorted((clip / "masks" / SEQ).glob("*.png"))


def test_jpeg_masks_threshold_at_half_with_an_info_line(tmp_path, clip, caplog):
    ref = np.stack([cv2.imread(str(p), cv2.IMREAD_GRAYSCALE) >= 128 for p in _masks(clip)])
    for p in _masks(clip):  # saved as JPEG: noise on both sides of 0 and 255
        cv2.imwrite(str(p.with_suffix(".jpg")), cv2.imread(str(p)), [cv2.IMWRITE_JPEG_QUALITY, 75])
        p.unlink()
    noisy = np.stack([cv2.imread(str(p), cv2.IMREAD_GRAYSCALE) for p in sorted((clip / "masks" / SEQ).glob("*.jpg"))])
    odd = int(((noisy != 0) & (noisy != 255)).sum())
    assert (noisy > 0).sum() > 1.3 * ref.sum()  # the old rule (> 0) grew the foreground by a third or more
    with caplog.at_level(logging.INFO, logger="flow3d"):
        seq = _load(clip, tmp_path, normalize_scene=False)
    fg = seq.fg_masks.bool().numpy()
    assert (fg != ref).mean() < 0.01  # the threshold at half keeps the PNG's foreground (to a few edge pixels)
    line = [m for m in _messages(caplog, logging.INFO) if "neither 0 nor 255" in m]
    assert len(line) == 1 and f"{odd} pixels" in line[0] and "JPEG" in line[0]
    assert not [m for m in _messages(caplog, logging.WARNING) if "masks" in m]


def test_soft_png_masks_warn_with_counts(tmp_path, clip, caplog):
    p = _masks(clip)[2]
    m = cv2.imread(str(p), cv2.IMREAD_GRAYSCALE)
    m[:, :4] = 100  # grey: was foreground under "> 0", is background under the threshold at half
    m[:, -4:] = 200
    cv2.imwrite(str(p), m)
    with caplog.at_level(logging.INFO, logger="flow3d"):
        seq = _load(clip, tmp_path, normalize_scene=False)
    fg = seq.fg_masks[2].bool().numpy()
    assert not fg[:, :4].any() and fg[:, -4:].all()
    (line,) = [m for m in _messages(caplog, logging.WARNING) if "neither 0 nor 255" in m]
    assert f"{24 * 8} pixels" in line and f"so {24 * 4} of them" in line


def test_zero_one_masks_keep_their_foreground(tmp_path, clip):
    ref = _load(clip, tmp_path / "a", normalize_scene=False).fg_masks
    for p in _masks(clip):
        cv2.imwrite(str(p), (cv2.imread(str(p), cv2.IMREAD_GRAYSCALE) > 0).astype(np.uint8))  # 0/1
    data_cache.clear_memo()
    assert torch.equal(_load(clip, tmp_path / "b", normalize_scene=False).fg_masks, ref)


# ------------------------------------------------------------------ the prior and the tracks
def test_complex_prior_is_one_error_naming_the_file(tmp_path, clip):
    npy = sorted((clip / DEPTH / SEQ).iterdir())[3]
    np.save(npy, np.load(npy).astype(np.complex64) + 1j)
    main_error(run_training.main, _train(tmp_path / "w", clip), str(npy), "complex")


def test_nan_track_rows_are_masked_with_a_count(tmp_path, clip, caplog):
    f = clip / "bootstapir" / SEQ / "00000_00002.npy"
    arr = np.load(f)
    arr[:5, 0] = np.nan
    arr[5:7, 2] = np.inf
    np.save(f, arr)
    with caplog.at_level(logging.WARNING, logger="flow3d"):
        seq = _load(clip, tmp_path, normalize_scene=False, max_tracks_per_query=0)
    (line,) = [m for m in _messages(caplog, logging.WARNING) if "NaN/Inf" in m]
    assert "7 of" in line and str(clip / "bootstapir" / SEQ) in line
    rows = torch.nonzero(seq.tracks_query_t == 0).flatten()[:7]
    assert not seq.tracks_visible[rows, 2].any() and (seq.tracks_conf[rows, 2] == 0).all()
    assert torch.isfinite(seq.tracks_xy).all() and torch.isfinite(seq.tracks_conf).all()


def test_all_nan_tracks_is_one_error(tmp_path, clip):
    folder = clip / "bootstapir" / SEQ
    for f in folder.glob("*.npy"):
        np.save(f, np.full_like(np.load(f), np.nan))
    main_error(run_training.main, _train(tmp_path / "w", clip), str(folder), "NaN")


# ------------------------------------------------------------------ sequence names and the data cache
@pytest.mark.parametrize("name", ["..", ".", "", "a/b", f"../{SEQ}"])
def test_seq_name_that_is_a_path_is_one_error(tmp_path, clip, name, monkeypatch):
    cache = tmp_path / "c" / "cache"
    monkeypatch.setenv("FLOW3D_CACHE_DIR", str(cache))
    argv = [
        "--work-dir",
        str(tmp_path / "w"),
        *FAST,
        "--max-steps",
        "4",
        "data:custom",
        "--data.root-dir",
        str(clip),
        "--data.seq-name",
        name,
    ]
    main_error(run_training.main, argv, "--data.seq-name", repr(name))
    assert not (tmp_path / "c").exists()  # nothing written, inside or outside the cache folder


def test_long_seq_name_gets_a_bounded_cache_file_name(tmp_path, clip_root):
    name = "s" * 240
    root = tmp_path / "root"
    for sub in ("images", "masks", DEPTH, "bootstapir"):
        shutil.copytree(clip_root / sub / SEQ, root / sub / name)
    (root / "droid_recon").mkdir()
    shutil.copy(clip_root / "droid_recon" / f"{SEQ}.npy", root / "droid_recon" / f"{name}.npy")
    seq = _load(root, tmp_path, seq_name=name)
    assert seq.num_frames == 6
    (entry,) = (tmp_path / "cache").glob("*.npz")
    assert len(entry.name) < 100 and entry.name.startswith("s" * 64 + "_")
    data_cache.clear_memo()
    assert _load(root, tmp_path, seq_name=name).num_frames == 6  # read back from that entry
    main_error(
        run_training.main,
        [
            "--work-dir",
            str(tmp_path / "w"),
            *FAST,
            "data:custom",
            "--data.root-dir",
            str(root),
            "--data.seq-name",
            "s" * 256,
        ],
        "--data.seq-name",
        "256 bytes",
    )


@pytest.mark.parametrize("odd", ["a_file", "under_a_file"])
def test_unusable_cache_folder_is_skipped_with_one_warning(tmp_path, clip, odd, caplog):
    (tmp_path / "a_file").write_text("not a folder")
    cache = tmp_path / "a_file" if odd == "a_file" else tmp_path / "a_file" / "cache"
    shutil.rmtree(clip / "bootstapir")  # the flow tracks would use a flow cache beside the data cache too
    with caplog.at_level(logging.WARNING, logger="flow3d"):
        seq = _load(clip, tmp_path, cache_dir=str(cache), normalize_scene=False)
    assert seq.num_frames == 6 and seq.tracks_xy.shape[0] > 0
    (line,) = _messages(caplog, logging.WARNING)
    assert "data cache" in line and str(cache) in line and "without it" in line
    assert (tmp_path / "a_file").read_text() == "not a folder"


@pytest.mark.slow
def test_training_with_an_unusable_cache_folder_goes_on(tmp_path, clip_root, monkeypatch, caplog):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    monkeypatch.setenv("FLOW3D_CACHE_DIR", str(blocker / "cache"))
    with caplog.at_level(logging.WARNING, logger="flow3d"):
        stats = run_training.main(
            ["--work-dir", str(tmp_path / "w"), *FAST, "--max-steps", "2", "--save-every", "0", *data_args(clip_root)]
        )
    assert stats["steps"] == 2
    assert len([m for m in _messages(caplog, logging.WARNING) if "cannot be used" in m]) == 1


# ------------------------------------------------------------------ the flow cache
def test_flow_cache_entry_without_crc_is_recomputed(tmp_path, caplog):
    rng = np.random.default_rng(1)
    a = rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)
    b = np.roll(a, 1, axis=1)
    cache = FlowCache(tmp_path / "fc")
    ref = cache.get(0, 1, a, b)
    path = cache.path(0, 1, 24, 32)
    with np.load(path) as z:
        data = {k: z[k] for k in z.files if k != "crc"}
    path.write_bytes(npz_bytes(data))
    with caplog.at_level(logging.WARNING, logger="flow3d"):
        again = FlowCache(tmp_path / "fc").get(0, 1, a, b)
    (line,) = _messages(caplog, logging.WARNING)
    assert str(path) in line and "crc" in line and "recomputing" in line
    np.testing.assert_array_equal(again.flow, ref.flow)
    with np.load(path) as z:
        assert "crc" in z.files  # rewritten whole


# ------------------------------------------------------------------ the EndoNeRF converter
@pytest.fixture(scope="module")
def endo_src(tmp_path_factory) -> Path:
    seq = make_synthetic_sequence(SyntheticDataConfig(scene="tissue", num_frames=4, width=32, height=24))
    return write_endonerf_layout(seq, tmp_path_factory.mktemp("endo") / "src", depth_scale=1000.0)


def _convert(src: Path, out: Path, seq: str, *extra: str):
    return convert_cli.main(
        ["--src", str(src), "--out-root", str(out), "--seq-name", seq, "--depth-scale", "1000", *extra]
    )


@pytest.mark.parametrize("name", ["", ".", "..", "a/../b"])
def test_converter_overwrite_with_a_path_for_a_name_loses_nothing(tmp_path, endo_src, name):
    out = tmp_path / "out"
    _convert(endo_src, out, "a")
    _convert(endo_src, out, "b")
    before = _tree(out)
    assert len(before) > 20
    main_error(
        convert_cli.main,
        ["--src", str(endo_src), "--out-root", str(out), "--seq-name", name, "--overwrite"],
        "--seq-name",
        repr(name),
    )
    assert _tree(out) == before


def test_converter_overwrite_replaces_only_its_own_sequence(tmp_path, endo_src):
    out = tmp_path / "out"
    _convert(endo_src, out, "a")
    _convert(endo_src, out, "ab")  # a name that starts with the other one
    others = {k: v for k, v in _tree(out).items() if "/ab" in k or k.endswith("ab.npy")}
    (out / "images" / "a" / "stray.png").write_bytes(b"x")  # inside a's own folder: removed with it
    _convert(endo_src, out, "a", "--overwrite")
    after = _tree(out)
    assert {k: v for k, v in after.items() if k in others} == others
    assert "images/a/stray.png" not in after
    main_error(
        convert_cli.main,
        ["--src", str(endo_src), "--out-root", str(out), "--seq-name", "c", "--depth-type", "..", "--overwrite"],
        "--depth-type",
    )
    assert _tree(out) == after


def test_depth_scale_checked_against_the_bounds(endo_src, tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="flow3d"):
        EndoNeRFDataConfig(
            root_dir=str(endo_src), depth_scale=1000.0, tracks="none", use_cache=False, normalize_scene=False
        ).load()
    assert not _messages(caplog, logging.WARNING)
    data_cache.clear_memo()
    with caplog.at_level(logging.WARNING, logger="flow3d"):
        _convert(endo_src, tmp_path / "o", "a")  # the converter shares the reader: same check
        caplog.clear()
        convert_cli.main(
            ["--src", str(endo_src), "--out-root", str(tmp_path / "o2"), "--seq-name", "a", "--depth-scale", "1"]
        )
    (line,) = _messages(caplog, logging.WARNING)
    assert "depth_scale 1:" in line and "depth_scale 1000 would fit" in line and "--depth-scale" in line


def test_converter_output_loads_without_warnings(tmp_path, endo_src, caplog):
    out = tmp_path / "out"
    _convert(endo_src, out, "pulling")
    with caplog.at_level(logging.INFO, logger="flow3d"):
        seq = _load(out, tmp_path, seq_name="pulling")
    assert seq.tracks_xy.shape[0] > 0
    assert not _messages(caplog, logging.WARNING)
    infos = " ".join(_messages(caplog, logging.INFO))
    assert "ignored pixels" in infos and "no track folder" in infos


# ------------------------------------------------------------------ a changed prior on resume
def test_changed_prior_is_named_not_the_cameras(tmp_path, clip):
    old = content_record(_load(clip, tmp_path / "a"))
    for f in sorted((clip / DEPTH / SEQ).glob("*.npy"))[1:3]:
        np.save(f, np.ascontiguousarray(np.load(f)[::-1]))  # another prior: flipped upside down
    data_cache.clear_memo()
    new = _load(clip, tmp_path / "b")
    why = content_differences(old, new)
    assert why is not None and "depth prior of frame 1 (and 1 more)" in why and "cameras" not in why


def test_prior_changed_by_a_per_frame_scale_and_shift_is_the_same(tmp_path, clip):
    seq = _load(clip, tmp_path)
    old = content_record(seq)
    s = torch.linspace(0.5, 2.0, seq.num_frames)[:, None, None]
    seq.prior_disp = torch.where(seq.prior_valid, seq.prior_disp * s + 0.1, seq.prior_disp)  # what --prior-align does
    assert content_differences(old, seq) is None


def test_resume_on_a_changed_prior_names_the_prior(work, clip_root, tmp_path):
    moved = Path(shutil.copytree(clip_root, tmp_path / "moved"))
    f = sorted((moved / DEPTH / SEQ).glob("*.npy"))[2]
    np.save(f, np.ascontiguousarray(np.load(f)[:, ::-1]))
    argv = ["--work-dir", str(work), *FAST, "--max-steps", "6", *data_args(moved)]
    msg = main_error(run_training.main, argv, "last.ckpt", "depth prior of frame 2")
    assert "cameras" not in msg
