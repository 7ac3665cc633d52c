"""Every dataclass the training CLI exposes (a docstring under each field becomes its ``--help``), named
presets from ``configs/<name>.yaml``, and the round trip to ``cfg.yaml`` in the work dir.

A preset is a YAML file of nested overrides of :class:`TrainConfig`'s defaults, e.g.::

    max_steps: 600
    losses: {w_track: 1.0}

``run_training.py --preset NAME ...`` applies it first; every other flag then overrides field by field.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml

from flow3d.data import DataConfig, SyntheticDataConfig
from flow3d.fileio import write_text
from flow3d.log import get_logger
from flow3d.scene.init import InitConfig
from flow3d.scene.strategy import DensifyConfig

logger = get_logger(__name__)

CONFIGS_DIR = Path(__file__).resolve().parents[1] / "configs"


@dataclass
class DepthOrderConfig:
    """Options of the depth-order terms (their weights are the ``w_*`` fields of the loss config)."""

    num_pairs: int = 4096
    """Pixel pairs sampled per frame for the hinge and MoDGS terms."""
    strategy: Literal["global", "local"] = "global"
    """'global': both points uniform over the valid pixels; 'local': the second within ``local_radius``."""
    local_radius: int = 16
    """Radius in pixels of the 'local' strategy."""
    region: Literal["all", "fg", "bg"] = "all"
    """Where pairs are drawn: every valid pixel, the foreground mask or the background."""
    min_rel_diff: float = 0.05
    """Pairs whose prior values differ by less than this fraction (|a-b| / max(|a|, |b|)) are dropped:
    their order is unreliable."""
    neighbor_stride: int = 1
    """k: the neighbour of a training frame is the training frame k places later in the split."""
    flow_backend: Literal["dis", "farneback", "raft"] = "dis"
    """Optical-flow backend for the neighbour flows (raft needs ``flow_options`` with local weights)."""
    fb_rule: Literal["squared", "lenient", "fixed"] = "squared"
    """Forward-backward consistency rule that decides which pixels carry pairs."""
    flow_cache_dir: str = ""
    """Where flows are cached ('' = WORK_DIR/flow_cache)."""
    order_source: Literal["prior", "render"] = "prior"
    """Hinge: order of each pair from the prior of frame t, or from the detached rendering of frame t."""
    hinge_margin: float = 0.01
    """Hinge margin on depth differences divided by the median rendered depth of the sampled points
    (scale-free); a negative value is the seed's tolerance form |min(0, eps + s * diff)| with eps = -margin."""
    hinge_normalize: Literal["median", "none"] = "median"
    """Divide depth differences by the median rendered depth of the pairs' points ('none': raw units)."""
    modgs_alpha: float = 100.0
    """MoDGS: tanh sharpness on raw rendered depth differences."""
    modgs_min_gap_frac: float = 0.1
    """MoDGS: pairs whose prior depths differ by less than this fraction of the prior depth's range (max -
    min over every allowed pixel of the frame, as MoDGS) are dropped."""
    modgs_num_pairs: int = 200000
    """MoDGS: pixel pairs per frame, at most one per allowed pixel (MoDGS pairs two random permutations of
    the masked pixels, truncated to 200000)."""
    pearson_patch_size: int = 0
    """Pearson: 0 = whole image; otherwise the mean over random square patches of this size."""
    pearson_num_patches: int = 64
    """Pearson: number of patches when patch_size > 0."""
    consistency_align: Literal["none", "scale", "scale_shift"] = "scale_shift"
    """Depth consistency: per-image least-squares alignment of rendered to prior disparity first (the prior
    has an unknown scale and shift)."""
    depth_aware_warmup: int = 100
    """Depth-aware scale: switched on after this many steps (the seed's warm-up)."""


