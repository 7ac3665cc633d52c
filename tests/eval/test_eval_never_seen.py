"""Never-seen tissue (issue 26): its metrics against hand-computed values, the hole check's machinery, and
run_val reporting them on the synthetic tissue scene."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest
import torch

import run_training
import run_val
from flow3d.config import load_config
from flow3d.data import SyntheticDataConfig, make_synthetic_sequence
from flow3d.eval.coverage import coverage, orbit_cameras, surface_in_frustum_mask
from flow3d.eval.metrics import never_seen_metrics


def test_never_seen_metrics_against_hand_computed_values():
    S, H, W = 2, 4, 5
    gt_rgb = torch.full((S, H, W, 3), 0.5)
    gt_depth = torch.full((S, H, W), 2.0)
    ns = torch.zeros(S, H, W, dtype=torch.bool)
    ns[0, 1, 1:4] = True  # 3 never-seen pixels in view 0, none in view 1
    valid = torch.ones(S, H, W, dtype=torch.bool)
    valid[0, 1, 1] = False  # one of them under an instrument in this view: still scored as never-seen
    scale = 4.0  # the visible tissue's depth scale: pred * 4 = depth
    pred_rgb = torch.where(ns[..., None], gt_rgb + 0.1, gt_rgb + 0.01)  # never-seen: 20 dB; seen: 40 dB
    pred_depth = torch.where(ns, gt_depth * 1.1 / scale, gt_depth / scale)
    pred_depth[0, 1, 3] = 0.0  # renders nothing: AbsRel 1 there
    alpha = torch.ones(S, H, W)
    alpha[0, 1, 2] = 0.9
    r = never_seen_metrics(pred_rgb, pred_depth, gt_rgb, gt_depth, ns, valid, scale, alpha)
    assert r.per_frame["never_seen_psnr"][0] == pytest.approx(20.0, abs=1e-3)
    assert math.isnan(r.per_frame["never_seen_psnr"][1])
    assert r.aggregate["never_seen_psnr"] == pytest.approx(20.0, abs=1e-3)
    assert r.aggregate["seen_psnr"] == pytest.approx(40.0, abs=1e-3)
    assert r.aggregate["never_seen_abs_rel"] == pytest.approx((0.1 + 0.1 + 1.0) / 3, abs=1e-5)
    assert r.aggregate["seen_abs_rel"] == pytest.approx(0.0, abs=1e-6)
    assert r.aggregate["never_seen_frac"] == pytest.approx(3 / (S * H * W))
    assert r.aggregate["never_seen_hole_frac"] == pytest.approx(1 / 3)


@pytest.fixture(scope="module")
def tissue():
    return make_synthetic_sequence(SyntheticDataConfig(scene="tissue", num_frames=10, width=48, height=36, val_every=4))


def test_surface_in_frustum_and_orbit_cameras(tissue):
    seq = tissue
    t = int(seq.val_ids[0])
    W, H = seq.img_wh
    own = surface_in_frustum_mask(seq, t, seq.w2cs[t], seq.Ks[t], (W, H), erode_px=2)
    assert own.mean() > 0.97  # the training camera sees its own frustum, up to the eroded edge
    cams, angles = orbit_cameras(seq, 15.0, 3)
    assert angles == [-15.0, 0.0, 15.0]
    torch.testing.assert_close(cams[1], seq.w2cs[0], atol=1e-5, rtol=0)  # the static camera, unrotated
    for c in (cams[0], cams[2]):
        m = surface_in_frustum_mask(seq, t, c, seq.Ks[t], (W, H), erode_px=2)
        assert 0.5 < m.mean() < own.mean()  # part of the orbit view shows what no training camera saw
        R = c[:3, :3] @ seq.w2cs[0, :3, :3].T
        assert math.degrees(math.acos(min(1.0, (float(torch.trace(R)) - 1) / 2))) == pytest.approx(15.0, abs=1e-3)


def test_coverage_counts_exactly_the_holes_inside_the_frustum(tissue):
    """A stand-in model whose alpha is 1 except a known square: coverage reports those pixels, no others."""
    seq = tissue
    W, H = seq.img_wh

    class Stub:
        def render(self, ts, w2cs, Ks, img_wh, bg_color=None, backend="auto"):
            a = torch.ones(1, H, W, 1)
            a[0, 10:14, 20:26] = 0.98
            return SimpleNamespace(alpha=a)

    res = coverage(Stub(), seq, degrees=15.0, num_orbit=3)
    assert len(res.rows) == len(seq.val_ids) * 4
    for r in res.rows:
        c = (
            seq.w2cs[r["frame"]]
            if r["kind"] == "held_out"
            else orbit_cameras(seq, 15.0, 3)[0][[-15.0, 0.0, 15.0].index(r["angle"])]
        )
        m = surface_in_frustum_mask(seq, r["frame"], c, seq.Ks[r["frame"]], (W, H))
        assert r["hole_px"] == int(m[10:14, 20:26].sum()) and r["num_pixels"] == int(m.sum())


@pytest.mark.slow
def test_run_val_reports_never_seen_tissue_next_to_visible(tmp_path):
    data = [
        "data:synthetic",
        "--data.scene",
        "tissue",
        "--data.num-frames",
        "10",
        "--data.width",
        "48",
        "--data.height",
        "36",
        "--data.val-every",
        "4",
    ]
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
            "--render-backend",
            "torch",
            "--init.num-fg",
            "600",
            "--init.num-motion-bases",
            "4",
            "--init.init-fit-steps",
            "10",
            *data,
        ]
    )
    result = run_val.main(["--work-dir", str(work), "--model", "last", "--no-video", *data, "--data.is-train", "False"])
    doc = json.loads((result.out_dir / "metrics.json").read_text())
    agg = doc["aggregate"]
    seq = load_config(work / "cfg.yaml").data.load()
    ns = seq.gt_never_seen[seq.val_ids]
    assert [r["frame"] for r in doc["per_frame"]] == seq.val_ids.tolist()
    assert agg["never_seen_frac"] == pytest.approx(float(ns.float().mean()), rel=1e-6) and agg["never_seen_frac"] > 0.01
    for k in ("never_seen_psnr", "never_seen_abs_rel", "seen_psnr", "seen_abs_rel", "never_seen_hole_frac"):
        assert math.isfinite(agg[k]), k
    assert "never_seen_psnr" in doc["notes"]
    assert [round(r["never_seen_frac"], 6) for r in doc["per_frame"]] == [
        round(float(x), 6) for x in ns.float().mean((1, 2))
    ]


def test_never_seen_ground_truth_agrees_with_the_true_flow_and_the_masks(tissue):
    """The scene's ``gt_never_seen`` (ray-cast, exact) against an independent reference: carry each pixel
    with the true flow into every training frame and look at that frame's ignore mask (nearest pixel) and
    the image bounds. They may differ only where the flow lands within a pixel of a mask's or the image's
    edge (rounding)."""
    from scipy.ndimage import binary_dilation, binary_erosion

    seq = tissue
    H, W = seq.valid_masks.shape[1:]
    for t in seq.val_ids.tolist() + [int(seq.train_ids[2])]:
        seen = torch.zeros(H, W, dtype=torch.bool)
        edge = torch.zeros(H, W, dtype=torch.bool)
        for tt in seq.train_ids.tolist():
            xy = (
                torch.stack(torch.meshgrid(torch.arange(W), torch.arange(H), indexing="xy"), -1).double()
                + seq.gt_flow(t, tt).double()
            )
            px = xy.round().long()
            inside = (px[..., 0] >= 0) & (px[..., 0] < W) & (px[..., 1] >= 0) & (px[..., 1] < H)
            pxc = torch.stack([px[..., 0].clamp(0, W - 1), px[..., 1].clamp(0, H - 1)], -1)
            v = seq.valid_masks[tt].numpy()
            border = torch.from_numpy(binary_dilation(~v) & ~binary_erosion(~v, border_value=1))
            seen |= inside & seq.valid_masks[tt][pxc[..., 1], pxc[..., 0]]
            edge |= (
                border[pxc[..., 1], pxc[..., 0]]
                | ~inside
                | (px[..., 0] <= 0)
                | (px[..., 0] >= W - 1)
                | (px[..., 1] <= 0)
                | (px[..., 1] >= H - 1)
            )
        ref = ~seen
        ns = seq.gt_never_seen[t]
        assert int(ns.sum()) > 20
        assert not bool((ns != ref)[~edge].any()), int((ns != ref)[~edge].sum())
        assert (ns == ref).float().mean() > 0.97
