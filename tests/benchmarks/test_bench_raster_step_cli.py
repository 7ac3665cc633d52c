"""The command lines of ``python -m flow3d.benchmarks.step`` and ``.raster`` (tyro, issue 28; flag names kept),
and the first line of the step benchmark naming the torch version and the backends that ran (issue 23)."""

from __future__ import annotations

import pytest
import torch

from flow3d.benchmarks import raster, step

FLAGS = {
    step: (
        "--steps",
        "--warmup",
        "--threads",
        "--sizes",
        "--size-steps",
        "--skip-torch-sizes",
        "--profile",
        "--full",
        "--neighbour-render",
    ),
    raster: ("--threads", "--repeats", "--quick", "--profile"),
}


@pytest.mark.parametrize("mod", [step, raster], ids=["step", "raster"])
def test_help_names_the_command_and_every_flag(mod, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    with pytest.raises(SystemExit) as e:
        mod.main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert f"python -m {mod.__name__}" in out
    for flag in FLAGS[mod]:
        assert flag in out, flag


@pytest.mark.parametrize("mod, argv", [(step, ["--no-such-flag"]), (raster, ["--steps", "3"])], ids=["step", "raster"])
def test_unknown_flag_is_a_usage_error(mod, argv, capsys):
    with pytest.raises(SystemExit) as e:
        mod.main(argv)
    assert e.value.code == 2


@pytest.mark.parametrize(
    "mod, argv, names",
    [
        (step, ["--sizes", "128"], "--sizes"),
        (step, ["--steps", "0"], "--steps"),
        (raster, ["--repeats", "0"], "--repeats"),
    ],
    ids=["step-sizes", "step-steps", "raster-repeats"],
)
def test_bad_values_end_in_one_error_line(mod, argv, names):
    with pytest.raises(SystemExit) as e:
        mod.main(argv)
    assert isinstance(e.value.code, str) and e.value.code.startswith("error: ") and names in e.value.code


@pytest.mark.slow
def test_step_benchmark_without_the_compiled_rasterizer_says_so_and_runs_pytorch(capsys, monkeypatch):
    from flow3d.render import compiled

    monkeypatch.setattr(compiled, "load_extension", lambda: False)
    monkeypatch.setattr(compiled, "load_error", lambda: "simulated: no compiler")
    old = torch.get_num_threads()
    try:
        step.main(["--steps", "1", "--warmup", "0", "--sizes", "", "--threads", "1"])
    finally:
        torch.set_num_threads(old)
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"torch {torch.__version__}, 1 threads; backend: torch (PyTorch) only")
    assert "simulated: no compiler" in out[0]
    rows = [ln for ln in out if "demo, backend=" in ln]
    assert len(rows) == 1 and "backend=torch" in rows[0]