@dataclass
class LossConfig:
    """Weights (``w_*``; 0 switches a term off: it is then not computed) and options of the loss terms."""

    w_rgb: float = 1.0
    """RGB loss 0.8 L1 + 0.2 (1 - SSIM) against the input frame."""
    w_mask: float = 1.0
    """MSE between the rendered foreground weight and the foreground mask."""
    w_track: float = 2.0
    """2D track reprojection: Gaussians' positions at target times, rendered at the query pixels and
    projected into the target cameras, against the 2D tracks: mean(|dx|, |dy|) / max(H, W), as Shape of
    Motion (before this parity fix the two coordinates were summed: twice SoM's value)."""
    w_depth_reg: float = 0.5
    """Trimmed L1 between rendered disparity (1 / expected depth) and the prior disparity."""
    w_depth_grad: float = 1.0
    """L1 between image gradients of rendered and prior disparity."""
    w_mapped_depth: float = 0.1
    """Disparity of the tracked points at their target times against the target frame's prior disparity."""
    w_smooth_bases: float = 0.1
    """Acceleration of the motion bases' translations and 6D rotations over time."""
    w_smooth_tracks: float = 2.0
    """0.5 x the acceleration norm of foreground Gaussians' centres over three consecutive frames (SoM's
    trainer has the 0.5)."""
    w_z_accel: float = 1.0
    """Motion of foreground Gaussians along the camera rays over three consecutive frames (``z_accel_form``)."""
    w_scale_var: float = 0.01
    """Variance of each Gaussian's three log-scales, averaged per group and summed over foreground and
    background, as Shape of Motion (discourages needles)."""
    w_hidden_surface: float = 0.0
    """Endoscopy: on ignored pixels (instruments) the render covers (alpha 1) and its depth and colour are
    smooth (zero Laplacian), so tissue no training frame saw stays a surface (flow3d.train.hidden_surface)."""
    z_accel_form: Literal["ray_velocity", "ray_acceleration"] = "ray_velocity"
    """The z_accel term: 'ray_velocity' is Shape of Motion's shipped form (squared velocity along the ray,
    both sides of the middle frame); 'ray_acceleration' is |acceleration . ray|, SoM's commented-out form."""
    depth_trim_quantile: float = 0.98
    """Residuals above this quantile are ignored by the disparity L1 (1.0: plain masked L1)."""
    depth_grad_trim_quantile: float = 0.95
    """Residuals of the disparity-gradient L1 above this quantile are ignored (Shape of Motion's trainer: 0.95)."""
    track_trim_quantile: float = 0.98
    """Residuals above this quantile are ignored by the track loss."""
    track_gap_tau: float = 0.0
    """Track residuals are weighted by exp(-|t_target - t_query| / tau); 0 disables the gap weight. The
    weighted sum is divided by the visible count, not by the weights, so the gap weight does not cancel."""
    num_track_samples: int = 1000
    """Track points sampled per query frame for the track loss."""
    num_smooth_samples: int = 2000
    """Foreground Gaussians sampled for the track-smoothness and z-acceleration terms."""

    # depth-order supervision (flow3d.train.depth_order). Defaults from the per-family sweep
    # configs/sweeps/depth_order_families.yaml (README "Which terms help where", 3 seeds, both scene families):
    # with the prior aligned over time (--prior-align), the hinge alone meets the depth and PSNR goals on both
    # the moving-camera and the static-camera family; Pearson and G2-MonoDepth give better depth on the moving
    # camera but stretch a static-camera surface and cost 2.7 dB there, so they are off (presets `ordinal`,
    # `g2_monodepth` turn them on). MoDGS, depth consistency and depth-aware scale did not help: off.
    w_hinge_ordinal: float = 1.0
    """Hinge on the order of flow-carried pixel pairs in the neighbour frame's rendered depth (seed 004)."""
    w_modgs_ordinal: float = 0.0
    """MoDGS tanh ordinal loss on same-frame pairs, order from the prior."""
    w_pearson: float = 0.0
    """1 - Pearson correlation between rendered and prior disparity per frame."""
    w_depth_consistency: float = 0.0
    """Seed 001 depth consistency (inside / outside / edge of the foreground mask, fb confidence as weight)."""
    w_g2_monodepth: float = 0.0
    """Seed 002 G2-MonoDepth loss on rendered vs prior disparity."""
    w_scale_adaptive: float = 0.0
    """Seed 003 scale-adaptive loss on rendered vs prior disparity (inverse depth)."""
    w_depth_aware_scale: float = 0.0
    """Seed 000 depth-aware scale loss on the rendered foreground mask (k_obj calibrated at start)."""
    order: DepthOrderConfig = field(default_factory=DepthOrderConfig)
    """Pairs, neighbours, flow and options of the depth-order terms."""


