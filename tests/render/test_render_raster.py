"""The CPU tile rasterizers ("torch" and compiled "cpu") against a naive reference with gsplat 1.5.3's rules.

Every reference test runs against both CPU backends (values and gradients).
"""

from __future__ import annotations

import inspect

import pytest
import torch
from gsplat.cuda._torch_impl import _fully_fused_projection, _quat_scale_to_covar_preci
from render_reference import make_scene, naive_rasterization, require_compiled

from flow3d.render import rasterization
from flow3d.render.projection import project_gaussians, quat_scale_to_covar

PARAMS = ("means", "quats", "scales", "opacities", "colors")
# small chunks and blocks so that tiny scenes still run many rounds and several blocks per round
SMALL_CHUNKS = {"torch_chunk": 4, "torch_block_elems": 4 * 256 * 2}


def _tol(dtype, grad=False):
    if dtype == torch.float64:
        return {"rtol": 1e-10, "atol": 1e-12}
    # float32 gradients: the fast and the naive rasterizer are each ~1e-5 (of the largest entry) away from
    # the float64 result on scenes with a Gaussian right in front of the near plane, so allow 5e-5.
    return {"rtol": 1e-5, "atol": 5e-5 if grad else 1e-5}


def _assert_close(name, got, ref, dtype, grad=False):
    """Close in the dtype's tolerance, the absolute part scaled by the reference's magnitude."""
    tol = _tol(dtype, grad)
    scale = max(1.0, float(ref.detach().abs().max())) if ref.numel() else 1.0
    torch.testing.assert_close(got, ref, rtol=tol["rtol"], atol=tol["atol"] * scale, msg=lambda m: f"{name}: {m}")


@pytest.fixture(params=["torch", pytest.param("cpu", marks=pytest.mark.compiled)])
def backend(request):
    """Both CPU backends: the PyTorch reference and the compiled one."""
    if request.param == "cpu":
        require_compiled()
    return request.param


def _compare(scene, dtype, backend, render_mode="RGB+ED", with_bg=True, **kw):
    C = scene["viewmats"].shape[0]
    D = scene["colors"].shape[-1]
    bg = torch.rand(C, D, dtype=dtype) if with_bg else None
    rc, ra, meta = rasterization(**scene, backgrounds=bg, render_mode=render_mode, backend=backend, **kw)
    assert meta["backend"] == backend
    info = {}
    ref_kw = {"rasterize_mode": kw["rasterize_mode"]} if "rasterize_mode" in kw else {}
    rc_ref, ra_ref = naive_rasterization(**scene, backgrounds=bg, render_mode=render_mode, info=info, **ref_kw)
    _assert_close("colors", rc, rc_ref, dtype)
    _assert_close("alphas", ra, ra_ref, dtype)
    wc, wa = torch.randn_like(rc_ref), torch.randn_like(ra_ref)
    params = [scene[k] for k in PARAMS]
    g = torch.autograd.grad((rc * wc).sum() + (ra * wa).sum(), params, allow_unused=True)
    g_ref = torch.autograd.grad((rc_ref * wc).sum() + (ra_ref * wa).sum(), params, allow_unused=True)
    for name, p, a, b in zip(PARAMS, params, g, g_ref):
        a = torch.zeros_like(p) if a is None else a  # colours are unused in "D"/"ED" modes
        b = torch.zeros_like(p) if b is None else b
        assert torch.isfinite(a).all(), name
        _assert_close(f"d/d{name}", a, b, dtype, grad=True)
    return rc, ra, meta, info


@pytest.mark.parametrize("chunks", [SMALL_CHUNKS, {}], ids=["chunk4", "default"])
def test_shallow_scene_matches_reference(dtype, chunks, backend):
    scene = make_scene(n=40, dtype=dtype, seed=1)
    _, ra, meta, info = _compare(scene, dtype, backend, **chunks)
    assert meta["n_isects"] > 0 and info["terminated"] == 0 and float(ra.detach().max()) > 0.3


@pytest.mark.parametrize("chunks", [SMALL_CHUNKS, {}], ids=["chunk4", "default"])
def test_deep_scene_with_termination_matches_reference(dtype, chunks, backend):
    scene = make_scene(n=150, opacity=(0.85, 0.99), log_scale=(-2.0, -0.8), dtype=dtype, seed=2)
    _, _, _, info = _compare(scene, dtype, backend, **chunks)
    assert info["terminated"] > 20  # the per-pixel stop rule is exercised


def test_many_channels_two_cameras_behind_and_offscreen(dtype, backend):
    scene = make_scene(
        n=36, n_cams=2, n_channels=19, per_camera_colors=True, n_behind=6, offscreen=0.5, dtype=dtype, seed=3
    )
    _, _, meta, _ = _compare(scene, dtype, backend, **SMALL_CHUNKS)
    radii = meta["radii"]
    assert radii.shape == (2, 36, 2) and radii.dtype == torch.int32
    assert (radii[0, :5] == 0).all()  # behind the camera
    assert (radii[0, 5] > 0).all()  # 0.011 in front of it, just past the near plane: huge on screen
    assert ((radii > 0).all(-1)).any(dim=1).all()


