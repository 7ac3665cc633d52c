"""Issue 21, item 2: the synthetic scenes' prior-error model (``--data.prior-error affine|realistic``,
flow3d.data.prior_drift), each component on its own against the scene's ground truth, on both families.

With the per-frame affine drift, blur and noise off (``prior_drift none``, ``prior_blur_px`` 0, ``prior_noise``
0), the ``affine`` prior is exactly the true disparity; each ``realistic`` component is then turned on alone
(the others at 0) and must do what its docstring says."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from flow3d.data import SyntheticDataConfig
from flow3d.data.prior_drift import misplaced_object_frames, tone_curve

SMALL = dict(num_frames=12, width=48, height=36, track_grid_step=6)
CLEAN = dict(prior_drift="none", prior_blur_px=0.0, prior_noise=0.0)
OFF = dict(prior_tone=0.0, prior_field=0.0, prior_flicker=0.0, prior_edge_blur_px=0.0, prior_object_error=0.0)
FAMILIES = ["objects", "tissue"]


def _load(scene, **kw):
    return SyntheticDataConfig(scene=scene, **SMALL, **kw).load()


def _true_disp(seq):
    """The true disparity of what the camera sees, from an affine-model prior with nothing on (exact 1 / z)."""
    return seq.prior_disp.double()


@pytest.fixture(scope="module", params=FAMILIES)
def scene(request):
    return request.param


@pytest.fixture(scope="module")
def truth(scene):
    return _load(scene, prior_error="affine", **CLEAN)


def _best_affine_abs_rel(seq, ref_disp) -> np.ndarray:
    """Per frame: AbsRel of the depth after the least-squares affine of the prior's disparity onto the reference."""
    out = []
    for t in range(seq.num_frames):
        ok = seq.prior_valid[t] & (ref_disp[t] > 0)
        d, g = seq.prior_disp[t][ok].double(), ref_disp[t][ok]
        A = torch.stack([d, torch.ones_like(d)], 1)
        x = torch.linalg.lstsq(A, g[:, None]).solution[:, 0]
        out.append(float(((1 / (A @ x) - 1 / g).abs() * g).mean()))
    return np.array(out)


def test_affine_model_is_removed_by_a_per_frame_affine_and_realistic_is_not(scene, truth):
    true = _true_disp(truth)
    affine = _load(scene, prior_error="affine", prior_blur_px=0.0, prior_noise=0.0)  # linear drift on
    real = _load(scene, prior_error="realistic", prior_noise=0.0)
    assert not torch.allclose(affine.prior_disp.double(), true, rtol=1e-3)  # it drifts ...
    assert _best_affine_abs_rel(affine, true).max() < 1e-5  # ... by an affine per frame
    assert _best_affine_abs_rel(real, true).mean() > 0.02  # measured: objects 0.06, tissue 0.03
    # the realistic components draw from their own generator: the rest of the scene is the same
    assert torch.equal(real.images, truth.images) and torch.equal(real.tracks_xy, truth.tracks_xy)


def test_tone_curve_is_monotone_non_linear_and_varies_per_frame(scene, truth):
    true = _true_disp(truth)
    seq = _load(scene, prior_error="realistic", **CLEAN, **{**OFF, "prior_tone": 0.5})
    gammas = []
    for t in range(seq.num_frames):
        ok = seq.prior_valid[t] & (true[t] > 0)
        d, p = true[t][ok], seq.prior_disp[t][ok].double()
        order = torch.argsort(d)
        assert bool((torch.diff(p[order]) >= -1e-6 * p.max()).all())  # monotone in the true disparity
        # prior = m (d / m)^gamma: the log-log slope is the frame's exponent
        A = torch.stack([d.log(), torch.ones_like(d)], 1)
        slope, _ = torch.linalg.lstsq(A, p.log()[:, None]).solution[:, 0]
        gammas.append(float(slope))
    gammas = np.array(gammas)
    assert gammas.min() >= np.exp(-0.5) - 1e-3 and gammas.max() <= np.exp(0.5) + 1e-3
    assert gammas.max() - gammas.min() > 0.2  # it changes from frame to frame
    # and no per-frame affine undoes it (the affine model's floor is < 1e-5; measured max over frames: objects
    # ~1e-2, tissue 5e-4 -- the tissue's disparity spans a narrow range, over which any tone curve is nearly affine)
    assert _best_affine_abs_rel(seq, true).max() > 2e-4
    # the curve itself: increasing for any exponent, identity at gamma 1
    x = np.linspace(0.05, 3.0, 200)
    for g in (0.6, 1.0, 1.6):
        assert np.all(np.diff(tone_curve(x, 1.0, g)) > 0)
    assert np.allclose(tone_curve(x, 0.7, 1.0), x)


