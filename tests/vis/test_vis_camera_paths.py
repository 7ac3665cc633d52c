"""Camera paths (flow3d.vis.camera_paths), checked geometrically against hand-built cameras."""

from __future__ import annotations

import math

import pytest
import torch

from flow3d.geometry import project_points
from flow3d.vis.camera_paths import (
    camera_centers,
    cameras_up,
    look_at_w2cs,
    orbit_path,
    play_times,
    scale_intrinsics,
    scene_look_at,
    spiral_path,
    triangulate_axes,
)

K = torch.tensor([[40.0, 0.0, 31.5], [0.0, 40.0, 23.5], [0.0, 0.0, 1.0]], dtype=torch.float64)  # 64x48, centred


def _ring_cameras(n=6, radius=4.0, target=(0.3, -0.2, 1.0)) -> tuple[torch.Tensor, torch.Tensor]:
    """Cameras on a horizontal ring (world up +z) all looking at ``target``: (w2cs (n, 4, 4), target)."""
    tgt = torch.tensor(target, dtype=torch.float64)
    a = torch.linspace(0, 2 * math.pi, n + 1, dtype=torch.float64)[:-1]
    pos = tgt + torch.stack([radius * torch.cos(a), radius * torch.sin(a), torch.full_like(a, 0.5)], -1)
    return look_at_w2cs(pos, tgt, torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)), tgt


def _is_rotation(R: torch.Tensor) -> None:
    torch.testing.assert_close(R @ R.transpose(-1, -2), torch.eye(3, dtype=R.dtype).expand_as(R), atol=1e-10, rtol=0)
    torch.testing.assert_close(torch.linalg.det(R), torch.ones(R.shape[:-2], dtype=R.dtype), atol=1e-10, rtol=0)


def test_look_at_cameras_put_the_target_at_the_image_centre_and_keep_up_up():
    g = torch.Generator().manual_seed(0)
    pos = torch.randn(10, 3, generator=g, dtype=torch.float64) * 3
    target = torch.tensor([0.5, 0.2, -0.1], dtype=torch.float64)
    up = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)
    w2cs = look_at_w2cs(pos, target, up)
    _is_rotation(w2cs[:, :3, :3])
    torch.testing.assert_close(camera_centers(w2cs), pos, atol=1e-10, rtol=0)
    xy, z = project_points(target.expand(10, 1, 3), K.expand(10, 3, 3), w2cs)
    torch.testing.assert_close(xy[:, 0], K[:2, 2].expand(10, 2), atol=1e-9, rtol=0)
    assert bool((z > 0).all())
    # the world up points up in the image (minus camera y) and the camera x axis is level
    assert bool(((-w2cs[:, 1, :3]) @ up > 0).all())
    torch.testing.assert_close(w2cs[:, 0, :3] @ up, torch.zeros(10, dtype=torch.float64), atol=1e-12, rtol=0)


def test_look_at_rejects_degenerate_cameras():
    up = torch.tensor([0.0, 0.0, 1.0])
    with pytest.raises(ValueError, match="along the up direction"):
        look_at_w2cs(torch.tensor([[0.0, 0.0, 5.0]]), torch.zeros(3), up)
    with pytest.raises(ValueError, match="sits on the look-at point"):
        look_at_w2cs(torch.zeros(1, 3), torch.zeros(3), up)


def test_triangulation_recovers_where_the_optical_axes_meet():
    w2cs, target = _ring_cameras()
    torch.testing.assert_close(triangulate_axes(w2cs), target, atol=1e-9, rtol=0)
    parallel = w2cs[:1].repeat(5, 1, 1)  # a static camera: every axis the same line
    assert triangulate_axes(parallel) is None


def test_scene_look_at_falls_back_to_the_median_scene_depth_on_the_axis():
    w2cs, _ = _ring_cameras()
    static = w2cs[:1].repeat(4, 1, 1)
    c2w = torch.linalg.inv(static[0])
    depths = torch.tensor([2.0, 3.0, 4.0, 5.0, 6.0], dtype=torch.float64)
    pts = c2w[:3, 3] + depths[:, None] * c2w[:3, 2]  # on the optical axis
    p = scene_look_at(static, static[0], K, (64, 48), pts)
    torch.testing.assert_close(p, c2w[:3, 3] + 4.0 * c2w[:3, 2], atol=1e-9, rtol=0)


