"""Every dataclass the training CLI exposes (a docstring under each field becomes its ``--help``), named
presets from ``configs/<name>.yaml`` (in the package: ``flow3d/configs``), and the round trip to
``cfg.yaml`` in the work dir.

A preset is a YAML file of nested overrides of :class:`TrainConfig`'s defaults, e.g.::

    max_steps: 600
    losses: {w_track: 1.0}

``run_training.py --preset NAME ...`` applies it first; every other flag then overrides field by field.
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import math
import re
import textwrap
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

RESUME_SAFE = {"resume": "safe"}
"""Field metadata: a resumed run may change this field (see :class:`TrainConfig`); unmarked fields may not."""

# The presets: the repository's top-level configs/ folder, which flow3d/configs links to, so that a checkout,
# an editable install and a wheel (where setuptools copies the files) all read them from the package.
CONFIGS_DIR = importlib.resources.files("flow3d") / "configs"


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
    flow_cache_dir: str = field(default="", metadata=RESUME_SAFE)
    """Where flows are cached ('' = WORK_DIR/flow_cache)."""
    order_source: Literal["prior", "render"] = "prior"
    """Hinge: order of each pair from the prior of frame t, or from the detached rendering of frame t."""
    hinge_margin: float = 0.01
    """Hinge margin on depth differences divided by the median rendered depth of the sampled points
    (scale-free); a negative value switches to the tolerance form |min(0, eps + s * diff)| with eps = -margin."""
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
    """Track residuals are weighted by exp(-|t_target - t_query| / tau) (tau in frames); 0 disables the gap
    weight. The loss is the weighted mean: divided by the sum of the weights including the gap weight, as
    Shape of Motion's ``masked_l1_loss``."""
    track_gap_tau_rel: float = 0.0
    """As ``track_gap_tau`` but relative to the number of frames T: tau = track_gap_tau_rel * T. Shape of
    Motion's exp(-2|dt|/T) is 0.5 (the ``som_baseline`` preset). Used only when ``track_gap_tau`` is 0."""
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
    """Hinge on the order of flow-carried pixel pairs in the neighbour frame's rendered depth."""
    w_modgs_ordinal: float = 0.0
    """MoDGS tanh ordinal loss on same-frame pairs, order from the prior."""
    w_pearson: float = 0.0
    """1 - Pearson correlation between rendered and prior disparity per frame."""
    w_depth_consistency: float = 0.0
    """Depth consistency of rendered vs prior disparity: SmoothL1 inside, outside and on the edge of the
    foreground mask, weighted by the flow's forward-backward confidence."""
    w_g2_monodepth: float = 0.0
    """G2-MonoDepth loss on rendered vs prior disparity (absolute, standardised and gradient L1 terms)."""
    w_scale_adaptive: float = 0.0
    """Scale-adaptive loss on rendered vs prior disparity (inverse depth): normalised L1 plus multi-scale
    gradient terms."""
    w_depth_aware_scale: float = 0.0
    """Depth-aware scale loss: the rendered foreground mask's size against the size its depth and the focal
    length predict (the object constant k_obj is calibrated at start)."""
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
    """Fit a dynamic Gaussian-splat scene to one monocular video.

    Resume: a run in a work dir that holds a checkpoint continues it. The fields marked
    ``metadata=RESUME_SAFE`` (where files go, logging, saving, the device and rasterizer, ``--max-steps`` at or
    above the checkpoint's step) may change then, and the change is logged; every other field shapes the model
    or its optimisation (presets, counts, bases, losses and weights, learning rates, batch, seed, ...) and
    must equal the checkpoint's, unless ``--resume-with-changes`` (:func:`resume_differences`). The data is
    checked apart (:func:`flow3d.data.check_data_config`; :data:`DATA_FIELDS_NOT_RECORDED` may change)."""

    work_dir: str = field(default="outputs/run", metadata=RESUME_SAFE)
    """Folder for cfg.yaml, checkpoints/, tb/ (TensorBoard) and stats; re-running resumes from it."""
    data: DataConfig = field(default_factory=SyntheticDataConfig)
    """The sequence to fit (a data subcommand)."""
    max_steps: int = field(default=20000, metadata=RESUME_SAFE)
    """Optimisation steps; learning-rate schedules follow it. A resumed run may raise it (not below the
    checkpoint's step)."""
    device: Literal["auto", "cpu", "cuda"] = field(default="auto", metadata=RESUME_SAFE)
    """'auto' takes CUDA when it is available."""
    render_backend: Literal["auto", "gsplat", "cpu", "torch"] = field(default="auto", metadata=RESUME_SAFE)
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
    save_every: int = field(default=1000, metadata=RESUME_SAFE)
    """Write checkpoints/model_<step>.ckpt every N steps (last.ckpt is written then too)."""
    log_every: int = field(default=10, metadata=RESUME_SAFE)
    """TensorBoard scalars every N steps."""
    image_every: int = field(default=500, metadata=RESUME_SAFE)
    """TensorBoard image summaries (RGB | depth | prior) every N steps."""
    max_nonfinite_steps: int = field(default=5, metadata=RESUME_SAFE)
    """Stop with an error after this many consecutive steps with a non-finite loss."""
    prior_align: Literal["none", "auto", "scale", "scale_shift", "monotone"] = "auto"
    """Before initialisation, remove the depth prior's drift over time: one disparity scale (and shift) per
    frame that keeps the tracked points still, normalised so their temporal median is the identity (the
    prior's own average calibration stays); see :mod:`flow3d.data.prior_align`. 'auto': scale and shift
    fitted on the static background when it is tracked, one scale per frame otherwise (a static camera over a
    deforming surface); 'none': the raw prior (Shape of Motion). With a static background outside the
    foreground masks, 'auto' fits on it densely whatever tracks ship, and a fit that does not make the prior
    more consistent across frames is not applied. 'monotone': 'auto', then a per-frame monotone map of the
    prior onto the static background's reprojection (issue 21's candidate)."""
    init: InitConfig = field(default_factory=InitConfig)
    densify: DensifyConfig = field(default_factory=DensifyConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    losses: LossConfig = field(default_factory=LossConfig)
    resume_with_changes: bool = field(default=False, metadata=RESUME_SAFE)
    """Resume although options that shape the model or its optimisation differ from the checkpoint's (the change
    is recorded in the history list of cfg.yaml); without it such a change is an error."""


# ---------------------------------------------------------------------------------------------- presets


def available_presets() -> list[str]:
    """The names of the presets shipped with the package (``configs/<name>.yaml``), sorted."""
    return sorted(p.name[: -len(".yaml")] for p in CONFIGS_DIR.iterdir() if p.name.endswith(".yaml") and p.is_file())


def preset_path(name_or_path: str) -> Path:
    """The file of a preset: ``configs/<name>.yaml`` for a name, else the path given."""
    path = Path(name_or_path)
    return CONFIGS_DIR / f"{name_or_path}.yaml" if not path.suffix else path


def load_preset(name_or_path: str) -> dict:
    """The override dict of a preset: a name in ``configs/`` or a path to a YAML file."""
    path = preset_path(name_or_path)
    where = name_or_path if Path(name_or_path).suffix else f"{name_or_path}.yaml among the shipped presets"
    if not path.is_file():
        raise ValueError(f"preset {name_or_path!r} not found (looked for {where}); available: {available_presets()}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise ValueError(f"preset {path} is not valid YAML: {' '.join(str(e).split())}") from None
    if not isinstance(data, dict):
        raise ValueError(f"preset {path} must hold a mapping of overrides, got {type(data).__name__}")
    return data


def preset_summary(name: str) -> str:
    """The first sentence of the comment that opens a preset's YAML file ('' when there is none)."""
    lines = []
    for line in (CONFIGS_DIR / f"{name}.yaml").read_text(encoding="utf-8").splitlines():
        if not line.startswith("#"):
            break
        lines.append(line.lstrip("#").strip())
    text = " ".join(lines)
    end = re.search(r"[.:](\s|$)", text)
    return text[: end.start()] if end else text


def presets_help(width: int = 100) -> str:
    """What every shipped preset sets, for ``--help``: its name, its summary, then its overrides as
    ``field=value`` (nested fields dotted, as their flags: ``losses.w_pearson`` is ``--losses.w-pearson``)."""
    blocks = []
    for name in available_presets():
        settings = textwrap.fill(
            ", ".join(f"{k}={v}" for k, v in _flatten(load_preset(name)).items()),
            width,
            initial_indent="    ",
            subsequent_indent="    ",
            break_on_hyphens=False,
        )
        title = textwrap.fill(f"{name}: {preset_summary(name)}", width, initial_indent="  ", subsequent_indent="    ")
        blocks.append(f"{title}\n{settings}")
    return "\n".join(blocks)


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


class _WrongType(Exception):
    """A value of the wrong type (the message says what the field takes); turned into one ``ValueError``."""


_NUMBER_TEXT = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")
"""A number written as text: YAML 1.1 (PyYAML) reads ``1e-3`` (no dot, no exponent sign) as a string."""


def _type_name(tp) -> str:
    origin = typing.get_origin(tp)
    if origin is typing.Annotated:
        return _type_name(typing.get_args(tp)[0])
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin is Union or origin is types.UnionType:
        return " or ".join("null" if a is type(None) else _type_name(a) for a in typing.get_args(tp))
    if origin in (tuple, list):
        return "a list"
    return {
        bool: "true or false",
        int: "an integer",
        float: "a number",
        str: "a string (quote it)",
        Path: "a path (a string)",
    }.get(tp, getattr(tp, "__name__", str(tp)))


def _coerce(value, tp):
    """``value`` (from YAML) as the field's type ``tp``: lists become tuples, strings paths, integers floats,
    and a number YAML 1.1 left as text (``1e-3``) a float. The same checks as the command line: a value of
    another type raises :class:`_WrongType` (``true`` is not a step count, ``2.5`` not an integer)."""
    origin = typing.get_origin(tp)
    if tp is None or tp is Any:
        return value
    if origin is typing.Annotated:
        return _coerce(value, typing.get_args(tp)[0])
    if origin is Union or origin is types.UnionType:
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arg)
            except _WrongType:
                continue
        raise _WrongType(_type_name(tp))
    if origin is Literal:
        choices = typing.get_args(tp)
        if any(value == c and type(value) is type(c) for c in choices):
            return value
        raise _WrongType(_type_name(tp))
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise _WrongType(_type_name(tp))
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise _WrongType(_type_name(tp))
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str) and _NUMBER_TEXT.match(value.strip()):
            return float(value)
        raise _WrongType(_type_name(tp))
    if tp is str:
        if isinstance(value, str):
            return value
        raise _WrongType(_type_name(tp))
    if tp is Path:
        if isinstance(value, (str, Path)):
            return Path(value)
        raise _WrongType(_type_name(tp))
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise _WrongType(_type_name(tp))
        args = typing.get_args(tp)
        if origin is tuple and args and not (len(args) == 2 and args[1] is Ellipsis):
            if len(value) != len(args):
                raise _WrongType(f"a list of {len(args)} values")
            items = [_coerce(v, a) for v, a in zip(value, args)]
        else:
            items = [_coerce(v, args[0]) if args else v for v in value]
        return tuple(items) if origin is tuple else items
    return value


