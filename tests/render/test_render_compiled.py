"""The compiled CPU rasterizer ("cpu") against the PyTorch one ("torch"), its determinism and its fallback.

The naive-reference tests and the gradcheck of ``test_render_raster.py`` run against both backends; here
the two tile rasterizers are compared on larger random scenes (values and every gradient), the ellipse
spans are checked to change nothing, and a failed build is simulated with a broken compiler.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from render_reference import make_scene, require_compiled

from flow3d.render import compiled, rasterization
from flow3d.render.projection import project_gaussians, quat_scale_to_covar
from flow3d.render.tile_raster import build_tile_plan

pytestmark = pytest.mark.compiled  # .ci/run runs these on every torch it installs (-m compiled)

PARAMS = ("means", "quats", "scales", "opacities", "colors")
HERE = Path(__file__).resolve().parent


@pytest.fixture(autouse=True)
def _compiled():
    require_compiled()


def _tol(dtype):
    return {"rtol": 1e-10, "atol": 1e-12} if dtype == torch.float64 else {"rtol": 1e-5, "atol": 5e-5}


def _close(name, got, ref, dtype):
    tol = _tol(dtype)
    scale = max(1.0, float(ref.detach().abs().max())) if ref.numel() else 1.0
    torch.testing.assert_close(got, ref, rtol=tol["rtol"], atol=tol["atol"] * scale, msg=lambda m: f"{name}: {m}")


def _render_and_grads(scene, backend, bg, render_mode, **kw):
    """Outputs, parameter/background gradients, means2d grad and absgrad of one backend."""
    leaves = {k: scene[k].detach().clone().requires_grad_(True) for k in PARAMS}
    bg_leaf = None if bg is None else bg.clone().requires_grad_(True)
    fixed = {k: v for k, v in scene.items() if k not in PARAMS}
    rc, ra, meta = rasterization(
        **leaves, **fixed, backgrounds=bg_leaf, render_mode=render_mode, backend=backend, absgrad=True, **kw
    )
    assert meta["backend"] == backend
    meta["means2d"].retain_grad()
    gen = torch.Generator().manual_seed(123)
    wc = torch.randn(rc.shape, generator=gen, dtype=rc.dtype)
    wa = torch.randn(ra.shape, generator=gen, dtype=ra.dtype)
    ((rc * wc).sum() + (ra * wa).sum()).backward()
    grads = {k: v.grad if v.grad is not None else torch.zeros_like(v) for k, v in leaves.items()}
    if bg_leaf is not None:
        grads["backgrounds"] = bg_leaf.grad
    grads["means2d"] = meta["means2d"].grad
    grads["absgrad"] = meta["means2d"].absgrad
    return rc.detach(), ra.detach(), grads, meta


SCENES = {
    "shallow": dict(n=300, opacity=(0.05, 0.5)),
    "deep": dict(n=600, opacity=(0.8, 0.99), log_scale=(-2.0, -0.5)),
    "offscreen_and_behind": dict(n=300, n_cams=2, n_behind=20, offscreen=1.0),
    "sixteen_channels": dict(n=300, n_channels=16),
    "thirty_three_channels_per_camera": dict(n=200, n_cams=2, n_channels=33, per_camera_colors=True),
}


@pytest.mark.parametrize("name", list(SCENES))
def test_compiled_matches_torch_backend_on_random_scenes(name, dtype):
    scene = make_scene(width=70, height=45, dtype=dtype, seed=list(SCENES).index(name), **SCENES[name])
    C, D = scene["viewmats"].shape[0], scene["colors"].shape[-1]
    bg = torch.rand(C, D, dtype=dtype, generator=torch.Generator().manual_seed(1))
    ref = _render_and_grads(scene, "torch", bg, "RGB+ED")
    got = _render_and_grads(scene, "cpu", bg, "RGB+ED")
    _close("colors", got[0], ref[0], dtype)
    _close("alphas", got[1], ref[1], dtype)
    for k in ref[2]:
        assert torch.isfinite(got[2][k]).all(), k
        _close(f"grad {k}", got[2][k], ref[2][k], dtype)
    assert got[3]["n_isects"] == ref[3]["n_isects"] > 0


@pytest.mark.parametrize("render_mode", ["RGB", "D", "ED", "RGB+D", "RGB+ED"])
@pytest.mark.parametrize("rasterize_mode", ["classic", "antialiased"])
def test_compiled_matches_torch_backend_in_every_mode(render_mode, rasterize_mode):
    scene = make_scene(n=200, n_cams=2, width=40, height=36, n_behind=5, dtype=torch.float64, seed=21)
    bg = None if render_mode in ("D", "ED") else torch.rand(2, 3, dtype=torch.float64)
    ref = _render_and_grads(scene, "torch", bg, render_mode, rasterize_mode=rasterize_mode)
    got = _render_and_grads(scene, "cpu", bg, render_mode, rasterize_mode=rasterize_mode)
    _close("colors", got[0], ref[0], torch.float64)
    _close("alphas", got[1], ref[1], torch.float64)
    for k in ref[2]:
        _close(f"grad {k}", got[2][k], ref[2][k], torch.float64)


def test_degenerate_scales_match_torch_backend(dtype):
    scene = make_scene(n=120, width=48, height=40, offscreen=0.1, dtype=dtype, seed=31)
    with torch.no_grad():
        scene["scales"][:20, 2] = 0.0  # flat discs
        scene["scales"][20:40] = 0.0  # points: only the eps2d blur is left
        scene["scales"][40:60, :2] = 1e-12  # needles
        scene["scales"][60:70, 0] = 0.5  # long thin streaks across many tiles
        scene["scales"][60:70, 1:] = 1e-4
        scene["quats"][:10] = torch.tensor([0.7071, 0.7071, 0.0, 0.0], dtype=dtype)  # discs seen edge-on
    ref = _render_and_grads(scene, "torch", None, "RGB+ED")
    got = _render_and_grads(scene, "cpu", None, "RGB+ED")
    _close("colors", got[0], ref[0], dtype)
    for k in ref[2]:
        assert torch.isfinite(got[2][k]).all(), k
        _close(f"grad {k}", got[2][k], ref[2][k], dtype)


@pytest.mark.parametrize("antialiased", [False, True])
def test_compiled_projection_matches_torch_projection(dtype, antialiased):
    scene = make_scene(n=300, n_cams=3, width=50, height=40, n_behind=10, offscreen=0.6, dtype=dtype, seed=61)
    with torch.no_grad():
        scene["scales"][:10] = 0.0  # only the eps2d blur
        scene["quats"][10:12] = 0.0  # zero quaternions: F.normalize's epsilon
    W, H, vm, Ks = scene["width"], scene["height"], scene["viewmats"], scene["Ks"]
    keys = ("means", "quats", "scales", "opacities")
    outs = {}
    for name in ("torch", "cpu"):
        leaves = [scene[k].detach().clone().requires_grad_(True) for k in keys]
        if name == "torch":
            p = project_gaussians(
                leaves[0], quat_scale_to_covar(leaves[1], leaves[2]), leaves[3], vm, Ks, W, H, antialiased=antialiased
            )
        else:
            p = compiled.project_compiled(*leaves, vm, Ks, W, H, antialiased=antialiased)
        gen = torch.Generator().manual_seed(7)
        diff = ("means2d", "conics", "depths", "opacities")
        loss = sum((p[k] * torch.randn(p[k].shape, generator=gen, dtype=dtype)).sum() for k in diff)
        outs[name] = (p, torch.autograd.grad(loss, leaves))
    (p_ref, g_ref), (p_got, g_got) = outs["torch"], outs["cpu"]
    assert torch.equal(p_got["radii"], p_ref["radii"]) and (p_ref["radii"] > 0).any()
    for k in ("means2d", "conics", "depths", "opacities", "compensations"):
        _close(k, p_got[k], p_ref[k], dtype)
    for k, a, b in zip(keys, g_got, g_ref):
        assert torch.isfinite(a).all(), k
        _close(f"grad {k}", a, b, dtype)


def test_compiled_tile_lists_equal_torch_tile_lists():
    scene = make_scene(n=500, n_cams=2, width=90, height=70, offscreen=0.5, dtype=torch.float32, seed=71)
    with torch.no_grad():
        W, H = scene["width"], scene["height"]
        p = project_gaussians(
            scene["means"],
            quat_scale_to_covar(scene["quats"], scene["scales"]),
            scene["opacities"],
            scene["viewmats"],
            scene["Ks"],
            W,
            H,
        )
        p["depths"][0, 5:50] = p["depths"][0, 4]  # ties in depth keep the index order
        ref = build_tile_plan(p["means2d"], p["radii"], p["depths"], W, H, 16)
        got = compiled.build_tile_plan_compiled(p["means2d"], p["radii"], p["depths"], W, H, 16)
    for k in ("flat_ids", "starts", "counts", "order"):
        assert torch.equal(getattr(got, k), getattr(ref, k)), k
    assert (got.tile_width, got.tile_height, got.n_isects) == (
        ref.tile_width,
        ref.tile_height,
        ref.n_isects,
    ) and ref.n_isects > 0


def test_camera_gradients_pass_through_the_cpu_backend():
    """With cameras that require grad, "cpu" projects in PyTorch: the cameras get the same gradient as with "torch"."""
    scene = make_scene(n=80, n_cams=2, width=40, height=32, dtype=torch.float64, seed=81)
    grads = {}
    for backend in ("torch", "cpu"):
        vm = scene["viewmats"].clone().requires_grad_(True)
        rc, ra, _ = rasterization(**{**scene, "viewmats": vm}, backend=backend)
        w = torch.randn(rc.shape, generator=torch.Generator().manual_seed(3), dtype=rc.dtype)
        ((rc * w).sum() + ra.sum()).backward()
        grads[backend] = vm.grad
    assert grads["torch"].abs().sum() > 0
    _close("viewmats grad", grads["cpu"], grads["torch"], torch.float64)


def _projected(scene):
    W, H = scene["width"], scene["height"]
    covars = quat_scale_to_covar(scene["quats"], scene["scales"])
    p = project_gaussians(scene["means"], covars, scene["opacities"], scene["viewmats"], scene["Ks"], W, H)
    plan = build_tile_plan(p["means2d"], p["radii"], p["depths"], W, H, 16)
    colors = scene["colors"][None].expand(scene["viewmats"].shape[0], -1, -1)
    inputs = [t.detach().clone().requires_grad_(True) for t in (p["means2d"], p["conics"], p["opacities"], colors)]
    return inputs, plan


def _tile_run(inputs, plan, **kw):
    rc, ra = compiled.rasterize_tiles_compiled(*inputs, plan, absgrad=True, **kw)
    gen = torch.Generator().manual_seed(5)
    loss = (rc * torch.randn(rc.shape, generator=gen, dtype=rc.dtype)).sum() + (
        ra * torch.randn(ra.shape, generator=gen, dtype=ra.dtype)
    ).sum()
    grads = torch.autograd.grad(loss, inputs)
    return [rc, ra, *grads, inputs[0].absgrad]


@pytest.mark.parametrize("dtype_", [torch.float32, torch.float64], ids=["f32", "f64"])
def test_ellipse_spans_change_nothing(dtype_):
    """Visiting only each Gaussian's opacity-aware ellipse gives bit-identical results to visiting every pixel."""
    scene = make_scene(n=400, width=64, height=48, opacity=(0.01, 0.99), log_scale=(-4.0, -0.5), dtype=dtype_, seed=41)
    with torch.no_grad():
        scene["scales"][:30, 1:] = 1e-5  # needles: thin, tilted ellipses
    inputs, plan = _projected(scene)
    fast = _tile_run(inputs, plan)
    inputs[0].absgrad = None
    full = _tile_run(inputs, plan, ellipse_spans=False)
    for a, b in zip(fast, full):
        assert torch.equal(a, b)


