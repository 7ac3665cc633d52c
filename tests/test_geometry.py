import torch

from flow3d.geometry import (
    bilinear_sample,
    opencv_to_gsplat_Ks,
    pixel_grid,
    project_points,
    quat_wxyz_to_xyzw,
    quat_xyzw_to_wxyz,
    unproject_depth,
)


def _camera():
    K = torch.tensor([[50.0, 0, 15.5], [0, 60.0, 11.0], [0, 0, 1]], dtype=torch.float64)
    ang = torch.tensor(0.3, dtype=torch.float64)
    R = torch.tensor(
        [[torch.cos(ang), 0, torch.sin(ang)], [0, 1, 0], [-torch.sin(ang), 0, torch.cos(ang)]], dtype=torch.float64
    )
    c2w = torch.eye(4, dtype=torch.float64)
    c2w[:3, :3] = R
    c2w[:3, 3] = torch.tensor([0.2, -0.1, 0.5], dtype=torch.float64)
    return K, c2w


def test_unproject_then_project_returns_pixel_grid():
    K, c2w = _camera()
    depth = 1.0 + torch.rand(24, 32, dtype=torch.float64)
    pts = unproject_depth(depth, K, c2w)
    xy, z = project_points(pts.reshape(-1, 3), K, torch.linalg.inv(c2w))
    torch.testing.assert_close(xy, pixel_grid(24, 32, dtype=torch.float64).reshape(-1, 2))
    torch.testing.assert_close(z, depth.reshape(-1))


def test_project_hand_value():
    K = torch.tensor([[100.0, 0, 50], [0, 100.0, 40], [0, 0, 1]])
    xy, z = project_points(torch.tensor([[0.1, -0.2, 2.0]]), K, torch.eye(4))
    torch.testing.assert_close(xy, torch.tensor([[55.0, 30.0]]))
    torch.testing.assert_close(z, torch.tensor([2.0]))


def test_bilinear_sample_matches_hand_interpolation_and_has_grad():
    img = torch.arange(12, dtype=torch.float64).reshape(1, 1, 3, 4).requires_grad_(True)
    xy = torch.tensor([[[1.25, 0.5], [3.0, 2.0], [0.0, 0.0]]], dtype=torch.float64)
    out = bilinear_sample(img, xy)[0, :, 0]
    # value(x, y) = 4 y + x on this image, and bilinear interpolation of a linear map is exact
    torch.testing.assert_close(out, torch.tensor([4 * 0.5 + 1.25, 11.0, 0.0], dtype=torch.float64))
    out.sum().backward()
    assert torch.isfinite(img.grad).all() and img.grad.sum() == 3


def test_gsplat_K_shift_and_quaternion_order():
    K = torch.eye(3)
    assert opencv_to_gsplat_Ks(K)[0, 2] == 0.5 and K[0, 2] == 0
    q = torch.tensor([0.9, 0.1, 0.2, 0.3])
    torch.testing.assert_close(quat_xyzw_to_wxyz(quat_wxyz_to_xyzw(q)), q)
    assert quat_wxyz_to_xyzw(q)[3] == 0.9
