"""Training and validation on ``--render-backend gsplat``, with the real ``gsplat.rasterization`` on CPU.

gsplat's CUDA ops are replaced by :mod:`flow3d.render.gsplat_cpu`'s stand-ins for the duration of each
test; everything else (gsplat's Python, our wrapper, the model, the densification statistics, the trainer,
``run_val``) is the code a GPU user runs. The reference is the same run on the compiled CPU backend.
"""

from __future__ import annotations

import json

import pytest
import torch

from flow3d.render import gsplat_cpu
from flow3d.train.trainer import Trainer
from run_training import parse_args

TINY = [
    "--preset",
    "cpu_demo",
    "--save-every",
    "0",
    "--image-every",
    "0",
    "--log-every",
    "1000",
    "--init.num-fg",
    "80",
    "--init.num-bg",
    "120",
    "--init.init-fit-steps",
    "5",
    "--densify.refine-start",
    "2",
    "--densify.refine-every",
    "2",
    "--densify.refine-stop",
    "4",
    "--densify.grow-grad2d",
    "1e-5",
]
DATA = ["data:synthetic", "--data.num-frames", "6", "--data.width", "40", "--data.height", "30"]


@pytest.fixture
def gsplat_on_cpu():
    reason = gsplat_cpu.unsupported_reason()
    if reason is not None:
        pytest.skip(reason)
    with gsplat_cpu.gsplat_cpu_ops():
        yield


@pytest.fixture(scope="module")
def tiny_seq():
    return parse_args(["--work-dir", "unused"] + DATA).data.load()


def _trainer(tmp_path, backend, seq, *extra):
    cfg = parse_args(["--work-dir", str(tmp_path / backend)] + TINY + ["--render-backend", backend, *extra] + DATA)
    return Trainer(cfg, seq=seq)


def _close(a, b, tol=1e-4):
    torch.testing.assert_close(a, b, rtol=tol, atol=tol * max(float(b.abs().max()), 1.0))


def _record_grads(tr: Trainer) -> dict:
    """Each optimiser's parameter gradients as its step sees them (the trainer zeroes them right after)."""
    rec = {}
    for name, opt in tr.optimizers.items():

        def step(*a, _opt=opt, _orig=opt.step, _name=name, **k):
            rec[_name] = [p.grad.clone() for grp in _opt.param_groups for p in grp["params"] if p.grad is not None]
            return _orig(*a, **k)

        opt.step = step
    return rec


def test_train_steps_with_densification_match_the_cpu_backend(gsplat_on_cpu, tmp_path, tiny_seq):
    """Step 1 agrees with the CPU backend; later steps grow and prune alike.

    Step 1: losses, every parameter gradient and the densification statistics (means2d gradients scaled
    to NDC, visibility counts from radii) agree; steps 2-4 grow and prune as many Gaussians.
    (Parameters after Adam's first step are not compared: it moves each by +-lr whatever the gradient's
    size, so a round-off sign flip of a near-zero gradient shows as a 2 lr difference.)"""
    trs = {b: _trainer(tmp_path, b, tiny_seq) for b in ("gsplat", "cpu")}
    grads = {b: _record_grads(tr) for b, tr in trs.items()}
    terms = {b: tr.train_step() for b, tr in trs.items()}
    assert set(terms["gsplat"]) == set(terms["cpu"])
    for k in terms["cpu"]:
        _close(terms["gsplat"][k], terms["cpu"][k])
    g, c = trs["gsplat"], trs["cpu"]
    assert g.step == c.step == 1
    assert set(grads["gsplat"]) == set(grads["cpu"]) and len(grads["cpu"]) > 5
    for name, gc in grads["cpu"].items():
        assert len(grads["gsplat"][name]) == len(gc), name
        for a, b in zip(grads["gsplat"][name], gc):
            _close(a, b, tol=1e-3)
    for group in ("fg", "bg"):
        cnt_g, cnt_c = g.strategy_state["count"][group], c.strategy_state["count"][group]
        assert torch.equal(cnt_g, cnt_c) and cnt_c.sum() > 0
        _close(g.strategy_state["grad2d"][group], c.strategy_state["grad2d"][group], tol=1e-3)
        assert c.strategy_state["grad2d"][group].max() > 0
    sizes0 = (c.model.num_fg, c.model.num_bg)
    for _ in range(3):
        for tr in trs.values():
            tr.train_step()
    assert (g.model.num_fg, g.model.num_bg) == (c.model.num_fg, c.model.num_bg) != sizes0


@pytest.mark.slow
def test_short_training_and_run_val_on_the_gsplat_backend(gsplat_on_cpu, tmp_path):
    """``run_training`` and ``run_val`` end to end with ``--render-backend gsplat``: the metrics agree with
    the same run on the CPU backend (float32 round-off over 6 steps)."""
    import run_training
    import run_val

    metrics = {}
    for backend in ("gsplat", "cpu"):
        work = tmp_path / backend
        run_training.main(["--work-dir", str(work), *TINY, "--max-steps", "6", "--render-backend", backend, *DATA])
        result = run_val.main(["--work-dir", str(work), "--render-backend", backend])
        metrics[backend] = json.loads((result.out_dir / "metrics.json").read_text())["aggregate"]
    mg, mc = metrics["gsplat"], metrics["cpu"]
    for k in ("psnr", "ssim", "depth_abs_rel", "track_epe", "track_pck"):
        assert isinstance(mc.get(k), float), (k, mc.get(k))
        assert abs(mg[k] - mc[k]) <= 0.02 * max(abs(mc[k]), 1.0), (k, mg[k], mc[k])