def test_bit_identical_across_runs_and_thread_counts():
    scene = make_scene(
        n=800, width=96, height=64, opacity=(0.3, 0.99), log_scale=(-2.5, -0.8), dtype=torch.float32, seed=51
    )
    inputs, plan = _projected(scene)
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = _tile_run(inputs, plan)
        torch.set_num_threads(2)
        two = _tile_run(inputs, plan)
        again = _tile_run(inputs, plan)
    finally:
        torch.set_num_threads(old)
    for a, b, c in zip(one, two, again):
        assert torch.equal(a, b) and torch.equal(b, c)


def test_explicit_cpu_backend_rejects_what_it_cannot_run():
    scene = make_scene(n=5, dtype=torch.float32)
    half = {k: (v.half() if v.is_floating_point() else v) for k, v in scene.items() if k not in ("width", "height")}
    with pytest.raises(ValueError, match="float32 and float64"):
        rasterization(**half, width=scene["width"], height=scene["height"], backend="cpu")
    _, _, meta = rasterization(**scene, backend="auto")
    assert meta["backend"] == "cpu"


_FALLBACK_SCRIPT = textwrap.dedent(
    """
    import sys, torch
    sys.path.insert(0, {here!r})
    from render_reference import make_scene
    from flow3d.render import rasterization
    scene = make_scene(n=20, dtype=torch.float32)
    a, _, meta_a = rasterization(**scene)
    b, _, meta_b = rasterization(**scene)
    ref, _, _ = rasterization(**scene, backend="torch")
    assert meta_a["backend"] == meta_b["backend"] == "torch", (meta_a["backend"], meta_b["backend"])
    assert torch.equal(a, ref) and torch.equal(b, ref)
    try:
        rasterization(**scene, backend="cpu")
    except RuntimeError as err:
        print("explicit:", err)
    """
)


