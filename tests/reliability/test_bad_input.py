"""The catalogue of bad inputs: each one through a command's real ``main()`` ends with ONE line
``error: ...`` naming the field or the file, and no traceback (issue 14, cases 3, 6, 7, 9, 12, 13)."""

from __future__ import annotations

import shutil

import cv2
import numpy as np
import pytest
from reliability_helpers import FAST, SEQ, data_args, main_error

import run_training
import run_val
from flow3d import export, render_video
from flow3d.preprocess import synthetic as preprocess_synthetic


def _train(work, root, *extra):
    return ["--work-dir", str(work), *FAST, "--max-steps", "4", *extra, *data_args(root)]


# ------------------------------------------------------------------ case 7: config values out of range
@pytest.mark.parametrize(
    "flag, value, named",
    [
        ("--max-steps", "-5", "--max-steps"),
        ("--save-every", "-1", "--save-every"),
        ("--batch-size", "0", "--batch-size"),
        ("--losses.w-rgb", "-1", "--losses.w-rgb"),
        ("--losses.depth-trim-quantile", "1.5", "--losses.depth-trim-quantile"),
        ("--losses.depth-trim-quantile", "0", "--losses.depth-trim-quantile"),
        ("--init.init-opacity", "1.5", "--init.init-opacity"),
        ("--optim.lr-means", "-0.1", "--optim.lr-means"),
        ("--bg-color", "2", "--bg-color"),
    ],
)
def test_out_of_range_option_is_one_error_naming_it(tmp_path, clip_root, flag, value, named):
    if flag == "--bg-color":
        extra = [flag, value, "0", "0"]
    else:
        extra = [flag, value]
    main_error(run_training.main, _train(tmp_path / "w", clip_root, *extra), named, value)
    assert not (tmp_path / "w").exists()  # refused before anything is written


def test_end_before_start_is_one_error(tmp_path, clip_root):
    argv = ["--work-dir", str(tmp_path / "w"), *FAST, *data_args(clip_root, "--data.start", "4", "--data.end", "2")]
    main_error(run_training.main, argv, "data.end", "--data.start")


def test_unknown_preset_is_one_error(tmp_path, clip_root):
    argv = ["--preset", "no_such_preset"] + _train(tmp_path / "w", clip_root)
    main_error(run_training.main, argv, "no_such_preset")


# ------------------------------------------------------------------ case 12: the work dir, checked first
def test_work_dir_that_is_a_file(tmp_path, clip_root):
    f = tmp_path / "notadir"
    f.write_text("x")
    main_error(run_training.main, _train(f, clip_root), str(f), "is a file")


def test_work_dir_that_cannot_be_created(tmp_path, clip_root):
    f = tmp_path / "file"
    f.write_text("x")
    main_error(run_training.main, _train(f / "sub", clip_root), str(f / "sub"), "cannot be created")


def test_work_dir_checked_before_the_data_loads(tmp_path):
    f = tmp_path / "notadir"
    f.write_text("x")
    # the data root does not exist either: the work dir is named, because it is checked first
    main_error(run_training.main, _train(f, tmp_path / "no_data"), str(f))


# ------------------------------------------------------------------ case 6 and 13: the data
def test_missing_data_root(tmp_path):
    main_error(run_training.main, _train(tmp_path / "w", tmp_path / "no_data"), str(tmp_path / "no_data"))


