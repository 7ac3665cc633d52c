import pytest
import torch

from flow3d.flow import PixelPairs, sample_pixel_pairs
from flow3d.geometry import bilinear_sample


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _valid(H=40, W=50, seed=1, p=0.6):
    return torch.rand(H, W, generator=_gen(seed)) < p


def _at(mask, xy):
    return mask[xy[:, 1], xy[:, 0]]


@pytest.mark.parametrize("strategy", ["global", "local"])
def test_all_pairs_valid_and_counts(strategy):
    valid = _valid()
    pairs = sample_pixel_pairs(valid, 500, strategy=strategy, radius=5, generator=_gen())
    assert isinstance(pairs, PixelPairs) and pairs.xy_a.dtype == torch.long and pairs.xy_a.shape[-1] == 2
    assert _at(valid, pairs.xy_a).all() and _at(valid, pairs.xy_b).all()
    assert (pairs.xy_a != pairs.xy_b).any(-1).all()  # never a pixel with itself
    if strategy == "global":
        assert len(pairs) == 500
    else:
        assert len(pairs) >= 495  # a 60% dense mask: 16 rounds find a partner for (almost) every point
        d2 = ((pairs.xy_a - pairs.xy_b) ** 2).sum(-1)
        assert (d2 <= 25).all()
    assert pairs.xy_a_next is None and pairs.order is None


def test_global_is_uniform_over_valid_set():
    valid = torch.zeros(6, 7, dtype=torch.bool)
    valid[1, 2] = valid[4, 5] = valid[3, 0] = True
    pairs = sample_pixel_pairs(valid, 30000, generator=_gen())
    counts = torch.bincount(pairs.xy_a[:, 1] * 7 + pairs.xy_a[:, 0], minlength=42)[valid.reshape(-1)]
    assert ((counts.float() / 30000 - 1 / 3).abs() < 0.02).all()
    counts_b = torch.bincount(pairs.xy_b[:, 1] * 7 + pairs.xy_b[:, 0], minlength=42)[valid.reshape(-1)]
    assert ((counts_b.float() / 30000 - 1 / 3).abs() < 0.02).all()


def test_local_partner_uniform_in_disc():
    """Every valid neighbour within the radius is drawn about equally often (and only those)."""
    valid = torch.ones(21, 21, dtype=torch.bool)
    pairs = sample_pixel_pairs(valid, 40000, strategy="local", radius=2, generator=_gen())
    off = pairs.xy_b - pairs.xy_a
    inner = (pairs.xy_a >= 2).all(-1) & (pairs.xy_a <= 18).all(-1)  # discs fully inside the image
    codes = (off[inner, 1] + 2) * 5 + (off[inner, 0] + 2)
    counts = torch.bincount(codes, minlength=25).float()
    disc = torch.tensor([dx * dx + dy * dy <= 4 and (dx, dy) != (0, 0) for dy in range(-2, 3) for dx in range(-2, 3)])
    assert (counts[~disc] == 0).all()
    frac = counts[disc] / counts[disc].sum()
    assert ((frac - 1 / 12).abs() < 0.01).all()  # 12 offsets in the radius-2 disc


def test_region_restricts_both_points():
    valid = torch.ones(30, 30, dtype=torch.bool)
    region = torch.zeros_like(valid)
    region[5:12, 20:28] = True
    for strategy in ("global", "local"):
        pairs = sample_pixel_pairs(valid, 300, strategy=strategy, region=region, radius=3, generator=_gen())
        assert len(pairs) > 250
        assert _at(region, pairs.xy_a).all() and _at(region, pairs.xy_b).all()


def test_deterministic_with_generator():
    valid = _valid()
    prior = torch.rand(40, 50, generator=_gen(5)) + 0.1
    kw = dict(strategy="local", radius=6, prior=prior, min_rel_diff=0.05)
    a = sample_pixel_pairs(valid, 200, generator=_gen(3), **kw)
    b = sample_pixel_pairs(valid, 200, generator=_gen(3), **kw)
    c = sample_pixel_pairs(valid, 200, generator=_gen(4), **kw)
    assert torch.equal(a.xy_a, b.xy_a) and torch.equal(a.xy_b, b.xy_b) and torch.equal(a.order, b.order)
    assert not torch.equal(a.xy_a, c.xy_a)


