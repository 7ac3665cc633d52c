"""The compiled CPU tile rasterizer: a C++/OpenMP extension built on first use, with its autograd glue.

The C++ sources in ``csrc/`` (shipped inside the package) hold the three stages of the CPU rasterizer
with the rules of the PyTorch reference and of gsplat's kernels: the EWA projection and its backward
(``project_kernels.cpp``, reference :mod:`flow3d.render.projection`), the depth-sorted tile lists
(same file, reference :func:`flow3d.render.tile_raster.build_tile_plan`) and the per-tile compositing
with its backward (``raster_kernels.cpp``, reference :mod:`flow3d.render.tile_raster`); ``raster_ops.cpp``
binds them as ``torch.ops.flow3d_raster.*``. It is built once per machine, torch version
and source by ``torch.utils.cpp_extension`` (needs a C++ compiler and ninja) into
``$FLOW3D_TORCH_EXTENSIONS_DIR``, else ``$XDG_CACHE_HOME/flow3d/torch_extensions``, else
``~/.cache/flow3d/torch_extensions``; later processes load the cached library in well under a second.
The C++ standard is the one torch's own ``cpp_extension`` compiles extensions with (C++17 up to some
torch version, C++20 from it on: torch 2.14's headers do not compile as C++17), read from the torch
being compiled against (:func:`cxx_standard_flag`), and it is part of the library's name.

Each library has a build record beside it (``<name>.so.json``: its size and SHA-256, written atomically
when it is built). A library that does not match its record (truncated by a killed build or a full disk,
or altered) is never handed to the dynamic loader, which would kill the process with SIGBUS before
Python could catch anything; it is rebuilt instead, with one warning.

:func:`load_extension` never raises: when the build or the load fails it returns False and
:func:`load_error` says why, so that ``backend="auto"`` can fall back to the PyTorch backend.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import json
import logging
import math
import os
import platform
import re
import shutil
import sys
import tempfile
import threading
import warnings
from pathlib import Path

import torch
from torch import Tensor

from flow3d.fileio import move_into_place, write_json
from flow3d.log import get_logger
from flow3d.render.tile_raster import TilePlan

logger = get_logger(__name__)

CSRC = Path(__file__).resolve().parent / "csrc"
SOURCES = (CSRC / "raster_kernels.cpp", CSRC / "project_kernels.cpp", CSRC / "raster_ops.cpp")  # built in parallel
HEADERS = (CSRC / "raster_kernels.h",)
_CFLAGS = ["-O3", "-ffp-contract=off"]  # + the C++ standard of the torch at hand: see cflags()
_OPENMP = [] if sys.platform == "darwin" else ["-fopenmp"]  # Apple clang has no OpenMP: serial build there

# The cost of the fallback, for its warning: PyTorch-backend over compiled-backend process CPU time per
# training step of the README demo, `python -m flow3d.benchmarks.step --steps 10 --warmup 3 --sizes ''`,
# 2 threads, on a shared machine (load 10-16 on 2 cores, so the wall-time ratios, x4.2, x6.4 and x1.95,
# are not the measure): x6.3 and x6.6 with torch 2.13, x5.2 with torch 2.14.1; x7.1 (wall x7.2) on a
# quiet machine (README "Speed").
FALLBACK_SLOWDOWN = "5-7x slower per training step: python -m flow3d.benchmarks.step measures it"

_lock = threading.Lock()
_state: dict = {"loaded": False, "error": None}


def extension_dir() -> Path:
    """Parent folder of the build folders (see the module docstring)."""
    env = os.environ.get("FLOW3D_TORCH_EXTENSIONS_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "flow3d" / "torch_extensions"


@contextlib.contextmanager
def _quiet_torch_build_log():
    """Torch's build messages (e.g. "compiler not compatible", or a CUDA build of torch saying on import
    that no CUDA runtime is found) would add lines to our one-line verdict: errors only, meanwhile."""
    torch_log = logging.getLogger("torch.utils.cpp_extension")
    level = torch_log.level
    torch_log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        torch_log.setLevel(level)


def _cpp_extension():
    """``torch.utils.cpp_extension``, imported quietly."""
    with _quiet_torch_build_log():
        from torch.utils import cpp_extension
    return cpp_extension


def cxx_standard_flag() -> str | None:
    """The ``-std=c++NN`` flag torch's own ``cpp_extension`` compiles C++ extensions with, read from the
    installed torch (``-std=c++17`` on torch 2.1, ``-std=c++20`` on recent ones, whose headers need it);
    None when it cannot be read (then no flag of ours overrides torch's choice)."""
    cpp_extension = _cpp_extension()
    try:  # the function that writes the ninja file of torch.utils.cpp_extension.load (torch 2.1 to 2.14)
        source = inspect.getsource(cpp_extension._write_ninja_file_to_build_library)
    except (AttributeError, OSError, TypeError):
        return None
    # its non-Windows C++ line, e.g. "cflags = common_cflags + ['-fPIC', '-std=c++20'] + extra_cflags"
    found = re.findall(r"cflags = common_cflags \+ \[[^\]]*'-std=(c\+\+\d+)'", source)
    if not found:
        return None
    return f"-std={max(found, key=lambda v: int(v[3:]))}"


def cflags() -> list[str]:
    """The compiler flags of our build: optimisation, no FMA contraction (exactness against the PyTorch
    reference), torch's C++ standard (our flags come last on torch's command line, so they must not ask
    for an older one) and OpenMP."""
    std = cxx_standard_flag()
    return [*_CFLAGS, *([std] if std else []), *_OPENMP]


def build_name() -> str:
    """Library name: a hash of the source, the flags, torch, Python and the machine type."""
    h = hashlib.sha1()
    for f in (*SOURCES, *HEADERS):
        h.update(f.read_bytes())
    h.update(" ".join([*cflags(), torch.__version__, sys.version, platform.machine()]).encode())
    return f"flow3d_raster_{h.hexdigest()[:12]}"


def _short_reason(err: BaseException) -> str:
    """One line out of a build error: the first compiler error line when there is one."""
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    for ln in lines[1:]:
        if "error:" in ln.lower() or "error " in ln.lower():
            return f"{type(err).__name__}: {ln[:300]}"
    return f"{type(err).__name__}: {lines[0][:300] if lines else 'no message'}"


def _missing_tool() -> str | None:
    """Why a build cannot even start (no compiler, no ninja), else None."""
    is_ninja_available = _cpp_extension().is_ninja_available
    cxx = os.environ.get("CXX", "c++")
    if shutil.which(cxx) is None:
        return f"no C++ compiler: {cxx!r} is not on PATH (install g++ or clang, or set CXX)"
    if not is_ninja_available():
        return "ninja is not installed (pip install ninja)"
    return None


@contextlib.contextmanager
def _build_lock(path: Path):
    """Serialise builders of one library across processes with ``flock``: the OS drops the lock when its
    holder dies, so a build killed half-way (Ctrl-C, kill -9, a test timeout) never blocks later processes
    (torch's own lock file would stay behind and make every later ``load`` wait forever)."""
    try:
        import fcntl
    except ImportError:  # Windows: no flock; concurrent first builds then each build privately (below)
        yield
        return
    with open(path, "a+b") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _compile(name: str, build_dir: Path) -> None:
    """Build and load the library in ``build_dir`` with torch's cpp_extension, quietly."""
    load = _cpp_extension().load
    with _quiet_torch_build_log():
        load(
            name=name,
            sources=[str(f) for f in SOURCES],
            extra_cflags=cflags(),
            extra_ldflags=_OPENMP,
            build_directory=str(build_dir),
            is_python_module=False,
            verbose=False,
        )


def _record_path(library: Path) -> Path:
    return library.with_name(library.name + ".json")


def _file_record(path: Path) -> dict:
    """Size and SHA-256 of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return {"size": path.stat().st_size, "sha256": h.hexdigest()}


def library_mismatch(library: Path) -> str | None:
    """Why ``library`` must not be loaded (missing, no build record, or not the file its record describes:
    truncated, altered), else None. Checked before every load: the dynamic loader maps the file, and a
    file shorter than its ELF headers say kills the process with SIGBUS, which no ``except`` catches."""
    if not library.is_file():
        return "missing"
    try:
        record = json.loads(_record_path(library).read_text())
        want = {"size": int(record["size"]), "sha256": str(record["sha256"])}
    except FileNotFoundError:
        return "no build record"
    except (OSError, ValueError, KeyError, TypeError) as err:
        return f"unreadable build record ({type(err).__name__})"
    size = library.stat().st_size
    if size != want["size"]:
        return f"{size} bytes where its build recorded {want['size']}"
    if _file_record(library)["sha256"] != want["sha256"]:
        return "its SHA-256 differs from the one its build recorded"
    return None


def _build_and_load(build_dir: Path) -> None:
    """Load ``build_dir/<name>.so``, building it first when missing or not matching its build record.

    The build runs in a private temporary folder beside ``build_dir`` under an ``flock``; the finished
    library's record (size, SHA-256) is written atomically, then the library is moved into place with one
    atomic rename, so another process sees either no library or a whole one, and a killed build leaves
    only a temporary folder (removed by the next build). A library is loaded only after it matched its
    record (see :func:`library_mismatch`)."""
    name = build_dir.name
    library = build_dir / f"{name}.so"
    why = library_mismatch(library)
    if why is None:
        try:
            torch.ops.load_library(str(library))
            return
        except (OSError, RuntimeError) as err:  # whole, but not loadable here (e.g. a changed system library)
            why = f"cannot load it: {_short_reason(err)}"
            library.unlink(missing_ok=True)
    if why != "missing":
        logger.warning("the compiled CPU rasterizer %s is not usable (%s): rebuilding it", library, why)
    build_dir.parent.mkdir(parents=True, exist_ok=True)
    with _build_lock(build_dir.parent / f"{name}.lock"):
        for stale in build_dir.parent.glob(f".{name}-build-*"):  # left by a killed build
            shutil.rmtree(stale, ignore_errors=True)
        if library_mismatch(library) is not None:  # else rebuilt meanwhile by another process
            logger.info("building the compiled CPU rasterizer (once per machine and torch version) in %s", build_dir)
            tmp = Path(tempfile.mkdtemp(prefix=f".{name}-build-", dir=build_dir.parent))
            try:
                _compile(name, tmp)  # also loads the library (from tmp; the mapping survives the rename)
                build_dir.mkdir(exist_ok=True)
                write_json(_record_path(library), _file_record(tmp / f"{name}.so"))
                move_into_place(tmp / f"{name}.so", library)
                return
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
    why = library_mismatch(library)
    if why is not None:
        raise RuntimeError(f"{library} does not match its build record after a rebuild by another process: {why}")
    torch.ops.load_library(str(library))  # built meanwhile by another process


def load_extension() -> bool:
    """Build (first use) and load the extension once per process; False when it cannot be had."""
    with _lock:
        if _state["loaded"]:
            return True
        if _state["error"] is not None:
            return False
        if os.environ.get("FLOW3D_DISABLE_COMPILED", "") not in ("", "0"):
            _state["error"] = "disabled by FLOW3D_DISABLE_COMPILED"
            return False
        missing = _missing_tool()
        if missing is not None:
            _state["error"] = missing
            return False
        try:
            _build_and_load(extension_dir() / build_name())
            torch.ops.flow3d_raster.forward  # noqa: B018  (raises when the library did not register)
        except Exception as err:  # noqa: BLE001 -- any build or load failure means "use the fallback"
            _state["error"] = _short_reason(err)
            return False
        _state["loaded"] = True
        return True


def load_error() -> str | None:
    """Why the extension is unavailable (None when it is loaded or was not tried yet)."""
    return _state["error"]


class _ProjectCompiled(torch.autograd.Function):
    @staticmethod
    def forward(ctx, means, quats, scales, opacities, viewmats, Ks, args: tuple):
        ins = tuple(t.detach().contiguous() for t in (means, quats, scales, opacities, viewmats, Ks))
        means2d, conics, depths, radii, opac, comp = torch.ops.flow3d_raster.project(*ins, *args)
        ctx.save_for_backward(*ins)
        ctx.args = args
        ctx.mark_non_differentiable(radii, comp)
        return means2d, conics, depths, radii, opac, comp

    @staticmethod
    def backward(ctx, v_means2d, v_conics, v_depths, _v_radii, v_opac, _v_comp):
        ins = ctx.saved_tensors
        C, N = ins[4].shape[0], ins[0].shape[0]
        like = ins[0].new_zeros
        grads = [
            like(shape) if g is None else g.contiguous()
            for g, shape in ((v_means2d, (C, N, 2)), (v_conics, (C, N, 3)), (v_depths, (C, N)), (v_opac, (C, N)))
        ]
        g_means, g_quats, g_scales, g_opac = torch.ops.flow3d_raster.project_backward(*ins, *grads, *ctx.args)
        return g_means, g_quats, g_scales, g_opac, None, None, None


def project_compiled(
    means: Tensor,  # (N, 3) world
    quats: Tensor,  # (N, 4) wxyz, need not be normalised
    scales: Tensor,  # (N, 3) activated
    opacities: Tensor,  # (N,) or (C, N)
    viewmats: Tensor,  # (C, 4, 4) world -> camera (no gradient)
    Ks: Tensor,  # (C, 3, 3) gsplat pixel convention (no gradient)
    width: int,
    height: int,
    eps2d: float = 0.3,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
    radius_clip: float = 0.0,
    antialiased: bool = False,
) -> dict[str, Tensor]:
    """The compiled counterpart of ``project_gaussians(means, quat_scale_to_covar(quats, scales), ...)``.

    Same outputs (``means2d``, ``conics``, ``depths``, ``radii``, ``opacities``, ``compensations``),
    differentiable with respect to means, quats, scales and opacities; no gradient reaches the
    cameras or the compensations.
    """
    if not load_extension():
        raise RuntimeError(f"the compiled CPU rasterizer is unavailable: {load_error()}")
    args = (
        int(width),
        int(height),
        float(eps2d),
        float(near_plane),
        float(far_plane),
        float(radius_clip),
        bool(antialiased),
    )
    out = _ProjectCompiled.apply(means, quats, scales, opacities, viewmats, Ks, args)
    return dict(zip(("means2d", "conics", "depths", "radii", "opacities", "compensations"), out))


@torch.no_grad()
def build_tile_plan_compiled(
    means2d: Tensor,  # (I, N, 2) pixels
    radii: Tensor,  # (I, N, 2) int32, 0 when culled
    depths: Tensor,  # (I, N)
    width: int,
    height: int,
    tile_size: int = 16,
) -> TilePlan:
    """The compiled counterpart of :func:`flow3d.render.tile_raster.build_tile_plan` (the same plan)."""
    if not load_extension():
        raise RuntimeError(f"the compiled CPU rasterizer is unavailable: {load_error()}")
    flat_ids, starts, counts, order = torch.ops.flow3d_raster.tile_lists(
        means2d.detach().contiguous(),
        radii.to(torch.int32).contiguous(),
        depths.detach().to(means2d.dtype).contiguous(),
        int(width),
        int(height),
        int(tile_size),
    )
    return TilePlan(
        flat_ids=flat_ids,
        starts=starts,
        counts=counts,
        order=order,
        n_images=means2d.shape[0],
        tile_width=math.ceil(width / tile_size),
        tile_height=math.ceil(height / tile_size),
        tile_size=tile_size,
        width=width,
        height=height,
    )


class _RasterizeTilesCompiled(torch.autograd.Function):
    @staticmethod
    def forward(ctx, means2d, conics, opacities, colors, plan: TilePlan, absgrad: bool, whole_tiles: bool):
        # means2d (I, N, 2), conics (I, N, 3), opacities (I, N), colors (I, N, D)
        I, N, D = colors.shape
        tabs = (
            means2d.detach().reshape(I * N, 2).contiguous(),
            conics.detach().reshape(I * N, 3).contiguous(),
            opacities.detach().reshape(I * N).contiguous(),
            colors.detach().reshape(I * N, D).contiguous(),
        )
        lists = (
            plan.flat_ids.contiguous(),
            plan.starts.contiguous(),
            plan.counts.contiguous(),
            plan.order.contiguous(),
        )
        acc, T, last = torch.ops.flow3d_raster.forward(
            *tabs, *lists, I, plan.width, plan.height, plan.tile_size, plan.tile_width, plan.tile_height, whole_tiles
        )
        ctx.plan, ctx.absgrad, ctx.whole_tiles, ctx.shape = plan, absgrad, whole_tiles, (I, N, D)
        ctx.save_for_backward(means2d, *tabs, T, last)
        ctx.lists = lists
        return acc, T[..., None]  # (I, H, W, D) without background, (I, H, W, 1) transmittance

    @staticmethod
    def backward(ctx, g_acc, g_T):
        means2d, m, c, o, col, T, last = ctx.saved_tensors
        plan, (I, N, D) = ctx.plan, ctx.shape
        grads, abs_grads = torch.ops.flow3d_raster.backward(
            m,
            c,
            o,
            col,
            *ctx.lists,
            T,
            last,
            g_acc.contiguous(),
            g_T.contiguous(),
            plan.width,
            plan.height,
            plan.tile_size,
            plan.tile_width,
            plan.tile_height,
            ctx.absgrad,
            ctx.whole_tiles,
        )
        if ctx.absgrad:
            means2d.absgrad = abs_grads.reshape(I, N, 2)
        g_means2d = grads[:, 0:2].reshape(I, N, 2)
        g_conics = grads[:, 2:5].reshape(I, N, 3)
        g_opac = grads[:, 5].reshape(I, N)
        g_colors = grads[:, 6:].reshape(I, N, D)
        return g_means2d, g_conics, g_opac, g_colors, None, None, None


def rasterize_tiles_compiled(
    means2d: Tensor,  # (I, N, 2) pixels (gsplat convention)
    conics: Tensor,  # (I, N, 3) inverse 2D covariance (xx, xy, yy)
    opacities: Tensor,  # (I, N)
    colors: Tensor,  # (I, N, D)
    plan: TilePlan,
    backgrounds: Tensor | None = None,  # (I, D)
    absgrad: bool = False,
    ellipse_spans: bool = True,
) -> tuple[Tensor, Tensor]:
    """The compiled counterpart of :func:`flow3d.render.tile_raster.rasterize_tiles` (same contract).

    Builds or loads the extension on first use (RuntimeError when it cannot). Returns ``render_colors`` (I, H, W, D) composited over
    ``backgrounds`` and ``render_alphas`` (I, H, W, 1). ``ellipse_spans=False`` makes every Gaussian visit
    every pixel of its tiles instead of only its opacity-aware ellipse (same result, slower: for tests).
    """
    if not load_extension():
        raise RuntimeError(f"the compiled CPU rasterizer is unavailable: {load_error()}")
    acc, T = _RasterizeTilesCompiled.apply(means2d, conics, opacities, colors, plan, absgrad, not ellipse_spans)
    render_colors = acc if backgrounds is None else acc + T * backgrounds[:, None, None, :]
    return render_colors, 1.0 - T