def _run_fallback(tmp_path, **env_extra):
    env = {k: v for k, v in os.environ.items() if k != "FLOW3D_DISABLE_COMPILED"}
    env.update(FLOW3D_TORCH_EXTENSIONS_DIR=str(tmp_path / "ext"), OMP_NUM_THREADS="1", **env_extra)
    script = tmp_path / "fallback.py"
    script.write_text(_FALLBACK_SCRIPT.format(here=str(HERE)))
    return subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=300)


# a compiler that answers --version (as torch checks) but fails every compilation: a build error
_BROKEN_CXX = """#!/bin/sh
case "$1" in --version|-v|-dumpversion) echo "g++ (simulated) 12.2.0"; exit 0;; esac
echo "broken-c++: error: simulated compiler failure" >&2
exit 1
"""


@pytest.mark.parametrize("case", ["build_error", "no_compiler"])
def test_failed_build_falls_back_to_torch_backend_with_one_warning(tmp_path, case):
    """Auto uses "torch" and warns once, naming the cause; an explicit backend="cpu" raises."""
    if case == "build_error":
        cxx = tmp_path / "broken-c++"
        cxx.write_text(_BROKEN_CXX)
        cxx.chmod(0o755)
        cause = "simulated compiler failure"
    else:
        cxx = "no-such-compiler-flow3d"
        cause = "no C++ compiler"
    r = _run_fallback(tmp_path, CXX=str(cxx))
    assert r.returncode == 0, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    warnings = [ln for ln in lines if "compiled CPU rasterizer unavailable" in ln]
    assert len(warnings) == 1 and len(lines) == 1, r.stderr  # one line, nothing else on stderr
    assert cause in warnings[0] and "PyTorch backend" in warnings[0]
    assert compiled.FALLBACK_SLOWDOWN in warnings[0] and "5-7x slower" in warnings[0]  # says what it costs
    assert "explicit: backend='cpu': the compiled CPU rasterizer is unavailable" in r.stdout


