"""Gaussians in the INRIA 3D Gaussian Splatting ``.ply`` layout, and coloured point clouds, with plyfile.

The 3DGS layout is what common splat viewers and editors open (SuperSplat, the INRIA SIBR viewer,
gsplat's ``export_splats``): one ``vertex`` element of float32 properties, binary little-endian::

    x y z            centre (scene units)
    nx ny nz         zeros (unused by splat viewers, kept for compatibility)
    f_dc_0..2        degree-0 spherical harmonics: rgb = 0.5 + SH_C0 * f_dc  (so f_dc = (rgb - 0.5) / SH_C0)
    opacity          logit of the opacity (viewers apply sigmoid)
    scale_0..2       log of the standard deviations along the Gaussian's axes (viewers apply exp)
    rot_0..3         unit quaternion, wxyz (scalar first)

flow3d's Gaussians have no view-dependent colour, so no ``f_rest_*`` property is written (readers that
find none use degree 0). Point clouds are ``x y z`` float32 plus ``red green blue`` uchar.
Files are written atomically (a temporary file beside the target, then renamed).
"""

from __future__ import annotations

import io
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from flow3d.fileio import write_bytes
from flow3d.log import get_logger

logger = get_logger(__name__)

SH_C0 = 0.28209479177387814  # the degree-0 real spherical harmonic, 1 / (2 sqrt(pi))

SPLAT_PROPERTIES = (
    ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2", "opacity"]
    + [f"scale_{i}" for i in range(3)]
    + [f"rot_{i}" for i in range(4)]
)


@dataclass
class Splats:
    """A set of Gaussians in the 3DGS file convention (stored values, activations in methods)."""

    means: Tensor  # (N, 3) centres, scene units
    quats: Tensor  # (N, 4) wxyz, unit norm
    log_scales: Tensor  # (N, 3) log standard deviations
    opacity_logits: Tensor  # (N,) logits of the opacities
    rgb: Tensor  # (N, 3) colour in [0, 1]

    def __post_init__(self):
        N = self.means.shape[0]
        for f, shape in zip(fields(self), ((N, 3), (N, 4), (N, 3), (N,), (N, 3))):
            t = getattr(self, f.name)
            if tuple(t.shape) != shape:
                raise ValueError(f"Splats.{f.name} must have shape {shape}, got {tuple(t.shape)}")

    def __len__(self) -> int:
        return self.means.shape[0]

    def scales(self) -> Tensor:
        """(N, 3) standard deviations (exp of the stored logs)."""
        return torch.exp(self.log_scales)

    def opacities(self) -> Tensor:
        """(N,) opacities in (0, 1) (sigmoid of the stored logits)."""
        return torch.sigmoid(self.opacity_logits)

    def select(self, keep: Tensor) -> "Splats":
        """The Gaussians where ``keep`` (N,) bool is True (or at the indices ``keep``)."""
        return Splats(*(getattr(self, f.name)[keep] for f in fields(self)))

    @staticmethod
    def cat(parts: list["Splats"]) -> "Splats":
        return Splats(*(torch.cat([getattr(p, f.name) for p in parts]) for f in fields(Splats)))

    def finite(self) -> Tensor:
        """(N,) bool: every stored value of the Gaussian is finite."""
        vals = [getattr(self, f.name).reshape(len(self), -1) for f in fields(self)]
        return torch.isfinite(torch.cat(vals, dim=1)).all(dim=1)


def _ply_bytes(vertex: np.ndarray) -> bytes:
    from plyfile import PlyData, PlyElement

    buf = io.BytesIO()
    PlyData([PlyElement.describe(vertex, "vertex")], text=False, byte_order="<").write(buf)
    return buf.getvalue()