def test_scene_look_at_uses_the_triangulated_point_only_inside_the_scene_depth_range():
    w2cs, target = _ring_cameras(radius=4.0)
    ref = w2cs[0]
    c2w = torch.linalg.inv(ref)
    d_target = float((ref[:3, :3] @ target + ref[:3, 3])[2])
    near_scene = c2w[:3, 3] + torch.linspace(d_target - 1, d_target + 1, 9, dtype=torch.float64)[:, None] * c2w[:3, 2]
    torch.testing.assert_close(scene_look_at(w2cs, ref, K, (64, 48), near_scene), target, atol=1e-9, rtol=0)
    far_scene = c2w[:3, 3] + torch.linspace(20, 30, 9, dtype=torch.float64)[:, None] * c2w[:3, 2]
    torch.testing.assert_close(
        scene_look_at(w2cs, ref, K, (64, 48), far_scene), c2w[:3, 3] + 25 * c2w[:3, 2], atol=1e-9, rtol=0
    )
    with pytest.raises(ValueError, match="no scene point lies in front"):
        scene_look_at(w2cs, ref, K, (64, 48), c2w[:3, 3] - c2w[:3, 2][None])


def test_orbit_swings_about_the_up_axis_through_the_target():
    w2cs, target = _ring_cameras()
    ref, up = w2cs[2], cameras_up(w2cs)
    torch.testing.assert_close(up, torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64), atol=0.2, rtol=0)
    n, deg = 40, 30.0
    path = orbit_path(ref, target, up, n, deg)
    _is_rotation(path[:, :3, :3])
    c = camera_centers(path) - target
    r0 = camera_centers(ref) - target
    # same distance and the same height along the up axis; the first camera is the reference position
    torch.testing.assert_close(c.norm(dim=-1), r0.norm().expand(n), atol=1e-9, rtol=0)
    torch.testing.assert_close(c @ up, (r0 @ up).expand(n), atol=1e-9, rtol=0)
    torch.testing.assert_close(c[0], r0, atol=1e-9, rtol=0)
    # the swing: horizontal angle to the reference goes up to deg / 2 each way
    h = c - (c @ up)[:, None] * up
    h0 = r0 - (r0 @ up) * up
    ang = torch.atan2((torch.linalg.cross(h0.expand_as(h), h) @ up), h @ h0)
    assert math.isclose(float(ang.max()), math.radians(deg / 2), rel_tol=1e-3)
    assert math.isclose(float(ang.min()), -math.radians(deg / 2), rel_tol=1e-3)
    xy, _ = project_points(target.expand(n, 1, 3), K.expand(n, 3, 3), path)
    torch.testing.assert_close(xy[:, 0], K[:2, 2].expand(n, 2), atol=1e-9, rtol=0)


def test_spiral_circles_the_reference_camera_looking_at_the_target():
    w2cs, target = _ring_cameras()
    ref, up = w2cs[1], cameras_up(w2cs)
    n, deg = 48, 20.0
    path = spiral_path(ref, target, up, n, deg)
    r = float((camera_centers(ref) - target).norm()) * math.tan(math.radians(deg / 2))
    off_cam = (camera_centers(path) - camera_centers(ref)) @ ref[:3, :3].T  # offsets in the reference camera's axes
    torch.testing.assert_close(off_cam[:, :2].norm(dim=-1), torch.full((n,), r, dtype=torch.float64), atol=1e-9, rtol=0)
    assert float(off_cam[:, 2].abs().max()) <= r + 1e-9
    xy, _ = project_points(target.expand(n, 1, 3), K.expand(n, 3, 3), path)
    torch.testing.assert_close(xy[:, 0], K[:2, 2].expand(n, 2), atol=1e-9, rtol=0)


def test_scale_intrinsics_keeps_pixel_centres_at_integers():
    s = 2.5
    K2 = scale_intrinsics(K, s)
    pts = torch.tensor([[[0.3, -0.2, 2.0], [1.0, 0.5, 4.0]]], dtype=torch.float64)
    xy1, _ = project_points(pts, K[None], torch.eye(4, dtype=torch.float64)[None])
    xy2, _ = project_points(pts, K2[None], torch.eye(4, dtype=torch.float64)[None])
    torch.testing.assert_close(xy2, (xy1 + 0.5) * s - 0.5, atol=1e-12, rtol=0)  # pixel edges scale, centres shift


def test_play_times_cover_the_video_once():
    assert play_times(8, 8) == list(range(8))
    t = play_times(8, 60)
    assert t[0] == 0 and t[-1] == 7 and all(b >= a for a, b in zip(t, t[1:])) and set(t) == set(range(8))
    assert play_times(10, 1) == [0]