@pytest.mark.parametrize("render_mode", ["RGB", "D", "ED", "RGB+D"])
def test_render_modes_match_reference(render_mode, backend):
    scene = make_scene(n=30, n_cams=2, dtype=torch.float64, seed=4)
    rc, _, _, _ = _compare(scene, torch.float64, backend, render_mode=render_mode)
    expected = {"RGB": 3, "D": 1, "ED": 1, "RGB+D": 4}[render_mode]
    assert rc.shape == (2, 20, 24, expected)


def test_antialiased_mode_matches_reference(backend):
    scene = make_scene(
        n=40, n_cams=2, log_scale=(-4.5, -2.0), dtype=torch.float64, seed=12
    )  # small: compensation matters
    _compare(scene, torch.float64, backend, rasterize_mode="antialiased", **SMALL_CHUNKS)


def test_packed_request_returns_dense_layout_on_cpu_backends(backend):
    scene = make_scene(n=10, n_cams=2, dtype=torch.float32, seed=13)
    rc_p, _, meta = rasterization(**scene, packed=True, backend=backend)
    rc_d, _, _ = rasterization(**scene, packed=False, backend=backend)
    assert meta["packed"] is False and meta["gaussian_ids"] is None and meta["means2d"].shape == (2, 10, 2)
    torch.testing.assert_close(rc_p, rc_d)


def test_expected_depth_is_accumulated_depth_over_alpha(backend):
    scene = make_scene(n=30, dtype=torch.float64, seed=5)
    d, a, _ = rasterization(**scene, render_mode="D", backend=backend)
    ed, _, _ = rasterization(**scene, render_mode="ED", backend=backend)
    torch.testing.assert_close(ed, d / a.clamp(min=1e-10))
    # a single opaque-ish Gaussian in front of the camera: ED is its depth wherever it is drawn
    one = make_scene(n=1, offscreen=0.0, log_scale=(-1.0, -1.0), dtype=torch.float64, seed=6)
    ed1, a1, meta = rasterization(**one, render_mode="ED", backend=backend)
    drawn = a1[..., 0] > 0
    assert drawn.any()
    torch.testing.assert_close(ed1[..., 0][drawn], meta["depths"][0, 0].expand(int(drawn.sum())))


def test_empty_scene_renders_background(backend):
    scene = make_scene(n=0, n_cams=2, dtype=torch.float32)
    bg = torch.tensor([[0.1, 0.2, 0.3], [0.4, 0.5, 0.6]])
    rc, ra, meta = rasterization(**scene, backgrounds=bg, render_mode="RGB+ED", backend=backend)
    assert rc.shape == (2, 20, 24, 4) and ra.shape == (2, 20, 24, 1)
    torch.testing.assert_close(rc[..., :3], bg[:, None, None, :].expand(2, 20, 24, 3))
    assert (rc[..., 3] == 0).all() and (ra == 0).all()
    (rc.sum() + ra.sum()).backward()
    assert scene["means"].grad.shape == (0, 3)


def test_projection_matches_gsplat_torch_reference(dtype):
    scene = make_scene(n=50, n_cams=2, n_behind=5, dtype=dtype, seed=7)
    means, quats, scales, opac = (scene[k].detach() for k in ("means", "quats", "scales", "opacities"))
    W, H = scene["width"], scene["height"]
    covars = quat_scale_to_covar(quats, scales)
    ref_cov, _ = _quat_scale_to_covar_preci(quats, scales, compute_preci=False)
    _assert_close("covars", covars, ref_cov, dtype)
    p = project_gaussians(means, covars, opac, scene["viewmats"], scene["Ks"], W, H)
    _, m2d, depths, conics, _ = _fully_fused_projection(means, ref_cov, scene["viewmats"], scene["Ks"], W, H)
    ok = depths > 0.01
    for name, got, ref in [("means2d", p["means2d"], m2d), ("conics", p["conics"], conics)]:
        _assert_close(name, got[ok], ref[ok], dtype)
    _assert_close("depths", p["depths"], depths, dtype)
    # radii: gsplat 1.5.3's opacity-aware box, ceil(min(3.33, sqrt(2 ln(255 o))) sqrt(cov2d_ii)), by hand
    cov2d = torch.linalg.inv(
        torch.stack([conics[..., 0], conics[..., 1], conics[..., 1], conics[..., 2]], -1).reshape(
            *conics.shape[:-1], 2, 2
        )
    )
    ext = torch.sqrt(2 * torch.log(255 * opac)).clamp(max=3.33)
    rx = torch.ceil(ext * cov2d[..., 0, 0].sqrt())
    ry = torch.ceil(ext * cov2d[..., 1, 1].sqrt())
    inside = (m2d[..., 0] + rx > 0) & (m2d[..., 0] - rx < W) & (m2d[..., 1] + ry > 0) & (m2d[..., 1] - ry < H)
    keep = ok & (opac >= 1 / 255) & inside
    expect = torch.stack([rx, ry], -1) * keep[..., None]
    assert (p["radii"] == expect.to(torch.int32)).float().mean() > 0.97  # ceil() may flip on rounding
    assert ((p["radii"] > 0).all(-1) == keep).all()


