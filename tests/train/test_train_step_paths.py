"""The shortcuts of a fast training step against their plain versions: the usable-track index built once,
one motion blend for frames and track targets, fused Adam, and a deterministic step on the CPU."""

import roma
import torch
from test_train_loop import _cfg, tiny_seq  # noqa: F401  (the fixture)

from flow3d.scene.gaussians import GaussianParams
from flow3d.scene.model import SceneModel
from flow3d.scene.motion import MotionBases, matrix_to_rot6d
from flow3d.scene.strategy import update_param_with_optimizer
from flow3d.train.batch import UsableTracks
from flow3d.train.trainer import Trainer


def test_usable_tracks_match_the_definition_track_by_track(tiny_seq):  # noqa: F811
    u = UsableTracks.of(tiny_seq)
    train = set(tiny_seq.train_ids.tolist())
    M, T = tiny_seq.tracks_visible.shape
    for t in range(T):
        want = [m for m in range(M) if bool(tiny_seq.tracks_visible[m, t]) and int(tiny_seq.tracks_query_t[m]) in train]
        assert u.per_frame[t].tolist() == want
        assert u.mask[:, t].nonzero()[:, 0].tolist() == want


def _model(n=7, k=3, T=5, seed=0) -> SceneModel:
    g = torch.Generator().manual_seed(seed)
    fg = GaussianParams(
        torch.randn(n, 3, generator=g),
        torch.randn(n, 4, generator=g),
        torch.rand(n, 3, generator=g) * 0.1 + 0.01,
        torch.rand(n, generator=g) * 0.8 + 0.1,
        torch.rand(n, 3, generator=g),
        torch.randn(n, k, generator=g),
    )
    bases = MotionBases(
        matrix_to_rot6d(roma.random_rotmat(k * T).reshape(k, T, 3, 3)), torch.randn(k, T, 3, generator=g)
    )
    return SceneModel(fg, bases)


def test_one_blend_for_frames_and_targets_equals_one_blend_per_frame():
    model = _model()
    ts = torch.tensor([3, 1, 4, 0])
    means, quats = model.fg_means_quats_at(ts, num_quats=2)
    assert means.shape == (7, 4, 3) and quats.shape == (7, 2, 4)
    for i, t in enumerate(ts.tolist()):
        m1, q1 = model.fg_means_quats_at(torch.tensor([t]))
        torch.testing.assert_close(means[:, i], m1[:, 0])
        if i < 2:
            torch.testing.assert_close(quats[:, i], q1[:, 0])


def test_fused_adam_follows_densification_like_the_plain_one():
    """The strategy swaps parameters and moments inside each optimiser; the fused kernel must then match
    the plain Adam step for step (up to float rounding: the kernel orders its arithmetic differently)."""
    runs = []
    for fused in (False, True):
        fg = _model().fg
        opts = {f"fg.{k}": torch.optim.Adam([p], lr=0.05, eps=1e-15, fused=fused) for k, p in fg.params.items()}
        for step in range(6):
            loss = sum((p * p).sum() + p.sum() for p in fg.params.values())
            loss.backward()
            for o in opts.values():
                o.step()
                o.zero_grad(set_to_none=True)
            if step == 2:  # drop two rows, then duplicate one (new rows start with zero moments)
                keep = torch.tensor([True, False, True, True, False, True, True])
                update_param_with_optimizer(fg, "fg", opts, lambda _, p: p[keep], lambda _, v: v[keep])
                update_param_with_optimizer(
                    fg,
                    "fg",
                    opts,
                    lambda _, p: torch.cat([p, p[:1]]),
                    lambda _, v: torch.cat([v, torch.zeros_like(v[:1])]),
                )
        runs.append({k: p.detach().clone() for k, p in fg.params.items()})
    assert runs[0].keys() == runs[1].keys()
    for k in runs[0]:
        assert runs[0][k].shape[0] == 6
        torch.testing.assert_close(runs[0][k], runs[1][k], rtol=1e-6, atol=1e-7, msg=k)  # 4e-9 measured


def test_training_is_deterministic_on_the_cpu(tmp_path, tiny_seq):  # noqa: F811
    """Same seed -> bit-identical parameters after steps that include a densification (step 10)."""
    states = []
    for name in ("a", "b"):
        tr = Trainer(_cfg(tmp_path / name, "--max-steps", "12"), seq=tiny_seq)
        for _ in range(12):
            tr.train_step()
        states.append(tr.model.state_dict())
    assert states[0].keys() == states[1].keys()
    for k in states[0]:
        assert torch.equal(states[0][k], states[1][k]), k


def test_smoothness_triplet_blends_only_the_sampled_gaussians_like_the_full_blend():
    from types import SimpleNamespace

    from flow3d.train.som_terms import _fg_sample_triplet

    model = _model(n=9, T=6)
    ctx = SimpleNamespace(
        cache={}, model=model, generator=torch.Generator().manual_seed(5), cfg=SimpleNamespace(num_smooth_samples=4)
    )
    means, ts = _fg_sample_triplet(ctx)
    g = torch.Generator().manual_seed(5)  # the same draws, in the same order
    t = int(torch.randint(1, 5, (1,), generator=g))
    sel = torch.randperm(9, generator=g)[:4]
    assert ts.tolist() == [t - 1, t, t + 1]
    full, _ = model.fg_means_quats_at(ts)  # (N, 3, 3) every Gaussian
    torch.testing.assert_close(means, full[sel])


def test_track_channels_are_the_target_positions_in_the_target_cameras(monkeypatch):
    """The colours handed to the rasterizer: per Gaussian, its centre at each target time in that target's
    camera (geometry.transform_points as the reference), fg then bg, target after target."""
    import flow3d.scene.model as model_mod
    from flow3d.geometry import transform_points

    model = _model(n=5, T=6)
    g = torch.Generator().manual_seed(2)
    model.bg = GaussianParams(
        torch.randn(4, 3, generator=g),
        torch.randn(4, 4, generator=g),
        torch.full((4, 3), 0.05),
        torch.full((4,), 0.5),
        torch.rand(4, 3, generator=g),
    )
    seen = []

    def fake_rasterization(means, quats, scales, opacities, colors, viewmats, Ks, W, H, **kw):
        seen.append(colors.detach())
        C = viewmats.shape[0]
        return (
            torch.zeros(C, H, W, colors.shape[-1] + 1),
            torch.zeros(C, H, W, 1),
            {"means2d": torch.zeros(C, means.shape[0], 2), "radii": torch.zeros(C, means.shape[0])},
        )

    monkeypatch.setattr(model_mod, "rasterization", fake_rasterization)
    target_ts = torch.tensor([4, 0, 2])
    w2cs = torch.eye(4).repeat(3, 1, 1)
    w2cs[:, :3, :3] = roma.random_rotmat(3)
    w2cs[:, :3, 3] = torch.randn(3, 3, generator=g)
    K = torch.tensor([[20.0, 0, 8], [0, 20.0, 6], [0, 0, 1]]).expand(2, 3, 3)
    model.render(torch.tensor([1, 3]), torch.eye(4).expand(2, 4, 4), K, (16, 12), target_ts=target_ts, target_w2cs=w2cs)
    pts = torch.cat(
        [model.fg_means_quats_at(target_ts)[0], model.bg.get_means()[:, None].expand(-1, 3, -1)]
    )  # (9, 3, 3)
    want = transform_points(w2cs, pts.transpose(0, 1)).transpose(0, 1).reshape(9, 9)  # (N, B_t*3)
    assert len(seen) == 2
    for colors in seen:
        torch.testing.assert_close(colors[:, 4:], want)