def _coerce_field(value, tp, where: str, key: str):
    """:func:`_coerce`, with a wrong type as one ``ValueError`` naming ``where`` (the file) and the field."""
    try:
        return _coerce(value, tp)
    except _WrongType as e:
        raise ValueError(f"{where}: {key} must be {e}, got {value!r}") from None


def _field_name(key: str, names: set[str], where: str) -> str:
    key = key.replace("-", "_")
    if key not in names:
        raise ValueError(f"{where}: unknown field {key!r}; fields are {sorted(names)}")
    return key


def apply_overrides(obj, overrides: dict, where: str = "config", _prefix: str = ""):
    """A copy of dataclass ``obj`` with nested ``overrides``; unknown keys and values of the wrong type raise
    one ``ValueError`` naming ``where`` (the file) and the field (no silent typos)."""
    if not isinstance(overrides, dict):
        raise ValueError(f"{where}: {_prefix.rstrip('.') or 'the file'} must be a mapping of fields, got {overrides!r}")
    hints = typing.get_type_hints(type(obj), include_extras=True)
    names = {f.name for f in dataclasses.fields(obj)}
    changes = {}
    for key, value in overrides.items():
        key = _field_name(str(key), names, f"{where}{'.' + _prefix.rstrip('.') if _prefix else ''}")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            changes[key] = value  # a config object given whole (Python callers)
        elif key == "data" and isinstance(value, dict):
            kind = value.get("kind")
            kinds = data_kinds()
            cls = kinds.get(kind) if kind else type(current)
            if cls is None:
                raise ValueError(f"{where}: data.kind must be one of {sorted(kinds)}, got {kind!r}")
            fields = {k: v for k, v in value.items() if k != "kind"}
            if isinstance(current, cls):
                changes[key] = apply_overrides(current, fields, where, f"{_prefix}data.")
            else:
                changes[key] = _build(cls, fields, where, f"{_prefix}data.")
        elif dataclasses.is_dataclass(current):
            changes[key] = apply_overrides(current, value, where, f"{_prefix}{key}.")
        else:
            changes[key] = _coerce_field(value, hints.get(key), where, _prefix + key)
    return dataclasses.replace(obj, **changes)


