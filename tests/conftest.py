"""Shared fixtures.

Real data lives outside the repository, in ``../shared/data/real/`` beside the clone (CI always has it;
a user's fresh clone may not). Tests that need it take the ``real_data`` fixture and skip with a clear
reason when it is absent. ``FLOW3D_REAL_DATA`` overrides the location.
"""

from __future__ import annotations

import os

# Before torch is imported: its OpenMP threads otherwise spin against OpenCV's pool (25x slower here).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]


def real_data_dir() -> Path | None:
    env = os.environ.get("FLOW3D_REAL_DATA")
    candidates = [Path(env)] if env else []
    candidates.append(REPO_ROOT.parent / "shared" / "data" / "real")
    for c in candidates:
        if c.is_dir():
            return c
    return None


@pytest.fixture(scope="session")
def real_data() -> Path:
    """Folder holding the real datasets (``7scenes_tsdf_fusion``, ``davis_horsejump_high``, ...)."""
    d = real_data_dir()
    if d is None:
        pytest.skip("real data not found: expected ../shared/data/real beside the repository (or set FLOW3D_REAL_DATA)")
    return d


@pytest.fixture(params=[torch.float32, torch.float64], ids=["f32", "f64"])
def dtype(request):
    return request.param


@pytest.fixture
def device():
    return torch.device("cpu")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(autouse=True, scope="session")
def _isolated_data_cache(tmp_path_factory):
    """Loaders cache to ~/.cache/flow3d by default: the tests use a temporary folder instead."""
    old = os.environ.get("FLOW3D_CACHE_DIR")
    os.environ["FLOW3D_CACHE_DIR"] = str(tmp_path_factory.mktemp("flow3d_cache"))
    yield
    if old is None:
        os.environ.pop("FLOW3D_CACHE_DIR", None)
    else:
        os.environ["FLOW3D_CACHE_DIR"] = old
