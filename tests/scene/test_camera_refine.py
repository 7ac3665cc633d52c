"""--optim.refine-cameras: the correction maths, perturbed cameras pulled back towards the truth by the
photometric loss on the synthetic scene, and the trainer hook (checkpoint and resume)."""

from __future__ import annotations

import pytest
import torch

from flow3d.data import SyntheticDataConfig, make_synthetic_sequence
from flow3d.geometry import opencv_to_gsplat_Ks, project_points
from flow3d.render import rasterization
from flow3d.scene.camera_refine import CameraRefine, apply_to_sequence, se3_exp_small
from flow3d.train.trainer import Trainer
from run_training import parse_args


def test_se3_exp_small_and_gradient():
    d = torch.tensor([[0.01, -0.02, 0.03, 0.1, 0.2, -0.3]], dtype=torch.float64, requires_grad=True)
    M = se3_exp_small(d)[0]
    torch.testing.assert_close(M[:3, :3] @ M[:3, :3].T, torch.eye(3, dtype=torch.float64))
    torch.testing.assert_close(M[:3, 3], d[0, 3:])
    torch.autograd.gradcheck(lambda x: se3_exp_small(x), (d,))


def test_gauge_frame_fixed_and_held_out_frames_interpolated():
    ref = CameraRefine(5, torch.tensor([0, 2, 3, 4]))
    with torch.no_grad():
        ref.deltas[:] = torch.arange(5, dtype=torch.float32)[:, None] * 0.01
    d = ref.effective_deltas()
    assert torch.equal(d[0], torch.zeros(6))  # gauge: the first training frame
    torch.testing.assert_close(d[1], 0.5 * (d[0] + d[2]))  # held out: halfway between its neighbours
    torch.testing.assert_close(d[3], torch.full((6,), 0.03))


@pytest.mark.slow
def test_perturbed_cameras_move_towards_the_truth():
    """Gaussians on the true static points of the synthetic room, one pixel wide, rendered from a perturbed
    camera: the photometric loss alone pulls the corrected camera towards the truth, measured by where it
    projects the static points (rotation and translation trade off against each other for a distant
    scene; the reprojection does not)."""
    W, H = 48, 36
    seq = make_synthetic_sequence(SyntheticDataConfig(num_frames=2, width=W, height=H, val_every=0))
    bg = seq.fg_masks < 0.5  # (T, H, W) static pixels
    means, colors, z = seq.gt_points[bg], seq.images[bg], seq.gt_depth[bg]
    N = means.shape[0]
    scales = (z * 0.7 / seq.Ks[0, 0, 0])[:, None].expand(N, 3).contiguous()
    quats, opac = torch.tensor([1.0, 0, 0, 0]).expand(N, 4), torch.full((N,), 0.95)

    def reprojection_px(w2cs):
        a, _ = project_points(means, seq.Ks[1], w2cs[1])
        b, _ = project_points(means, seq.Ks[1], seq.w2cs[1])
        return float((a - b).norm(dim=-1).mean())

    P = se3_exp_small(torch.tensor([[0.0] * 6, [0.02, -0.02, 0.01, 0.08, -0.08, 0.04]]))  # frame 0 is the gauge
    perturbed = P @ seq.w2cs
    ref = CameraRefine(2, seq.train_ids)
    opt = torch.optim.Adam(ref.parameters(), lr=1e-3)
    ts, Ks = torch.arange(2), opencv_to_gsplat_Ks(seq.Ks)
    err0 = reprojection_px(perturbed)
    for _ in range(20):
        img, _, _ = rasterization(
            means,
            quats,
            scales,
            opac,
            colors,
            ref(perturbed, ts),
            Ks,
            W,
            H,
            backend="torch",
            backgrounds=torch.ones(2, 3),
        )
        loss = ((img - seq.images).abs().sum(-1) * bg).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        err1 = reprojection_px(ref.all_w2cs(perturbed))
    assert err1 < 0.6 * err0, (err0, err1)  # measured: 1.58 -> 0.67 px


def test_trainer_hook_learns_saves_and_resumes(tmp_path):
    args = [
        "--preset",
        "cpu_demo",
        "--save-every",
        "0",
        "--image-every",
        "0",
        "--log-every",
        "1000",
        "--init.num-fg",
        "200",
        "--init.num-bg",
        "300",
        "--init.init-fit-steps",
        "10",
        "--max-steps",
        "6",
        "--optim.refine-cameras",
        "--optim.lr-cameras",
        "1e-3",
        "data:synthetic",
        "--data.num-frames",
        "6",
        "--data.width",
        "40",
        "--data.height",
        "30",
        "--data.track-grid-step",
        "4",
    ]
    cfg = parse_args(["--work-dir", str(tmp_path)] + args)
    tr = Trainer(cfg)
    for _ in range(4):
        tr.train_step()
    d = tr.cam_refine.effective_deltas().detach()
    gauge = int(tr.seq.train_ids.min())
    assert torch.equal(d[gauge], torch.zeros(6)) and d.abs().sum() > 0
    tr.save(numbered=False)
    resumed = Trainer(parse_args(["--work-dir", str(tmp_path)] + args))
    assert resumed.step == 4
    torch.testing.assert_close(resumed.cam_refine.deltas, tr.cam_refine.deltas)
    assert resumed.cam_opt.state_dict()["state"][0]["step"] == tr.cam_opt.state_dict()["state"][0]["step"]
    payload = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    moved = apply_to_sequence(tr.seq, payload["camera_refine"])
    torch.testing.assert_close(moved.w2cs, tr.current_w2cs().detach())