def test_truncated_jpeg_is_named(tmp_path, clip):
    png = clip / "images" / SEQ / "00003.png"
    jpg = png.with_suffix(".jpg")
    cv2.imwrite(str(jpg), cv2.imread(str(png)))
    data = jpg.read_bytes()
    jpg.write_bytes(data[: len(data) * 2 // 3])  # cut short: OpenCV would decode a half-grey frame
    png.unlink()
    main_error(run_training.main, _train(tmp_path / "w", clip), str(jpg), "truncated")


def test_truncated_png_is_named(tmp_path, clip):
    png = clip / "images" / SEQ / "00002.png"
    png.write_bytes(png.read_bytes()[:100])
    main_error(run_training.main, _train(tmp_path / "w", clip), str(png))


def test_image_that_is_not_an_image(tmp_path, clip):
    png = clip / "images" / SEQ / "00001.png"
    png.write_text("this is not a PNG")
    main_error(run_training.main, _train(tmp_path / "w", clip), str(png))


def test_empty_images_folder(tmp_path, clip):
    folder = clip / "images" / SEQ
    shutil.rmtree(folder)
    folder.mkdir()
    main_error(run_training.main, _train(tmp_path / "w", clip), str(folder))


def test_images_folder_that_is_a_file(tmp_path, clip):
    folder = clip / "images" / SEQ
    shutil.rmtree(folder)
    folder.write_text("x")
    main_error(run_training.main, _train(tmp_path / "w", clip), "images")


def test_corrupt_depth_file_is_named(tmp_path, clip):
    npy = sorted((clip / "aligned_depth_anything" / SEQ).iterdir())[2]
    npy.write_bytes(b"\x93NUMPY garbage")
    main_error(run_training.main, _train(tmp_path / "w", clip), str(npy))


def test_depth_of_another_size_is_named(tmp_path, clip):
    npy = sorted((clip / "aligned_depth_anything" / SEQ).iterdir())[1]
    np.save(npy, np.ones((5, 7), np.float32))
    main_error(run_training.main, _train(tmp_path / "w", clip), str(npy))


# ------------------------------------------------------------------ case 3: resume on other data
def test_resume_with_another_clip_length_is_one_error_before_loading(work, clip_root):
    argv = ["--work-dir", str(work), *FAST, "--max-steps", "6", *data_args(clip_root, "--data.end", "4")]
    msg = main_error(run_training.main, argv, "last.ckpt", "data.end")
    assert "was -1, now 4" in msg


def test_resume_with_other_images_is_one_error(work, clip_root, tmp_path):
    moved = shutil.copytree(clip_root, tmp_path / "moved")  # moving the data keeps a run resumable ...
    png = moved / "images" / SEQ / "00004.png"
    img = cv2.imread(str(png))
    cv2.imwrite(str(png), 255 - img)  # ... but other pixels do not
    argv = ["--work-dir", str(work), *FAST, "--max-steps", "6", *data_args(moved)]
    main_error(run_training.main, argv, "last.ckpt", "frame 4")


# ------------------------------------------------------------------ case 9: run_val and a cut cfg.yaml
def test_run_val_cut_cfg_names_missing_fields(work):
    cfg = work / "cfg.yaml"
    lines = cfg.read_text().splitlines()
    cfg.write_text("\n".join(lines[: len(lines) // 3]) + "\n")
    main_error(run_val.main, ["--work-dir", str(work), "--no-video"], str(cfg), "missing field")


def test_run_val_cfg_that_is_not_yaml(work):
    (work / "cfg.yaml").write_text("max_steps: [unclosed\n")
    main_error(run_val.main, ["--work-dir", str(work), "--no-video"], "cfg.yaml", "not valid YAML")


def test_run_val_cfg_with_out_of_range_value(work):
    cfg = work / "cfg.yaml"
    cfg.write_text(cfg.read_text().replace("max_steps: 4", "max_steps: -4"))
    main_error(run_val.main, ["--work-dir", str(work), "--no-video"], "cfg.yaml", "max_steps")


def test_run_val_on_other_images_is_one_error(work, clip_root, tmp_path):
    moved = shutil.copytree(clip_root, tmp_path / "moved")
    png = moved / "images" / SEQ / "00002.png"
    cv2.imwrite(str(png), 255 - cv2.imread(str(png)))
    argv = ["--work-dir", str(work), "--no-video", *data_args(moved, "--data.is-train", "False")]
    main_error(run_val.main, argv, "last.ckpt", "does not match the data", "frame 2")


def test_run_val_missing_step(work):
    main_error(run_val.main, ["--work-dir", str(work), "--model", "999", "--no-video"], "model_999.ckpt")


def test_run_val_missing_work_dir(tmp_path):
    main_error(run_val.main, ["--work-dir", str(tmp_path / "nothing"), "--no-video"], str(tmp_path / "nothing"))


def test_run_val_corrupt_checkpoint(work):
    ck = work / "checkpoints" / "model_2.ckpt"
    ck.write_bytes(ck.read_bytes()[:200])
    main_error(run_val.main, ["--work-dir", str(work), "--model", "2", "--no-video"], "model_2.ckpt")


# ------------------------------------------------------------------ the tools share the wrapper
def test_export_of_a_missing_work_dir(tmp_path):
    main_error(
        export.main,
        ["--work-dir", str(tmp_path / "nothing"), "--out-dir", str(tmp_path / "o")],
        str(tmp_path / "nothing"),
    )


def test_render_video_of_a_missing_work_dir(tmp_path):
    main_error(
        render_video.main,
        ["--work-dir", str(tmp_path / "nothing"), "--out", str(tmp_path / "v.mp4")],
        str(tmp_path / "nothing"),
    )


def test_preprocess_synthetic_bad_combination(tmp_path):
    main_error(preprocess_synthetic.main, ["--out-dir", str(tmp_path), "--layout", "endonerf"], "--layout endonerf")
