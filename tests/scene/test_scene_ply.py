"""3DGS .ply files and point clouds (flow3d.scene.ply), read back with plyfile and checked against
gsplat's own exporter (an independent writer of the same INRIA layout)."""

from __future__ import annotations

import io
import logging

import numpy as np
import pytest
import torch
from plyfile import PlyData

from flow3d.scene.ply import SH_C0, SPLAT_PROPERTIES, Splats, read_splat_ply, write_point_ply, write_splat_ply


def _splats(n=50, seed=0) -> Splats:
    g = torch.Generator().manual_seed(seed)
    return Splats(
        means=torch.randn(n, 3, generator=g) * 3,
        quats=torch.nn.functional.normalize(torch.randn(n, 4, generator=g), dim=-1),
        log_scales=torch.randn(n, 3, generator=g) - 3,
        opacity_logits=torch.randn(n, generator=g) * 2,
        rgb=torch.rand(n, 3, generator=g),
    )


def test_written_file_has_the_3dgs_layout(tmp_path):
    s = _splats()
    n = write_splat_ply(tmp_path / "a.ply", s)
    ply = PlyData.read(str(tmp_path / "a.ply"))
    v = ply["vertex"]
    assert n == len(s) == v.count
    assert list(v.data.dtype.names) == SPLAT_PROPERTIES
    assert all(v.data.dtype[k] == np.dtype("<f4") for k in SPLAT_PROPERTIES)
    assert not ply.text and ply.byte_order == "<"
    # hand-computed conventions: f_dc = (rgb - 0.5) / C0, opacity logit, log scales, wxyz, zero normals
    np.testing.assert_allclose(v["f_dc_1"], (s.rgb[:, 1].numpy() - 0.5) / 0.28209479177387814, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(v["opacity"], s.opacity_logits.numpy())
    np.testing.assert_array_equal(v["scale_2"], s.log_scales[:, 2].numpy())
    np.testing.assert_allclose(v["rot_0"], s.quats[:, 0].numpy(), atol=2.4e-7)
    np.testing.assert_array_equal(v["nx"], np.zeros(len(s), np.float32))


def test_round_trip_is_exact_up_to_float32_rounding(tmp_path):
    s = _splats(seed=3)
    write_splat_ply(tmp_path / "b.ply", s)
    back = read_splat_ply(tmp_path / "b.ply")
    torch.testing.assert_close(back.means, s.means, rtol=0, atol=0)
    torch.testing.assert_close(back.log_scales, s.log_scales, rtol=0, atol=0)
    torch.testing.assert_close(back.opacity_logits, s.opacity_logits, rtol=0, atol=0)
    torch.testing.assert_close(back.quats, s.quats, rtol=0, atol=2.4e-7)  # renormalised: <= 2 ulp
    torch.testing.assert_close(back.rgb, s.rgb, rtol=0, atol=2e-7)  # (rgb - 0.5) / C0 * C0 + 0.5 in float32
    torch.testing.assert_close(back.scales(), s.scales(), rtol=1e-7, atol=0)
    torch.testing.assert_close(back.opacities(), s.opacities(), rtol=1e-7, atol=0)


def test_same_values_as_gsplat_export_splats(tmp_path):
    gsplat = pytest.importorskip("gsplat")
    s = _splats(seed=5)
    write_splat_ply(tmp_path / "ours.ply", s)
    theirs = gsplat.export_splats(
        means=s.means,
        scales=s.log_scales,
        quats=s.quats,
        opacities=s.opacity_logits,
        sh0=((s.rgb - 0.5) / SH_C0)[:, None],
        shN=torch.zeros(len(s), 0, 3),
        format="ply",
    )
    ref = PlyData.read(io.BytesIO(theirs))["vertex"]
    ours = PlyData.read(str(tmp_path / "ours.ply"))["vertex"]
    for k in ref.data.dtype.names:  # gsplat writes the same properties, without the normals
        if k.startswith("rot_"):  # we renormalise the quaternion: <= 2 ulp
            np.testing.assert_allclose(ours[k], ref[k], rtol=0, atol=2.4e-7, err_msg=k)
        else:
            np.testing.assert_array_equal(ours[k], ref[k], err_msg=k)
    assert set(ours.data.dtype.names) - set(ref.data.dtype.names) == {"nx", "ny", "nz"}


def test_non_finite_gaussians_are_left_out_and_counted(tmp_path, caplog):
    s = _splats(n=10)
    s.means[2, 0] = float("nan")
    s.log_scales[7, 1] = float("inf")
    with caplog.at_level(logging.WARNING, logger="flow3d"):
        n = write_splat_ply(tmp_path / "c.ply", s)
    assert n == 8
    assert "left out 2 of 10" in caplog.text
    back = read_splat_ply(tmp_path / "c.ply")
    keep = torch.tensor([i not in (2, 7) for i in range(10)])
    torch.testing.assert_close(back.means, s.means[keep], rtol=0, atol=0)


def test_reading_a_foreign_or_broken_file_names_it(tmp_path):
    bad = tmp_path / "not_a_ply.ply"
    bad.write_bytes(b"hello, not a ply\n")
    with pytest.raises(ValueError, match="not_a_ply.ply"):
        read_splat_ply(bad)
    pts = tmp_path / "points.ply"
    write_point_ply(pts, torch.zeros(3, 3), torch.ones(3, 3))
    with pytest.raises(ValueError, match=r"points.ply is not a 3D Gaussian Splatting file: properties \['f_dc_0'"):
        read_splat_ply(pts)


def test_point_cloud_positions_and_colours(tmp_path):
    g = torch.Generator().manual_seed(0)
    xyz = torch.randn(20, 3, generator=g)
    rgb = torch.rand(20, 3, generator=g)
    assert write_point_ply(tmp_path / "p.ply", xyz, rgb) == 20
    v = PlyData.read(str(tmp_path / "p.ply"))["vertex"]
    assert list(v.data.dtype.names) == ["x", "y", "z", "red", "green", "blue"]
    np.testing.assert_array_equal(np.stack([v["x"], v["y"], v["z"]], -1), xyz.numpy())
    expected = np.floor(rgb.numpy() * 255 + 0.5).astype(np.uint8)
    np.testing.assert_array_equal(np.stack([v["red"], v["green"], v["blue"]], -1), expected)
    with pytest.raises(ValueError, match="must both be"):
        write_point_ply(tmp_path / "q.ply", xyz, rgb[:5])


def test_writes_are_atomic_and_leave_no_temporary_files(tmp_path):
    write_splat_ply(tmp_path / "d.ply", _splats())
    write_splat_ply(tmp_path / "d.ply", _splats(n=5))  # replaced as a whole
    assert read_splat_ply(tmp_path / "d.ply").means.shape == (5, 3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.ply"]
