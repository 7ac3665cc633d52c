"""The principal-point convention per data source, against hand-made cameras.

The project's intrinsics are OpenCV's: pixel (i, j) is centred at (x, y) = (j, i). The model renders with
``opencv_to_gsplat_Ks`` (+0.5) because gsplat samples pixel (i, j) at (j + 0.5, i + 0.5). Loaders convert
to the OpenCV convention: iPhone (Nerfies cameras, centres at +0.5) by -0.5, casual/DAVIS (DROID-SLAM,
whose projective ops use integer pixel centres) unchanged. Shape of Motion passes both to gsplat as they are.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from flow3d.data.casual import _scale_Ks
from flow3d.data.iphone import _read_camera
from flow3d.geometry import opencv_to_gsplat_Ks
from flow3d.render import rasterization


def _rendered_centre(K_gsplat: torch.Tensor, W: int = 16, H: int = 20, centroid: bool = False) -> tuple[float, float]:
    """Where one round Gaussian on the optical axis lands, rendered with ``K_gsplat``, in pixel indices
    (x = column, y = row): gsplat's projected centre minus its +0.5 sampling offset, or (``centroid``) the
    alpha-weighted centroid of the rendered image (exact for a centre on a pixel centre)."""
    f, z = float(K_gsplat[0, 0]), 5.0
    s = 1.0 * z / f  # one pixel standard deviation
    _, alpha, meta = rasterization(
        torch.tensor([[0.0, 0.0, z]], dtype=torch.float64),
        torch.tensor([[1.0, 0, 0, 0]], dtype=torch.float64),
        torch.full((1, 3), s, dtype=torch.float64),
        torch.tensor([0.9], dtype=torch.float64),
        torch.zeros(1, 3, dtype=torch.float64),
        torch.eye(4, dtype=torch.float64)[None],
        K_gsplat[None],
        W,
        H,
        backend="torch",
        eps2d=0.0,
    )
    if not centroid:
        return float(meta["means2d"][0, 0, 0]) - 0.5, float(meta["means2d"][0, 0, 1]) - 0.5
    a = alpha[0, ..., 0]
    ys, xs = torch.meshgrid(torch.arange(H, dtype=a.dtype), torch.arange(W, dtype=a.dtype), indexing="ij")
    return float((a * xs).sum() / a.sum()), float((a * ys).sum() / a.sum())


def _K(f, cx, cy):
    return torch.tensor([[f, 0.0, cx], [0.0, f, cy], [0.0, 0.0, 1.0]], dtype=torch.float64)


def test_the_model_renders_an_opencv_principal_point_on_that_pixel():
    for centroid in (True, False):
        x, y = _rendered_centre(opencv_to_gsplat_Ks(_K(20.0, 7.0, 8.0)), centroid=centroid)
        assert (x, y) == (pytest.approx(7.0, abs=1e-6), pytest.approx(8.0, abs=1e-6))
    # passing the same K to gsplat unchanged (SoM on casual data) puts it half a pixel up-left
    x, y = _rendered_centre(_K(20.0, 7.0, 8.0))
    assert (x, y) == (pytest.approx(6.5, abs=1e-6), pytest.approx(7.5, abs=1e-6))
    x, y = _rendered_centre(_K(20.0, 7.5, 8.5), centroid=True)
    assert (x, y) == (pytest.approx(7.0, abs=1e-6), pytest.approx(8.0, abs=1e-6))


def test_iphone_cameras_render_where_shape_of_motion_renders_them(tmp_path):
    """Nerfies camera, principal point (13, 11) in its +0.5 convention, images downscaled by 2."""
    cam = {
        "orientation": np.eye(3).tolist(),
        "position": [0.0, 0.0, 0.0],
        "focal_length": 40.0,
        "principal_point": [13.0, 11.0],
    }
    (tmp_path / "cam.json").write_text(json.dumps(cam))
    _, K = _read_camera(tmp_path / "cam.json", factor=2)
    assert K[0, 2] == pytest.approx(13.0 / 2 - 0.5) and K[1, 2] == pytest.approx(11.0 / 2 - 0.5)
    ours = _rendered_centre(opencv_to_gsplat_Ks(torch.from_numpy(K)))
    som = _rendered_centre(_K(20.0, 13.0 / 2, 11.0 / 2))  # SoM: K[:2] /= factor, straight to gsplat
    assert ours == (pytest.approx(som[0], abs=1e-6), pytest.approx(som[1], abs=1e-6))
    assert ours == (pytest.approx(6.0, abs=1e-6), pytest.approx(5.0, abs=1e-6))


def test_casual_droid_intrinsics_are_opencv_and_scale_with_the_image():
    """DROID's principal point (13, 10) at full resolution (integer pixel centres); images halved.

    Ours: the point that projects onto full-res pixel centre (13, 10) lands at (13.5 / 2 - 0.5, 10.5 / 2 - 0.5)
    = (6.25, 4.75), the centre of the same spot in the area-downscaled image. SoM scales cx * 0.5 and
    renders it at 6.5 - 0.5 = 6.0: half a (scaled) pixel, 0.25 px here, up-left of ours."""
    K = _scale_Ks(_K(40.0, 13.0, 10.0).numpy(), 0.5, 0.5)
    ours = _rendered_centre(opencv_to_gsplat_Ks(torch.from_numpy(K)))
    assert ours == (pytest.approx(6.25, abs=1e-6), pytest.approx(4.75, abs=1e-6))
    som = _rendered_centre(_K(20.0, 13.0 * 0.5, 10.0 * 0.5))
    assert (ours[0] - som[0], ours[1] - som[1]) == (pytest.approx(0.25, abs=1e-6), pytest.approx(0.25, abs=1e-6))
