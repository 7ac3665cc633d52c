"""data:custom / data:davis on small fixtures written by the synthetic scene; every bad-input case."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import logging
import shutil
import textwrap
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import tyro

from flow3d.data import (
    CustomDataConfig,
    DataConfig,
    DavisDataConfig,
    SyntheticDataConfig,
    make_synthetic_sequence,
    write_custom_layout,
)
from flow3d.data import cache as data_cache
from flow3d.data import io as data_io
from flow3d.geometry import project_points

SEQ = "syn"
SMALL = dict(num_frames=12, width=64, height=48)


@pytest.fixture(scope="module")
def synth():
    return make_synthetic_sequence(SyntheticDataConfig(**SMALL))


@pytest.fixture(scope="module")
def layout(synth, tmp_path_factory):
    return write_custom_layout(synth, tmp_path_factory.mktemp("layout"), SEQ)


@pytest.fixture
def root(layout, tmp_path):
    """A fresh, writable copy of the layout for tests that damage it."""
    dst = tmp_path / "root"
    shutil.copytree(layout, dst)
    return dst


@pytest.fixture(autouse=True)
def _no_memo():
    data_cache.clear_memo()
    yield
    data_cache.clear_memo()


def cfg(root: Path, **kw) -> CustomDataConfig:
    kw.setdefault("normalize_scene", False)
    kw.setdefault("max_tracks_per_query", 0)
    kw.setdefault("use_cache", False)
    kw.setdefault("missing_tracks", "none")
    return CustomDataConfig(seq_name=SEQ, root_dir=str(root), cache_dir=str(Path(root).parent / "cache"), **kw)


# ------------------------------------------------------------------------------------------------
def test_custom_reads_back_what_synthetic_wrote(synth, layout):
    seq = cfg(layout).load()
    for k in (
        "images",
        "fg_masks",
        "prior_disp",
        "prior_valid",
        "Ks",
        "tracks_xy",
        "tracks_visible",
        "tracks_conf",
        "tracks_query_t",
        "train_ids",
        "val_ids",
        "time_ids",
    ):
        a, b = getattr(synth, k), getattr(seq, k)
        assert a.shape == b.shape and a.dtype == b.dtype, k
        assert torch.equal(a, b), k
    torch.testing.assert_close(seq.w2cs, synth.w2cs, atol=1e-6, rtol=0)
    assert seq.valid_masks.all() and seq.frame_names == synth.frame_names


def test_split_follows_endonerf_protocol(layout):
    seq = cfg(layout).load()
    assert seq.val_ids.tolist() == [1, 9]
    assert seq.train_ids.tolist() == [0, 2, 3, 4, 5, 6, 7, 8, 10, 11]
    seq4 = cfg(layout, val_every=4).load()
    assert seq4.val_ids.tolist() == [1, 5, 9]
    assert cfg(layout, val_every=0).load().val_ids.numel() == 0
    with pytest.raises(ValueError, match="val_every"):
        cfg(layout, val_every=1).load()
    m = seq.track_train_mask()
    assert not m[:, 1].any() and not m[seq.tracks_query_t == 9].any() and m[seq.tracks_query_t == 0][:, 0].all()


def test_start_end_and_time_ids(layout):
    seq = cfg(layout, start=2, end=7).load()
    assert seq.num_frames == 5 and seq.time_ids.tolist() == [2, 3, 4, 5, 6]
    assert set(seq.tracks_query_t.tolist()) == set(range(5))
    with pytest.raises(ValueError, match="frame range"):
        cfg(layout, start=5, end=50).load()


def test_downscale_keeps_projection_consistent(synth, layout):
    seq = cfg(layout, downscale=2).load()
    assert seq.img_wh == (32, 24)
    xy, _ = project_points(synth.gt_tracks_3d.transpose(0, 1), seq.Ks, seq.w2cs)  # (T, M, 2)
    vis = synth.tracks_visible.T
    torch.testing.assert_close(xy[vis], seq.tracks_xy.transpose(0, 1)[vis], atol=1e-3, rtol=0)
    # a pixel-centre grid: new pixel (0, 0) covers old pixels 0..1, centre at old 0.5
    torch.testing.assert_close(seq.Ks[0, 0, 2], (synth.Ks[0, 0, 2] - 0.5) / 2)


def test_cache_avoids_decoding(layout, tmp_path, monkeypatch):
    c = CustomDataConfig(seq_name=SEQ, root_dir=str(layout), cache_dir=str(tmp_path / "c"), missing_tracks="none")
    first = c.load()
    assert len(list((tmp_path / "c").glob("*.npz"))) == 1
    data_cache.clear_memo()

    def boom(*a, **k):
        raise AssertionError("decoded an image despite the cache")

    monkeypatch.setattr(data_io, "read_image", boom)
    second = c.load()
    for k in ("images", "prior_disp", "w2cs", "tracks_xy", "tracks_conf"):
        assert torch.equal(getattr(first, k), getattr(second, k)), k
    assert first.scene_scale == second.scene_scale
    # is_train does not change what is loaded, so it shares the cache
    data_cache.clear_memo()
    third = CustomDataConfig(
        seq_name=SEQ, root_dir=str(layout), cache_dir=str(tmp_path / "c"), missing_tracks="none", is_train=False
    ).load()
    assert torch.equal(third.images, first.images)


def test_scene_normalisation_from_tracks(synth, layout):
    raw = cfg(layout).load()
    nrm = cfg(layout, normalize_scene=True).load()
    # projections of GT points mapped by the documented relation, with normalised cameras, are unchanged
    X = synth.gt_tracks_3d
    Xn = (X @ nrm.scene_transform[:3, :3].T + nrm.scene_transform[:3, 3]) / nrm.scene_scale
    xy_raw = project_points(X.transpose(0, 1), raw.Ks, raw.w2cs)[0]
    xy_nrm, z_nrm = project_points(Xn.transpose(0, 1), nrm.Ks, nrm.w2cs)
    torch.testing.assert_close(xy_nrm, xy_raw, atol=2e-3, rtol=0)
    torch.testing.assert_close(nrm.prior_disp, raw.prior_disp * nrm.scene_scale)
    # the foreground track points are centred and have unit-ish extent; up is +z
    tr = nrm.get_tracks_3d(5000, generator=torch.Generator().manual_seed(0))
    pts = tr.points[tr.visible]
    assert pts.mean(0).abs().max() < 0.05
    ext = (pts.quantile(0.95, 0) - pts.quantile(0.05, 0)).max() / 2
    assert 0.9 < ext < 1.1
    up = -nrm.w2cs[:, 1, :3].mean(0)
    assert torch.allclose(up / up.norm(), torch.tensor([0.0, 0.0, 1.0]), atol=1e-5)


def test_init_helpers_lift_into_the_right_places(synth, layout):
    synth_perfect = make_synthetic_sequence(SyntheticDataConfig(**SMALL, prior_drift="perfect"))
    tr = synth_perfect.get_tracks_3d(400, generator=torch.Generator().manual_seed(0))
    assert tr.points.shape[1:] == (12, 3) and 0 < tr.points.shape[0] <= 400
    # foreground tracks only, query frames in the train split
    assert set(tr.query_t.tolist()) <= set(synth_perfect.train_ids.tolist())
    # with a perfect prior, visible lifted points equal the GT 3D tracks (away from edges)
    err = []
    for n in range(tr.points.shape[0]):
        q = int(tr.query_t[n])
        # find the GT track whose lifted query point this is
        d = (synth_perfect.gt_tracks_3d[:, q] - tr.points[n, q]).norm(dim=-1)
        m = int(d.argmin())
        err.append((synth_perfect.gt_tracks_3d[m] - tr.points[n]).norm(dim=-1)[tr.visible[n]])
    err = torch.cat(err)
    assert err.median() < 0.02
    assert not tr.visible[:, synth_perfect.val_ids].any()
    bg = synth_perfect.get_bg_points(2000, generator=torch.Generator().manual_seed(0))
    assert bg.points.shape == (2000, 3) and bg.colors.shape == (2000, 3)
    torch.testing.assert_close(bg.normals.norm(dim=-1), torch.ones(2000), atol=1e-4, rtol=0)
    # background points lie on the room's planes: back wall z=6, floor y=1.2, ceiling y=-2.2, walls x=+-3.5
    P = bg.points
    on_plane = (
        ((P[:, 2] - 6).abs() < 0.02)
        | ((P[:, 1] - 1.2).abs() < 0.02)
        | ((P[:, 1] + 2.2).abs() < 0.02)
        | ((P[:, 0].abs() - 3.5).abs() < 0.02)
    )
    assert on_plane.float().mean() > 0.97


# ------------------------------------------------------------------------------------------------
# Commands as users type them
@dataclass
class _TrainArgs:
    work_dir: str
    data: DataConfig


@dataclass
class _ValArgs:
    work_dir: str
    model: str
    data: DataConfig


def test_issue_command_lines_parse():
    a = tyro.cli(
        _TrainArgs,
        args="--work-dir ./outputs/pulling_60_ordinal data:custom --data.seq-name pulling --data.root-dir /data/pulling --data.is-train True".split(),
    )
    assert isinstance(a.data, CustomDataConfig) and a.data.is_train is True
    assert (
        a.data.seq_name == "pulling"
        and a.data.root_dir == "/data/pulling"
        and a.work_dir == "./outputs/pulling_60_ordinal"
    )
    v = tyro.cli(
        _ValArgs,
        args="--work-dir OUT --model 4000 data:custom --data.seq-name pulling --data.root-dir /data/pulling --data.is-train False".split(),
    )
    assert isinstance(v.data, CustomDataConfig) and v.data.is_train is False and v.model == "4000"
    s = tyro.cli(_TrainArgs, args="--work-dir o data:synthetic --data.num-frames 8 --data.prior-drift none".split())
    assert isinstance(s.data, SyntheticDataConfig) and s.data.num_frames == 8
    d = tyro.cli(_TrainArgs, args="--work-dir o data:davis --data.seq-name horsejump-high --data.root-dir /x".split())
    assert isinstance(d.data, DavisDataConfig) and d.data.res == "480p"


def test_help_lists_subcommands_with_field_help(capsys):
    with pytest.raises(SystemExit):
        tyro.cli(_TrainArgs, args=["--help"])
    out = capsys.readouterr().out
    for sub in ("data:synthetic", "data:custom", "data:davis", "data:iphone"):
        assert sub in out
    from flow3d.data import IPhoneDataConfig

    for cls in (SyntheticDataConfig, CustomDataConfig, DavisDataConfig, IPhoneDataConfig):
        documented = set()
        for base in cls.__mro__:
            if base is object:
                continue
            body = ast.parse(textwrap.dedent(inspect.getsource(base))).body[0].body
            for a, b in zip(body, body[1:]):
                if (
                    isinstance(a, ast.AnnAssign)
                    and isinstance(b, ast.Expr)
                    and isinstance(b.value, ast.Constant)
                    and str(b.value.value).strip()
                ):
                    documented.add(a.target.id)
        for f in dataclasses.fields(cls):
            assert f.name in documented, f"{cls.__name__}.{f.name} has no docstring"


# ------------------------------------------------------------------------------------------------
# Other inputs: depth formats, static camera, flow tracks
def test_depth_formats(synth, root):
    depth_m = 1.0 / synth.prior_disp  # the prior as z-depth
    for fmt, folder in (("depth_npy", "d_npy"), ("depth_png", "d_png")):
        (root / folder / SEQ).mkdir(parents=True)
        for t, n in enumerate(synth.frame_names):
            if fmt == "depth_npy":
                np.save(root / folder / SEQ / f"{n}.npy", depth_m[t].numpy())
            else:
                cv2.imwrite(
                    str(root / folder / SEQ / f"{n}.png"), (depth_m[t].numpy() * 1000).round().astype(np.uint16)
                )
        seq = cfg(root, depth_type=folder, depth_format=fmt).load()
        tol = 1e-5 if fmt == "depth_npy" else 1e-3
        torch.testing.assert_close(seq.prior_disp, synth.prior_disp, rtol=tol, atol=0)


def test_missing_camera_file_gives_static_camera(root, caplog):
    (root / "droid_recon" / f"{SEQ}.npy").unlink()
    with caplog.at_level(logging.WARNING, logger="flow3d"):
        seq = cfg(root, missing_camera="static").load()
    assert torch.equal(seq.w2cs, torch.eye(4).expand(12, 4, 4))
    f = 32 / np.tan(np.radians(30))
    torch.testing.assert_close(seq.Ks[0], torch.tensor([[f, 0, 31.5], [0, f, 23.5], [0, 0, 1]], dtype=torch.float32))
    assert "static camera" in caplog.text
    seq2 = cfg(root, focal_length=50.0, missing_camera="static").load()
    assert seq2.Ks[0, 0, 0] == 50.0 and seq2.Ks[0, 1, 1] == 50.0


def test_missing_tracks_call_flow_fallback(synth, root, monkeypatch):
    """The fallback passes uint8 frames, bool masks and the train frames as queries, and converts the
    (P, 4) TAPIR arrays it gets back with the same converter as the files."""
    flow_mod = pytest.importorskip("flow3d.flow", reason="flow3d.flow not available")
    shutil.rmtree(root / "bootstapir")
    with pytest.raises(ValueError, match="track folder not found"):
        cfg(root, missing_tracks="error").load()
    calls = {}

    def fake(images, masks, query_frames, grid_step=8, backend="dis", cache_dir=None):
        calls.update(images=images, masks=masks, queries=list(query_frames), grid_step=grid_step, backend=backend)
        T = images.shape[0]
        return {
            (q, t): np.array([[1.0 + t, 2.0, -20.0, -20.0], [3.0, 4.0 + q, 20.0, -20.0]], np.float32)
            for q in query_frames
            for t in range(T)
        }

    monkeypatch.setattr(flow_mod, "tracks_from_flow", fake)
    seq = cfg(root, missing_tracks="flow", flow_grid_step=6, flow_query_stride=2).load()
    assert calls["images"].dtype == np.uint8 and calls["images"].shape == (12, 48, 64, 3)
    assert np.array_equal(calls["images"], (synth.images * 255).round().byte().numpy())
    assert calls["masks"].dtype == bool and np.array_equal(calls["masks"], synth.fg_masks.numpy() > 0.5)
    assert calls["queries"] == [0, 3, 5, 7, 10] and calls["grid_step"] == 6  # train ids [0,2,3,...][::2]
    assert seq.tracks_query_t.tolist() == [0, 0, 3, 3, 5, 5, 7, 7, 10, 10]
    assert seq.tracks_xy[0, :, 0].tolist() == [1.0 + t for t in range(12)]
    assert seq.tracks_visible[0::2].all() and not seq.tracks_visible[1::2].any()
    assert (seq.tracks_conf == 1).all()  # confidently visible / confidently occluded


def test_missing_tracks_built_from_real_flow(tmp_path):
    pytest.importorskip("flow3d.flow", reason="flow3d.flow not available")
    synth = make_synthetic_sequence(SyntheticDataConfig(track_query_stride=24))
    root = write_custom_layout(synth, tmp_path / "r", SEQ)
    shutil.rmtree(root / "bootstapir")
    seq = cfg(root, end=6, missing_tracks="flow", flow_grid_step=4, val_every=0).load()
    assert set(seq.tracks_query_t.tolist()) == set(range(6))
    errs, mags = [], []
    for q in range(5):
        rows = (seq.tracks_query_t == q).nonzero().squeeze(1)
        ok = seq.tracks_visible[rows, q + 1]
        p = seq.tracks_xy[rows, q][ok]
        gt = synth.gt_flow(q, q + 1)[p[:, 1].round().long(), p[:, 0].round().long()]
        errs.append((seq.tracks_xy[rows, q + 1][ok] - p - gt).norm(dim=-1))
        mags.append(gt.norm(dim=-1))
    err, mag = torch.cat(errs), torch.cat(mags)
    assert err.numel() > 100
    # DIS on small rotating objects is rough; the point is that positions, frames and axes line up
    assert err.median() < 0.6 * mag.median() and err.median() < 1.5, (err.median(), mag.median())


# ------------------------------------------------------------------------------------------------
# Bad input: one clear error naming the file or field, or masking + a warning with counts
def test_missing_root_or_images(root):
    with pytest.raises(ValueError, match="root_dir not found"):
        cfg(root / "nope").load()
    shutil.rmtree(root / "images")
    with pytest.raises(ValueError, match=r"images folder not found; tried .*images/syn"):
        cfg(root).load()


def test_missing_masks_or_depth_folder(root):
    shutil.rmtree(root / "aligned_depth_anything")
    with pytest.raises(ValueError, match="depth folder not found.*depth-format constant"):
        cfg(root).load()
    seq = cfg(root, depth_format="constant", constant_depth=2.0).load()
    assert torch.all(seq.prior_disp == 0.5)
    shutil.rmtree(root / "masks")
    with pytest.raises(ValueError, match="masks folder not found"):
        cfg(root, depth_format="constant").load()


def test_frame_count_mismatches(root):
    (root / "masks" / SEQ / "00003.png").unlink()
    with pytest.raises(
        ValueError, match=r"frame-count mismatch: masks folder .* has 11 masks, images folder .* has 12"
    ):
        cfg(root).load()


def test_depth_count_mismatch(root):
    (root / "aligned_depth_anything" / SEQ / "00005.npy").unlink()
    with pytest.raises(ValueError, match=r"frame-count mismatch: depth folder .* has 11"):
        cfg(root).load()


def test_renamed_mask_is_named(root):
    (root / "masks" / SEQ / "00003.png").rename(root / "masks" / SEQ / "x00003.png")
    with pytest.raises(ValueError, match=r"mask for frame '00003' not found"):
        cfg(root).load()


def test_camera_count_mismatch_and_corrupt_camera(root):
    path = root / "droid_recon" / f"{SEQ}.npy"
    rec = np.load(path, allow_pickle=True).item()
    rec["traj_c2w"] = rec["traj_c2w"][:10]
    np.save(path, rec, allow_pickle=True)
    with pytest.raises(
        ValueError, match=r"droid_recon/syn.npy: field 'traj_c2w' has 10 poses, the images folder has 12"
    ):
        cfg(root).load()
    del rec["intrinsics"]
    np.save(path, rec, allow_pickle=True)
    with pytest.raises(ValueError, match="missing field 'intrinsics'"):
        cfg(root).load()
    path.write_bytes(b"not a numpy file at all")
    with pytest.raises(ValueError, match=r"cannot read camera file .*syn.npy"):
        cfg(root).load()


def test_unreadable_image(root):
    (root / "images" / SEQ / "00004.png").write_bytes(b"\x89PNG garbage")
    with pytest.raises(ValueError, match=r"cannot read image .*00004.png"):
        cfg(root).load()


def test_depth_of_wrong_size(root):
    np.save(root / "aligned_depth_anything" / SEQ / "00002.npy", np.ones((10, 10), np.float32))
    with pytest.raises(
        ValueError, match=r"depth file .*00002.npy: expected size \(H, W\) = \(48, 64\) like the images, got \(10, 10\)"
    ):
        cfg(root).load()


def test_nan_inf_and_nonpositive_depth_are_masked_with_a_warning(root, synth, caplog):
    p = root / "aligned_depth_anything" / SEQ / "00002.npy"
    d = np.load(p)
    d[0, :5] = np.nan
    d[1, :3] = np.inf
    d[2, :2] = -1.0
    d[3, :1] = 0.0
    np.save(p, d)
    with caplog.at_level(logging.WARNING, logger="flow3d"):
        seq = cfg(root).load()
    assert "11 pixels in 1 of 12 frames" in caplog.text and "00002 (11)" in caplog.text
    assert (~seq.prior_valid).sum() == 11 and not seq.prior_valid[2, 0, :5].any()
    assert torch.isfinite(seq.prior_disp).all() and (seq.prior_disp[~seq.prior_valid] == 0).all()
    assert (seq.prior_depth()[~seq.prior_valid] == 0).all()


def test_all_invalid_depth_is_an_error(root):
    for p in (root / "aligned_depth_anything" / SEQ).glob("*.npy"):
        np.save(p, np.full((48, 64), np.nan, np.float32))
    with pytest.raises(ValueError, match="no finite positive value"):
        cfg(root).load()


def test_empty_masks_everywhere(root):
    for p in (root / "masks" / SEQ).glob("*.png"):
        cv2.imwrite(str(p), np.zeros((48, 64), np.uint8))
    with pytest.raises(ValueError, match="foreground is empty in every frame"):
        cfg(root).load()


def test_bad_track_file(root):
    np.save(root / "bootstapir" / SEQ / "00000_00003.npy", np.zeros((5, 3), np.float32))
    with pytest.raises(ValueError, match=r"track file .*00000_00003.npy: expected \(P, 4\)"):
        cfg(root).load()
    np.save(root / "bootstapir" / SEQ / "00000_00003.npy", np.zeros((5, 4), np.float32))
    with pytest.raises(ValueError, match=r"entry \(0, 3\) must have shape \(48, 4\)"):
        cfg(root).load()


def test_mask_of_wrong_size(root):
    cv2.imwrite(str(root / "masks" / SEQ / "00001.png"), np.zeros((10, 10), np.uint8))
    with pytest.raises(ValueError, match=r"mask .*00001.png: expected size"):
        cfg(root).load()