@pytest.mark.parametrize("kind", ["disparity", "depth"])
def test_prior_order_and_reliability_filter(kind):
    valid = torch.ones(20, 30, dtype=torch.bool)
    depth = 1.0 + torch.rand(20, 30, generator=_gen(7)) * 3.0
    prior = depth if kind == "depth" else 2.0 / depth  # disparity: proportional to 1 / depth
    pairs = sample_pixel_pairs(valid, 2000, prior=prior, prior_kind=kind, min_rel_diff=0.1, generator=_gen())
    za, zb = depth[pairs.xy_a[:, 1], pairs.xy_a[:, 0]], depth[pairs.xy_b[:, 1], pairs.xy_b[:, 0]]
    # order: +1 when a is farther (larger depth), whichever kind the prior is
    assert torch.equal(pairs.order, torch.where(za > zb, 1.0, -1.0))
    pa, pb = prior[pairs.xy_a[:, 1], pairs.xy_a[:, 0]], prior[pairs.xy_b[:, 1], pairs.xy_b[:, 0]]
    rel = (pa - pb).abs() / torch.maximum(pa, pb)
    assert (rel >= 0.1).all()
    # the dropped pairs are exactly the unreliable ones: compare with the unfiltered draw (same seed)
    allp = sample_pixel_pairs(valid, 2000, prior=prior, prior_kind=kind, generator=_gen())
    qa = prior[allp.xy_a[:, 1], allp.xy_a[:, 0]]
    qb = prior[allp.xy_b[:, 1], allp.xy_b[:, 0]]
    keep = (qa - qb).abs() / torch.maximum(qa, qb) >= 0.1
    assert len(allp) == 2000 and len(pairs) == int(keep.sum()) < 2000
    assert torch.equal(allp.xy_a[keep], pairs.xy_a)


def test_nonfinite_prior_dropped():
    valid = torch.ones(10, 10, dtype=torch.bool)
    prior = torch.ones(10, 10)
    prior[:5] = float("nan")
    prior[5:] = torch.arange(50, dtype=torch.float32).reshape(5, 10) + 1
    pairs = sample_pixel_pairs(valid, 500, prior=prior, generator=_gen())
    assert (pairs.xy_a[:, 1] >= 5).all() and (pairs.xy_b[:, 1] >= 5).all()


def test_flow_positions_and_differentiable_depth_lookup():
    H, W = 12, 16
    valid = torch.ones(H, W, dtype=torch.bool)
    flow = torch.randn(H, W, 2, generator=_gen(2), dtype=torch.float64)
    pairs = sample_pixel_pairs(valid, 50, flow=flow, generator=_gen())
    for xy, nxt in ((pairs.xy_a, pairs.xy_a_next), (pairs.xy_b, pairs.xy_b_next)):
        assert nxt.dtype == torch.float64
        expected = torch.stack([xy[:, 0] + flow[xy[:, 1], xy[:, 0], 0], xy[:, 1] + flow[xy[:, 1], xy[:, 0], 1]], -1)
        torch.testing.assert_close(nxt, expected)
    depth = torch.rand(1, 1, H, W, dtype=torch.float64, requires_grad=True)
    d = bilinear_sample(depth, pairs.xy_a_next[None].clamp(0, W - 1))
    d.sum().backward()
    assert depth.grad is not None and depth.grad.abs().sum() > 0


def test_degenerate_and_bad_inputs():
    empty = torch.zeros(5, 5, dtype=torch.bool)
    one = empty.clone()
    one[2, 2] = True
    for v in (empty, one):
        assert len(sample_pixel_pairs(v, 10, generator=_gen())) == 0
    assert len(sample_pixel_pairs(torch.ones(5, 5, dtype=torch.bool), 0)) == 0
    with pytest.raises(ValueError, match="valid"):
        sample_pixel_pairs(torch.ones(5, 5), 10)
    with pytest.raises(ValueError, match="region"):
        sample_pixel_pairs(one, 10, region=torch.ones(5, 6, dtype=torch.bool))
    with pytest.raises(ValueError, match="strategy"):
        sample_pixel_pairs(one, 10, strategy="near")
    with pytest.raises(ValueError, match="prior_kind"):
        sample_pixel_pairs(one, 10, prior=torch.ones(5, 5), prior_kind="inverse")
    with pytest.raises(ValueError, match="flow"):
        sample_pixel_pairs(one, 10, flow=torch.ones(5, 5, 3))
