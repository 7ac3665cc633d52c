import roma
import torch

from flow3d.scene.gaussians import GaussianParams
from flow3d.scene.init import fit_bases_procrustes, interpolate_missing, kmeans, knn_scale
from flow3d.scene.motion import MotionBases, matrix_to_rot6d, rot6d_to_matrix
from flow3d.scene.strategy import DensifyConfig, DensifyStrategy, update_param_with_optimizer


def _gaussians(n=6, k=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return GaussianParams(
        torch.randn(n, 3, generator=g),
        torch.randn(n, 4, generator=g),
        torch.rand(n, 3, generator=g) * 0.1 + 0.01,
        torch.rand(n, generator=g) * 0.8 + 0.1,
        torch.rand(n, 3, generator=g) * 0.8 + 0.1,
        torch.randn(n, k, generator=g),
    )


def test_rot6d_round_trip_and_identity_bases():
    R = roma.random_rotmat(5)
    torch.testing.assert_close(rot6d_to_matrix(matrix_to_rot6d(R)), R, atol=1e-5, rtol=1e-5)
    bases = MotionBases.identity(3, 4)
    coefs = torch.softmax(torch.randn(7, 3), -1)
    Rb, tb = bases.compute_transforms(torch.tensor([0, 2]), coefs)
    assert Rb.shape == (7, 2, 3, 3) and tb.shape == (7, 2, 3)
    torch.testing.assert_close(Rb, torch.eye(3).expand(7, 2, 3, 3))
    torch.testing.assert_close(tb, torch.zeros(7, 2, 3))


def test_blended_translation_is_the_weighted_sum():
    transls = torch.randn(2, 3, 3)
    bases = MotionBases(matrix_to_rot6d(torch.eye(3).expand(2, 3, 3, 3)), transls)
    coefs = torch.tensor([[0.25, 0.75]])
    _, t = bases.compute_transforms(torch.tensor([1]), coefs)
    torch.testing.assert_close(t[0, 0], 0.25 * transls[0, 1] + 0.75 * transls[1, 1])


def test_gaussian_activations_invert_the_constructor():
    means = torch.randn(4, 3)
    scales = torch.tensor([[0.1, 0.2, 0.3]]).expand(4, 3)
    opac = torch.tensor([0.1, 0.5, 0.7, 0.9])
    g = GaussianParams(means, torch.tensor([2.0, 0, 0, 0]).expand(4, 4), scales, opac, torch.full((4, 3), 0.25))
    torch.testing.assert_close(g.get_scales(), scales)
    torch.testing.assert_close(g.get_opacities(), opac, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(g.get_quats(), torch.tensor([1.0, 0, 0, 0]).expand(4, 4))
    assert not g.has_motion


def test_procrustes_bases_recover_known_rigid_motions():
    g = torch.Generator().manual_seed(1)
    can = torch.randn(40, 3, generator=g)
    labels = torch.arange(40) % 2
    T = 4
    Rs = roma.random_rotmat((2, T), generator=g)
    ts = torch.randn(2, T, 3, generator=g)
    pts = torch.einsum("mtij,mj->mti", Rs[labels], can) + ts[labels]
    valid = torch.ones(40, T, dtype=torch.bool)
    # canonical frame 0 positions are pts[:, 0]; the basis maps them to frame t: R_t R_0^T (x - t_0) + t_t
    bases = fit_bases_procrustes(pts, valid, torch.ones(40, T), labels, 0, 2)
    R, t = bases.compute_transforms(torch.arange(T), torch.nn.functional.one_hot(labels, 2).float())
    pred = torch.einsum("ntij,nj->nti", R, pts[:, 0]) + t
    torch.testing.assert_close(pred, pts, atol=1e-4, rtol=1e-4)


def test_interpolate_missing_is_linear_inside_and_holds_at_the_ends():
    x = torch.tensor([[0.0, 1.0, 9.0, 9.0, 4.0, 7.0]])[..., None]
    valid = torch.tensor([[False, True, False, False, True, False]])
    out = interpolate_missing(x, valid)[0, :, 0]
    assert out.tolist() == [1.0, 1.0, 2.0, 3.0, 4.0, 4.0]
    none = torch.zeros(1, 6, dtype=torch.bool)
    assert torch.equal(interpolate_missing(x, none), x)


def test_kmeans_separates_two_blobs_and_knn_scale():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(20, 2, generator=g) * 0.1
    b = torch.randn(20, 2, generator=g) * 0.1 + 5
    labels, _ = kmeans(torch.cat([a, b]), 2, generator=g)
    assert len(set(labels[:20].tolist())) == 1 and len(set(labels[20:].tolist())) == 1 and labels[0] != labels[20]
    grid = torch.stack(torch.meshgrid(torch.arange(4.0), torch.arange(4.0), indexing="ij"), -1).reshape(-1, 2)
    pts = torch.cat([grid, torch.zeros(16, 1)], 1)
    s = knn_scale(pts, k=2)
    assert torch.allclose(s[5], torch.tensor(1.0))  # interior point: its 2 nearest are at distance 1


def test_optimizer_state_follows_densification():
    fg = _gaussians(6)
    opts = {f"fg.{k}": torch.optim.Adam([p], lr=0.1) for k, p in fg.params.items()}
    loss = sum(p.square().sum() for p in fg.params.values())
    loss.backward()
    for o in opts.values():
        o.step()
    old_avg = opts["fg.means"].state[fg.params["means"]]["exp_avg"].clone()
    keep = torch.tensor([True, False, True, True, False, True])
    update_param_with_optimizer(fg, "fg", opts, lambda _, p: p[keep], lambda _, v: v[keep])
    assert fg.num_gaussians == 4
    st = opts["fg.means"].state[fg.params["means"]]
    torch.testing.assert_close(st["exp_avg"], old_avg[keep])
    assert opts["fg.means"].param_groups[0]["params"][0] is fg.params["means"]


class _Model:
    def __init__(self, fg):
        self.fg, self.bg = fg, None

    @property
    def num_fg(self):
        return self.fg.num_gaussians

    num_bg = 0


def test_strategy_grows_high_gradient_and_prunes_transparent():
    fg = _gaussians(6)
    with torch.no_grad():
        fg.params["scales"][:3] = torch.log(torch.tensor(0.001))  # small -> duplicated
        fg.params["scales"][3:] = torch.log(torch.tensor(1.0))  # large -> split
        fg.params["opacities"][5] = -10.0  # transparent -> pruned
    opts = {f"fg.{k}": torch.optim.Adam([p], lr=0.1) for k, p in fg.params.items()}
    strat = DensifyStrategy(
        DensifyConfig(refine_start=0, refine_every=1, reset_every=0, grow_grad2d=0.1, grow_scale3d=0.01), 1.0
    )
    state = strat.initialize_state()
    leaf = torch.zeros(1, 6, 2, requires_grad=True)
    means2d = leaf * 1.0  # a non-leaf, like a render's means2d: its grad is kept only on request
    info = {"means2d": [means2d], "radii": [torch.ones(1, 6, dtype=torch.int32)], "img_wh": (4, 4)}
    strat.step_pre_backward(_Model(fg), opts, state, 1, info)
    (means2d * torch.tensor([[1.0], [0], [1], [1], [0], [1]])).sum().backward()  # grads on 0, 2, 3, 5
    assert means2d.grad is not None  # kept by step_pre_backward (gsplat's retain_grad)
    strat.step_post_backward(_Model(fg), opts, state, 1, info)
    # 6, +2 duplicated (0 and 2), split 3 and 5 (each replaced by two copies: +2), then the two
    # transparent copies of 5 are pruned (-2)
    assert (fg.get_opacities() > 0.005).all()
    assert fg.num_gaussians == 6 + 2 + 2 - 2
    assert all(opts[f"fg.{k}"].param_groups[0]["params"][0] is p for k, p in fg.params.items())


def test_growth_stops_at_the_cap_keeping_the_largest_gradients():
    fg = _gaussians(6)
    with torch.no_grad():
        fg.params["scales"][:] = torch.log(torch.tensor(0.001))  # all small: growth = duplication
    opts = {f"fg.{k}": torch.optim.Adam([p], lr=0.1) for k, p in fg.params.items()}
    cfg = DensifyConfig(refine_start=0, refine_every=1, reset_every=0, grow_grad2d=0.1, max_gaussians=8)
    strat = DensifyStrategy(cfg, 1.0)
    state = strat.initialize_state()
    means2d = torch.zeros(1, 6, 2, requires_grad=True)
    (means2d * torch.tensor([[1.0], [3.0], [2.0], [0], [0], [0.5]])).sum().backward()  # 4 above threshold
    means_before = fg.get_means().detach().clone()
    info = {"means2d": [means2d], "radii": [torch.ones(1, 6, dtype=torch.int32)], "img_wh": (4, 4)}
    strat.step_post_backward(_Model(fg), opts, state, 1, info)
    assert fg.num_gaussians == 8  # room for 2 of the 4 candidates
    torch.testing.assert_close(fg.get_means()[6:], means_before[[1, 2]])  # the two largest gradients


def test_mask_at_query_matches_a_full_mask_gather_per_track():
    """The reference is the old gather (one full-size mask per track), fine at this size."""
    from flow3d.geometry import bilinear_sample
    from flow3d.scene.init import mask_at_query

    g = torch.Generator().manual_seed(3)
    T, H, W, M = 5, 7, 9, 40
    masks = (torch.rand(T, H, W, generator=g) > 0.5).float()
    xy = torch.rand(M, T, 2, generator=g) * torch.tensor([W - 1.0, H - 1.0])
    xy[:4] = xy[:4].round()  # on pixel centres too
    q = torch.randint(0, T, (M,), generator=g)
    q[0] = 2  # a frame with one query at least
    xy_q = xy[torch.arange(M), q]
    ref = bilinear_sample(masks[q][:, None], xy_q[:, None])[:, 0, 0]
    torch.testing.assert_close(mask_at_query(masks, xy, q), ref)
    torch.testing.assert_close(mask_at_query(masks.bool(), xy, q), ref)
    assert mask_at_query(masks, xy[:0], q[:0]).shape == (0,)


def test_densification_centre_on_ignored_pixels():
    """Gsplat pixel convention: pixel (i, j) covers [j, j+1) x [i, i+1); outside the image is not ignored."""
    from flow3d.scene.strategy import centre_on_ignored

    valid = torch.ones(4, 5, dtype=torch.bool)
    valid[1, 2] = False
    m2d = torch.tensor([[2.0, 1.0], [2.99, 1.99], [3.0, 1.5], [2.5, 0.99], [-1.0, 1.5], [2.5, 7.0]])
    assert centre_on_ignored(m2d, valid).tolist() == [True, True, False, False, False, False]
