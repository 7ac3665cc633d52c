"""``python -m flow3d.export``: per-frame 3DGS splats, point clouds and trajectories.

Files are read back with plyfile / numpy. Positions are checked against a scene whose motion is known
by construction and against what the renderer draws (the rendered foreground), checkpoint values
against the raw state dict of the checkpoint.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from plyfile import PlyData
from vis_scenes import moving_blob_scene

from flow3d.export import ExportConfig, export, main, splats_at, trajectories
from flow3d.geometry import project_points
from flow3d.scene.ply import read_splat_ply, write_splat_ply


def _raw_state(path) -> dict[str, torch.Tensor]:
    """The model state dict of a checkpoint, read with torch directly (not with the code under test)."""
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


def _sample_nearest(img: torch.Tensor, xy: torch.Tensor) -> torch.Tensor:
    """Img (H, W), xy (P, 2) OpenCV pixels inside the image -> (P,) values at the nearest pixel."""
    j, i = xy[:, 0].round().long(), xy[:, 1].round().long()
    return img[i, j]


def test_positions_follow_the_known_motion_and_land_on_the_rendered_foreground(tmp_path):
    model, w2c, K, (W, H) = moving_blob_scene(T=4, step=0.4)
    can = model.fg.get_means().detach()
    for t in range(4):
        splats, is_fg = splats_at(model, t)
        write_splat_ply(tmp_path / f"{t}.ply", splats)
        back = read_splat_ply(tmp_path / f"{t}.ply")
        fg_pos = back.means[is_fg]
        # hand-computed: the blob translated by (0.4 t, 0, 0); the wall where it is
        torch.testing.assert_close(fg_pos, can + torch.tensor([0.4 * t, 0.0, 0.0]), atol=1e-5, rtol=0)
        torch.testing.assert_close(back.means[~is_fg], model.bg.get_means().detach(), atol=0, rtol=0)
        with torch.no_grad():
            out = model.render(torch.tensor([t]), w2c[None], K[None], (W, H), backend="torch")
        fg_render = out.fg[0, ..., 0]  # (H, W) rendered foreground weight
        xy, _ = project_points(fg_pos, K, w2c)
        assert (_sample_nearest(fg_render, xy) > 0.5).float().mean() > 0.97
        # discriminative: the blob's positions of another frame fall off this frame's foreground
        other, other_fg = splats_at(model, (t + 2) % 4)
        xy_o, _ = project_points(other.means[other_fg], K, w2c)
        assert (
            _sample_nearest(fg_render, xy_o.clamp(min=torch.tensor([0, 0]), max=torch.tensor([W - 1, H - 1]))) > 0.5
        ).float().mean() < 0.05


def test_trajectories_match_the_per_frame_positions():
    model, _, _, _ = moving_blob_scene(T=4)
    keep = torch.zeros(model.num_fg, dtype=torch.bool)
    keep[::3] = True
    means, quats = trajectories(model, keep, chunk=3)  # chunk smaller than T: frames stitched in order
    assert means.shape == (int(keep.sum()), 4, 3) and quats.shape == (int(keep.sum()), 4, 4)
    for t in range(4):
        s, is_fg = splats_at(model, t)
        np.testing.assert_allclose(means[:, t], s.means[is_fg][keep].numpy(), atol=1e-6)
        np.testing.assert_allclose(np.linalg.norm(quats[:, t], axis=-1), 1.0, atol=1e-6)


@pytest.fixture(scope="module")
def exported(work_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("export")
    summary = main(["--work-dir", str(work_dir), "--model", "last", "--out-dir", str(out), "--device", "cpu"])
    return out, summary


def test_export_writes_every_frame_with_the_checkpoint_values(exported, work_dir):
    out, summary = exported
    state = _raw_state(work_dir / "checkpoints" / "last.ckpt")
    n_fg, n_bg = state["fg.params.means"].shape[0], state["bg.params.means"].shape[0]
    T = state["bases.params.rots"].shape[1]
    assert sorted(p.name for p in (out / "splats").iterdir()) == [f"{t:05d}.ply" for t in range(T)]
    assert sorted(p.name for p in (out / "points").iterdir()) == [f"{t:05d}.ply" for t in range(T)]
    for t in (0, T - 1):
        s = read_splat_ply(out / "splats" / f"{t:05d}.ply")
        assert len(s) == n_fg + n_bg
        # stored parameters come through unchanged (fg rows first, then bg)
        torch.testing.assert_close(
            s.log_scales, torch.cat([state["fg.params.scales"], state["bg.params.scales"]]), atol=0, rtol=0
        )
        torch.testing.assert_close(
            s.opacity_logits, torch.cat([state["fg.params.opacities"], state["bg.params.opacities"]]), atol=0, rtol=0
        )
        rgb = torch.sigmoid(torch.cat([state["fg.params.colors"], state["bg.params.colors"]]))
        torch.testing.assert_close(s.rgb, rgb, atol=3e-7, rtol=0)
        torch.testing.assert_close(s.means[n_fg:], state["bg.params.means"], atol=0, rtol=0)
        pts = PlyData.read(str(out / "points" / f"{t:05d}.ply"))["vertex"]
        np.testing.assert_array_equal(np.stack([pts["x"], pts["y"], pts["z"]], -1), s.means.numpy())
    meta = json.loads((out / "export.json").read_text())
    assert meta["step"] == 4 and meta["frames"] == list(range(T)) and meta["per_frame"]["0"]["fg"] == n_fg
    assert summary["scene_scale"] == meta["scene_scale"]


def test_exported_positions_land_on_the_rendered_scene(exported, trained):
    out, _ = exported
    run, seq = trained
    W, H = seq.img_wh
    t = 5
    s = read_splat_ply(out / "splats" / f"{t:05d}.ply")
    fg = s.select(torch.arange(len(s)) < run.model.num_fg)
    r = run.render(t, seq.w2cs[t], seq.Ks[t], (W, H), bg=False)  # the dynamic Gaussians only
    xy, z = project_points(fg.means, seq.Ks[t], seq.w2cs[t])
    inside = (z > 0) & (xy[:, 0] >= 0) & (xy[:, 0] <= W - 1) & (xy[:, 1] >= 0) & (xy[:, 1] <= H - 1)
    strong = inside & (fg.opacities() > 0.5)
    assert int(strong.sum()) > 20
    alpha = torch.from_numpy(r["alpha"])
    assert (_sample_nearest(alpha, xy[strong]) > 0.3).float().mean() > 0.95


def test_trajectories_file_documents_its_layout(exported, trained):
    out, _ = exported
    run, seq = trained
    z = np.load(out / "trajectories.npz")
    N, T = run.model.num_fg, seq.num_frames
    assert z["means"].shape == (N, T, 3) and z["quats"].shape == (N, T, 4) and z["means"].dtype == np.float32
    assert z["colors"].shape == (N, 3) and z["opacities"].shape == (N,) and z["index"].tolist() == list(range(N))
    assert z["w2cs"].shape == (T, 4, 4) and z["Ks"].shape == (T, 3, 3) and z["img_wh"].tolist() == list(seq.img_wh)
    assert float(z["scene_scale"]) == seq.scene_scale
    doc = str(z["README"])
    for key in ("means", "quats", "scene_scale", "x_orig"):
        assert key in doc
    for t in (0, T - 1):  # the same positions as the per-frame splats
        s = read_splat_ply(out / "splats" / f"{t:05d}.ply")
        np.testing.assert_allclose(z["means"][:, t], s.means[:N].numpy(), atol=1e-6)


def test_frames_subset_fg_only_and_opacity_threshold(work_dir, tmp_path):
    state = _raw_state(work_dir / "checkpoints" / "model_2.ckpt")
    opac = torch.sigmoid(state["fg.params.opacities"])
    thr = float(opac.median())
    summary = export(
        ExportConfig(
            work_dir=str(work_dir),
            out_dir=str(tmp_path),
            model="2",
            frames=(6, 1),
            gaussians="fg",
            min_opacity=thr,
            device="cpu",
        )
    )
    assert summary["frames"] == [1, 6]
    assert sorted(p.name for p in (tmp_path / "splats").iterdir()) == ["00001.ply", "00006.ply"]
    keep = opac >= thr
    s = read_splat_ply(tmp_path / "splats" / "00006.ply")
    assert len(s) == int(keep.sum()) and summary["per_frame"]["6"] == {
        "fg": int(keep.sum()),
        "bg": 0,
        "splats_written": int(keep.sum()),
        "points_written": int(keep.sum()),
    }
    torch.testing.assert_close(s.opacity_logits, state["fg.params.opacities"][keep], atol=0, rtol=0)
    z = np.load(tmp_path / "trajectories.npz")
    assert z["index"].tolist() == torch.nonzero(keep).squeeze(1).tolist()


def test_background_only_has_no_trajectories(work_dir, tmp_path):
    summary = export(
        ExportConfig(
            work_dir=str(work_dir), out_dir=str(tmp_path), frames=(0,), gaussians="bg", points=False, device="cpu"
        )
    )
    assert summary["per_frame"]["0"]["fg"] == 0 and "trajectories" not in summary
    assert not (tmp_path / "trajectories.npz").exists() and not (tmp_path / "points").exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--frames", "3", "99"], r"--frames \[99\] are outside the video's frames 0..7"),
        (["--model", "7"], r"checkpoint .*model_7.ckpt not found; available steps .*\[2, 4\]"),
        (["--min-opacity", "1.5"], r"--min-opacity must be in \[0, 1\]"),
    ],
)
def test_cli_errors_are_one_line(work_dir, tmp_path, args, message):
    with pytest.raises(SystemExit, match="^error: " + message):
        main(["--work-dir", str(work_dir), "--out-dir", str(tmp_path / "x"), "--device", "cpu", *args])


def test_cli_error_for_a_missing_work_dir(tmp_path):
    with pytest.raises(SystemExit, match="^error: --work-dir .*nope is not a folder"):
        main(["--work-dir", str(tmp_path / "nope"), "--out-dir", str(tmp_path / "x")])
