"""fill_ignored: frames prepared for flow read nothing from their ignored pixels."""

import numpy as np
import pytest

from flow3d.flow import fill_ignored


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_filled_frames_do_not_depend_on_ignored_pixels(seed):
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 256, (2, 32, 40, 3), dtype=np.uint8)
    ign = rng.random((2, 32, 40)) < 0.2
    ign[:, 10:20, 5:15] = True
    ign[1, :, -3:] = True  # touching the image border (where OpenCV's Telea reads masked pixels)
    img2 = img.copy()
    img2[ign] = rng.integers(0, 256, (int(ign.sum()), 3), dtype=np.uint8)
    a, b = fill_ignored(img, ign), fill_ignored(img2, ign)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a[~ign], img[~ign])  # valid pixels kept as they are


def test_fill_is_the_surroundings_and_edge_cases():
    img = np.full((20, 24, 3), 90, dtype=np.uint8)
    img[5:12, 6:14] = 250  # the "instrument"
    ign = np.zeros((20, 24), bool)
    ign[5:12, 6:14] = True
    out = fill_ignored(img, ign)
    assert (
        np.abs(out[ign].astype(int) - 90).max() <= 3
    )  # a uniform surrounding fills the hole (Telea: within a few levels)
    assert fill_ignored(img, None) is img and fill_ignored(img, np.zeros_like(ign)) is img
    assert (fill_ignored(img, np.ones_like(ign)) == 128).all()  # nothing valid: mid-grey
    with pytest.raises(ValueError, match="uint8"):
        fill_ignored(img.astype(np.float32), ign)
