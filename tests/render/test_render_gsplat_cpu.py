"""The real ``gsplat.rasterization`` run on CPU tensors through the project's gsplat backend.

gsplat's Python code (argument handling, channel padding and chunking, its autograd Functions, ``meta``)
runs unchanged; only its compiled CUDA ops are replaced, for the duration of a test, by the CPU stand-ins
of :mod:`flow3d.render.gsplat_cpu`. The references are the project's compiled CPU backend ("cpu") and,
for the tile lists, gsplat's own PyTorch reference implementation (``gsplat.cuda._torch_impl``).
"""

from __future__ import annotations

import pytest
import torch
from render_reference import make_scene

from flow3d.render import gsplat_cpu, rasterization

PARAMS = ("means", "quats", "scales", "opacities", "colors")


@pytest.fixture
def gsplat_on_cpu():
    """Install gsplat's CPU stand-ins (forward and backward both call them), or skip with the reason."""
    reason = gsplat_cpu.unsupported_reason()
    if reason is not None:
        pytest.skip(reason)
    with gsplat_cpu.gsplat_cpu_ops():
        yield


def _render_and_grads(scene: dict, backend: str, seed: int = 1, **kw):
    for k in PARAMS:
        scene[k].grad = None
    colors, alphas, meta = rasterization(**scene, backend=backend, **kw)
    meta["means2d"].retain_grad()
    gen = torch.Generator().manual_seed(seed)
    wc = torch.randn(colors.shape, generator=gen)
    wa = torch.randn(alphas.shape, generator=gen)
    ((colors * wc).sum() + (alphas * wa).sum()).backward()
    grads = {k: scene[k].grad.clone() for k in PARAMS}
    grads["means2d"] = meta["means2d"].grad.clone()
    if kw.get("absgrad"):
        grads["absgrad"] = meta["means2d"].absgrad.clone()
    return colors.detach(), alphas.detach(), meta, grads


def _close(a, b, scale=None):
    """float32 round-off, relative to the largest reference value (sums over many pixels)."""
    scale = float(b.abs().max()) if scale is None else scale
    torch.testing.assert_close(a, b, rtol=0, atol=2e-5 * max(scale, 1.0))


@pytest.mark.parametrize(
    "n_channels,per_camera,extra",
    [
        (3, False, {}),
        (40, True, {}),
        (3, False, {"rasterize_mode": "antialiased", "radius_clip": 1.0}),
    ],
    ids=["rgb", "40ch-per-camera", "antialiased-radius-clip"],
)
def test_gsplat_rasterization_on_cpu_matches_the_cpu_backend(gsplat_on_cpu, n_channels, per_camera, extra):
    """Colour, alpha, depth, radii and every gradient (incl. means2d and absgrad), 2 cameras; 40 channels
    exercise gsplat's channel padding and its 32-channel chunking."""
    scene = make_scene(
        n=60,
        n_cams=2,
        width=40,
        height=35,
        n_channels=n_channels,
        per_camera_colors=per_camera,
        n_behind=3,
        dtype=torch.float32,
    )
    bg = torch.rand(2, n_channels)
    kw = dict(render_mode="RGB+ED", backgrounds=bg, absgrad=True, **extra)
    cg, ag, mg, gg = _render_and_grads(scene, "gsplat", **kw)
    cc, ac, mc, gc = _render_and_grads(scene, "cpu", **kw)
    assert mg["backend"] == "gsplat" and mc["backend"] == "cpu" and mg["n_isects"] == mc["n_isects"] > 0
    assert cg.shape == cc.shape == (2, 35, 40, n_channels + 1) and ag.dtype == torch.float32
    _close(cg[..., :-1], cc[..., :-1])
    _close(cg[..., -1], cc[..., -1])  # expected depth
    _close(ag, ac)
    assert mg["radii"].dtype == mc["radii"].dtype == torch.int32 and mg["radii"].shape == (2, 60, 2)
    assert torch.equal(mg["radii"], mc["radii"]) and int((mg["radii"] == 0).all(-1).sum()) >= 3  # some culled
    for k in ("depths", "conics", "means2d"):
        _close(mg[k].detach(), mc[k].detach())
    # gsplat renders more than 32 channels in chunks and each chunk's backward overwrites means2d.absgrad
    # (gsplat's behaviour): absgrad is comparable only unchunked. The strategy reads .grad, which sums.
    keys = (*PARAMS, "means2d") + (("absgrad",) if n_channels + 1 <= 32 else ())
    for k in keys:
        assert gg[k].abs().max() > 0, k
        _close(gg[k], gc[k])
    if "absgrad" in keys:
        assert (gg["absgrad"] >= gg["means2d"].abs() - 1e-5).all()