def test_low_frequency_field_drifts_and_flickers(scene, truth):
    true = _true_disp(truth)
    seq = _load(scene, prior_error="realistic", **CLEAN, **{**OFF, "prior_field": 0.1, "prior_flicker": 0.5})
    ok = seq.prior_valid & (true > 0)
    logf = torch.where(ok, (seq.prior_disp.double() / true.clamp_min(1e-12)).log(), torch.zeros_like(true))
    rms = np.array([float(logf[t][ok[t]].pow(2).mean().sqrt()) for t in range(seq.num_frames)])
    assert 0.01 < np.median(rms) < 0.3  # amplitude about prior_field
    assert rms.std() / rms.mean() > 0.1  # flicker: the amplitude changes from frame to frame
    # low frequency: neighbouring pixels differ far less than the field's range
    dx = (logf[:, :, 1:] - logf[:, :, :-1]).abs()[ok[:, :, 1:] & ok[:, :, :-1]]
    assert float(dx.quantile(0.99)) < 0.1 * float(logf.max() - logf.min())
    # it drifts: the pattern of the first and last frames differ
    a, b = logf[0][ok[0] & ok[-1]], logf[-1][ok[0] & ok[-1]]
    assert float(torch.corrcoef(torch.stack([a, b]))[0, 1]) < 0.9


def test_one_object_is_misplaced_in_some_frames(scene, truth):
    true = _true_disp(truth)
    seq = _load(
        scene, prior_error="realistic", **CLEAN, **{**OFF, "prior_object_error": 0.25, "prior_object_frames": 0.5}
    )
    ok = seq.prior_valid & (true > 0)
    ratio = torch.where(ok, seq.prior_disp.double() / true.clamp_min(1e-12), torch.ones_like(true))
    wrong = (ratio - 1).abs() > 1e-4
    frames = [t for t in range(seq.num_frames) if bool(wrong[t].any())]
    assert 2 <= len(frames) <= 0.5 * seq.num_frames + 1
    for t in frames:
        r = ratio[t][wrong[t]]
        # one region, all of it too near (x1.25) or all too far (x0.75), a minority of the frame
        assert torch.allclose(r, torch.full_like(r, 1.25)) or torch.allclose(r, torch.full_like(r, 0.75))
        assert 0 < float(wrong[t].float().mean()) < 0.5
        if scene == "objects":  # exactly one rigid object's pixels
            ids = torch.unique(seq.gt_object_ids[t][wrong[t]])
            assert ids.numel() == 1 and int(ids) >= 0
    assert misplaced_object_frames(np.full((6, 4, 4), -1), 0.5, np.random.default_rng(0)) == []


def test_blurred_depth_edges(scene, truth):
    true = _true_disp(truth)
    seq = _load(scene, prior_error="realistic", **CLEAN, **{**OFF, "prior_edge_blur_px": 2.0})
    err = (seq.prior_disp.double() - true).abs() / true.clamp_min(1e-12)
    # edges: where the true disparity jumps by > 5% to a 4-neighbour
    t = true
    jump = torch.zeros_like(t, dtype=torch.bool)
    jump[:, :, 1:] |= (t[:, :, 1:] - t[:, :, :-1]).abs() > 0.05 * t[:, :, 1:]
    jump[:, 1:, :] |= (t[:, 1:, :] - t[:, :-1, :]).abs() > 0.05 * t[:, 1:, :]
    if not bool(jump.any()):
        pytest.skip("no depth edge in this scene")
    near = torch.nn.functional.max_pool2d(jump.double()[:, None], 5, 1, 2)[:, 0] > 0
    far = ~(torch.nn.functional.max_pool2d(jump.double()[:, None], 13, 1, 6)[:, 0] > 0)
    assert float(err[near].mean()) > 3 * float(err[far].mean())
