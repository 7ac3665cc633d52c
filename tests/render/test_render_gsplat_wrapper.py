"""The gsplat backend: a thin wrapper whose keywords must exist in the installed gsplat (no CUDA here)."""

from __future__ import annotations

import inspect

import gsplat
import pytest
import torch
from render_reference import make_scene

import flow3d.render.gsplat_backend as gb
from flow3d.render import compiled, rasterization


def _cpu_auto() -> str:
    """What "auto" picks for CPU tensors (tests/render/test_render_compiled.py checks both branches)."""
    return "cpu" if compiled.load_extension() else "torch"


def _record_gsplat_call(monkeypatch):
    """Pretend CUDA is there and replace gsplat.rasterization by a recorder; return the record."""
    calls = []

    def fake(*args, **kwargs):
        calls.append((args, kwargs))
        C, H, W = kwargs["viewmats"].shape[0], kwargs["height"], kwargs["width"]
        return torch.zeros(C, H, W, 3), torch.zeros(C, H, W, 1), {"backend": "fake"}

    monkeypatch.setattr(gb, "gsplat_available_for", lambda x: True)
    monkeypatch.setattr(gsplat, "rasterization", fake)
    return calls


def test_every_keyword_passed_exists_in_installed_gsplat(monkeypatch):
    signature = inspect.signature(gsplat.rasterization)  # the real one, taken before patching
    calls = _record_gsplat_call(monkeypatch)
    scene = make_scene(n=5, dtype=torch.float32)
    rasterization(
        **scene,
        backgrounds=torch.zeros(1, 3),
        render_mode="RGB+ED",
        backend="gsplat",
        absgrad=True,
        packed=True,
        radius_clip=0.5,
        rasterize_mode="antialiased",
        torch_chunk=8,
    )
    ((args, kwargs),) = calls
    assert args == ()  # keywords only: robust to gsplat reordering its parameters
    unknown = set(kwargs) - set(signature.parameters)
    assert not unknown, f"keywords not in gsplat {gsplat.__version__}'s rasterization: {sorted(unknown)}"
    signature.bind(**kwargs)  # and the call binds (no missing required argument)
    assert kwargs["packed"] is True and kwargs["absgrad"] is True and kwargs["radius_clip"] == 0.5
    assert kwargs["render_mode"] == "RGB+ED" and "torch_chunk" not in kwargs
    for k in ("means", "quats", "scales", "opacities", "colors", "viewmats", "Ks"):
        assert kwargs[k] is scene[k]


def test_auto_picks_gsplat_only_for_cuda(monkeypatch):
    calls = _record_gsplat_call(monkeypatch)
    scene = make_scene(n=5, dtype=torch.float32)
    _, _, meta = rasterization(**scene, backend="auto")
    assert meta["backend"] == "fake" and len(calls) == 1
    monkeypatch.setattr(gb, "gsplat_available_for", lambda x: False)
    _, _, meta = rasterization(**scene, backend="auto")
    assert meta["backend"] == _cpu_auto() and len(calls) == 1


def test_auto_on_cpu_uses_a_cpu_backend():
    scene = make_scene(n=5, dtype=torch.float32)
    _, _, meta = rasterization(**scene)
    assert meta["backend"] == _cpu_auto()


def test_gsplat_backend_on_cpu_tensors_raises_clear_error():
    scene = make_scene(n=5, dtype=torch.float32)
    with pytest.raises(ValueError, match="backend='gsplat' needs CUDA"):
        rasterization(**scene, backend="gsplat")


def test_installed_gsplat_conventions_we_copy():
    """Facts the torch backend copies from gsplat 1.5.3: radii (C, N, 2), defaults, render modes."""
    params = inspect.signature(gsplat.rasterization).parameters
    assert params["near_plane"].default == 0.01 and params["far_plane"].default == 1e10
    assert params["eps2d"].default == 0.3 and params["tile_size"].default == 16
    scene = make_scene(n=5, dtype=torch.float32)
    _, _, meta = rasterization(**scene, backend="torch")
    if tuple(int(v) for v in gsplat.__version__.split(".")[:2]) >= (1, 5):
        assert meta["radii"].shape == (1, 5, 2)