def test_stand_in_tile_lists_match_gsplat_torch_reference(gsplat_on_cpu):
    """Our ``intersect_tile`` / ``intersect_offset`` against gsplat's own PyTorch reference (same keys)."""
    from gsplat.cuda._torch_impl import _isect_offset_encode, _isect_tiles

    scene = make_scene(n=30, n_cams=2, width=40, height=35, dtype=torch.float32)
    _, _, meta = rasterization(**scene, backend="gsplat")
    args = (
        meta["means2d"].detach(),
        meta["radii"],
        meta["depths"].detach(),
        16,
        meta["tile_width"],
        meta["tile_height"],
    )
    tpg_ref, ids_ref, flat_ref = _isect_tiles(*args)
    assert torch.equal(meta["tiles_per_gauss"], tpg_ref)
    assert torch.equal(meta["isect_ids"], ids_ref) and torch.equal(meta["flatten_ids"].long(), flat_ref.long())
    off_ref = _isect_offset_encode(ids_ref, 2, meta["tile_width"], meta["tile_height"])
    assert torch.equal(meta["isect_offsets"], off_ref)


def test_model_render_through_gsplat_matches_cpu(gsplat_on_cpu, tmp_path):
    """The scene model's render (per-frame calls, RGB + foreground + track channels + depth) on both backends."""
    model, ts, w2cs, Ks, wh = _tiny_model(tmp_path)
    outs = {}
    for backend in ("gsplat", "cpu"):
        model.zero_grad(set_to_none=True)
        out = model.render(ts, w2cs, Ks, wh, target_ts=ts.flip(0), target_w2cs=w2cs.flip(0), backend=backend)
        for m in out.means2d:
            m.retain_grad()
        loss = out.img.square().sum() + out.depth.sum() + out.alpha.sum() + out.tracks_3d.square().sum()
        loss.backward()
        outs[backend] = (
            out,
            {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None},
            [m.grad.clone() for m in out.means2d],
        )
    (og, gg, mg), (oc, gc, mc) = outs["gsplat"], outs["cpu"]
    for f in ("img", "depth", "alpha", "fg", "tracks_3d"):
        _close(getattr(og, f).detach(), getattr(oc, f).detach())
    assert set(gg) == set(gc) and len(gg) > 3
    for n in gc:
        _close(gg[n], gc[n])
    for a, b, ra, rb in zip(mg, mc, og.radii, oc.radii):
        assert a.shape == b.shape == (1, model.num_fg + model.num_bg, 2)
        _close(a, b)
        assert torch.equal(ra, rb)


def _tiny_model(work_dir):
    """A trainer's initial scene model on the synthetic scene (few Gaussians, 40x30) and two of its frames."""
    from flow3d.train.trainer import Trainer
    from run_training import parse_args

    cfg = parse_args(
        [
            "--work-dir",
            str(work_dir),
            "--preset",
            "cpu_demo",
            "--init.num-fg",
            "60",
            "--init.num-bg",
            "80",
            "--init.init-fit-steps",
            "5",
            "data:synthetic",
            "--data.num-frames",
            "4",
            "--data.width",
            "40",
            "--data.height",
            "30",
        ]
    )
    seq = cfg.data.load()
    model = Trainer(cfg, seq=seq).model
    ts = torch.tensor([0, 2])
    return model, ts, seq.w2cs[ts], seq.Ks[ts], seq.img_wh


def test_stand_ins_are_removed_after_use_and_pinned_to_supported_versions(monkeypatch):
    import gsplat
    import gsplat.cuda._wrapper as w

    if gsplat_cpu.unsupported_reason() is not None:
        pytest.skip(gsplat_cpu.unsupported_reason())
    original = w._make_lazy_cuda_func
    with gsplat_cpu.gsplat_cpu_ops():
        assert w._make_lazy_cuda_func is not original and gsplat_cpu.cpu_ops_active()
        with pytest.raises(NotImplementedError, match="no CPU version of gsplat's CUDA op 'adam'"):
            w._make_lazy_cuda_func("adam")()
    assert w._make_lazy_cuda_func is original and not gsplat_cpu.cpu_ops_active()
    scene = make_scene(n=5, dtype=torch.float32)
    with pytest.raises(ValueError, match="backend='gsplat' needs CUDA"):
        rasterization(**scene, backend="gsplat")  # CPU tensors are refused again
    monkeypatch.setattr(gsplat, "__version__", "9.9.9")
    assert "gsplat 9.9.9 is installed" in gsplat_cpu.unsupported_reason()
    with pytest.raises(RuntimeError, match="follow the internal op signatures of gsplat 1.5.3"):
        with gsplat_cpu.gsplat_cpu_ops():
            pass
