"""The package as users install it: a wheel built from the repository, used outside the checkout.

The slow test builds the wheel, installs it into a new virtual environment in a temporary folder, and from
another temporary folder (so that nothing of the checkout is importable) runs ``--help`` of every console
script and the demo for a few steps, then scores it. Installing torch and the other dependencies afresh
takes minutes (5 min 50 s measured on the shared 2-core machine), so by default the new environment
reuses the installed dependencies of the Python running the tests: a ``.pth`` file puts that
interpreter's site-packages after the new environment's own, and the wheel is installed with
``--no-deps``. The test then checks that every requirement the wheel declares is met there, and that
``flow3d`` is imported from the new environment, not from the checkout or an editable install (whose
import hook lives in a ``.pth`` file of the reused folder, which a path added by another ``.pth`` file
never runs). ``FLOW3D_WHEEL_FRESH_VENV=1`` installs everything afresh instead (``pip install
torch==2.13.0 <wheel>``), as a user would.

The fast tests check the tables the packaging is made of: every ``python -m`` entry point has a console
script, pyproject.toml's ``[project.scripts]`` agrees with :data:`flow3d.commands.COMMANDS`, and the
presets are found through the package.
"""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
import tomllib

from flow3d.commands import COMMANDS
from flow3d.config import CONFIGS_DIR, available_presets, load_preset, presets_help

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())


def _main_modules() -> set[str]:
    """Every module that runs as ``python -m flow3d.X``: a ``__main__.py``, or an ``if __name__ == "__main__"``."""
    out = set()
    for path in (REPO / "flow3d").rglob("*.py"):
        mod = ".".join(path.relative_to(REPO).with_suffix("").parts)
        tree = ast.parse(path.read_text())
        runs = any(
            isinstance(n, ast.If)
            and isinstance(n.test, ast.Compare)
            and isinstance(n.test.left, ast.Name)
            and n.test.left.id == "__name__"
            and any(isinstance(c, ast.Constant) and c.value == "__main__" for c in n.test.comparators)
            and any(isinstance(s, (ast.Expr, ast.Raise)) for s in n.body)  # calls main, not only setup
            for n in tree.body
        )
        if path.name == "__main__.py" or runs:
            out.add(mod)
    return out


def test_every_entry_point_has_a_console_script():
    assert set(COMMANDS.values()) == _main_modules()
    scripts = PYPROJECT["project"]["scripts"]
    assert scripts == {name: f"flow3d.commands:{name.removeprefix('flow3d-').replace('-', '_')}" for name in COMMANDS}
    import flow3d.commands

    for target in scripts.values():
        assert callable(getattr(flow3d.commands, target.split(":")[1]))


def test_launcher_returns_an_exit_code_not_the_result(monkeypatch):
    """A console script exits with its function's return value: a tool's result (a dict) would be printed and
    exit 1, so the launcher returns 0 for it and passes an int through."""
    import flow3d.commands
    import flow3d.export
    import flow3d.sweep.__main__ as sweep_main

    monkeypatch.setattr(flow3d.export, "main", lambda: {"step": 3})
    monkeypatch.setattr(sweep_main, "main", lambda: 2)
    assert flow3d.commands.export() == 0 and flow3d.commands.sweep() == 2


def test_presets_are_read_from_the_package():
    assert Path(str(CONFIGS_DIR)).resolve() == (REPO / "configs").resolve()  # the link to the top-level folder
    names = available_presets()
    assert names == sorted(p.stem for p in (REPO / "configs").glob("*.yaml"))
    assert load_preset("cpu_demo")["max_steps"] == 600
    with pytest.raises(ValueError, match="not found.*available"):
        load_preset("no_such_preset")


def test_help_shows_what_each_preset_sets():
    text = presets_help()
    for name in available_presets():
        assert f"  {name}: " in text
    flat = " ".join(text.split())  # the table is wrapped
    assert "max_steps=600" in flat and "init.num_fg=1500" in flat  # cpu_demo's values
    assert "losses.w_hinge_ordinal=0.0" in flat and "prior_align=none" in flat  # som_baseline's
    assert not re.search(r"(?i)\bseed[- ]0\d\d|\bissue \d", text)  # no development history in the help


# ---------------------------------------------------------------------------------------------- the wheel


def _build_wheel(out: Path) -> Path:
    """The wheel of a copy of the repository's package files (the build leaves nothing in the checkout)."""
    src = out / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.so", "build")
    shutil.copytree(REPO / "configs", src / "configs", ignore=ignore)
    shutil.copytree(REPO / "flow3d", src / "flow3d", symlinks=True, ignore=ignore)  # flow3d/configs stays a link
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(out / "dist"),
            str(src),
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    (wheel,) = (out / "dist").glob("flow3d-*.whl")
    return wheel


