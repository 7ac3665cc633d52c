"""data:iphone on a tiny fixture written in Shape of Motion's processed DyCheck layout by the test."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from flow3d.data import IPhoneDataConfig
from flow3d.data import cache as data_cache

H1, W1 = 24, 32  # 1x size; the fixture stores factor-2 files of 12 x 16


def _rot_y(a: float) -> np.ndarray:
    c, s = np.cos(a), np.sin(a)
    return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])


def _write_fixture(d: Path, n_train: int = 4, with_val: bool = True) -> Path:
    rng = np.random.default_rng(0)
    (d / "splits").mkdir(parents=True)
    for sub in (
        "camera",
        "rgb/2x",
        "flow3d_preprocessed/track_anything/2x",
        "depth/2x",
        "flow3d_preprocessed/2d_tracks/2x",
        "flow3d_preprocessed/covisible/2x/val",
    ):
        (d / sub).mkdir(parents=True, exist_ok=True)
    train = [f"0_{i:05d}" for i in range(n_train)]
    val = [f"1_{i:05d}" for i in (1, 3)] if with_val else []
    json.dump(
        {"frame_names": train, "time_ids": list(range(n_train)), "camera_ids": [0] * n_train},
        open(d / "splits/train.json", "w"),
    )
    json.dump(
        {"frame_names": val, "time_ids": [1, 3][: len(val)], "camera_ids": [1] * len(val)},
        open(d / "splits/val.json", "w"),
    )
    json.dump({"fps": 30.0}, open(d / "extra.json", "w"))
    for i, n in enumerate(train + val):
        cam = {
            "orientation": _rot_y(0.05 * i).tolist(),
            "position": [0.1 * i, 0.0, -2.0],
            "focal_length": 40.0,
            "principal_point": [16.0, 12.0],
            "skew": 0.0,
            "pixel_aspect_ratio": 1.0,
            "radial_distortion": [0.0, 0.0, 0.0],
            "tangential_distortion": [0.0, 0.0],
            "image_size": [W1, H1],
        }
        json.dump(cam, open(d / "camera" / f"{n}.json", "w"))
        rgba = rng.integers(0, 255, size=(12, 16, 4), dtype=np.uint8)
        rgba[..., 3] = 255
        rgba[0, 0, 3] = 0  # one invalid pixel
        cv2.imwrite(str(d / "rgb/2x" / f"{n}.png"), rgba)
        if n in train:
            m = np.zeros((12, 16), np.uint8)
            m[3:9, 4:12] = 255
            cv2.imwrite(str(d / "flow3d_preprocessed/track_anything/2x" / f"{n}.png"), m)
            np.save(d / "depth/2x" / f"{n}.npy", np.full((12, 16, 1), 2.0 + 0.1 * i, np.float32))
        else:
            cv2.imwrite(str(d / "flow3d_preprocessed/covisible/2x/val" / f"{n}.png"), np.full((12, 16), 255, np.uint8))
    for q, nq in enumerate(train):
        for t, nt in enumerate(train):
            rows = np.array([[5.0 + t, 4.0, -20.0, -20.0], [8.0, 6.0 + q, 20.0, -20.0]], np.float32)
            np.save(d / "flow3d_preprocessed/2d_tracks/2x" / f"{nq}_{nt}.npy", rows)
    return d


@pytest.fixture(autouse=True)
def _no_memo():
    data_cache.clear_memo()
    yield
    data_cache.clear_memo()


def test_iphone_fixture_loads(tmp_path):
    d = _write_fixture(tmp_path / "seq")
    seq = IPhoneDataConfig(data_dir=str(d), depth_type="lidar", normalize_scene=False, use_cache=False).load()
    assert seq.num_frames == 4 and seq.img_wh == (16, 12)
    # Nerfies intrinsics (pixel centres at +0.5) / 2, then shifted to OpenCV centres: 16/2 - 0.5, 12/2 - 0.5
    torch.testing.assert_close(seq.Ks[0], torch.tensor([[20.0, 0, 7.5], [0, 20.0, 5.5], [0, 0, 1]]))
    # w2c maps the camera position to the origin and has the file's rotation
    for i in range(4):
        c = torch.tensor([0.1 * i, 0.0, -2.0])
        torch.testing.assert_close(seq.w2cs[i, :3, :3] @ c + seq.w2cs[i, :3, 3], torch.zeros(3), atol=1e-6, rtol=0)
        torch.testing.assert_close(seq.w2cs[i, :3, :3], torch.from_numpy(_rot_y(0.05 * i)).float())
    assert not seq.valid_masks[:, 0, 0].any() and seq.valid_masks[:, 1:, 1:].all()
    expected = torch.full((12, 16), 2.2)
    expected[0, 0] = 0.0  # no image content (alpha 0): the prior is invalid there too
    torch.testing.assert_close(seq.prior_depth()[2], expected)
    assert seq.fg_masks[0, 3:9, 4:12].eq(1).all() and seq.fg_masks.sum() == 4 * 48
    # the val split is other cameras: held-out views, and every video frame trains
    assert seq.val_ids.numel() == 0 and seq.train_ids.tolist() == [0, 1, 2, 3]
    v = seq.val_views
    assert v.t.tolist() == [1, 3] and v.images.shape == (2, 12, 16, 3) and v.covisible_masks.all()
    torch.testing.assert_close(v.w2cs[0, :3, :3], torch.from_numpy(_rot_y(0.05 * 4)).float())
    # tracks through the shared TAPIR converter
    assert seq.tracks_xy.shape == (8, 4, 2) and seq.tracks_query_t.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    assert seq.tracks_visible[0::2].all() and not seq.tracks_visible[1::2].any()
    assert seq.tracks_xy[0, :, 0].tolist() == [5.0, 6.0, 7.0, 8.0]


def test_iphone_without_val_split_uses_every_nth_frame_and_normalises(tmp_path):
    d = _write_fixture(tmp_path / "seq", n_train=10, with_val=False)
    seq = IPhoneDataConfig(data_dir=str(d), depth_type="lidar", use_cache=False).load()
    assert seq.val_views is None and seq.val_ids.tolist() == [1, 9]
    assert seq.scene_scale > 0
    torch.testing.assert_close(
        seq.prior_depth()[0][seq.prior_valid[0]] * seq.scene_scale, torch.full((191,), 2.0), rtol=1e-5, atol=1e-5
    )


def test_iphone_bad_inputs(tmp_path):
    d = _write_fixture(tmp_path / "seq")
    with pytest.raises(ValueError, match="data_dir not found"):
        IPhoneDataConfig(data_dir=str(d / "nope")).load()
    (d / "camera" / "0_00002.json").write_text("{ not json")
    with pytest.raises(ValueError, match=r"0_00002.json is not valid JSON"):
        IPhoneDataConfig(data_dir=str(d), depth_type="lidar", use_cache=False).load()
    json.dump({"orientation": np.eye(3).tolist(), "position": [0, 0, 0]}, open(d / "camera" / "0_00002.json", "w"))
    with pytest.raises(ValueError, match=r"0_00002.json: missing field 'focal_length'"):
        IPhoneDataConfig(data_dir=str(d), depth_type="lidar", use_cache=False).load()
    with pytest.raises(ValueError, match=r"depth folder not found: .*aligned_depth_anything_colmap"):
        IPhoneDataConfig(data_dir=str(d), use_cache=False).load()