def _build(cls, fields: dict, where: str, _prefix: str = ""):
    """Construct dataclass ``cls`` from a dict (for classes with required fields)."""
    hints = typing.get_type_hints(cls, include_extras=True)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in fields.items():
        key = _field_name(str(key), names, f"{where}.{_prefix.rstrip('.')}" if _prefix else where)
        kwargs[key] = _coerce_field(value, hints.get(key), where, _prefix + key)
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise ValueError(f"{where}: {_prefix.rstrip('.') or cls.__name__}: {e}") from None


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


# ---------------------------------------------------------------------------------------------- resume


def resume_safe_fields(cls=None, prefix: str = "") -> set[str]:
    """Dotted names of the fields marked :data:`RESUME_SAFE` (``max_steps``, ``save_every``, ...)."""
    cls = cls or TrainConfig
    out = set()
    hints = typing.get_type_hints(cls, include_extras=True)
    for f in dataclasses.fields(cls):
        if f.metadata.get("resume") == "safe":
            out.add(prefix + f.name)
        elif _is_dataclass_type(hints[f.name]):
            out |= resume_safe_fields(hints[f.name], prefix + f.name + ".")
    return out


def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


NOT_COMPARED = ("work_dir", "resume_with_changes")
"""Fields a resume does not compare at all: where the run is (a copied or moved work dir resumes), and the
request itself."""


