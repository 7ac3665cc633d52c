"""The one atomic-write helper: complete files or the old ones, never a half-written file or a stray temp."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from flow3d import fileio

PACKAGE = Path(__file__).resolve().parents[1] / "flow3d"


def test_round_trips(tmp_path):
    fileio.write_text(tmp_path / "a" / "t.txt", "x\r\ny")  # parent folders are created; newlines kept
    assert (tmp_path / "a" / "t.txt").read_bytes() == b"x\r\ny"
    fileio.write_json(tmp_path / "m.json", {"b": [1, 2]}, sort_keys=True)
    assert json.loads((tmp_path / "m.json").read_text()) == {"b": [1, 2]}
    fileio.np_savez(tmp_path / "c.npz", {"x": np.arange(3)})
    with np.load(tmp_path / "c.npz") as z:
        assert z["x"].tolist() == [0, 1, 2]
    fileio.torch_save(tmp_path / "w.ckpt", {"t": torch.ones(2)})
    assert torch.equal(torch.load(tmp_path / "w.ckpt", weights_only=True)["t"], torch.ones(2))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "c.npz", "m.json", "w.ckpt"]


def test_failure_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "video.mp4"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="writer died"):
        with fileio.atomic_path(target) as tmp:
            assert tmp.parent == tmp_path and tmp.suffix == ".mp4"  # same folder, same suffix
            tmp.write_bytes(b"half")
            raise RuntimeError("writer died")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["video.mp4"]


def test_replace_dir_swaps_a_whole_folder(tmp_path):
    out = tmp_path / "val" / "300"
    out.mkdir(parents=True)
    (out / "old.txt").write_text("old")
    staging = tmp_path / "val" / ".300.partial"
    staging.mkdir()
    (staging / "new.txt").write_text("new")
    fileio.replace_dir(staging, out)
    assert [p.name for p in out.iterdir()] == ["new.txt"]
    assert sorted(p.name for p in (tmp_path / "val").iterdir()) == ["300"]


def _calls(tree: ast.AST) -> set[str]:
    out = set()
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and isinstance(node.func.value, ast.Name)
        ):
            out.add(f"{node.func.value.id}.{node.func.attr}")
    return out


def test_only_fileio_renames_files():
    """Every hand-written ``os.replace`` / ``mkstemp`` went into :mod:`flow3d.fileio`; nothing else renames."""
    offenders = {}
    for path in PACKAGE.rglob("*.py"):
        if path.name == "fileio.py":
            continue
        bad = _calls(ast.parse(path.read_text())) & {"os.replace", "os.rename", "tempfile.mkstemp"}
        if bad:
            offenders[str(path.relative_to(PACKAGE))] = sorted(bad)
    assert offenders == {}
