"""Ignored pixels (``valid_masks`` False, e.g. instruments) through the whole training step, the hard way.

On the tissue scene, the instrument pixels of every frame (images and prior) are overwritten by noise.
With every registered loss term switched on, the initialisation, the neighbour flows and depth-order pairs
(prepared from the modified frames), every term's value and every parameter's gradient must stay
bit-identical. The control repeats it with the mask dropped (every pixel valid): then they differ.
"""

import dataclasses

import pytest
import torch

from flow3d.train import terms as T
from flow3d.train.batch import sample_batch
from flow3d.train.terms import compute_terms
from flow3d.train.trainer import Trainer
from run_training import parse_args

DATA = [
    "data:synthetic",
    "--data.scene",
    "tissue",
    "--data.num-frames",
    "6",
    "--data.width",
    "40",
    "--data.height",
    "32",
    "--data.track-grid-step",
    "4",
]
ARGS = [
    "--preset",
    "cpu_endonerf",
    "--render-backend",
    "torch",
    "--save-every",
    "0",
    "--image-every",
    "0",
    "--log-every",
    "1000",
    "--batch-size",
    "2",
    "--num-targets",
    "2",
    "--init.num-fg",
    "300",
    "--init.num-motion-bases",
    "4",
    "--init.init-fit-steps",
    "10",
    "--losses.num-track-samples",
    "50",
    "--losses.num-smooth-samples",
    "100",
    "--losses.order.num-pairs",
    "200",
    # every term on, including those off by default
    *[a for t in T.TERMS for a in (f"--losses.{t.weight.replace('_', '-')}", "0.5")],
]


@pytest.fixture(scope="module")
def tissue():
    seq = parse_args(["--work-dir", "unused"] + DATA).data.load()
    assert not bool(seq.valid_masks.all()), "the test needs instrument pixels"
    return seq


def _with_noise_under_mask(seq, seed: int = 7, **replace):
    """A copy whose ignored pixels hold noise in the images and in the prior (and ``replace``d fields)."""
    g = torch.Generator().manual_seed(seed)
    ign = ~seq.valid_masks
    images = torch.where(ign[..., None], torch.rand(seq.images.shape, generator=g), seq.images)
    prior = torch.where(ign, torch.rand(seq.prior_disp.shape, generator=g) + 0.5, seq.prior_disp)
    return dataclasses.replace(seq, images=images, prior_disp=prior, prior_valid=seq.prior_valid | ign, **replace)


def _step_values_and_grads(trainer: Trainer, steps: int = 2):
    """Every active term and every parameter's gradient for ``steps`` steps (no optimiser step between)."""
    res = []
    for _ in range(steps):
        batch = sample_batch(
            trainer.seq,
            trainer.cfg.batch_size,
            trainer.cfg.num_targets,
            trainer.cfg.losses.num_track_samples,
            trainer.generator,
        )
        out, next_out = trainer._render(batch, trainer.all_w2cs)
        values = compute_terms(trainer._context(batch, out, next_out, trainer.all_w2cs), trainer.terms)
        params = [p for p in trainer.model.parameters() if p.requires_grad]
        for p in params:
            p.grad = None
        torch.stack(list(values.values())).sum().backward()
        grads = {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None}
        res.append(({k: v.detach() for k, v in values.items()}, grads))
    return res


def _trainer(tmp_path, name, seq):
    cfg = parse_args(["--work-dir", str(tmp_path / name)] + ARGS + DATA)
    return Trainer(cfg, seq=seq)


def test_noise_under_the_ignore_mask_changes_no_term_and_no_gradient(tmp_path, tissue):
    a, b = _trainer(tmp_path, "a", tissue), _trainer(tmp_path, "b", _with_noise_under_mask(tissue))
    assert len(a.terms) == len(T.TERMS)  # every registered term is active
    # initialisation (canonical frame, hidden tissue filled from other frames, colours)
    assert a.canonical_t == b.canonical_t
    for (n, pa), (_, pb) in zip(a.model.state_dict().items(), b.model.state_dict().items()):
        assert torch.equal(pa, pb), f"init differs in {n}"
    # neighbour flows of the depth-order terms, computed from the (modified) frames
    for t, fa in a.neighbor_flows.items():
        fb = b.neighbor_flows[t]
        assert torch.equal(fa.flow, fb.flow) and torch.equal(fa.valid, fb.valid), f"flow of frame {t}"
    for (va, ga), (vb, gb) in zip(_step_values_and_grads(a), _step_values_and_grads(b)):
        assert va.keys() == vb.keys()
        for k in va:
            assert torch.equal(va[k], vb[k]), f"term {k}: {va[k].item()} != {vb[k].item()}"
        assert ga.keys() == gb.keys()
        for n in ga:
            assert torch.equal(ga[n], gb[n]), f"gradient of {n}"


def test_control_without_the_mask_the_noise_changes_terms_and_gradients(tmp_path, tissue):
    ones = torch.ones_like(tissue.valid_masks)
    every = dataclasses.replace(tissue, valid_masks=ones)
    noisy = _with_noise_under_mask(tissue, valid_masks=ones)
    a, b = _trainer(tmp_path, "a", every), _trainer(tmp_path, "b", noisy)
    b.model.load_state_dict(a.model.state_dict())  # same model: only the data differ
    ((va, ga),) = _step_values_and_grads(a, 1)
    ((vb, gb),) = _step_values_and_grads(b, 1)
    differ = {k for k in va if not torch.equal(va[k], vb[k])}
    assert {"rgb", "depth_reg", "pearson", "hinge_ordinal"} <= differ, differ
    assert any(not torch.equal(ga[n], gb[n]) for n in ga)


def test_training_steps_with_densification_are_identical_under_noise(tmp_path, tissue):
    """Full train_step()s (optimiser steps, densification statistics and a refine at step 2) give
    bit-identical models: the gradient statistics that grow Gaussians skip ignored pixels too."""
    dens = [
        "--densify.refine-start",
        "2",
        "--densify.refine-every",
        "2",
        "--densify.refine-stop",
        "5",
        "--densify.grow-grad2d",
        "1e-6",
    ]  # a low threshold: Gaussians do grow at step 2
    trainers, logs = [], []
    for name, seq in (("a", tissue), ("b", _with_noise_under_mask(tissue))):
        cfg = parse_args(["--work-dir", str(tmp_path / name)] + ARGS + dens + DATA)
        trainers.append(Trainer(cfg, seq=seq))  # (re)seeds torch's global RNG: run each trainer in turn
        n0 = trainers[-1].model.fg.num_gaussians
        logs.append([trainers[-1].train_step() for _ in range(4)])
    a, b = trainers
    for la, lb in zip(*logs):
        assert la.keys() == lb.keys()
        assert not [k for k in la if not torch.equal(la[k], lb[k])], {k: (la[k], lb[k]) for k in la}
    assert a.model.fg.num_gaussians == b.model.fg.num_gaussians > n0  # it grew
    for (n, pa), (_, pb) in zip(a.model.state_dict().items(), b.model.state_dict().items()):
        assert torch.equal(pa, pb), f"after training, {n} differs"