def resume_differences(old: dict, cfg: TrainConfig) -> tuple[list[tuple[str, Any, Any]], list[tuple[str, Any, Any]]]:
    """(guarded, safe): the fields whose value in ``cfg`` differs from ``old`` (a checkpoint's
    :func:`config_to_dict`), as (dotted name, old value, new value), split into those that shape the model or
    its optimisation and those marked :data:`RESUME_SAFE`. The data (checked apart), :data:`NOT_COMPARED` and
    fields that ``old`` lacks (an older version) are not compared."""
    safe_names = resume_safe_fields()
    skip = ("data", "history", *NOT_COMPARED)
    old_flat = _flatten({k: v for k, v in old.items() if k not in skip})
    new_flat = _flatten({k: v for k, v in config_to_dict(cfg).items() if k not in skip})
    guarded, safe = [], []
    for name, new in new_flat.items():
        if name not in old_flat or old_flat[name] == new:
            continue
        (safe if name in safe_names else guarded).append((name, old_flat[name], new))
    return guarded, safe


def describe_changes(changes: list[tuple[str, Any, Any]]) -> str:
    """The changes as one line: ``--init.num-bg 0 (checkpoint) -> 10000 (now), ...``."""
    return ", ".join(f"{flag_name(n)} {o!r} -> {v!r}" for n, o, v in changes)