def test_disabled_compiled_backend_falls_back_without_building(tmp_path):
    r = _run_fallback(tmp_path, FLOW3D_DISABLE_COMPILED="1")
    assert r.returncode == 0, r.stderr
    assert sum("disabled by FLOW3D_DISABLE_COMPILED" in ln for ln in r.stderr.splitlines()) == 1, r.stderr
    assert not (tmp_path / "ext").exists()  # nothing was built


def test_killed_build_never_blocks_the_next_one(tmp_path, monkeypatch):
    """A builder killed half-way (its flock held, its temporary folder and torch's own ``lock`` file left
    behind) must not make the next process wait: the OS drops the flock with the dead process, the stale
    folder is removed, and the finished library appears by one rename in the final folder."""
    from flow3d.render import compiled

    name = "flow3d_raster_test0000"
    root = tmp_path / "ext"
    root.mkdir()
    stale = root / f".{name}-build-dead"
    stale.mkdir()
    (stale / "lock").write_text("")  # torch's baton of the killed build
    (root / name).mkdir()
    (root / name / "lock").write_text("")  # torch's baton left in the final folder by an older layout's build
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(f"""
            import fcntl, sys, time
            fh = open({str(root / (name + ".lock"))!r}, "a+b")
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            print("locked", flush=True)
            time.sleep(600)
        """),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        holder.kill()  # kill -9 while holding the build lock
        holder.wait(timeout=30)
    finally:
        if holder.poll() is None:
            holder.kill()
    compiled_in, loaded = [], []

    def fake_compile(n, build_dir):
        compiled_in.append(build_dir)
        (build_dir / f"{n}.so").write_bytes(b"library")

    monkeypatch.setattr(compiled, "_compile", fake_compile)
    monkeypatch.setattr(compiled.torch.ops, "load_library", lambda p: loaded.append(p))
    compiled._build_and_load(root / name)  # would hang forever on a stale lock
    assert len(compiled_in) == 1 and compiled_in[0].parent == root and compiled_in[0].name.startswith(f".{name}-build-")
    assert (root / name / f"{name}.so").read_bytes() == b"library"
    assert not stale.exists() and not compiled_in[0].exists()  # no temporary folder left
    compiled._build_and_load(root / name)  # second process: loads the finished library, builds nothing
    assert len(compiled_in) == 1 and loaded == [str(root / name / f"{name}.so")]


