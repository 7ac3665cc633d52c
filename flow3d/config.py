"""Every dataclass the training CLI exposes (a docstring under each field becomes its ``--help``), named
presets from ``configs/<name>.yaml``, and the round trip to ``cfg.yaml`` in the work dir.

A preset is a YAML file of nested overrides of :class:`TrainConfig`'s defaults, e.g.::

    max_steps: 600
    losses: {w_track: 1.0}

``run_training.py --preset NAME ...`` applies it first; every other flag then overrides field by field.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from flow3d.data import DataConfig, SyntheticDataConfig
from flow3d.fileio import write_text
from flow3d.scene.init import InitConfig
from flow3d.scene.strategy import DensifyConfig

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

    # depth-order supervision (flow3d.train.depth_order). Defaults from `python -m flow3d.benchmarks.ablation`
    # (README): hinge, Pearson and G2-MonoDepth each improved depth on their own and together gave the best
    # depth at both drift levels; MoDGS, depth consistency and depth-aware scale did not help: off.
    w_hinge_ordinal: float = 1.0
    """Hinge on the order of flow-carried pixel pairs in the neighbour frame's rendered depth (seed 004)."""
    w_modgs_ordinal: float = 0.0
    """MoDGS tanh ordinal loss on same-frame pairs, order from the prior."""
    w_pearson: float = 0.5
    """1 - Pearson correlation between rendered and prior disparity per frame."""
    w_depth_consistency: float = 0.0
    """Seed 001 depth consistency (inside / outside / edge of the foreground mask, fb confidence as weight)."""
    w_g2_monodepth: float = 0.1
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


def save_config(cfg: TrainConfig, path: Path) -> None:
    """Write ``cfg`` as YAML to ``path`` atomically (read back with :func:`load_config`)."""
    write_text(path, yaml.safe_dump(config_to_dict(cfg), sort_keys=False))


def load_config(path: Path) -> TrainConfig:
    """Read a ``cfg.yaml`` written by :func:`save_config`."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"config file not found: {path}")
    try:
        with open(path) as f:
            data = yaml.safe_load(f)
    except yaml.YAMLError as e:
        raise ValueError(f"config file {path} is not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ValueError(f"config file {path} must hold a mapping, got {type(data).__name__}")
    return apply_overrides(TrainConfig(), data, where=str(path))


__all__ = [
    "TrainConfig", "LossConfig", "DepthOrderConfig", "OptimConfig", "InitConfig", "DensifyConfig", "DataConfig",
    "load_preset", "apply_overrides", "save_config", "load_config", "config_to_dict", "available_presets",
]
