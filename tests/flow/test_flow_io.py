import struct

import numpy as np
import pytest
import torch

from flow3d.flow import read_flo, write_flo


def _independent_read(path):
    """Slow reference reader written from the format description (struct, per value)."""
    raw = open(path, "rb").read()
    magic, w, h = struct.unpack("<fii", raw[:12])
    vals = struct.unpack(f"<{2 * w * h}f", raw[12:])
    return magic, np.array(vals, dtype=np.float32).reshape(h, w, 2)


def test_round_trip_exact(tmp_path):
    flow = np.random.default_rng(0).normal(size=(7, 11, 2)).astype(np.float32) * 5
    p = tmp_path / "a.flo"
    write_flo(p, flow)
    magic, ref = _independent_read(p)
    assert magic == pytest.approx(202021.25)
    np.testing.assert_array_equal(ref, flow)  # layout: row-major, (u, v) interleaved
    np.testing.assert_array_equal(read_flo(p), flow)
    assert read_flo(p).dtype == np.float32 and read_flo(p).shape == (7, 11, 2)
    assert not [q for q in tmp_path.iterdir() if q.name != "a.flo"]  # no temporary file left


def test_write_accepts_torch(tmp_path):
    flow = torch.randn(3, 4, 2, dtype=torch.float64)
    write_flo(tmp_path / "t.flo", flow)
    np.testing.assert_allclose(read_flo(tmp_path / "t.flo"), flow.numpy(), rtol=1e-6)


def test_real_middlebury_gt(real_data):
    path = real_data / "middlebury_rubberwhale" / "flow10.flo"
    flow = read_flo(path)
    magic, ref = _independent_read(path)
    assert flow.shape == (388, 584, 2)  # SOURCE.md: w=584, h=388
    np.testing.assert_array_equal(flow, ref)
    unknown = (np.abs(flow) > 1e9).any(-1)
    assert unknown.sum() == 3622  # SOURCE.md: 3622 of 226,592 pixels are invalid
    known = flow[~unknown]
    assert known[:, 0].min() == pytest.approx(-4.58, abs=0.01) and known[:, 1].max() == pytest.approx(2.92, abs=0.01)


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda b: b[:8], "truncated"),
        (lambda b: b[:-4], "truncated"),
        (lambda b: b + b"\0\0\0\0", "trailing"),
        (lambda b: struct.pack("<f", 1.0) + b[4:], "magic"),
        (lambda b: b[:4] + struct.pack("<ii", -3, 2) + b[12:], "implausible"),
    ],
)
def test_corrupt_files_raise_naming_the_file(tmp_path, mutate, match):
    good = tmp_path / "good.flo"
    write_flo(good, np.zeros((2, 3, 2), np.float32))
    bad = tmp_path / "bad.flo"
    bad.write_bytes(mutate(good.read_bytes()))
    with pytest.raises(ValueError, match=match) as info:
        read_flo(bad)
    assert "bad.flo" in str(info.value)


def test_write_rejects_bad_shape(tmp_path):
    with pytest.raises(ValueError, match=r"\(H, W, 2\)"):
        write_flo(tmp_path / "x.flo", np.zeros((4, 4, 3), np.float32))