def test_a_library_that_does_not_load_is_rebuilt_once(tmp_path, monkeypatch):
    """A whole library (it matches its build record) that the loader refuses is replaced, not a permanent
    fallback."""
    from flow3d.render import compiled

    name = "flow3d_raster_test0001"
    (tmp_path / name).mkdir()
    (tmp_path / name / f"{name}.so").write_bytes(b"trunc")
    (tmp_path / name / f"{name}.so.json").write_text(json.dumps(compiled._file_record(tmp_path / name / f"{name}.so")))
    compiled_in, loaded = [], []

    def fake_load(path):
        if Path(path).read_bytes() == b"trunc":
            raise OSError(f"{path}: file too short")
        loaded.append(path)

    monkeypatch.setattr(
        compiled, "_compile", lambda n, d: (compiled_in.append(d), (d / f"{n}.so").write_bytes(b"whole"))
    )
    monkeypatch.setattr(compiled.torch.ops, "load_library", fake_load)
    compiled._build_and_load(tmp_path / name)
    assert len(compiled_in) == 1 and (tmp_path / name / f"{name}.so").read_bytes() == b"whole"
    compiled._build_and_load(tmp_path / name)
    assert len(compiled_in) == 1 and loaded == [str(tmp_path / name / f"{name}.so")]


def _fake_builds(monkeypatch, payload: bytes):
    """Replace the compiler and the loader: a build writes ``payload``; a load records the bytes it was given
    and, as the dynamic loader does with a short file, "crashes" (an AssertionError here) on any other bytes."""
    from flow3d.render import compiled

    built, loaded = [], []

    def fake_compile(n, build_dir):
        built.append(build_dir)
        (build_dir / f"{n}.so").write_bytes(payload)

    def fake_load(path):
        data = Path(path).read_bytes()
        assert data == payload, f"the loader was given {len(data)} bytes that are not the built library"
        loaded.append(path)

    monkeypatch.setattr(compiled, "_compile", fake_compile)
    monkeypatch.setattr(compiled.torch.ops, "load_library", fake_load)
    return built, loaded


@pytest.mark.parametrize(
    "damage", ["truncated", "same_size_altered", "no_record", "record_not_json", "record_of_another"]
)
def test_a_library_not_matching_its_build_record_is_rebuilt_before_any_load(tmp_path, monkeypatch, caplog, damage):
    """The loader never sees a library that differs from the record its build wrote (a truncated one kills
    the process with SIGBUS): it is rebuilt, with one warning naming the library and the reason."""
    from flow3d.render import compiled

    payload = bytes(range(256)) * 64
    built, loaded = _fake_builds(monkeypatch, payload)
    name = "flow3d_raster_test0002"
    lib = tmp_path / name / f"{name}.so"
    record = tmp_path / name / f"{name}.so.json"
    compiled._build_and_load(tmp_path / name)
    assert len(built) == 1 and loaded == []  # the build loads it itself (from its temporary folder)
    stored = json.loads(record.read_text())
    assert stored == {"size": len(payload), "sha256": hashlib.sha256(payload).hexdigest()}  # an independent hash
    compiled._build_and_load(tmp_path / name)  # a later process: whole, so loaded without a rebuild
    assert len(built) == 1 and loaded == [str(lib)]

    if damage == "truncated":
        with open(lib, "r+b") as fh:
            fh.truncate(len(payload) // 3)
    elif damage == "same_size_altered":
        lib.write_bytes(payload[:-1] + b"\x00")
    elif damage == "no_record":
        record.unlink()
    elif damage == "record_not_json":
        record.write_text('{"size": 16')
    else:
        record.write_text(json.dumps({"size": len(payload), "sha256": hashlib.sha256(b"other").hexdigest()}))
    assert compiled.library_mismatch(lib) is not None
    caplog.clear()
    with caplog.at_level("WARNING", logger="flow3d.render.compiled"):
        compiled._build_and_load(tmp_path / name)
    assert len(built) == 2 and loaded == [str(lib)]  # rebuilt, and the damaged file was never loaded
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warned) == 1 and str(lib) in warned[0] and "rebuilding" in warned[0], warned
    assert lib.read_bytes() == payload and compiled.library_mismatch(lib) is None