END_MARKER = "# end of the flow3d config"
"""The last line :func:`save_config` writes: a ``cfg.yaml`` without it was cut short (or is older than it)."""


def save_config(cfg: TrainConfig, path: Path, history: Optional[list] = None) -> None:
    """Write ``cfg`` as YAML to ``path`` atomically, ending with :data:`END_MARKER` (read back with
    :func:`load_config`). ``history``: the changes a resumed run made (``--resume-with-changes``), written as
    the ``history`` list (read with :func:`config_history`). ``resume_with_changes`` is a one-off request of
    one command, not a setting: it is written as false."""
    data = config_to_dict(dataclasses.replace(cfg, resume_with_changes=False))
    if history:
        data["history"] = list(history)
    write_text(path, yaml.safe_dump(data, sort_keys=False) + END_MARKER + "\n")


def config_history(path: Path) -> list:
    """The ``history`` list of a ``cfg.yaml`` (empty when it has none or cannot be read)."""
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError, UnicodeDecodeError):
        return []
    history = data.get("history") if isinstance(data, dict) else None
    return list(history) if isinstance(history, list) else []


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
    data.pop("history", None)  # the changes of resumed runs (save_config), not a field
    missing = missing_fields(data)
    if missing:
        shown = ", ".join(missing[:12]) + (f" and {len(missing) - 12} more" if len(missing) > 12 else "")
        if text.rstrip().endswith(END_MARKER):
            logger.warning(
                "config file %s lacks %d field(s) of this flow3d version; using their defaults: %s",
                path,
                len(missing),
                shown,
            )
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
        if isinstance(x, int) and not isinstance(x, bool):  # compared exactly: 2**64 and 2**64 - 1 are one float
            return (self.lo is None or (x > self.lo if self.lo_open else x >= self.lo)) and (
                self.hi is None or (x < self.hi if self.hi_open else x <= self.hi)
            )
        if not math.isfinite(x):
            return False
        if self.lo is not None and (x <= self.lo if self.lo_open else x < self.lo):
            return False
        return self.hi is None or (x < self.hi if self.hi_open else x <= self.hi)

    def __str__(self) -> str:
        lo, hi = (b if b is None or isinstance(b, int) else f"{b:g}" for b in (self.lo, self.hi))
        if self.lo is not None and self.hi is not None:
            return f"in {'(' if self.lo_open else '['}{lo}, {hi}{')' if self.hi_open else ']'}"
        if self.lo is not None:
            return f"{'>' if self.lo_open else '>='} {lo}"
        if self.hi is not None:
            return f"{'<' if self.hi_open else '<='} {hi}"
        return "a finite number"


ANY = Rule()
AT_LEAST_0, AT_LEAST_1, POSITIVE = Rule(0), Rule(1), Rule(0, lo_open=True)
FRACTION, QUANTILE, UNIT = Rule(0, 1, hi_open=True), Rule(0, 1, lo_open=True), Rule(0, 1)
ANGLE = Rule(0, 180, lo_open=True, hi_open=True)
SEED = Rule(0, 2**64 - 1)  # torch's generators take a 64-bit unsigned seed