@dataclass
class OptimConfig:
    """Adam learning rates (one optimiser per parameter) and their schedule."""

    lr_means: float = 1.6e-4
    """Gaussian centres (decays to ``lr_final_factor`` times this over the run)."""
    lr_quats: float = 1e-3
    lr_scales: float = 5e-3
    lr_opacities: float = 1e-2
    lr_colors: float = 1e-2
    lr_motion_coefs: float = 1e-2
    lr_bases_rots: float = 1.6e-4
    """6D rotations of the motion bases (decays like the means)."""
    lr_bases_transls: float = 1.6e-4
    """Translations of the motion bases (decays like the means)."""
    lr_final_factor: float = 0.01
    """Means and bases learning rates decay exponentially to this factor at ``max_steps``."""
    refine_cameras: bool = False
    """Learn a small se(3) correction of every training camera with the scene (flow3d.scene.camera_refine);
    held-out frames take corrections interpolated from their neighbours."""
    lr_cameras: float = 1e-4
    """Adam learning rate of the camera corrections (radians and scene units)."""


@dataclass
class TrainConfig:
    """Fit a dynamic Gaussian-splat scene to one monocular video."""

    work_dir: str = "outputs/run"
    """Folder for cfg.yaml, checkpoints/, tb/ (TensorBoard) and stats; re-running resumes from it."""
    data: DataConfig = field(default_factory=SyntheticDataConfig)
    """The sequence to fit (a data subcommand)."""
    max_steps: int = 20000
    """Optimisation steps; learning-rate schedules follow it."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """'auto' takes CUDA when it is available."""
    render_backend: Literal["auto", "gsplat", "cpu", "torch"] = "auto"
    """'auto': gsplat on CUDA, the compiled CPU rasterizer on the CPU ('torch' where it cannot be built); 'cpu'
    the compiled CPU rasterizer; 'torch' the PyTorch tile rasterizer (the readable reference)."""
    batch_size: int = 8
    """Frames rendered per step."""
    num_targets: int = 4
    """Target frames per step for the track losses."""
    seed: int = 0
    """Seeds torch's generators (initialisation, sampling)."""
    bg_color: tuple[float, float, float] = (1.0, 1.0, 1.0)
    """Colour behind the Gaussians."""
    save_every: int = 1000
    """Write checkpoints/model_<step>.ckpt every N steps (last.ckpt is written then too)."""
    log_every: int = 10
    """TensorBoard scalars every N steps."""
    image_every: int = 500
    """TensorBoard image summaries (RGB | depth | prior) every N steps."""
    max_nonfinite_steps: int = 5
    """Stop with an error after this many consecutive steps with a non-finite loss."""
    prior_align: Literal["none", "auto", "scale", "scale_shift"] = "auto"
    """Before initialisation, remove the depth prior's drift over time: one disparity scale (and shift) per
    frame that keeps the tracked points still, normalised so their temporal median is the identity (the
    prior's own average calibration stays); see :mod:`flow3d.data.prior_align`. 'auto': scale and shift
    fitted on the static background when it is tracked, one scale per frame otherwise (a static camera over a
    deforming surface); 'none': the raw prior (Shape of Motion)."""
    init: InitConfig = field(default_factory=InitConfig)
    densify: DensifyConfig = field(default_factory=DensifyConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    losses: LossConfig = field(default_factory=LossConfig)


# ---------------------------------------------------------------------------------------------- presets

def available_presets() -> list[str]:
    return sorted(p.stem for p in CONFIGS_DIR.glob("*.yaml"))


def load_preset(name_or_path: str) -> dict:
    """The override dict of a preset: a name in ``configs/`` or a path to a YAML file."""
    path = Path(name_or_path)
    if not path.suffix:
        path = CONFIGS_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        raise ValueError(f"preset {name_or_path!r} not found (looked for {path}); available: {available_presets()}")
    with open(path) as f:
        data = yaml.safe_load(f) or {}
    if not isinstance(data, dict):
        raise ValueError(f"preset {path} must hold a mapping of overrides, got {type(data).__name__}")
    return data


def data_kinds() -> dict[str, type]:
    """Subcommand name -> data config class, read off the ``DataConfig`` union."""
    kinds = {}
    for arg in typing.get_args(DataConfig):
        cls, *meta = typing.get_args(arg) or (arg,)
        name = next((m.name for m in meta if getattr(m, "name", None)), cls.__name__)
        kinds[name] = cls
    return kinds


def _is_dataclass_type(tp) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _coerce(value, tp):
    """Turn YAML values back into the field's type where YAML loses it (tuples, paths)."""
    origin = typing.get_origin(tp)
    if origin is typing.Annotated:
        return _coerce(value, typing.get_args(tp)[0])
    if origin is Union or origin is types.UnionType:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return value if value is None or len(args) != 1 else _coerce(value, args[0])
    if isinstance(value, list) and origin is tuple:
        return tuple(value)
    if isinstance(value, str) and tp is Path:
        return Path(value)
    return value


def _field_name(key: str, names: set[str], where: str) -> str:
    key = key.replace("-", "_")
    if key not in names:
        raise ValueError(f"{where}: unknown field {key!r}; fields are {sorted(names)}")
    return key


def apply_overrides(obj, overrides: dict, where: str = "config"):
    """A copy of dataclass ``obj`` with nested ``overrides``; unknown keys raise (no silent typos)."""
    hints = typing.get_type_hints(type(obj), include_extras=True)
    names = {f.name for f in dataclasses.fields(obj)}
    changes = {}
    for key, value in overrides.items():
        key = _field_name(key, names, where)
        current = getattr(obj, key)
        if key == "data" and isinstance(value, dict):
            kind = value.get("kind")
            kinds = data_kinds()
            cls = kinds.get(kind) if kind else type(current)
            if cls is None:
                raise ValueError(f"{where}.data.kind must be one of {sorted(kinds)}, got {kind!r}")
            fields = {k: v for k, v in value.items() if k != "kind"}
            if isinstance(current, cls):
                changes[key] = apply_overrides(current, fields, f"{where}.data")
            else:
                changes[key] = _build(cls, fields, f"{where}.data")
        elif dataclasses.is_dataclass(current) and isinstance(value, dict):
            changes[key] = apply_overrides(current, value, f"{where}.{key}")
        else:
            changes[key] = _coerce(value, hints.get(key))
    return dataclasses.replace(obj, **changes)


def _build(cls, fields: dict, where: str):
    """Construct dataclass ``cls`` from a dict (for classes with required fields)."""
    hints = typing.get_type_hints(cls, include_extras=True)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in fields.items():
        key = _field_name(key, names, where)
        kwargs[key] = _coerce(value, hints.get(key))
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise ValueError(f"{where}: {e}") from None


def config_to_dict(obj) -> Any:
    """Plain YAML-able data; the data config records its subcommand as ``kind``."""
    if dataclasses.is_dataclass(obj):
        out = {f.name: config_to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
        for name, cls in data_kinds().items():
            if type(obj) is cls:
                out = {"kind": name, **out}
        return out
    if isinstance(obj, (tuple, list)):
        return [config_to_dict(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj


DATA_FIELDS_NOT_RECORDED = ("is_train", "cache_dir", "use_cache", "root_dir", "data_dir")
"""Data config fields that do not change what is loaded (the split scored, the cache, where the files are:
moving the data folder keeps a training resumable; its content is checked instead)."""


def data_config_record(data_cfg) -> dict:
    """The data config as a checkpoint records it: the subcommand (``kind``) and every field that changes the
    loaded data (:func:`flow3d.data.check_data_config` compares it at resume)."""
    return {k: v for k, v in config_to_dict(data_cfg).items() if k not in DATA_FIELDS_NOT_RECORDED}


END_MARKER = "# end of the flow3d config"
"""The last line :func:`save_config` writes: a ``cfg.yaml`` without it was cut short (or is older than it)."""


def save_config(cfg: TrainConfig, path: Path) -> None:
    """Write ``cfg`` as YAML to ``path`` atomically, ending with :data:`END_MARKER` (read back with
    :func:`load_config`)."""
    write_text(path, yaml.safe_dump(config_to_dict(cfg), sort_keys=False) + END_MARKER + "\n")


def missing_fields(data: dict, cls=None, prefix: str = "") -> list[str]:
    """Dotted names of the fields of ``cls`` (default :class:`TrainConfig`; nested configs and the data
    subcommand named by ``data.kind`` included) that the mapping ``data`` lacks."""
    cls = cls or TrainConfig
    out = []
    hints = typing.get_type_hints(cls, include_extras=True)
    for f in dataclasses.fields(cls):
        name = prefix + f.name
        if f.name not in data and f.name.replace("_", "-") not in data:
            out.append(name)
            continue
        value = data.get(f.name, data.get(f.name.replace("_", "-")))
        tp = hints[f.name]
        if f.name == "data" and cls is TrainConfig and isinstance(value, dict):
            kind = data_kinds().get(value.get("kind"))
            out += missing_fields(value, kind, name + ".") if kind else [name + ".kind"]
        elif _is_dataclass_type(tp) and isinstance(value, dict):
            out += missing_fields(value, tp, name + ".")
    return out


def load_config(path: Path) -> TrainConfig:
    """Read a ``cfg.yaml`` written by :func:`save_config`; its values are range-checked (:func:`validate_config`).

    A file cut short is an error naming the missing fields. A complete file written by an older flow3d
    (it ends with :data:`END_MARKER` but lacks newer fields) gets their defaults, with a warning naming them.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"config file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
        data = yaml.safe_load(text)
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise ValueError(f"config file {path} is not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ValueError(f"config file {path} must hold a mapping, got {type(data).__name__}")
    missing = missing_fields(data)
    if missing:
        shown = ", ".join(missing[:12]) + (f" and {len(missing) - 12} more" if len(missing) > 12 else "")
        if text.rstrip().endswith(END_MARKER):
            logger.warning("config file %s lacks %d field(s) of this flow3d version; using their defaults: %s",
                           path, len(missing), shown)
        else:
            raise ValueError(
                f"config file {path} is cut short: missing field(s) {shown} (the file was truncated or edited; "
                "restore it, or write it again with run_training.py)"
            )
    cfg = apply_overrides(TrainConfig(), data, where=str(path))
    validate_config(cfg, where=f"config file {path}")
    return cfg


# ---------------------------------------------------------------------------------------- range checks


@dataclass(frozen=True)
class Rule:
    """An allowed range of a number: ``lo``/``hi`` bounds (None = open-ended), ``*_open`` for a strict bound."""

    lo: Optional[float] = None
    hi: Optional[float] = None
    lo_open: bool = False
    hi_open: bool = False

    def ok(self, x: float) -> bool:
        if not math.isfinite(x):
            return False
        if self.lo is not None and (x <= self.lo if self.lo_open else x < self.lo):
            return False
        return self.hi is None or (x < self.hi if self.hi_open else x <= self.hi)

    def __str__(self) -> str:
        if self.lo is not None and self.hi is not None:
            return f"in {'(' if self.lo_open else '['}{self.lo:g}, {self.hi:g}{')' if self.hi_open else ']'}"
        if self.lo is not None:
            return f"{'>' if self.lo_open else '>='} {self.lo:g}"
        if self.hi is not None:
            return f"{'<' if self.hi_open else '<='} {self.hi:g}"
        return "a finite number"


ANY = Rule()
AT_LEAST_0, AT_LEAST_1, POSITIVE = Rule(0), Rule(1), Rule(0, lo_open=True)
FRACTION, QUANTILE, UNIT = Rule(0, 1, hi_open=True), Rule(0, 1, lo_open=True), Rule(0, 1)
ANGLE = Rule(0, 180, lo_open=True, hi_open=True)

RULES: dict[str, Rule] = {
    # training
    "max_steps": AT_LEAST_1, "batch_size": AT_LEAST_1, "num_targets": AT_LEAST_1, "seed": AT_LEAST_0,
    "save_every": AT_LEAST_0, "log_every": AT_LEAST_1, "image_every": AT_LEAST_0, "max_nonfinite_steps": AT_LEAST_1,
    "bg_color": UNIT,
    # init, densify, optim
    "num_fg": AT_LEAST_1, "num_bg": AT_LEAST_0, "num_motion_bases": AT_LEAST_1, "init_fit_steps": AT_LEAST_0,
    "init_fit_lr": POSITIVE, "init_opacity": Rule(0, 1, lo_open=True, hi_open=True),
    "refine_start": AT_LEAST_0, "refine_stop": AT_LEAST_0, "refine_every": AT_LEAST_1, "reset_every": AT_LEAST_0,
    "grow_grad2d": AT_LEAST_0, "grow_scale3d": AT_LEAST_0, "prune_opa": FRACTION, "prune_scale3d": AT_LEAST_0,
    "max_gaussians": AT_LEAST_1, "lr_final_factor": POSITIVE, "complete_border_px": AT_LEAST_0,
    # losses and depth order
    "track_gap_tau": AT_LEAST_0, "num_track_samples": AT_LEAST_1, "num_smooth_samples": AT_LEAST_1,
    "num_pairs": AT_LEAST_1, "local_radius": AT_LEAST_1, "min_rel_diff": FRACTION, "neighbor_stride": AT_LEAST_1,
    "hinge_margin": ANY, "modgs_alpha": POSITIVE, "modgs_min_gap_frac": FRACTION, "modgs_num_pairs": AT_LEAST_1,
    "pearson_patch_size": AT_LEAST_0, "pearson_num_patches": AT_LEAST_1, "depth_aware_warmup": AT_LEAST_0,
    # data
    "val_every": AT_LEAST_0, "num_frames": AT_LEAST_1, "width": Rule(8), "height": Rule(8), "num_objects": AT_LEAST_0,
    "num_instruments": AT_LEAST_0, "tissue_pull": ANY, "fov_deg": ANGLE, "camera_motion": AT_LEAST_0,
    "track_grid_step": AT_LEAST_1, "track_query_stride": AT_LEAST_1, "track_noise_px": AT_LEAST_0,
    "prior_scale_drift": ANY, "prior_shift_drift": ANY, "prior_blur_px": AT_LEAST_0, "prior_noise": AT_LEAST_0,
    "max_tracks_per_query": AT_LEAST_0, "start": AT_LEAST_0, "end": Rule(-1), "depth_png_scale": POSITIVE,
    "constant_depth": POSITIVE, "focal_length": POSITIVE, "default_fov_deg": ANGLE, "flow_grid_step": AT_LEAST_1,
    "flow_query_stride": AT_LEAST_1, "downscale": AT_LEAST_1, "factor": AT_LEAST_1, "depth_scale": POSITIVE,
    "prior_png_scale": POSITIVE,
}
"""Allowed range of every number of the config tree, by field name. Names not listed here take the rule of
their pattern (:func:`rule_for`); a test checks that every numeric field has one."""


def rule_for(name: str) -> Optional[Rule]:
    """The rule of a field: :data:`RULES`, else loss weights ``w_*`` and learning rates ``lr_*`` >= 0,
    ``*_quantile`` in (0, 1]; None for a field without one."""
    if name in RULES:
        return RULES[name]
    if name.startswith(("w_", "lr_")):
        return AT_LEAST_0
    if name.endswith("_quantile"):
        return QUANTILE
    return None


def flag_name(path: str) -> str:
    """``losses.w_rgb`` -> ``--losses.w-rgb`` (the command-line flag of a config field)."""
    return "--" + path.replace("_", "-")


def _range_errors(obj, prefix: str) -> list[tuple[str, str]]:
    """(dotted field, what is wrong) for every number of the dataclass ``obj`` (recursively) outside its rule."""
    errors = []
    for f in dataclasses.fields(obj):
        value, path = getattr(obj, f.name), prefix + f.name
        if dataclasses.is_dataclass(value):
            errors += _range_errors(value, path + ".")
            continue
        values = value if isinstance(value, (tuple, list)) else (value,)
        numbers = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
        rule = rule_for(f.name)
        if not numbers or rule is None:
            continue
        bad = [v for v in numbers if not rule.ok(float(v))]
        if bad:
            errors.append((path, f"must be {rule}, got {value!r}"))
    data = getattr(obj, "data", None) if not prefix else None
    end, start = getattr(data, "end", None), getattr(data, "start", None)
    if isinstance(end, int) and isinstance(start, int) and end != -1 and end <= start:
        errors.append(("data.end", f"must be -1 (to the last frame) or > --data.start ({start}), got {end}"))
    return errors


def validate_config(cfg: TrainConfig, where: Optional[str] = None) -> TrainConfig:
    """Range-check every number of ``cfg`` (:data:`RULES`); one ``ValueError`` naming each field outside
    its range, as a flag (``--max-steps must be >= 1, got -5``) or, with ``where``, as a field of that file.
    Returns ``cfg``. Called by ``run_training.py`` before anything loads, and by :func:`load_config`."""
    errors = _range_errors(cfg, "")
    if not errors:
        return cfg
    parts = [f"{flag_name(p) if where is None else p} {msg}" for p, msg in errors]
    raise ValueError((f"{where}: " if where else "") + "; ".join(parts))


__all__ = [
    "TrainConfig", "LossConfig", "DepthOrderConfig", "OptimConfig", "InitConfig", "DensifyConfig", "DataConfig",
    "load_preset", "apply_overrides", "save_config", "load_config", "config_to_dict", "available_presets",
    "validate_config", "missing_fields", "data_config_record", "rule_for", "flag_name", "RULES", "END_MARKER",
]
