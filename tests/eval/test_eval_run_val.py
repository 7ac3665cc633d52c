"""End-to-end tests of ``run_val.py`` on a checkpoint trained for a few steps on a tiny synthetic scene.

Reference values are computed here independently from the saved files (renders/*.png, depth/*.npy) and
the ground truth of the synthetic scene, with numpy/scipy, not with the functions under test.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
from pathlib import Path

import imageio.v2 as imageio
import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

import run_training
import run_val
from flow3d.config import load_config
from flow3d.data import CustomDataConfig, HeldOutViews, SyntheticDataConfig
from flow3d.eval.validate import ValConfig, evaluate, parse_val_args

TRAIN_ARGS = [
    "--preset",
    "cpu_demo",
    "--max-steps",
    "4",
    "--save-every",
    "2",
    "--init.num-fg",
    "200",
    "--init.num-bg",
    "300",
    "--init.init-fit-steps",
    "20",
    "data:synthetic",
    "--data.num-frames",
    "8",
    "--data.width",
    "48",
    "--data.height",
    "36",
]

# Every aggregate metrics.json must hold for a synthetic scene (GT depth and GT tracks exist).
EXPECTED_NUMERIC = [
    "psnr",
    "ssim",
    "fg_psnr",
    "fg_ssim",
    "bg_psnr",
    "bg_ssim",
    "depth_abs_rel",
    "depth_rmse",
    "depth_delta1",
    "depth_scale",
    "depth_abs_rel_frame",
    "depth_rmse_frame",
    "depth_delta1_frame",
    "depth_abs_rel_scale_shift",
    "depth_rmse_scale_shift",
    "depth_delta1_scale_shift",
    "depth_disp_scale",
    "depth_disp_shift",
    "prior_abs_rel",
    "prior_rmse",
    "prior_delta1",
    "prior_abs_rel_scale_shift",
    "prior_rmse_scale_shift",
    "prior_delta1_scale_shift",
    "ordinal_acc_prior",
    "ordinal_acc_gt",
    "temporal_consistency",
    "temporal_consistency_gt",
    "track_epe",
    "track_within_1",
    "track_within_2",
    "track_within_4",
    "track_within_8",
    "track_within_16",
    "track_delta_avg",
    "track_num_points",
    "num_views",
    "step",
]
EXPECTED_UNAVAILABLE = ["lpips", "fg_lpips", "bg_lpips", "mpsnr", "mssim", "keypoint_pck"]


def _listing(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_mtime_ns, p.stat().st_size) for p in sorted(root.rglob("*"))}


@pytest.fixture(scope="session")
def work_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("val_work")
    run_training.main(["--work-dir", str(d), *TRAIN_ARGS])
    return d


@pytest.fixture(scope="session")
def val_run(work_dir):
    before = _listing(work_dir)
    result = run_val.main(
        ["--work-dir", str(work_dir), "--model", "4", "--data.is-train", "True", "--save-depth", "--save-renders"]
    )
    after = _listing(work_dir)
    return result, before, after


@pytest.fixture(scope="session")
def seq(work_dir):
    return load_config(work_dir / "cfg.yaml").data.load()


def _psnr(a: np.ndarray, b: np.ndarray, w: np.ndarray | None = None) -> float:
    se = (a.astype(np.float64) - b.astype(np.float64)) ** 2
    if w is None:
        return float(-10 * np.log10(se.mean()))
    return float(-10 * np.log10((se * w[..., None]).sum() / (3 * w.sum())))


def _ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Gaussian SSIM (11 taps, sigma 1.5, zero padding), mean over pixels and channels."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    f = lambda x: np.stack([gaussian_filter(x[..., c], 1.5, mode="constant", truncate=5 / 1.5) for c in range(3)], -1)  # noqa: E731
    mu_a, mu_b = f(a), f(b)
    va, vb, cov = f(a * a) - mu_a**2, f(b * b) - mu_b**2, f(a * b) - mu_a * mu_b
    c1, c2 = 0.01**2, 0.03**2
    return float((((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (va + vb + c2))).mean())


def test_metrics_json_has_every_field_finite_or_explained(val_run):
    result, _, _ = val_run
    doc = json.loads((result.out_dir / "metrics.json").read_text())
    agg, notes = doc["aggregate"], doc["notes"]
    for k in EXPECTED_NUMERIC:
        assert k in agg, k
        assert isinstance(agg[k], (int, float)) and math.isfinite(agg[k]), (k, agg[k])
    for k in EXPECTED_UNAVAILABLE:
        assert agg[k] is None and notes.get(k), (k, agg.get(k), notes.get(k))
    assert agg["step"] == 4 and (result.out_dir.parent.name, result.out_dir.name) == ("4", "train")
    assert agg["num_views"] == 7 == len(doc["per_frame"])  # 8 frames, frame 1 held out, the 7 train frames scored
    assert [r["frame"] for r in doc["per_frame"]] == [0, 2, 3, 4, 5, 6, 7]
    for r in doc["per_frame"]:
        for k in ("psnr", "ssim", "depth_abs_rel", "ordinal_acc_prior", "temporal_consistency"):
            assert math.isfinite(r[k]), (r["frame"], k)
    csv_lines = (result.out_dir / "per_frame.csv").read_text().strip().splitlines()
    assert len(csv_lines) == 1 + 7 and csv_lines[0].startswith("frame,view,psnr")
    assert (result.out_dir / "per_frame.png").stat().st_size > 0


def test_psnr_ssim_match_independent_computation(val_run, seq):
    result, _, _ = val_run
    doc = json.loads((result.out_dir / "metrics.json").read_text())
    for r in doc["per_frame"]:
        t = r["frame"]
        pred = imageio.imread(result.out_dir / "renders" / f"{t:05d}.png").astype(np.float64) / 255.0
        gt = seq.images[t].numpy()
        fg = seq.fg_masks[t].numpy()
        # The PNG is 8-bit: quantisation moves PSNR by ~1e-3 dB at these error levels.
        assert r["psnr"] == pytest.approx(_psnr(pred, gt), abs=0.02)
        assert r["fg_psnr"] == pytest.approx(_psnr(pred, gt, fg), abs=0.02)
        assert r["bg_psnr"] == pytest.approx(_psnr(pred, gt, 1 - fg), abs=0.02)
        assert r["ssim"] == pytest.approx(_ssim(pred, gt), abs=2e-3)
    assert doc["aggregate"]["psnr"] == pytest.approx(np.mean([r["psnr"] for r in doc["per_frame"]]), rel=1e-6)


def test_depth_export_round_trips_and_absrel_matches(val_run, seq, work_dir):
    result, _, _ = val_run
    doc = json.loads((result.out_dir / "metrics.json").read_text())
    frames = [r["frame"] for r in doc["per_frame"]]
    meta = json.loads((result.out_dir / "depth" / "meta.json").read_text())
    assert meta["frames"] == frames and meta["scene_scale"] == seq.scene_scale
    depths = np.stack([np.load(result.out_dir / "depth" / f"{t:05d}.npy") for t in frames])
    assert depths.dtype == np.float32 and depths.shape == (7, 36, 48)

    # Round trip: the exported depth is the model's expected depth, rendered here directly.
    from flow3d.scene.model import SceneModel

    state = torch.load(work_dir / "checkpoints" / "model_4.ckpt", map_location="cpu", weights_only=True)["model"]
    model = SceneModel.from_state_dict(state)
    with torch.no_grad():
        for i, t in enumerate(frames[:2]):
            out = model.render(
                torch.tensor([t]),
                seq.w2cs[t : t + 1],
                seq.Ks[t : t + 1],
                (48, 36),
                bg_color=torch.ones(3),
                backend="torch",
            )
            np.testing.assert_allclose(depths[i], out.depth[0, ..., 0].numpy(), rtol=1e-5, atol=1e-5)

    gt = seq.gt_depth[frames].numpy().astype(np.float64)
    ok = gt > 0
    d = depths.astype(np.float64)
    s = (d[ok] * gt[ok]).sum() / (d[ok] ** 2).sum()  # one least-squares scale for the sequence
    absrel = [np.mean(np.abs(s * d[i][ok[i]] - gt[i][ok[i]]) / gt[i][ok[i]]) for i in range(len(frames))]
    assert doc["aggregate"]["depth_scale"] == pytest.approx(s, rel=1e-4)
    assert doc["aggregate"]["depth_abs_rel"] == pytest.approx(np.mean(absrel), rel=1e-4)
    for r, a in zip(doc["per_frame"], absrel):
        assert r["depth_abs_rel"] == pytest.approx(a, rel=1e-4)
    # Per-frame scale.
    s_f = [(d[i][ok[i]] * gt[i][ok[i]]).sum() / (d[i][ok[i]] ** 2).sum() for i in range(len(frames))]
    absrel_f = [np.mean(np.abs(s_f[i] * d[i][ok[i]] - gt[i][ok[i]]) / gt[i][ok[i]]) for i in range(len(frames))]
    assert doc["aggregate"]["depth_abs_rel_frame"] == pytest.approx(np.mean(absrel_f), rel=1e-4)
    # One scale and shift of disparity for the sequence (numpy lstsq), for the model and for the raw prior.
    with np.errstate(divide="ignore"):  # pixels rendered at depth 0 give inf, dropped by `use` below
        rendered_disp = 1.0 / np.where(ok, d, 1.0)
    for who, disp in (("depth", rendered_disp), ("prior", seq.prior_disp[frames].numpy().astype(np.float64))):
        use = ok & np.isfinite(disp) & (disp > 0)  # the fit skips pixels rendered at depth 0 (is_valid)
        A = np.stack([disp[use], np.ones(use.sum())], -1)
        (a, b), *_ = np.linalg.lstsq(A, 1.0 / gt[use], rcond=None)
        ref = [
            np.mean(np.abs(1.0 / (a * disp[i][use[i]] + b) - gt[i][use[i]]) / gt[i][use[i]]) for i in range(len(frames))
        ]
        assert doc["aggregate"][f"{who}_abs_rel_scale_shift"] == pytest.approx(np.mean(ref), rel=1e-4)
        if who == "depth":
            assert doc["aggregate"]["depth_disp_scale"] == pytest.approx(a, rel=1e-4)
            assert doc["aggregate"]["depth_disp_shift"] == pytest.approx(b, rel=1e-3, abs=1e-6)


def test_video_and_contact_sheet(val_run):
    result, _, _ = val_run
    reader = imageio.get_reader(result.out_dir / "depth.mp4")
    frames = [f for f in reader]
    reader.close()
    assert len(frames) == 7
    h, w = frames[0].shape[:2]
    # Six panels (input, rendered, depth, prior, GT, error) of the 48x36 image enlarged k times (to reach the
    # default 192 px video height) side by side under a title strip, plus two colour bars.
    k = math.ceil(192 / 36)
    assert 36 * k < h < 36 * k + 48 and 6 * 48 * k < w < 6 * 48 * k + 400
    # The contact sheet holds 6 of the 7 video frames, one per row (wide frames), 4 px apart.
    sheet = imageio.imread(result.out_dir / "contact_sheet.png")
    assert sheet.shape[1] in (w, w - 1) and sheet.shape[0] in (6 * h + 20, 6 * (h - 1) + 20)
    # The first frame's first sheet cell and video frame agree up to the codec's loss.
    cell = sheet[: min(h, sheet.shape[0]), : sheet.shape[1]].astype(np.float64)
    assert np.abs(cell - frames[0][: cell.shape[0], : cell.shape[1]]).mean() < 12


def test_only_val_step_folder_and_flow_cache_change(val_run, work_dir):
    _, before, after = val_run
    changed = {k for k in set(before) | set(after) if before.get(k) != after.get(k)}
    outside = {k for k in changed if not (k == "val" or k.startswith("val/4") or k.startswith("flow_cache"))}
    assert outside == set(), outside
    assert sorted(p.name for p in (work_dir / "val").iterdir()) == ["4"]  # no staging folder left behind
    assert sorted(p.name for p in (work_dir / "val" / "4").iterdir()) == ["train"]


def test_missing_step_lists_available(work_dir):
    with pytest.raises(ValueError, match=r"model_999\.ckpt not found.*\[2, 4\] and last"):
        evaluate(parse_val_args(["--work-dir", str(work_dir), "--model", "999", "--no-video"]))
    with pytest.raises(SystemExit, match="error: checkpoint .* not found"):
        run_val.main(["--work-dir", str(work_dir), "--model", "999"])


def test_corrupt_checkpoint_is_a_clear_error(work_dir, tmp_path):
    d = tmp_path / "copy"
    (d / "checkpoints").mkdir(parents=True)
    shutil.copy(work_dir / "cfg.yaml", d / "cfg.yaml")
    (d / "checkpoints" / "model_4.ckpt").write_bytes(b"not a checkpoint" * 10)
    with pytest.raises(ValueError, match=r"model_4\.ckpt is corrupt"):
        evaluate(parse_val_args(["--work-dir", str(d), "--model", "4"]))
    assert not (d / "val").exists()


def test_users_command_line_parses(work_dir):
    cfg = parse_val_args(
        [
            "--work-dir",
            str(work_dir),
            "--model",
            "4000",
            "data:custom",
            "--data.seq-name",
            "S",
            "--data.root-dir",
            "R",
            "--data.is-train",
            "False",
        ]
    )
    assert cfg.model == "4000" and cfg.work_dir == str(work_dir)
    assert isinstance(cfg.data, CustomDataConfig)
    assert (cfg.data.seq_name, cfg.data.root_dir, cfg.data.is_train) == ("S", "R", False)
    # Without a subcommand: the saved data config, with --data.* still settable.
    saved = load_config(work_dir / "cfg.yaml").data
    cfg = parse_val_args(["--work-dir", str(work_dir), "--data.is-train", "False", "--save-depth"])
    assert cfg.data == dataclasses.replace(saved, is_train=False) and cfg.save_depth and cfg.model == "last"
    assert parse_val_args([f"--work-dir={work_dir}"]).data == saved
    assert parse_val_args(["--work-dir", str(work_dir), "--no-video"]).video is False


def test_held_out_views_with_covisibility(work_dir, seq, tmp_path):
    """iPhone-style held-out camera views: mPSNR on covisible pixels, no temporal/track metrics."""
    d = tmp_path / "copy"
    shutil.copytree(work_dir / "checkpoints", d / "checkpoints")
    shutil.copy(work_dir / "cfg.yaml", d / "cfg.yaml")
    H, W = 36, 48
    cov = torch.ones(2, H, W, dtype=torch.bool)
    cov[:, :, : W // 2] = False
    views = HeldOutViews(
        images=seq.images[[2, 5]],
        valid_masks=torch.ones(2, H, W, dtype=torch.bool),
        w2cs=seq.w2cs[[2, 5]],
        Ks=seq.Ks[[2, 5]],
        t=torch.tensor([2, 5]),
        names=["a", "b"],
        covisible_masks=cov,
    )

    @dataclasses.dataclass(kw_only=True)
    class WithViews(SyntheticDataConfig):
        def load(self):
            return dataclasses.replace(super().load(), val_views=views)

    base = load_config(work_dir / "cfg.yaml").data
    data = WithViews(**{f.name: getattr(base, f.name) for f in dataclasses.fields(base)})
    data.is_train = False
    res = evaluate(ValConfig(work_dir=str(d), model="4", data=data, video=False, save_renders=True))
    assert [r["view"] for r in res.per_frame] == ["a", "b"]
    for r in res.per_frame:
        pred = imageio.imread(res.out_dir / "renders" / f"{r['frame']:05d}.png").astype(np.float64) / 255.0
        gt = seq.images[r["frame"]].numpy()
        assert r["mpsnr"] == pytest.approx(_psnr(pred, gt, cov[0].numpy().astype(np.float64)), abs=0.02)
        assert 0 < r["mssim"] <= 1
    doc = json.loads((res.out_dir / "metrics.json").read_text())
    assert doc["aggregate"]["temporal_consistency"] is None and "held-out" in doc["notes"]["temporal_consistency"]
    assert doc["aggregate"]["fg_psnr"] is None and doc["notes"]["fg_psnr"]


def test_endonerf_layout_scores_tissue_pixels_and_names_the_stereo_reference(tmp_path):
    """The tissue scene in EndoNeRF's layout, a few steps of cpu_endonerf, run_val.py: PSNR over tissue
    pixels only (checked from the saved render), the EndoNeRF-family SSIM, and depth against the stereo
    reference, named as such."""
    from flow3d.preprocess import synthetic as writer

    root = tmp_path / "tissue"
    writer.main(
        [
            "--scene",
            "tissue",
            "--layout",
            "endonerf",
            "--out-dir",
            str(root),
            "--num-frames",
            "10",
            "--width",
            "48",
            "--height",
            "36",
        ]
    )
    data = ["data:endonerf", "--data.root-dir", str(root), "--data.depth-scale", "1000", "--data.use-cache", "False"]
    work = tmp_path / "work"
    run_training.main(
        [
            "--work-dir",
            str(work),
            "--preset",
            "cpu_endonerf",
            "--max-steps",
            "3",
            "--save-every",
            "3",
            "--init.num-fg",
            "300",
            "--init.num-motion-bases",
            "4",
            "--init.init-fit-steps",
            "10",
            *data,
            "--data.is-train",
            "True",
        ]
    )
    result = run_val.main(
        ["--work-dir", str(work), "--model", "last", "--save-renders", *data, "--data.is-train", "False"]
    )
    doc = json.loads((result.out_dir / "metrics.json").read_text())
    agg = doc["aggregate"]
    assert agg["depth_reference"] == "stereo"
    assert math.isfinite(agg["depth_abs_rel"]) and math.isfinite(agg["prior_abs_rel"])
    assert agg["ssim"] < agg["ssim_endo"] <= 1.0  # blacked-out instruments count as matches in ssim_endo
    seq = load_config(work / "cfg.yaml").data.load()
    assert [r["frame"] for r in doc["per_frame"]] == seq.val_ids.tolist() == [1, 9]
    for r in doc["per_frame"]:
        t = r["frame"]
        pred = imageio.imread(result.out_dir / "renders" / f"{t:05d}.png").astype(np.float64) / 255.0
        valid = seq.valid_masks[t].numpy().astype(np.float64)
        assert valid.min() == 0  # an instrument is in view
        assert r["psnr"] == pytest.approx(_psnr(pred, seq.images[t].numpy(), valid), abs=0.02)
    # every metric ignores what the instrument pixels hold: overwrite them with noise on disk, score again
    noisy = tmp_path / "tissue_noisy"
    shutil.copytree(root, noisy)
    rng = np.random.default_rng(0)
    for img_path, mask_path in zip(sorted((noisy / "images").glob("*.png")), sorted((noisy / "masks").glob("*.png"))):
        img, inst = imageio.imread(img_path), imageio.imread(mask_path) > 127
        img[inst] = rng.integers(0, 256, (int(inst.sum()), img.shape[-1]), dtype=np.uint8)
        imageio.imwrite(img_path, img)
    data2 = ["data:endonerf", "--data.root-dir", str(noisy), "--data.depth-scale", "1000", "--data.use-cache", "False"]
    doc2 = json.loads(
        (
            run_val.main(["--work-dir", str(work), "--model", "last", *data2, "--data.is-train", "False"]).out_dir
            / "metrics.json"
        ).read_text()
    )
    assert doc2["aggregate"] == agg
    assert doc2["per_frame"] == [{k: v for k, v in r.items()} for r in doc["per_frame"]]
