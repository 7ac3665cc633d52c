"""The trainer on a tiny synthetic scene: it learns, it resumes exactly, it survives bad priors."""

import dataclasses
import logging

import pytest
import torch

from flow3d.train import terms as T
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
    "300",
    "--init.num-bg",
    "500",
    "--init.init-fit-steps",
    "30",
    "--densify.refine-start",
    "10",
    "--densify.refine-every",
    "10",
    "--densify.refine-stop",
    "25",
]
DATA = [
    "data:synthetic",
    "--data.num-frames",
    "8",
    "--data.width",
    "48",
    "--data.height",
    "36",
    "--data.track-grid-step",
    "4",
]


@pytest.fixture(scope="module")
def tiny_seq():
    cfg = parse_args(["--work-dir", "unused"] + DATA)
    return cfg.data.load()


def _cfg(tmp_path, *extra):
    return parse_args(["--work-dir", str(tmp_path)] + TINY + list(extra) + DATA)


def test_training_lowers_the_loss_and_raises_psnr(tmp_path, tiny_seq):
    tr = Trainer(_cfg(tmp_path, "--max-steps", "100"), seq=tiny_seq)
    psnr0 = tr.eval_psnr(tiny_seq.train_ids)
    losses = []
    for _ in range(100):
        terms = tr.train_step()
        losses.append(float(terms["rgb"]))
    psnr1 = tr.eval_psnr(tiny_seq.train_ids)
    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    # measured here: rgb loss 0.170 -> 0.094 (x0.55) and train PSNR 19.1 -> 22.5 dB (+3.5 dB)
    assert last < 0.7 * first, (first, last)
    assert psnr1 > psnr0 + 1.75, (psnr0, psnr1)


def test_resume_continues_with_the_same_step_parameters_and_optimiser_state(tmp_path, tiny_seq):
    straight = Trainer(_cfg(tmp_path / "a", "--max-steps", "30"), seq=tiny_seq)
    for _ in range(30):
        straight.train_step()

    first = Trainer(_cfg(tmp_path / "b", "--max-steps", "30"), seq=tiny_seq)
    for _ in range(15):  # interrupted half-way
        first.train_step()
    first.save(numbered=True)
    assert (tmp_path / "b" / "checkpoints" / "model_15.ckpt").is_file()
    resumed = Trainer(_cfg(tmp_path / "b", "--max-steps", "30"), seq=tiny_seq)
    assert resumed.step == 15
    for _ in range(15):
        resumed.train_step()

    assert resumed.step == straight.step == 30
    sa, sb = straight.model.state_dict(), resumed.model.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k], msg=k)
    for key, opt in straight.optimizers.items():
        pa = opt.param_groups[0]["params"][0]
        pb = resumed.optimizers[key].param_groups[0]["params"][0]
        torch.testing.assert_close(
            opt.state[pa]["exp_avg_sq"], resumed.optimizers[key].state[pb]["exp_avg_sq"], msg=key
        )
        assert opt.param_groups[0]["lr"] == pytest.approx(resumed.optimizers[key].param_groups[0]["lr"])


def test_nan_in_the_prior_is_masked_and_logged(tmp_path, tiny_seq, caplog):
    """A sequence decides its prior's validity once, on construction (every loader ends there)."""
    bad = tiny_seq.prior_disp.clone()
    bad[:, :5, :5] = float("nan")
    bad[0, 10, 10] = float("inf")
    bad[1, 10, 10] = -1.0
    with caplog.at_level(logging.WARNING, logger="flow3d"):
        seq = dataclasses.replace(tiny_seq, prior_disp=bad)
    assert any("NaN/Inf" in r.message and str(8 * 25 + 2) in r.message for r in caplog.records)
    assert not seq.prior_valid[:, :5, :5].any() and (seq.prior_disp[:, :5, :5] == 0).all()
    assert not tiny_seq.prior_disp.isnan().any()  # the loaded sequence was not touched
    tr = Trainer(_cfg(tmp_path, "--max-steps", "5"), seq=seq)
    for _ in range(5):
        terms = tr.train_step()
        assert terms is not None and torch.isfinite(terms["total"])


def test_non_finite_steps_are_skipped_then_stop_with_a_clear_error(tmp_path, tiny_seq, monkeypatch, caplog):
    tr = Trainer(_cfg(tmp_path, "--max-steps", "10", "--max-nonfinite-steps", "3"), seq=tiny_seq)
    before = {k: v.detach().clone() for k, v in tr.model.state_dict().items()}
    nan = lambda ctx: torch.tensor(float("nan"))  # noqa: E731
    tr.terms = tuple(dataclasses.replace(t, fn=nan) if t.name == "mask" else t for t in tr.terms)
    with caplog.at_level(logging.WARNING, logger="flow3d"):
        assert tr.train_step() is None
        assert tr.train_step() is None
    assert any("['mask']" in r.message for r in caplog.records)
    for k, v in tr.model.state_dict().items():
        assert torch.equal(v, before[k]), k  # skipped steps change nothing
    with pytest.raises(RuntimeError, match="3 consecutive steps had a non-finite loss"):
        tr.train_step()


def test_the_terms_table_matches_the_weight_fields_and_skips_weight_zero():
    from flow3d.config import LossConfig

    weights = T.check_weights(LossConfig())
    assert set(weights) == {t.name for t in T.TERMS}
    assert all(t.weight in {f.name for f in dataclasses.fields(LossConfig)} for t in T.TERMS)
    # a weight field without a term (e.g. a misspelt one) and a term without a field are errors
    typo = dataclasses.make_dataclass("TypoLossConfig", [("w_smooth_track", float, 1.0)], bases=(LossConfig,))
    with pytest.raises(ValueError, match=r"weight fields \['w_smooth_track'\] that no loss term reads"):
        T.check_weights(typo())
    extra = T.TERMS + (T.Term("probe", lambda ctx: torch.tensor(1.0), "w_probe"),)
    with pytest.raises(ValueError, match=r"loss terms \['probe'\] have no weight field"):
        T.check_weights(LossConfig(), extra)
    with pytest.raises(ValueError, match="listed twice"):
        T.check_weights(LossConfig(), T.TERMS + T.TERMS[:1])
    # weight 0: not in the active set, so never called
    called = []
    probes = (
        T.Term("a", lambda ctx: called.append("a") or torch.tensor(1.0), "w_a"),
        T.Term("b", lambda ctx: called.append("b") or torch.tensor(2.0), "w_b"),
    )
    active = T.active_terms({"a": 0.0, "b": 3.0}, probes)
    values = T.compute_terms(None, active)
    assert called == ["b"] and float(T.weighted_total(values, {"a": 0.0, "b": 3.0})) == 6.0
    with pytest.raises(ValueError, match="every loss weight is zero"):
        T.weighted_total({}, {})


def test_users_command_runs_end_to_end(tmp_path):
    """run_training.main writes cfg.yaml, numbered and last checkpoints and stats; a re-run resumes."""
    from run_training import main

    args = ["--work-dir", str(tmp_path)] + TINY + ["--max-steps", "4", "--save-every", "2"] + DATA
    main(args)
    ck = tmp_path / "checkpoints"
    assert sorted(p.name for p in ck.iterdir()) == ["last.ckpt", "model_2.ckpt", "model_4.ckpt"]
    assert (tmp_path / "cfg.yaml").is_file() and (tmp_path / "train_stats.json").is_file()
    main(args[: -len(DATA)] + ["--max-steps", "6"] + DATA)  # resumes at 4, runs 2 more
    assert (ck / "model_6.ckpt").is_file()
    assert not list(ck.glob("*.tmp"))