def write_splat_ply(path: str | Path, splats: Splats) -> int:
    """Write ``splats`` as a 3DGS ``.ply`` (layout in the module docstring); returns the Gaussians written.

    Gaussians with a non-finite value are left out and counted in a warning.
    """
    ok = splats.finite()
    if not bool(ok.all()):
        logger.warning("%s: left out %d of %d Gaussians with non-finite values", path, int((~ok).sum()), len(splats))
        splats = splats.select(ok)
    N = len(splats)
    cols = [
        splats.means,
        torch.zeros_like(splats.means),
        (splats.rgb - 0.5) / SH_C0,
        splats.opacity_logits[:, None],
        splats.log_scales,
        torch.nn.functional.normalize(splats.quats, dim=-1),
    ]
    data = torch.cat([c.detach().to("cpu", torch.float32) for c in cols], dim=1).numpy()  # (N, 17)
    vertex = np.empty(N, dtype=[(name, "<f4") for name in SPLAT_PROPERTIES])
    for i, name in enumerate(SPLAT_PROPERTIES):
        vertex[name] = data[:, i]
    write_bytes(path, _ply_bytes(vertex))
    return N


def read_splat_ply(path: str | Path) -> Splats:
    """Read a 3DGS ``.ply`` (ours or another tool's; ``f_rest_*`` are ignored) into float32 :class:`Splats`.

    Raises ValueError naming the file when it is not a PLY file or lacks a property of the layout.
    """
    from plyfile import PlyData, PlyParseError

    path = Path(path)
    try:
        vertex = PlyData.read(str(path))["vertex"]
    except (OSError, ValueError, KeyError, IndexError, PlyParseError) as e:
        raise ValueError(
            f"{path} is not a readable PLY file with a 'vertex' element ({type(e).__name__}: {e})"
        ) from None
    names = set(vertex.data.dtype.names or ())
    missing = [p for p in SPLAT_PROPERTIES if p not in names and not p.startswith("n")]
    if missing:
        raise ValueError(f"{path} is not a 3D Gaussian Splatting file: properties {missing} are missing")

    def cols(*keys: str) -> Tensor:
        return torch.from_numpy(np.stack([np.asarray(vertex[k], dtype=np.float32) for k in keys], axis=-1))

    return Splats(
        means=cols("x", "y", "z"),
        quats=cols("rot_0", "rot_1", "rot_2", "rot_3"),
        log_scales=cols("scale_0", "scale_1", "scale_2"),
        opacity_logits=cols("opacity")[:, 0],
        rgb=0.5 + SH_C0 * cols("f_dc_0", "f_dc_1", "f_dc_2"),
    )


def write_point_ply(path: str | Path, xyz: Tensor, rgb: Tensor) -> int:
    """Write a coloured point cloud: ``xyz`` (P, 3) float32 and ``rgb`` (P, 3) in [0, 1] -> uchar 0..255.

    Points with a non-finite coordinate are left out (counted in a warning); returns the points written.
    """
    if xyz.ndim != 2 or xyz.shape[-1] != 3 or tuple(rgb.shape) != tuple(xyz.shape):
        raise ValueError(f"xyz and rgb must both be (P, 3), got {tuple(xyz.shape)} and {tuple(rgb.shape)}")
    xyz = xyz.detach().to("cpu", torch.float32)
    rgb = rgb.detach().to("cpu", torch.float32)
    ok = torch.isfinite(xyz).all(dim=1)
    if not bool(ok.all()):
        logger.warning("%s: left out %d of %d points with non-finite coordinates", path, int((~ok).sum()), len(xyz))
        xyz, rgb = xyz[ok], rgb[ok]
    rgb8 = (torch.nan_to_num(rgb).clamp(0, 1) * 255 + 0.5).to(torch.uint8).numpy()
    vertex = np.empty(
        len(xyz), dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("red", "u1"), ("green", "u1"), ("blue", "u1")]
    )
    for i, k in enumerate("xyz"):
        vertex[k] = xyz[:, i].numpy()
    for i, k in enumerate(("red", "green", "blue")):
        vertex[k] = rgb8[:, i]
    write_bytes(path, _ply_bytes(vertex))
    return len(xyz)


__all__ = ["SH_C0", "SPLAT_PROPERTIES", "Splats", "read_splat_ply", "write_point_ply", "write_splat_ply"]
