"""RAFT adapter on tiny inputs with random weights (CI runs these with `pytest -m raft` in the
torch 2.14.1 + torchvision 0.29.1 environment; elsewhere they skip)."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

try:
    from torchvision.models import optical_flow

    _TV_ERROR = None
except Exception as err:  # ImportError, or a RuntimeError from a mismatched torch/torchvision pair
    optical_flow, _TV_ERROR = None, err

from flow3d.flow import estimate_flow

pytestmark = [
    pytest.mark.raft,
    pytest.mark.skipif(optical_flow is None, reason=f"torchvision (RAFT) cannot be imported here: {_TV_ERROR}"),
]


@pytest.fixture(scope="module")
def small_weights(tmp_path_factory):
    torch.manual_seed(0)
    net = optical_flow.raft_small(weights=None, progress=False)
    path = tmp_path_factory.mktemp("raft") / "raft_small_random.pth"
    torch.save(net.state_dict(), path)
    return path, net.eval()


def _frames(H, W, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (H, W, 3), dtype=np.uint8), rng.integers(0, 256, (H, W, 3), dtype=np.uint8)


def _scaled(img):
    return torch.from_numpy(img).permute(2, 0, 1)[None].float() / 127.5 - 1.0


@pytest.mark.parametrize("H, W", [(131, 141), (67, 93)])  # the second is padded up to RAFT's 128 px minimum
def test_shapes_on_odd_sizes(small_weights, H, W):
    path, _ = small_weights
    img0, img1 = _frames(H, W)
    flow = estimate_flow(img0, img1, "raft", weights=path, model="raft_small", num_flow_updates=2)
    assert flow.shape == (H, W, 2) and flow.dtype == np.float32 and np.isfinite(flow).all()


def test_matches_direct_model_call_without_padding(small_weights):
    """At a multiple of 8 no padding happens: the adapter must equal the model on [-1, 1] inputs."""
    path, net = small_weights
    img0, img1 = _frames(128, 136, seed=1)
    flow = estimate_flow(img0, img1, "raft", weights=path, model="raft_small", num_flow_updates=3)
    with torch.no_grad():
        ref = net(_scaled(img0), _scaled(img1), num_flow_updates=3)[-1][0].permute(1, 2, 0).numpy()
    np.testing.assert_allclose(flow, ref, rtol=1e-4, atol=1e-4)


def test_padding_is_undone_exactly(small_weights):
    """131 x 141 pads to 136 x 144: rows 2 above / 3 below, columns 1 left / 2 right (hand-computed)."""
    path, net = small_weights
    img0, img1 = _frames(131, 141, seed=2)
    flow = estimate_flow(img0, img1, "raft", weights=path, model="raft_small", num_flow_updates=2)
    with torch.no_grad():
        a = F.pad(_scaled(img0), (1, 2, 2, 3), mode="replicate")
        b = F.pad(_scaled(img1), (1, 2, 2, 3), mode="replicate")
        ref = net(a, b, num_flow_updates=2)[-1][0, :, 2:133, 1:142].permute(1, 2, 0).numpy()
    np.testing.assert_allclose(flow, ref, rtol=1e-4, atol=1e-4)


def test_num_flow_updates_is_used(small_weights):
    path, _ = small_weights
    img0, img1 = _frames(128, 128, seed=3)
    f1 = estimate_flow(img0, img1, "raft", weights=path, model="raft_small", num_flow_updates=1)
    f3 = estimate_flow(img0, img1, "raft", weights=path, model="raft_small", num_flow_updates=3)
    assert not np.allclose(f1, f3)
    with pytest.raises(ValueError, match="num_flow_updates"):
        estimate_flow(img0, img1, "raft", weights=path, model="raft_small", num_flow_updates=0)


def test_missing_or_wrong_weights_give_clear_errors(tmp_path, small_weights, monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("the RAFT adapter tried to download weights")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_network)
    img0, img1 = _frames(128, 128)
    with pytest.raises(ValueError, match="weights="):
        estimate_flow(img0, img1, "raft", model="raft_small")
    missing = tmp_path / "nope.pth"
    with pytest.raises(FileNotFoundError, match="nope.pth") as info:
        estimate_flow(img0, img1, "raft", weights=missing, model="raft_small")
    assert "weights" in str(info.value)
    path, _ = small_weights
    with pytest.raises(ValueError, match="raft_large"):  # small weights into the large model
        estimate_flow(img0, img1, "raft", weights=path, model="raft_large")
    with pytest.raises(ValueError, match="RAFT model"):
        estimate_flow(img0, img1, "raft", weights=path, model="raft_medium")


def test_pad_to_multiple_round_trip():
    from flow3d.flow.raft import pad_to_multiple, unpad

    for H, W, min_size, expect in [
        (67, 93, 0, (72, 96)),
        (131, 141, 128, (136, 144)),
        (67, 93, 128, (128, 128)),
        (64, 64, 0, (64, 64)),
    ]:
        x = torch.randn(1, 2, H, W)
        padded, pads = pad_to_multiple(x, 8, min_size)
        assert tuple(padded.shape[-2:]) == expect
        assert torch.equal(unpad(padded, pads), x)