RULES: dict[str, Rule] = {
    # training
    "max_steps": AT_LEAST_1,
    "batch_size": AT_LEAST_1,
    "num_targets": AT_LEAST_1,
    "seed": SEED,
    "save_every": AT_LEAST_0,
    "log_every": AT_LEAST_1,
    "image_every": AT_LEAST_0,
    "max_nonfinite_steps": AT_LEAST_1,
    "bg_color": UNIT,
    # init, densify, optim
    "num_fg": AT_LEAST_1,
    "num_bg": AT_LEAST_0,
    "num_motion_bases": AT_LEAST_1,
    "init_fit_steps": AT_LEAST_0,
    "init_fit_lr": POSITIVE,
    "init_opacity": Rule(0, 1, lo_open=True, hi_open=True),
    "refine_start": AT_LEAST_0,
    "refine_stop": AT_LEAST_0,
    "refine_every": AT_LEAST_1,
    "reset_every": AT_LEAST_0,
    "grow_grad2d": AT_LEAST_0,
    "grow_scale3d": AT_LEAST_0,
    "prune_opa": FRACTION,
    "prune_scale3d": AT_LEAST_0,
    "max_gaussians": AT_LEAST_1,
    "lr_final_factor": POSITIVE,
    "complete_border_px": AT_LEAST_0,
    # losses and depth order
    "track_gap_tau": AT_LEAST_0,
    "track_gap_tau_rel": AT_LEAST_0,
    "num_track_samples": AT_LEAST_1,
    "num_smooth_samples": AT_LEAST_1,
    "num_pairs": AT_LEAST_1,
    "local_radius": AT_LEAST_1,
    "min_rel_diff": FRACTION,
    "neighbor_stride": AT_LEAST_1,
    "hinge_margin": ANY,
    "modgs_alpha": POSITIVE,
    "modgs_min_gap_frac": FRACTION,
    "modgs_num_pairs": AT_LEAST_1,
    "pearson_patch_size": AT_LEAST_0,
    "pearson_num_patches": AT_LEAST_1,
    "depth_aware_warmup": AT_LEAST_0,
    # data
    "val_every": AT_LEAST_0,
    "num_frames": AT_LEAST_1,
    "width": Rule(8),
    "height": Rule(8),
    "num_objects": AT_LEAST_0,
    "num_instruments": AT_LEAST_0,
    "tissue_pull": ANY,
    "fov_deg": ANGLE,
    "camera_motion": AT_LEAST_0,
    "track_grid_step": AT_LEAST_1,
    "track_query_stride": AT_LEAST_1,
    "track_noise_px": AT_LEAST_0,
    "prior_scale_drift": ANY,
    "prior_shift_drift": ANY,
    "prior_blur_px": AT_LEAST_0,
    "prior_noise": AT_LEAST_0,
    "max_tracks_per_query": AT_LEAST_0,
    "start": AT_LEAST_0,
    "end": Rule(-1),
    "depth_png_scale": POSITIVE,
    "constant_depth": POSITIVE,
    "focal_length": POSITIVE,
    "default_fov_deg": ANGLE,
    "flow_grid_step": AT_LEAST_1,
    "flow_query_stride": AT_LEAST_1,
    "downscale": AT_LEAST_1,
    "factor": AT_LEAST_1,
    "depth_scale": POSITIVE,
    "prior_png_scale": POSITIVE,
    "prior_tone": AT_LEAST_0,
    "prior_field": AT_LEAST_0,
    "prior_flicker": AT_LEAST_0,
    "prior_edge_blur_px": AT_LEAST_0,
    "prior_object_error": Rule(0, 1, hi_open=True),
    "prior_object_frames": UNIT,
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
        bad = [v for v in numbers if not rule.ok(v)]
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
    "TrainConfig",
    "LossConfig",
    "DepthOrderConfig",
    "OptimConfig",
    "InitConfig",
    "DensifyConfig",
    "DataConfig",
    "load_preset",
    "preset_path",
    "apply_overrides",
    "save_config",
    "load_config",
    "config_to_dict",
    "available_presets",
    "validate_config",
    "missing_fields",
    "data_config_record",
    "rule_for",
    "flag_name",
    "RULES",
    "END_MARKER",
    "RESUME_SAFE",
    "resume_safe_fields",
    "resume_differences",
    "describe_changes",
    "config_history",
]