_RENDER_SCRIPT = textwrap.dedent(
    """
    import sys, torch
    sys.path.insert(0, {here!r})
    from render_reference import make_scene
    from flow3d.render import rasterization
    scene = make_scene(n=20, dtype=torch.float32)
    a, _, meta = rasterization(**scene, backend="cpu")
    ref, _, _ = rasterization(**scene, backend="torch")
    torch.testing.assert_close(a, ref)
    print("rendered with", meta["backend"])
    """
)


@pytest.mark.slow
def test_a_truncated_cached_library_is_rebuilt_by_the_next_process(tmp_path):
    """Issue 22: a library truncated in the cache killed every later process with SIGBUS. The real library,
    truncated, in a fresh cache: a new process renders with the compiled backend (rebuilt), no signal."""
    lib = compiled.extension_dir() / compiled.build_name() / f"{compiled.build_name()}.so"
    assert compiled.library_mismatch(lib) is None  # built by the fixture, with its record
    root = tmp_path / "ext"
    shutil.copytree(lib.parent, root / lib.parent.name)
    cached = root / lib.parent.name / lib.name
    with open(cached, "r+b") as fh:
        fh.truncate(cached.stat().st_size // 2)
    script = tmp_path / "render.py"
    script.write_text(_RENDER_SCRIPT.format(here=str(HERE)))
    env = {k: v for k, v in os.environ.items() if k != "FLOW3D_DISABLE_COMPILED"}
    env.update(FLOW3D_TORCH_EXTENSIONS_DIR=str(root), OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode >= 0, f"killed by {signal.Signals(-r.returncode).name}: {r.stderr}"
    assert r.returncode == 0 and r.stdout.strip() == "rendered with cpu", r.stdout + r.stderr
    assert "is not usable" in r.stderr and "bytes where its build recorded" in r.stderr and "rebuilding" in r.stderr, (
        r.stderr
    )
    assert compiled.library_mismatch(cached) is None and cached.stat().st_size > 0  # whole again, with its record


def test_cxx_standard_is_the_one_torch_writes_into_its_own_build_files(tmp_path):
    """Our ``-std`` flag (it comes after torch's on the compiler line, so it wins) is the standard torch's
    ``cpp_extension`` itself writes into the ninja file of a build: read from that file, not from our parser."""
    import inspect

    from torch.utils import cpp_extension

    writer = cpp_extension._write_ninja_file_to_build_library
    values = {
        "path": str(tmp_path / "build.ninja"),
        "name": "probe",
        "sources": [str(compiled.SOURCES[0])],
        "with_cuda": False,
        "with_sycl": False,
        "is_standalone": False,
    }
    args = {p: values.get(p, []) for p in inspect.signature(writer).parameters}
    writer(**args)
    line = next(ln for ln in (tmp_path / "build.ninja").read_text().splitlines() if ln.startswith("cflags ="))
    torch_std = [f for f in line.split() if f.startswith("-std=")]
    assert torch_std, line
    assert compiled.cxx_standard_flag() == torch_std[0]
    assert compiled.cflags().count(torch_std[0]) == 1 and sum(f.startswith("-std=") for f in compiled.cflags()) == 1
    if tuple(int(v) for v in torch.__version__.split("+")[0].split(".")[:2]) >= (2, 14):
        assert torch_std[0] == "-std=c++20"  # torch 2.14's headers use std::strong_ordering (C++20)


def test_the_cxx_standard_is_part_of_the_library_name(monkeypatch):
    name = compiled.build_name()
    monkeypatch.setattr(compiled, "cxx_standard_flag", lambda: "-std=c++17")
    other = compiled.build_name()
    monkeypatch.setattr(compiled, "cxx_standard_flag", lambda: "-std=c++20")
    assert len({name, other, compiled.build_name()}) == 2 and other != compiled.build_name()


def test_in_ci_a_missing_compiler_fails_instead_of_skipping(monkeypatch):
    from render_reference import require_compiled as require

    monkeypatch.setattr(compiled, "load_extension", lambda: False)
    monkeypatch.setenv("CXX", "no-such-compiler-flow3d")
    monkeypatch.delenv("FLOW3D_DISABLE_COMPILED", raising=False)
    monkeypatch.setenv("CI", "")
    with pytest.raises(pytest.skip.Exception):
        require()
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="did not build or load"):
        require()
