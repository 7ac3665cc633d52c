import json

import numpy as np
import pytest
from flow_synthetic import Scene

import flow3d.flow.cache as cache_mod
from flow3d.flow import FlowCache, FlowResult, estimate_flow, fb_confidence, fb_consistency_mask


@pytest.fixture(scope="module")
def frames():
    s = Scene(height=48, width=64, shift=(1.5, -0.5), side=12, sq0=(20, 15), sq_vel=(3, 2), seed=2)
    return [s.frame(k) for k in range(3)]


@pytest.fixture
def count_calls(monkeypatch):
    calls = []
    real = cache_mod.estimate_flow

    def counting(img0, img1, backend="dis", **options):
        calls.append((backend, options))
        return real(img0, img1, backend, **options)

    monkeypatch.setattr(cache_mod, "estimate_flow", counting)
    return calls


def test_miss_then_hit_and_content(tmp_path, frames, count_calls):
    c = FlowCache(tmp_path, "dis", preset="fast")
    r = c.get(0, 1, frames[0], frames[1])
    assert isinstance(r, FlowResult) and len(count_calls) == 2  # both directions on a miss
    assert r.flow.shape == (48, 64, 2) and r.flow.dtype == np.float32
    assert r.valid.dtype == bool and r.conf.dtype == np.float32
    fw = estimate_flow(frames[0], frames[1], preset="fast")
    bw = estimate_flow(frames[1], frames[0], preset="fast")
    np.testing.assert_array_equal(r.flow, fw)
    np.testing.assert_array_equal(r.valid, fb_consistency_mask(fw, bw))
    np.testing.assert_allclose(r.conf, fb_confidence(fw, bw), atol=1e-3)  # stored as float16
    back = c.get(1, 0, frames[1], frames[0])  # the reverse direction shares the file
    np.testing.assert_array_equal(back.flow, bw)
    np.testing.assert_array_equal(back.valid, fb_consistency_mask(bw, fw))
    again = FlowCache(tmp_path, "dis", preset="fast").get(0, 1, frames[0], frames[1])  # a new instance
    np.testing.assert_array_equal(again.flow, fw)
    assert len(count_calls) == 2
    files = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file())
    assert len(files) == 2 and files[0].endswith("/00000_00001.npz") and files[1].endswith("/settings.json")
    settings = json.loads((tmp_path / files[1]).read_text())
    assert settings["backend"] == "dis" and settings["options"] == {"preset": "fast"}
    assert settings["fb_rule"] == "squared" and settings["fb_coeffs"] == {"alpha": 0.01, "beta": 0.5}
    assert settings["frame_size_hw"] == [48, 64]


def test_other_settings_never_reuse(tmp_path, frames, count_calls):
    FlowCache(tmp_path, "dis", preset="fast").get(0, 1, frames[0], frames[1])
    n = len(count_calls)
    for other in (
        FlowCache(tmp_path, "dis", preset="medium"),
        FlowCache(tmp_path, "farneback"),
        FlowCache(tmp_path, "dis", preset="fast", fb_rule="lenient"),
        FlowCache(tmp_path, "dis", preset="fast", fb_coeffs={"beta": 0.25}),
    ):
        other.get(0, 1, frames[0], frames[1])
        assert len(count_calls) == n + 2
        n += 2
    assert len(list(tmp_path.glob("*/settings.json"))) == 5
    small = [f[::2, ::2].copy() for f in frames[:2]]  # another frame size
    FlowCache(tmp_path, "dis", preset="fast").get(0, 1, small[0], small[1])
    assert len(count_calls) == n + 2


def test_changed_frames_and_corrupt_file_recompute(tmp_path, frames, count_calls):
    c = FlowCache(tmp_path)
    c.get(0, 1, frames[0], frames[1])
    changed = frames[1].copy()
    changed[0, 0] ^= 1
    c.get(0, 1, frames[0], changed)
    assert len(count_calls) == 4
    path = c.path(0, 1, 48, 64)
    path.write_bytes(path.read_bytes()[:100])  # truncated
    r = c.get(0, 1, frames[0], frames[1])
    assert len(count_calls) == 6 and r.flow.shape == (48, 64, 2)
    c.get(0, 1, frames[0], frames[1])
    assert len(count_calls) == 6  # the recomputed file was written back whole
    assert not [p for p in tmp_path.rglob("*.tmp")]


def test_bad_arguments(tmp_path, frames):
    with pytest.raises(ValueError, match="fb rule"):
        FlowCache(tmp_path, fb_rule="tight")
    with pytest.raises(ValueError, match="fb_coeffs"):
        FlowCache(tmp_path, fb_coeffs={"threshold": 2.0})
    with pytest.raises(ValueError, match="differ"):
        FlowCache(tmp_path).get(1, 1, frames[0], frames[0])