def test_means2d_grad_and_absgrad(backend):
    scene = make_scene(n=30, dtype=torch.float32, seed=8)
    rc, ra, meta = rasterization(**scene, backend=backend, absgrad=True)
    meta["means2d"].retain_grad()
    (rc.square().sum() + ra.sum()).backward()
    g = meta["means2d"].grad
    assert g is not None and g.shape == (1, 30, 2) and torch.isfinite(g).all()
    visible = (meta["radii"] > 0).all(-1)
    assert (g[~visible] == 0).all() and (g[visible].abs().sum(-1) > 0).any()
    absg = meta["means2d"].absgrad
    assert absg.shape == g.shape and (absg >= g.abs() - 1e-6).all()


def test_degenerate_and_edge_on_gaussians_have_no_nan(dtype, backend):
    scene = make_scene(n=20, offscreen=0.0, dtype=dtype, seed=9)
    with torch.no_grad():
        scene["scales"][:5, 2] = 0.0  # flat discs, some seen edge-on below
        scene["scales"][5:8] = 0.0  # points: only the eps2d blur is left
        scene["scales"][8:10, :2] = 1e-12  # needles
        scene["quats"][:3] = torch.tensor([0.7071, 0.7071, 0.0, 0.0], dtype=dtype)  # disc normal along x: edge-on
    rc, ra, meta = rasterization(**scene, render_mode="RGB+ED", backend=backend)
    meta["means2d"].retain_grad()
    (rc.sum() + ra.sum()).backward()
    for k in PARAMS:
        assert torch.isfinite(scene[k].grad).all(), k
    assert torch.isfinite(meta["means2d"].grad).all() and torch.isfinite(rc).all()
    assert ((meta["radii"][0, 5:8] > 0).all(-1)).any()  # zero-scale Gaussians are still drawn (blurred)


def test_gradcheck_tiny_scene(backend):
    scene = make_scene(
        n=4, width=10, height=8, opacity=(0.2, 0.6), offscreen=0.0, log_scale=(-1.5, -1.0), dtype=torch.float64, seed=10
    )
    fixed = {k: v for k, v in scene.items() if k not in PARAMS}
    bg = torch.rand(1, 3, dtype=torch.float64)

    def f(means, quats, scales, opacities, colors):
        rc, ra, _ = rasterization(
            means, quats, scales, opacities, colors, **fixed, backgrounds=bg, render_mode="RGB+ED", backend=backend
        )
        return rc, ra

    inputs = tuple(scene[k].detach().clone().requires_grad_(True) for k in PARAMS)
    assert torch.autograd.gradcheck(f, inputs, eps=1e-7, atol=1e-5, rtol=1e-4)


def test_background_gradient(backend):
    scene = make_scene(n=30, n_cams=2, dtype=torch.float64, seed=11)
    bg = torch.rand(2, 3, dtype=torch.float64, requires_grad=True)
    rc, ra, _ = rasterization(**scene, backgrounds=bg, backend=backend)
    w = torch.randn_like(rc)
    (rc * w).sum().backward()
    expected = ((1 - ra) * w).sum(dim=(1, 2))  # d/dbg of sum(w * (color + (1 - alpha) bg))
    torch.testing.assert_close(bg.grad, expected.detach())


def test_bad_inputs_raise_value_error():
    scene = make_scene(n=5, dtype=torch.float32)
    with pytest.raises(ValueError, match="quats"):
        rasterization(**{**scene, "quats": scene["quats"][:, :3]}, backend="torch")
    with pytest.raises(ValueError, match="colors"):
        rasterization(**{**scene, "colors": scene["colors"][None].expand(3, -1, -1)}, backend="torch")
    with pytest.raises(ValueError, match="render_mode"):
        rasterization(**scene, render_mode="RGBD", backend="torch")
    with pytest.raises(ValueError, match="backend"):
        rasterization(**scene, backend="cuda")
    with pytest.raises(ValueError, match="backgrounds"):
        rasterization(**scene, backgrounds=torch.zeros(1, 4), backend="torch")
    with pytest.raises(ValueError, match="sh_degree"):
        rasterization(**scene, backend="torch", sh_degree=3)
    with pytest.raises(ValueError, match="dtype"):
        rasterization(**{**scene, "colors": scene["colors"].double()}, backend="torch")
    with pytest.raises(ValueError, match="tile_size"):
        rasterization(**scene, backend="torch", tile_size=0)
    with pytest.raises(ValueError, match="not_a_keyword"):
        rasterization(**scene, backend="torch", not_a_keyword=1)


def test_signature_matches_contract():
    params = inspect.signature(rasterization).parameters
    assert list(params)[:9] == ["means", "quats", "scales", "opacities", "colors", "viewmats", "Ks", "width", "height"]
    for k in (
        "near_plane",
        "far_plane",
        "eps2d",
        "backgrounds",
        "render_mode",
        "backend",
        "absgrad",
        "packed",
        "tile_size",
    ):
        assert params[k].kind is inspect.Parameter.KEYWORD_ONLY