def _new_venv(root: Path, wheel: Path) -> Path:
    """A new virtual environment with the wheel installed (and its dependencies: see the module docstring)."""
    venv = root / "venv"
    py = venv / "bin" / "python"
    if os.environ.get("FLOW3D_WHEEL_FRESH_VENV") == "1":
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(py), "-m", "pip", "install", "-q", "torch==2.13.0", str(wheel)], check=True)
        return venv
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    # this interpreter's pip installs into the new environment (pip >= 22.3), which sees nothing else yet
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(py), "install", "-q", "--no-deps", "--no-index", str(wheel)],
        check=True,
        capture_output=True,
        text=True,
    )
    site = subprocess.run(
        [str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    # then the dependencies of the Python running the tests, after the new environment's own site-packages
    (Path(site) / "reused_test_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return venv


def _clean_env() -> dict:
    """The environment without anything that points Python at the checkout."""
    drop = {"PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV", "FLOW3D_DEBUG"}
    return {k: v for k, v in os.environ.items() if k not in drop} | {"OMP_NUM_THREADS": "1"}


@pytest.mark.slow
def test_wheel_installed_outside_the_checkout_runs_every_command(tmp_path):
    wheel = _build_wheel(tmp_path)
    names = set(zipfile.ZipFile(wheel).namelist())
    for preset in available_presets():
        assert f"flow3d/configs/{preset}.yaml" in names
    assert "flow3d/configs/sweeps/example.yaml" in names and "flow3d/render/csrc/raster_ops.cpp" in names
    assert not any(n.startswith(("tests/", "configs/")) or n in ("run_training.py", "run_val.py") for n in names)

    venv = _new_venv(tmp_path, wheel)
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    env = _clean_env() | {"PATH": f"{venv / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}"}

    def run(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)

    # flow3d comes from the new environment, with its presets; every declared requirement is met there
    check = (
        "import flow3d, flow3d.config as c, importlib.metadata as m, re;"
        "print(flow3d.__file__); print(c.CONFIGS_DIR); print(c.available_presets());"
        "from pip._vendor.packaging.requirements import Requirement;"
        "reqs = [Requirement(r) for r in m.requires('flow3d') if 'extra ==' not in r];"
        "bad = [str(r) for r in reqs if not r.specifier.contains(m.version(r.name), prereleases=True)];"
        "print(bad)"
    )
    r = run(str(venv / "bin" / "python"), "-c", check)
    assert r.returncode == 0, r.stderr[-3000:]
    file, configs, presets, bad = r.stdout.splitlines()
    site = str(venv.resolve())
    assert Path(file).resolve().is_relative_to(site) and Path(configs).resolve().is_relative_to(site), r.stdout
    assert presets == str(available_presets()) and bad == "[]", r.stdout

    # every console script: its --help, from outside the checkout. flow3d-train's script runs as a process
    # (as the demo's and flow3d-val's below); the others' entry points are loaded and called in one process,
    # as their scripts do (``sys.exit(f())``): starting torch 18 times costs minutes on a loaded machine
    for name in COMMANDS:
        assert (venv / "bin" / name).is_file(), name
    r = run("flow3d-train", "--help")
    assert r.returncode == 0 and "usage:" in r.stdout, r.stderr[-2000:]
    assert "cpu_demo: " in r.stdout and "max_steps=600" in " ".join(r.stdout.split())  # what the presets set
    helps = (
        "import contextlib, io, sys, importlib.metadata as m\n"
        "for ep in m.distribution('flow3d').entry_points:\n"
        "    sys.argv, out, code = [ep.name, '--help'], io.StringIO(), 'returned'\n"
        "    with contextlib.redirect_stdout(out):\n"
        "        try:\n"
        "            ep.load()()\n"
        "        except SystemExit as e:\n"
        "            code = e.code\n"
        "    print(ep.group, ep.name, code, 'usage:' in out.getvalue())\n"
    )
    r = run(str(venv / "bin" / "python"), "-c", helps, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    assert sorted(r.stdout.splitlines()) == sorted(f"console_scripts {name} 0 True" for name in COMMANDS), r.stdout

    # the demo for a few steps, then its evaluation
    work = tmp_path / "demo"
    r = run(
        "flow3d-train",
        "--preset",
        "cpu_demo",
        "--work-dir",
        str(work),
        "--max-steps",
        "3",
        "--save-every",
        "0",
        "--image-every",
        "0",
        "--init.num-fg",
        "100",
        "--init.num-bg",
        "100",
        "--init.init-fit-steps",
        "5",
        "data:synthetic",
        "--data.num-frames",
        "6",
        "--data.width",
        "32",
        "--data.height",
        "24",
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert (work / "checkpoints" / "last.ckpt").is_file()
    r = run("flow3d-val", "--work-dir", str(work), "--no-video", timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert list((work / "val").glob("*/*/metrics.json")), r.stdout
