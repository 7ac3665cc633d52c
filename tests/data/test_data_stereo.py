"""Depth from a rectified stereo pair (python -m flow3d.preprocess.stereo) on the tissue scene written with
its right view: the right view's geometry, the SGBM prior against the ground truth, and bad input."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from flow3d.data import SyntheticDataConfig
from flow3d.data.tissue import build_tissue_scene, position, render_tissue_frame
from flow3d.preprocess import stereo
from flow3d.preprocess.synthetic import WriteArgs, write

BASELINE = 0.05  # scene units; the tissue is ~1 unit away: b / z ~ 5%, as a stereo laparoscope's 4-5 mm at 8-10 cm
SCENE = dict(scene="tissue", num_frames=3, width=128, height=96, seed=1)
# SGBM's AbsRel on this pair, measured over tissue pixels it keeps (seeds 0-2, 24 frames): 0.039 (0.10 px
# median disparity error on a ~5 px disparity, i.e. quarter-pixel matching at a 2% relative depth step
# per 0.1 px). The bound is that with 50% margin: a half-pixel bias (10%) or a wrong baseline/focal fails.
ABS_REL_BOUND = 0.06
VALID_BOUND = 0.65  # it keeps 77-79% of the tissue pixels (the left band of num_disparities columns has no match)


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    root = tmp_path_factory.mktemp("stereo")
    write(WriteArgs(out_dir=str(root), data=SyntheticDataConfig(**SCENE), stereo_baseline=BASELINE))
    return root


def test_right_view_is_the_left_camera_shifted_by_the_baseline():
    """A tissue point seen at left pixel q with depth z is seen at q - (f b / z, 0) in the right view: its
    material coordinates there are the same (the right view is rendered by its own inversion)."""
    cfg = SyntheticDataConfig(scene="tissue", num_frames=3, width=64, height=48, num_instruments=0)
    sc = build_tissue_scene(cfg, np.random.default_rng(cfg.seed))
    left, right = render_tissue_frame(sc, 1), render_tissue_frame(sc, 1, BASELINE)
    m_r = right["material"]  # (H, W, 2): the tissue point behind each right pixel
    X = position(sc, m_r, 0.5)  # left camera frame
    q_left = (X[..., :2] / X[..., 2:]) * [sc.K[0, 0], sc.K[1, 1]] + sc.K[:2, 2]
    ys, xs = np.mgrid[0:48, 0:64]
    assert np.abs(q_left[..., 1] - ys).max() < 1e-5  # rectified: same row
    disp = q_left[..., 0] - xs
    np.testing.assert_allclose(disp, sc.K[0, 0] * BASELINE / right["tissue_depth"], rtol=1e-6)
    assert 2.0 < disp.mean() < 3.5  # f b / z = 50 px x 0.05 / ~1
    # the same tissue is where the disparity says in the left render
    inside = (q_left[..., 0] > 1) & (q_left[..., 0] < 62)
    xl = np.round(q_left[..., 0]).astype(int).clip(0, 63)
    diff = np.abs(left["material"][ys, xl] - m_r)[inside]
    assert diff.max() < 0.75  # within the rounding to the nearest left pixel


def test_sgbm_prior_on_the_written_pair_vs_ground_truth(pair):
    out = stereo.run(stereo.StereoArgs(root_dir=str(pair), seq_name="synthetic", baseline=BASELINE))
    names = sorted(p.stem for p in (pair / "images" / "synthetic").iterdir())
    assert sorted(p.stem for p in out.iterdir()) == names
    rels, fracs = [], []
    for n in names:
        inv = np.load(out / f"{n}.npy")
        assert inv.dtype == np.float32 and np.isfinite(inv).all() and (inv >= 0).all()
        gt = np.load(pair / "gt_depth" / "synthetic" / f"{n}.npy")
        tissue = cv2.imread(str(pair / "ignore_masks" / "synthetic" / f"{n}.png"), cv2.IMREAD_GRAYSCALE) < 128
        ok = tissue & (inv > 0)
        rels.append(np.mean(np.abs(1.0 / inv[ok] - gt[ok]) / gt[ok]))
        fracs.append(ok.sum() / tissue.sum())
        assert (inv[:, :10] == 0).all()  # no right pixel to match: invalid, written as 0
    assert max(rels) < ABS_REL_BOUND, rels
    assert min(fracs) > VALID_BOUND, fracs


def test_the_prior_loads_as_the_custom_layout_disparity(pair):
    from flow3d.data.casual import CustomDataConfig

    stereo.run(stereo.StereoArgs(root_dir=str(pair), seq_name="synthetic", baseline=BASELINE, out_type="sgbm"))
    seq = CustomDataConfig(
        root_dir=str(pair), seq_name="synthetic", depth_type="sgbm", use_cache=False, normalize_scene=False
    ).load()
    inv = np.stack([np.load(pair / "sgbm" / "synthetic" / f"{n}.npy") for n in seq.frame_names])
    pv = seq.prior_valid.numpy()
    assert not pv[inv == 0].any()  # 0 = invalid
    assert not (pv & ~seq.valid_masks.numpy()).any()  # the instrument's disparity is never the tissue's prior
    np.testing.assert_allclose(seq.prior_disp.numpy()[pv], inv[pv], rtol=1e-6)


def _run_main(argv, capsys):
    """(exit status, the lines a user sees on stderr): SystemExit("error: ...") exits 1 with that line."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        stereo.main(argv)
    code = e.value.code
    if isinstance(code, str):
        return 1, [code]
    return code, capsys.readouterr().err.strip().splitlines()


def test_bad_input_is_one_error_naming_it(pair, tmp_path, capsys):
    base = ["--root-dir", str(pair), "--seq-name", "synthetic"]
    code, err = _run_main(base, capsys)
    assert code == 1 and len(err) == 1 and err[0].startswith("error:") and "--baseline" in err[0]
    code, err = _run_main(base + ["--baseline", "0.05", "--right-type", "nope"], capsys)
    assert code == 1 and len(err) == 1 and str(pair / "nope" / "synthetic") in err[0]
    # an unrectified pair: the right view has another size
    bad = tmp_path / "bad"
    for sub in ("images", "images_right"):
        (bad / sub / "s").mkdir(parents=True)
    cv2.imwrite(str(bad / "images" / "s" / "00000.png"), np.zeros((48, 64, 3), np.uint8))
    cv2.imwrite(str(bad / "images_right" / "s" / "00000.png"), np.zeros((48, 70, 3), np.uint8))
    code, err = _run_main(
        ["--root-dir", str(bad), "--seq-name", "s", "--baseline", "0.05", "--focal-length", "50"], capsys
    )
    assert code == 1 and len(err) == 1 and "00000.png" in err[0] and "rectified" in err[0]
    # no focal length and no camera file
    cv2.imwrite(str(bad / "images_right" / "s" / "00000.png"), np.zeros((48, 64, 3), np.uint8))
    code, err = _run_main(["--root-dir", str(bad), "--seq-name", "s", "--baseline", "0.05"], capsys)
    assert code == 1 and len(err) == 1 and "--focal-length" in err[0]
