"""data:endonerf on hand-built clips and on the tissue scene written in EndoNeRF's layout; the converter to
the casual layout; ignore masks and reference depth in data:custom; every bad-input case names the file."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import shutil
import textwrap
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import tyro

from flow3d.config import TrainConfig
from flow3d.data import (
    CustomDataConfig,
    DataConfig,
    EndoNeRFDataConfig,
    SyntheticDataConfig,
    make_synthetic_sequence,
)
from flow3d.data import cache as data_cache
from flow3d.data.endonerf import GL_TO_CV, write_endonerf_layout, write_poses_bounds
from flow3d.data.endoscopy import read_value_map, stop_tracks_on_ignored
from flow3d.flow import TRACK_LOGIT
from flow3d.geometry import bilinear_sample, project_points
from flow3d.preprocess import endonerf as convert_cli
from flow3d.preprocess import synthetic as synth_cli

TISSUE = dict(scene="tissue", num_frames=10, width=128, height=96)  # DIS flow needs this size to be accurate
DEPTH_SCALE = 1000.0


@pytest.fixture(autouse=True)
def _no_memo():
    data_cache._MEMO.clear()
    yield
    data_cache._MEMO.clear()


@pytest.fixture(scope="module")
def tissue():
    return make_synthetic_sequence(SyntheticDataConfig(**TISSUE))


@pytest.fixture(scope="module")
def endo_root(tissue, tmp_path_factory):
    return write_endonerf_layout(tissue, tmp_path_factory.mktemp("endo") / "clip", depth_scale=DEPTH_SCALE)


@pytest.fixture
def root(endo_root, tmp_path):
    """A fresh, writable copy of the written clip for tests that damage it."""
    dst = tmp_path / "clip"
    shutil.copytree(endo_root, dst)
    return dst


def cfg(root: Path, **kw) -> EndoNeRFDataConfig:
    kw.setdefault("normalize_scene", False)
    kw.setdefault("use_cache", False)
    kw.setdefault("tracks", "none")
    kw.setdefault("depth_scale", DEPTH_SCALE)
    kw.setdefault("cache_dir", str(Path(root).parent / "cache"))
    return EndoNeRFDataConfig(root_dir=str(root), **kw)


def hand_clip(root: Path, T: int = 3, H: int = 6, W: int = 8, depth_dtype=np.uint16, hwf=(12.0, 16.0, 20.0)) -> Path:
    """A tiny clip: flat grey frames, depth 1.5 (stored 1500, or 150 for 8-bit) with a hole at (0, 0),
    masks with an instrument square in the top-left corner, and identity OpenGL poses."""
    for d in ("images", "depth", "masks"):
        (root / d).mkdir(parents=True, exist_ok=True)
    for t in range(T):
        cv2.imwrite(str(root / "images" / f"frame-{t:06d}.color.png"), np.full((H, W, 3), 100 + t, np.uint8))
        depth = np.full((H, W), 1500 if depth_dtype == np.uint16 else 150, depth_dtype)
        depth[0, 0] = 0
        cv2.imwrite(str(root / "depth" / f"frame-{t:06d}.depth.png"), depth)
        mask = np.zeros((H, W), np.uint8)
        mask[:2, :3] = 255
        cv2.imwrite(str(root / "masks" / f"frame-{t:06d}.mask.png"), mask)
    M = np.concatenate([np.eye(3, 4), np.array(hwf)[:, None]], 1)  # (3, 5)
    rows = np.concatenate([np.tile(M.reshape(1, 15), (T, 1)), np.tile([[0.5, 3.0]], (T, 1))], 1)
    np.save(root / "poses_bounds.npy", rows)
    return root


# ------------------------------------------------------------------------------------------------
# Loader facts
def test_reads_back_the_tissue_scene(tissue, endo_root):
    seq = cfg(endo_root).load()
    assert seq.name == "clip" and seq.frame_names[0] == "frame-000000.color"
    assert torch.equal(seq.images, tissue.images)
    assert torch.equal(seq.valid_masks, tissue.valid_masks) and torch.equal(seq.fg_masks, tissue.fg_masks)
    torch.testing.assert_close(seq.w2cs, tissue.w2cs, atol=1e-6, rtol=0)
    torch.testing.assert_close(seq.Ks, tissue.Ks, atol=1e-4, rtol=1e-6)
    # the stereo depth is the reference (not ground truth): GT with 1% noise, 1 mm steps and holes
    assert seq.gt_depth_source == "stereo"
    ok = seq.gt_depth > 0
    assert 0.03 < (~ok).float().mean() < 0.15
    rel = ((seq.gt_depth - tissue.gt_depth).abs() / tissue.gt_depth)[ok]
    assert 0.004 < rel.median() < 0.012
    # the default prior is that stereo depth, holes and instruments (ignored pixels) masked
    assert torch.equal(seq.prior_valid, ok & seq.valid_masks)
    torch.testing.assert_close(seq.prior_disp[seq.prior_valid], 1.0 / seq.gt_depth[seq.prior_valid], rtol=1e-6, atol=0)
    # the written monocular-like prior, read as disparity, is the scene's drifting prior
    mono = cfg(endo_root, prior_dir="mono_disp", prior_kind="disparity").load()
    torch.testing.assert_close(mono.prior_disp, tissue.prior_disp, rtol=0, atol=0)
    assert torch.equal(mono.gt_depth, seq.gt_depth)


def test_split_holds_out_frames_1_9_17(endo_root):
    seq = cfg(endo_root).load()
    assert seq.val_ids.tolist() == [1, 9] and seq.train_ids.tolist() == [0, 2, 3, 4, 5, 6, 7, 8]


def test_pose_convention_on_a_hand_built_poses_file(tmp_path):
    """OpenGL c2w columns (right, up, back) with hwf for 16x12 images; the files are 8x6. A world point
    2 units in front of the camera, 0.5 right and 0.25 up projects where it must, by hand."""
    root = hand_clip(tmp_path / "c")
    C = np.array([1.0, 2.0, 3.0])
    right, up, back = np.array([1.0, 0, 0]), np.array([0, 0, 1.0]), np.array([0, -1.0, 0])  # looks along +y
    M = np.stack([right, up, back, C, [12.0, 16.0, 20.0]], 1)  # (3, 5)
    np.save(
        root / "poses_bounds.npy", np.concatenate([np.tile(M.reshape(1, 15), (3, 1)), np.tile([[0.5, 3.0]], (3, 1))], 1)
    )
    seq = cfg(root, depth_scale=1000).load()
    # f scales with the image: 20 * 8 / 16 = 10; principal point at the centre of the 8x6 image
    torch.testing.assert_close(seq.Ks[0], torch.tensor([[10.0, 0, 3.5], [0, 10.0, 2.5], [0, 0, 1]]))
    P = torch.tensor(C + 2.0 * -back + 0.5 * right + 0.25 * up, dtype=torch.float32)
    xy, z = project_points(P[None], seq.Ks[0], seq.w2cs[0])
    torch.testing.assert_close(z, torch.tensor([2.0]))
    torch.testing.assert_close(xy, torch.tensor([[3.5 + 10 * 0.5 / 2, 2.5 - 10 * 0.25 / 2]]))  # right is +x, up is -y
    # and the writer is the exact inverse of the reader
    write_poses_bounds(tmp_path / "pb.npy", seq.w2cs.double().numpy(), seq.Ks.double().numpy(), (6, 8), np.ones((3, 2)))
    back_rows = np.load(tmp_path / "pb.npy")
    np.testing.assert_allclose(back_rows[:, :15].reshape(-1, 3, 5)[:, :, :4], np.tile(M[:, :4], (3, 1, 1)), atol=1e-6)
    assert np.allclose(GL_TO_CV @ GL_TO_CV, np.eye(4))


@pytest.mark.parametrize("dtype,scale", [(np.uint16, 1000.0), (np.uint8, 100.0)])
def test_mask_polarity_depth_scale_and_bit_depths(tmp_path, dtype, scale):
    root = hand_clip(tmp_path / "c", depth_dtype=dtype)
    seq = cfg(root, depth_scale=scale).load()
    inst = torch.zeros(6, 8, dtype=torch.bool)
    inst[:2, :3] = True
    assert torch.equal(seq.valid_masks, ~inst.expand(3, 6, 8))  # 255 = instrument = ignored
    assert torch.equal(seq.fg_masks, (~inst).float().expand(3, 6, 8))  # tissue is the foreground
    expected = torch.full((3, 6, 8), 1.5)
    expected[:, 0, 0] = 0.0  # a hole
    torch.testing.assert_close(seq.gt_depth, expected)
    # the prior (the stereo depth) is invalid at its hole and on the instrument (ignored pixels)
    assert torch.equal(seq.prior_valid, (expected > 0) & ~inst) and seq.prior_valid.sum() == 3 * 42
    torch.testing.assert_close(seq.prior_disp[seq.prior_valid], torch.full((3 * 42,), 1 / 1.5))
    torch.testing.assert_close(seq.images[1], torch.full((6, 8, 3), 101 / 255))


def test_prior_dir_kinds_and_scales(tmp_path):
    root = hand_clip(tmp_path / "c")
    rng = np.random.default_rng(0)
    depth = rng.uniform(0.5, 2.0, (3, 6, 8))
    for kind, folder, write in (
        ("disparity", "p_disp", lambda p, t: np.save(p.with_suffix(".npy"), 1.0 / depth[t])),
        ("depth", "p_depth", lambda p, t: np.save(p.with_suffix(".npy"), depth[t].astype(np.float32))),
        (
            "depth",
            "p_png",
            lambda p, t: cv2.imwrite(str(p.with_suffix(".png")), np.round(depth[t] * 10000).astype(np.uint16)),
        ),
    ):
        (root / folder).mkdir()
        for t in range(3):
            write(root / folder / f"{t:03d}", t)
        seq = cfg(root, prior_dir=folder, prior_kind=kind, prior_png_scale=10000.0).load()
        v = seq.valid_masks  # the prior is masked on the instrument (ignored pixels)
        torch.testing.assert_close(seq.prior_disp[v], torch.from_numpy(1.0 / depth).float()[v], rtol=2e-4, atol=0)
        assert torch.equal(seq.prior_valid, v) and seq.gt_depth_source == "stereo" and seq.gt_depth is not None


def test_read_value_map_accepts_grey_rgb_and_rejects_colour(tmp_path):
    v = np.arange(12, dtype=np.uint8).reshape(3, 4) * 10
    cv2.imwrite(str(tmp_path / "grey3.png"), np.repeat(v[..., None], 3, -1))
    np.testing.assert_array_equal(read_value_map(tmp_path / "grey3.png", (3, 4), "depth"), v.astype(np.float64))
    colour = np.repeat(v[..., None], 3, -1)
    colour[0, 0] = (1, 2, 3)
    cv2.imwrite(str(tmp_path / "colour.png"), colour)
    with pytest.raises(ValueError, match="colour.png.*one channel"):
        read_value_map(tmp_path / "colour.png", (3, 4), "depth")


# ------------------------------------------------------------------------------------------------
# Tracks from flow never start on, and end on, instruments
def test_stop_tracks_on_ignored_hand_example():
    T, H, W = 5, 4, 10
    ignore = np.zeros((T, H, W), dtype=bool)
    ignore[3, :, 6] = True  # column 6 is an instrument in frame 3 only
    ignore[0, :, 0] = True  # column 0 in frame 0
    # one track moving right by 1 px per frame from (2, 1) at query frame 1; one staying at (8.5, 2)
    pairs = {
        (1, t): np.array(
            [[2.0 + (t - 1), 1.0, -TRACK_LOGIT, -TRACK_LOGIT], [8.5, 2.0, -TRACK_LOGIT, -TRACK_LOGIT]], np.float32
        )
        for t in range(T)
    }
    pairs[(1, 0)][0, :2] = (0.5, 1.0)  # backwards it lands half on column 0 (bilinear footprint)
    out = stop_tracks_on_ignored(pairs, ignore)
    vis = {t: out[(1, t)][:, 2] < 0 for t in range(T)}
    assert vis[1].tolist() == [True, True] and vis[2].tolist() == [True, True]
    assert vis[3].tolist() == [True, True]  # at x = 4 in frame 3: column 6 is not touched
    pairs2 = {k: v.copy() for k, v in pairs.items()}
    for t in range(T):
        pairs2[(1, t)][0, 0] = 2.0 + 2 * (t - 1)  # now 2 px per frame: x = 6 in frame 3
    out2 = stop_tracks_on_ignored(pairs2, ignore)
    assert [bool(out2[(1, t)][0, 2] < 0) for t in range(T)] == [False, True, True, False, False]
    assert out2[(1, 4)][0, :2].tolist() == [6.0, 1.0]  # ended where it landed, and stays there
    assert (out2[(1, 4)][0, 2:] == TRACK_LOGIT).all()
    assert vis[0].tolist() == [False, True]  # backwards onto the ignored column 0
    assert all((out2[(1, t)][1] == pairs2[(1, t)][1]).all() for t in range(T))  # the other track is untouched


def test_flow_tracks_avoid_instruments_and_follow_the_tissue(tissue, endo_root):
    seq = cfg(endo_root, tracks="flow", flow_grid_step=4, max_tracks_per_query=0).load()
    M = seq.tracks_xy.shape[0]
    q = seq.tracks_query_t
    assert M > 500 and set(q.tolist()) == set(seq.train_ids.tolist())
    qxy = seq.tracks_xy[torch.arange(M), q]
    assert seq.valid_masks[q, qxy[:, 1].long(), qxy[:, 0].long()].all()  # queries start on tissue
    ignore = (~seq.valid_masks).float()[:, None]  # (T, 1, H, W)
    on_inst = bilinear_sample(ignore, seq.tracks_xy.transpose(0, 1))[..., 0].T  # (M, T)
    assert (on_inst[seq.tracks_visible] < 1e-3).all()  # no visible entry touches an instrument pixel
    assert (on_inst[~seq.tracks_visible & (seq.tracks_conf == 0)] > 1e-3).any()  # tracks did end on them
    # ...and the flow follows the tissue's true motion
    errs, mags = [], []
    for qq in seq.train_ids.tolist()[:-1]:
        rows = (q == qq).nonzero().squeeze(1)
        ok = seq.tracks_visible[rows, qq + 1]
        p = seq.tracks_xy[rows, qq][ok]
        gt = tissue.gt_flow(qq, qq + 1)[p[:, 1].long(), p[:, 0].long()]
        errs.append((seq.tracks_xy[rows, qq + 1][ok] - p - gt).norm(dim=-1))
        mags.append(gt.norm(dim=-1))
    err, mag = torch.cat(errs), torch.cat(mags)
    assert err.median() < 0.5 * mag.median() and err.median() < 0.5, (err.median(), mag.median())


# ------------------------------------------------------------------------------------------------
# Command lines
@dataclass
class _ValArgs:
    work_dir: str
    model: str
    data: DataConfig


def test_issue_command_lines_parse_and_help_documents_every_field(capsys):
    a = tyro.cli(TrainConfig, args="--work-dir W data:endonerf --data.root-dir ROOT --data.is-train True".split())
    assert isinstance(a.data, EndoNeRFDataConfig) and a.data.root_dir == "ROOT" and a.data.is_train is True
    v = tyro.cli(
        _ValArgs,
        args="--work-dir W --model last data:endonerf --data.root-dir ROOT --data.is-train False "
        "--data.prior-dir mono_disp --data.prior-kind depth --data.depth-scale 100".split(),
    )
    assert (
        v.data.is_train is False
        and v.data.prior_dir == "mono_disp"
        and v.data.prior_kind == "depth"
        and v.data.depth_scale == 100
    )
    s = tyro.cli(TrainConfig, args="--work-dir W data:synthetic --data.scene tissue".split())
    assert isinstance(s.data, SyntheticDataConfig) and s.data.scene == "tissue"
    with pytest.raises(SystemExit):
        tyro.cli(TrainConfig, args=["--help"])
    assert "data:endonerf" in capsys.readouterr().out
    documented = set()
    for base in EndoNeRFDataConfig.__mro__[:-1]:
        body = ast.parse(textwrap.dedent(inspect.getsource(base))).body[0].body
        for x, y in zip(body, body[1:]):
            if isinstance(x, ast.AnnAssign) and isinstance(y, ast.Expr) and isinstance(y.value, ast.Constant):
                documented.add(x.target.id)
    assert {f.name for f in dataclasses.fields(EndoNeRFDataConfig)} <= documented


def test_synthetic_writer_cli_both_layouts(tmp_path, capsys):
    small = ["--scene", "tissue", "--num-frames", "4", "--width", "32", "--height", "24"]
    synth_cli.main([*small, "--layout", "endonerf", "--out-dir", str(tmp_path / "e"), "--depth-scale", "500"])
    assert "data:endonerf" in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "e").iterdir()) == [
        "depth",
        "images",
        "masks",
        "mono_disp",
        "poses_bounds.npy",
    ]
    d = cv2.imread(str(tmp_path / "e" / "depth" / "frame-000002.depth.png"), cv2.IMREAD_UNCHANGED)
    assert d.dtype == np.uint16 and 350 < np.median(d[d > 0]) < 600  # depth ~0.8-1.1 stored x 500
    e = cfg(tmp_path / "e", depth_scale=500, prior_dir="mono_disp").load()
    ref = make_synthetic_sequence(SyntheticDataConfig(scene="tissue", num_frames=4, width=32, height=24))
    assert torch.equal(e.images, ref.images) and torch.equal(e.prior_disp, ref.prior_disp)
    synth_cli.main([*small, "--layout", "custom", "--seq-name", "t", "--out-dir", str(tmp_path / "c")])
    c = CustomDataConfig(root_dir=str(tmp_path / "c"), seq_name="t", normalize_scene=False, use_cache=False).load()
    assert torch.equal(c.valid_masks, ref.valid_masks) and not c.valid_masks.all()  # ignore_masks/ read back
    assert torch.equal(c.gt_depth, ref.gt_depth) and c.gt_depth_source == "ground truth"  # gt_depth/ read back
    assert torch.equal(c.tracks_xy, ref.tracks_xy)
    with pytest.raises(SystemExit, match="error: --layout endonerf needs --scene tissue"):
        synth_cli.main(["--layout", "endonerf", "--out-dir", str(tmp_path / "x")])


# ------------------------------------------------------------------------------------------------
# The converter: endonerf -> custom loads the same sequence
def test_converter_round_trip(endo_root, tmp_path, capsys):
    out = tmp_path / "casual"
    convert_cli.main(
        ["--src", str(endo_root), "--out-root", str(out), "--seq-name", "pulling", "--depth-scale", str(DEPTH_SCALE)]
    )
    assert "data:custom --data.seq-name pulling" in capsys.readouterr().out
    kw = dict(normalize_scene=False, use_cache=False, flow_grid_step=6, max_tracks_per_query=0)
    a = cfg(endo_root, tracks="flow", **{k: v for k, v in kw.items() if k != "use_cache"}).load()
    b = CustomDataConfig(root_dir=str(out), seq_name="pulling", cache_dir=str(tmp_path / "cache"), **kw).load()
    for f in (
        "images",
        "fg_masks",
        "valid_masks",
        "prior_valid",
        "train_ids",
        "val_ids",
        "tracks_query_t",
        "tracks_visible",
    ):
        assert torch.equal(getattr(a, f), getattr(b, f)), f
    for f in ("prior_disp", "w2cs", "Ks", "gt_depth", "tracks_xy"):
        torch.testing.assert_close(getattr(a, f), getattr(b, f), rtol=1e-6, atol=1e-6, msg=f)
    assert b.gt_depth_source == "stereo" and a.frame_names == b.frame_names
    # the prior option converts too; existing output is kept unless --overwrite
    args = ["--src", str(endo_root), "--out-root", str(out), "--seq-name", "pulling", "--prior-dir", "mono_disp"]
    with pytest.raises(SystemExit, match="error: output exists: .*images/pulling.*--overwrite"):
        convert_cli.main(args)
    convert_cli.main([*args, "--overwrite"])
    c = CustomDataConfig(
        root_dir=str(out), seq_name="pulling", cache_dir=str(tmp_path / "cache"), missing_tracks="none", **kw
    ).load()
    mono = cfg(endo_root, prior_dir="mono_disp").load()
    torch.testing.assert_close(c.prior_disp, mono.prior_disp, rtol=1e-6, atol=0)
    with pytest.raises(SystemExit, match="error: root_dir not found"):
        convert_cli.main(["--src", str(tmp_path / "nope"), "--out-root", str(tmp_path / "o2"), "--seq-name", "s"])


def test_cache_keeps_the_reference_depth_source(endo_root, tmp_path):
    c = cfg(endo_root, use_cache=True, cache_dir=str(tmp_path / "cache"))
    first = c.load()
    data_cache._MEMO.clear()
    again = c.load()
    assert again.gt_depth_source == "stereo" and torch.equal(again.gt_depth, first.gt_depth)
    seq = make_synthetic_sequence(SyntheticDataConfig(**{**TISSUE, "num_frames": 3}))
    data_cache.save_sequence(tmp_path / "s.npz", seq)
    back = data_cache.load_sequence(tmp_path / "s.npz")
    torch.testing.assert_close(back.gt_flow(0, 2), seq.gt_flow(0, 2))


# ------------------------------------------------------------------------------------------------
# Bad input: one clear error naming the file
def test_missing_or_bad_poses_file(root):
    (root / "poses_bounds.npy").unlink()
    with pytest.raises(ValueError, match=r"poses file not found: .*poses_bounds\.npy"):
        cfg(root).load()
    np.save(root / "poses_bounds.npy", np.zeros((10, 15)))
    with pytest.raises(ValueError, match=r"poses_bounds\.npy: expected \(N, 17\)"):
        cfg(root).load()
    np.save(root / "poses_bounds.npy", np.zeros((9, 17)))
    with pytest.raises(
        ValueError, match=r"frame-count mismatch: poses file .*poses_bounds\.npy has 9 rows.* 10 frames"
    ):
        cfg(root).load()
    rows = np.zeros((10, 17))
    rows[:, :15] = np.concatenate([np.eye(3, 4), [[48.0], [80.0], [50.0]]], 1).reshape(15)  # 80x48: not 4:3
    np.save(root / "poses_bounds.npy", rows)
    with pytest.raises(ValueError, match=r"poses_bounds\.npy: its image size .* aspect ratio"):
        cfg(root).load()


@pytest.mark.parametrize("folder", ["masks", "depth"])
def test_frame_count_mismatch_names_the_folder(root, folder):
    sorted((root / folder).iterdir())[-1].unlink()
    with pytest.raises(ValueError, match=rf"frame-count mismatch: {folder} folder .*{folder} has 9 files.* has 10"):
        cfg(root).load()


def test_wrong_sizes_and_kinds_name_the_file(root):
    bad = root / "depth" / "frame-000003.depth.png"
    cv2.imwrite(str(bad), np.ones((10, 10), np.uint16))
    with pytest.raises(ValueError, match=r"frame-000003\.depth\.png: expected size \(H, W\) = \(96, 128\)"):
        cfg(root).load()
    cv2.imwrite(
        str(bad),
        np.dstack([np.ones((96, 128), np.uint8), np.zeros((96, 128), np.uint8), np.zeros((96, 128), np.uint8)]),
    )
    with pytest.raises(ValueError, match=r"frame-000003\.depth\.png: expected one channel"):
        cfg(root).load()
    shutil.copy(root / "depth" / "frame-000004.depth.png", bad)
    cv2.imwrite(str(root / "masks" / "frame-000005.mask.png"), np.zeros((20, 128), np.uint8))
    with pytest.raises(ValueError, match=r"mask .*frame-000005\.mask\.png: expected size"):
        cfg(root).load()


def test_prior_dir_errors_name_the_file(root):
    with pytest.raises(ValueError, match=r"prior folder not found: .*nope"):
        cfg(root, prior_dir="nope").load()
    (root / "mono_disp" / "frame-000009.npy").unlink()
    with pytest.raises(ValueError, match=r"frame-count mismatch: prior folder .*mono_disp has 9 files"):
        cfg(root, prior_dir="mono_disp").load()
    cv2.imwrite(str(root / "mono_disp" / "frame-000009.png"), np.ones((96, 128), np.uint8))
    with pytest.raises(ValueError, match=r"mono_disp: mixes \.npy and \.png"):
        cfg(root, prior_dir="mono_disp").load()
    (root / "mono_png").mkdir()
    for t in range(10):
        cv2.imwrite(str(root / "mono_png" / f"{t}.png"), np.ones((96, 128), np.uint16 if t != 4 else np.uint8))
    with pytest.raises(ValueError, match=r"prior \(disparity\) PNG .*4\.png: expected a 16-bit PNG, got uint8"):
        cfg(root, prior_dir="mono_png").load()
    np.save(root / "mono_disp" / "frame-000009.npy", np.ones((96, 127), np.float32))
    (root / "mono_disp" / "frame-000009.png").unlink()
    with pytest.raises(ValueError, match=r"frame-000009\.npy: expected size \(H, W\) = \(96, 128\)"):
        cfg(root, prior_dir="mono_disp").load()


def test_missing_folders(root, tmp_path):
    with pytest.raises(ValueError, match="root_dir not found"):
        cfg(tmp_path / "nope").load()
    shutil.rmtree(root / "depth")
    with pytest.raises(ValueError, match=r"depth folder not found: .*depth .*--data.prior-dir"):
        cfg(root).load()
    seq = cfg(root, prior_dir="mono_disp").load()  # a monocular prior alone is enough (no reference depth)
    assert seq.gt_depth is None
    shutil.rmtree(root / "masks")
    with pytest.raises(ValueError, match=r"masks folder not found: .*masks"):
        cfg(root, prior_dir="mono_disp").load()
