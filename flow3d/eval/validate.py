"""``run_val.py``: evaluate a checkpoint of a work dir, export depth, render depth videos.

    python run_val.py --work-dir OUT --model 4000 data:custom --data.seq-name S --data.root-dir R --data.is-train False

Reads ``OUT/cfg.yaml`` and ``OUT/checkpoints/model_<step>.ckpt`` (``--model last``: ``last.ckpt``),
renders every scored view and writes everything to ``OUT/val/<step>/<split>/`` only, ``<split>`` being
``heldout`` (``--data.is-train False``) or ``train`` (``True``), so that the two scores of a step never
overwrite each other (:func:`val_dir`; built in a staging folder ``OUT/val/<step>/.<split>.partial-<pid>`` and
swapped in at the end, so the folder always holds one complete run):

    metrics.json      {"aggregate", "per_frame", "notes"} (:func:`flow3d.eval.report.write_metrics`)
    per_frame.csv     one row per scored view
    per_frame.png     per-frame metrics plotted against the frame index
    depth.mp4         panels: input | rendered RGB | rendered depth | prior depth (scaled) | GT depth ("stereo
                      depth" when gt_depth/SEQ/source.txt says so) | |error| (black where no metric scores:
                      no reference depth, or an ignored pixel); one turbo range over the whole video,
                      colour bars, frame index
    contact_sheet.png a few frames of the video
    depth/<t:05d>.npy with ``--save-depth``: rendered expected z-depth (H, W) float32, scene units
                      (x ``scene_scale`` in depth/meta.json = original units), 0 where nothing renders
    renders/<t:05d>.png  with ``--save-renders``: the rendered RGB

The flow that the temporal-consistency metric needs is cached in ``OUT/flow_cache/`` (a cache of
:class:`flow3d.flow.FlowCache`, reused by later evaluations; ``--flow-cache-dir`` moves it).

Which views are scored: ``--data.is-train False`` the held-out frames ``val_ids`` (iPhone: the
held-out camera views ``val_views``), ``True`` the training frames ``train_ids``.
The data subcommand is optional: without it the data config saved in ``cfg.yaml`` is used, and
``--data.*`` options still override its fields (the saved subcommand is inserted for tyro).
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from flow3d.checkpoint import load_checkpoint, resolve_checkpoint
from flow3d.config import config_to_dict, load_config
from flow3d.data import DataConfig, SyntheticDataConfig, check_same_content, touches_ignored
from flow3d.depth import disp_to_depth, is_valid
from flow3d.device import pick_device
from flow3d.eval.metrics import (
    LpipsScorer,
    Unavailable,
    depth_metrics,
    depth_order_accuracy,
    image_metrics,
    keypoint_pck,
    never_seen_metrics,
    prior_depth_metrics,
    temporal_consistency,
    tracking_metrics,
)
from flow3d.eval.report import aggregate_per_frame, write_metrics
from flow3d.eval.video import (
    colorize_depth,
    colorize_scalar,
    depth_range_for_video,
    depth_video_frame,
    plot_per_frame_metrics,
    to_uint8_rgb,
    write_contact_sheet,
    write_video,
)
from flow3d.fileio import replace_dir
from flow3d.flow import FlowCache, fill_ignored
from flow3d.geometry import bilinear_sample, pixel_grid, project_points
from flow3d.log import get_logger
from flow3d.scene.model import SceneModel

logger = get_logger(__name__)


@dataclass
class ValConfig:
    """Evaluate a checkpoint: metrics, depth export and depth videos, written to WORK_DIR/val/<step>/<split>/
    (``heldout`` or ``train``)."""

    work_dir: str
    """The training work dir (holds cfg.yaml and checkpoints/)."""
    model: str = "last"
    """Checkpoint to evaluate: a step number (checkpoints/model_<step>.ckpt) or 'last'."""
    data: DataConfig = field(default_factory=SyntheticDataConfig)
    """The sequence (default: the data config saved in cfg.yaml); --data.is-train False scores held-out frames."""
    out_name: str = "val"
    """Results go to WORK_DIR/<out_name>/<step>/<split>/, <split> being ``heldout`` (--data.is-train False) or
    ``train`` (True)."""
    save_depth: bool = False
    """Export the rendered z-depth of each scored view as depth/<frame>.npy (float32, scene units)."""
    save_renders: bool = False
    """Save the rendered RGB of each scored view as renders/<frame>.png."""
    video: bool = True
    """Write depth.mp4 and contact_sheet.png."""
    video_frames: Literal["scored", "all"] = "scored"
    """Frames of the video: the scored ones, or every frame of the video (metrics stay on the scored ones;
    held-out camera views always use the scored views)."""
    fps: float = 10.0
    """Frames per second of the video."""
    video_min_height: int = 192
    """Panels smaller than this are enlarged by an integer factor (nearest neighbour) in the video (0..2160;
    less when the frames would be wider than 8192 pixels, with a warning)."""
    contact_sheet_frames: int = 6
    """Frames on the contact sheet (evenly spaced, first and last included)."""
    ordinal_pairs: int = 5000
    """Pixel pairs per frame for the ordinal accuracy."""
    max_track_queries: int = 8
    """Tracking: at most this many query frames (evenly spaced) whose tracks are carried to the scored frames."""
    lpips_lin_weights: Optional[str] = None
    """LPIPS linear heads (lpips/weights/v0.1/alex.pth). Default: from the installed lpips package, if any."""
    lpips_backbone_weights: Optional[str] = None
    """torchvision AlexNet weights (alexnet-owt-7be5be79.pth). Default: torch hub's checkpoints folder."""
    flow_cache_dir: Optional[str] = None
    """Cache of the flows the temporal-consistency metric needs; default WORK_DIR/flow_cache."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """'auto' takes CUDA when it is available."""
    render_backend: Optional[Literal["auto", "gsplat", "cpu", "torch"]] = None
    """Rasterizer; default: the one in cfg.yaml ('auto' picks gsplat on CUDA, the compiled rasterizer on the CPU)."""


# ---------------------------------------------------------------------------------------------- CLI

#: --video-min-height above this is refused: panels are enlarged by an integer factor and every frame of the
#: video is held in memory for the contact sheet (--video-min-height 100000 asked for 37 GiB)
MAX_VIDEO_MIN_HEIGHT = 2160
#: depth.mp4's frames are at most this wide: the panels are enlarged less when --video-min-height asks for more
#: (H.264 encoders refuse wider frames: 17630 px failed in ffmpeg's libx264 with a broken pipe)
MAX_VIDEO_WIDTH = 8192


def check_val_flags(cfg: ValConfig) -> None:
    """ValueError naming the flag when an option of run_val.py is out of range; called before any work."""
    if not (math.isfinite(cfg.fps) and cfg.fps > 0):
        raise ValueError(f"--fps must be a number > 0, got {cfg.fps}")
    if not 0 <= cfg.video_min_height <= MAX_VIDEO_MIN_HEIGHT:
        raise ValueError(f"--video-min-height must be in 0..{MAX_VIDEO_MIN_HEIGHT} pixels, got {cfg.video_min_height}")
    if cfg.video and cfg.contact_sheet_frames < 1:
        raise ValueError(f"--contact-sheet-frames must be >= 1, got {cfg.contact_sheet_frames}")


def _argv_value(argv: list[str], name: str) -> Optional[str]:
    for i, a in enumerate(argv):
        if a == name and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith(name + "="):
            return a.split("=", 1)[1]
    return None


def parse_val_args(argv: list[str], description: str | None = None) -> ValConfig:
    """Parse run_val.py's arguments with tyro.

    ``--work-dir`` is read first so that the data config saved in ``WORK_DIR/cfg.yaml`` becomes the
    default of ``data`` (and the defaults of its subcommand when the same one is named). When no
    ``data:<kind>`` subcommand is given but ``--data.*`` options are, the saved kind is inserted, so
    ``--data.is-train False`` alone works. Parent options may follow the subcommand (tyro's
    ``CascadeSubcommandArgs``).
    """
    import tyro

    argv = list(argv)
    work_dir = _argv_value(argv, "--work-dir")
    default_data = SyntheticDataConfig()
    if work_dir is not None and (Path(work_dir) / "cfg.yaml").is_file():
        default_data = load_config(Path(work_dir) / "cfg.yaml").data  # a bad file: ValueError, one line in the CLI
        if not any(a.startswith("data:") for a in argv) and any(a.startswith("--data.") for a in argv):
            argv = [f"data:{config_to_dict(default_data)['kind']}"] + argv
    cls = _val_config_with_data_default(default_data)
    default = cls(work_dir=work_dir if work_dir is not None else tyro.MISSING, data=default_data)
    return tyro.cli(
        cls,
        default=default,
        args=argv,
        description=description,
        config=(tyro.conf.CascadeSubcommandArgs,),
    )


def _val_config_with_data_default(default_data) -> type:
    """:class:`ValConfig` whose ``data`` subcommand of ``default_data``'s kind has ``default_data`` as its default.

    tyro matches a default instance to a subcommand by its type; ``DavisDataConfig`` is a subclass of
    ``CustomDataConfig`` with the same fields, so a saved ``data:davis`` config was taken for ``data:custom``
    and ``data:davis`` asked again for ``--data.seq-name``/``--data.root-dir``. Naming the default in the
    subcommand's own settings makes the match exact."""
    import dataclasses
    import typing

    import tyro

    members = []
    for member in typing.get_args(DataConfig):  # Annotated[<config class>, subcommand("<kind>")]
        cls, *marks = typing.get_args(member)
        if type(default_data) is cls:
            name = config_to_dict(default_data)["kind"]
            marks = [tyro.conf.subcommand(name, default=default_data)]
        members.append(typing.Annotated[(cls, *marks)])
    return dataclasses.make_dataclass(
        "ValConfig",
        [("data", typing.Union[tuple(members)], dataclasses.field(default_factory=lambda: default_data))],
        bases=(ValConfig,),
    )


# ---------------------------------------------------------------------------------------------- views


@dataclass
class _View:
    """One scored (or video-only) view: a camera at the time of video frame ``t``."""

    t: int  # video frame whose time is rendered
    name: str
    w2c: Tensor  # (4, 4)
    K: Tensor  # (3, 3)
    image: Tensor  # (H, W, 3) in [0, 1]
    valid: Tensor  # (H, W) bool
    fg: Optional[Tensor] = None  # (H, W) float
    covisible: Optional[Tensor] = None  # (H, W) bool
    prior_disp: Optional[Tensor] = None  # (H, W)
    prior_valid: Optional[Tensor] = None  # (H, W) bool
    gt_depth: Optional[Tensor] = None  # (H, W), 0 where unknown
    scored: bool = True


def _video_view(seq, t: int, scored: bool) -> _View:
    return _View(
        t=t,
        name=seq.frame_names[t] if t < len(seq.frame_names) else str(t),
        w2c=seq.w2cs[t],
        K=seq.Ks[t],
        image=seq.images[t],
        valid=seq.valid_masks[t].bool(),
        fg=seq.fg_masks[t],
        prior_disp=seq.prior_disp[t],
        prior_valid=seq.prior_valid[t].bool(),
        gt_depth=None if seq.gt_depth is None else seq.gt_depth[t],
        scored=scored,
    )


def _held_out_views(seq) -> list[_View]:
    v = seq.val_views
    out = []
    for i in range(v.images.shape[0]):
        out.append(
            _View(
                t=int(v.t[i]),
                name=v.names[i] if i < len(v.names) else f"view{i}",
                w2c=v.w2cs[i],
                K=v.Ks[i],
                image=v.images[i],
                valid=v.valid_masks[i].bool(),
                fg=None if v.fg_masks is None else v.fg_masks[i],
                covisible=None if v.covisible_masks is None else v.covisible_masks[i].bool(),
            )
        )
    return out


# ---------------------------------------------------------------------------------------------- helpers


def _default_lpips_paths(cfg: ValConfig) -> tuple[Optional[Path], Optional[Path], list[str]]:
    """LPIPS weight files: given ones, else the lpips package's heads and torch hub's AlexNet."""
    missing = []
    lin = Path(cfg.lpips_lin_weights) if cfg.lpips_lin_weights else None
    if lin is None:
        spec = importlib.util.find_spec("lpips")
        if spec is not None and spec.origin:
            lin = Path(spec.origin).parent / "weights" / "v0.1" / "alex.pth"
        else:
            missing.append("the LPIPS heads (package lpips not installed; pass --lpips-lin-weights)")
    backbone = Path(cfg.lpips_backbone_weights) if cfg.lpips_backbone_weights else None
    if backbone is None:
        backbone = Path(torch.hub.get_dir()) / "checkpoints" / "alexnet-owt-7be5be79.pth"
    return lin, backbone, missing


def _make_lpips(cfg: ValConfig) -> LpipsScorer:
    lin, backbone, missing = _default_lpips_paths(cfg)
    scorer = LpipsScorer(lin, backbone)
    if not scorer.available and missing:
        logger.info("LPIPS: %s; backbone looked for at %s", "; ".join(missing), backbone)
        scorer.reason = "no local weights; pass --lpips-lin-weights and --lpips-backbone-weights"
    return scorer


@torch.no_grad()
def _render_view(model, view: _View, device, bg: Tensor, backend: str) -> dict[str, np.ndarray]:
    H, W = view.image.shape[:2]
    out = model.render(
        torch.tensor([view.t], device=device),
        view.w2c[None].to(device),
        view.K[None].to(device),
        (W, H),
        bg_color=bg,
        backend=backend,
    )
    return {
        "rgb": out.img[0].clamp(0, 1).float().cpu().numpy(),  # (H, W, 3)
        "depth": out.depth[0, ..., 0].float().cpu().numpy(),  # (H, W)
        "alpha": out.alpha[0, ..., 0].float().cpu().numpy(),  # (H, W)
    }


def _as_rows(res_per_frame: dict[str, Tensor], prefix: str, keys: list[str]) -> dict[str, list[float]]:
    return {prefix + k: [float(x) for x in res_per_frame[k]] for k in keys}


def _to_u8(img: Tensor) -> np.ndarray:
    return to_uint8_rgb(img.cpu().numpy())


@torch.no_grad()
def _predicted_tracks(model, seq, query_frames: list[int], targets: list[int], device, bg, backend, chunk: int = 8):
    """Carry the tracks of ``query_frames`` to ``targets`` with the model, as the trainer's track term does.

    For each query frame q: render frame q with the Gaussians' positions at the target times in the
    target cameras (``tracks_3d``), read them at the tracks' query pixels (divided by alpha) and project
    with the targets' Ks. Returns (track ids (M,), pred_xy (M, len(targets), 2)).
    """
    ids_all, preds = [], []
    W, H = seq.img_wh
    for q in query_frames:
        ids = torch.nonzero(seq.tracks_query_t == q).squeeze(1)
        if ids.numel() == 0:
            continue
        qxy = seq.tracks_xy[ids, q].to(device)  # (P, 2)
        parts = []
        for c in range(0, len(targets), chunk):
            tg = targets[c : c + chunk]
            tg_t = torch.tensor(tg, device=device)
            out = model.render(
                torch.tensor([q], device=device),
                seq.w2cs[q : q + 1].to(device),
                seq.Ks[q : q + 1].to(device),
                (W, H),
                target_ts=tg_t,
                target_w2cs=seq.w2cs[tg].to(device),
                bg_color=bg,
                backend=backend,
            )
            Bt = len(tg)
            maps = torch.cat([out.tracks_3d.reshape(1, H, W, Bt * 3), out.alpha], dim=-1).permute(0, 3, 1, 2)
            vals = bilinear_sample(maps, qxy[None])[0]  # (P, Bt*3 + 1)
            pts = (vals[:, :-1] / vals[:, -1:].clamp_min(1e-3)).reshape(-1, Bt, 3)  # target camera frames
            eye = torch.eye(4, device=device, dtype=pts.dtype).expand(Bt, 4, 4)
            xy, _ = project_points(pts.transpose(0, 1), seq.Ks[tg].to(device), eye)  # (Bt, P, 2)
            parts.append(xy.transpose(0, 1).cpu())
        ids_all.append(ids)
        preds.append(torch.cat(parts, dim=1))
    if not ids_all:
        return torch.zeros(0, dtype=torch.long), torch.zeros(0, len(targets), 2)
    return torch.cat(ids_all), torch.cat(preds)


def _tracking(model, seq, scored: list[int], device, bg, backend, max_queries: int) -> tuple[dict, dict, dict]:
    """Per-frame columns, aggregates and notes of the 2D tracking metrics (GT from gt_tracks_3d)."""
    keys = ["epe", "within_1", "within_2", "within_4", "within_8", "within_16"]
    agg_keys = keys + ["delta_avg", "num_points", "pck"]
    if seq.gt_tracks_3d is None:
        why = Unavailable("no ground-truth tracks (a tracker's output is not ground truth)")
        return {}, {"track_" + k: why for k in agg_keys}, {}
    train = seq.is_train_frame()
    queries = sorted({int(q) for q in seq.tracks_query_t.tolist() if bool(train[int(q)])})
    if len(queries) > max_queries:
        queries = [queries[int(round(i))] for i in np.linspace(0, len(queries) - 1, max_queries)]
    ids, pred = _predicted_tracks(model, seq, queries, scored, device, bg, backend)
    st = torch.tensor(scored, dtype=torch.long)
    gt_xy, _ = project_points(seq.gt_tracks_3d[ids][:, st].transpose(0, 1), seq.Ks[st], seq.w2cs[st])  # (Ts, M, 2)
    gt_xy = gt_xy.transpose(0, 1)
    vis = seq.tracks_visible[ids][:, st] & (seq.tracks_query_t[ids][:, None] != st[None, :])
    res = tracking_metrics(pred, gt_xy, vis)
    cols = _as_rows(res.per_frame, "track_", keys)
    agg = {"track_" + k: res.aggregate[k] for k in agg_keys if k != "pck"}
    agg["track_num_points"] = int(agg["track_num_points"])
    notes = {"track_epe": f"px, tracks from {len(queries)} query frames"}
    notes.update({"track_" + k: v for k, v in res.notes.items()})
    agg["track_pck"], notes["track_pck"] = _track_pck(ids, pred, gt_xy, vis, seq, scored)
    return cols, agg, notes


def _track_pck(ids, pred, gt_xy, vis, seq, scored: list[int]) -> tuple[float, str]:
    """Shape of Motion's PCK (:func:`keypoint_pck`, 0.05 max(W, H)) on ground-truth tracks: one pair per
    (query frame, other scored frame), the query frame's tracks carried to the other frame."""
    qt = seq.tracks_query_t[ids]
    pairs = [(q, j) for q in sorted(set(qt.tolist())) for j, t in enumerate(scored) if t != q]
    if not pairs:
        return float("nan"), "no (query, target) frame pair"
    P = max(int((qt == q).sum()) for q, _ in pairs)
    pk, gk = torch.zeros(len(pairs), P, 2), torch.zeros(len(pairs), P, 2)
    vk = torch.zeros(len(pairs), P, dtype=torch.bool)
    for b, (q, j) in enumerate(pairs):
        sel = qt == q
        n = int(sel.sum())
        pk[b, :n], gk[b, :n], vk[b, :n] = pred[sel, j].float(), gt_xy[sel, j].float(), vis[sel, j]
    r = keypoint_pck(pk, gk, vk, seq.img_wh)
    note = f"SoM's PCK on ground-truth tracks: < {r.aggregate['threshold_px']:.2f} px (0.05 max(W, H)), {len(pairs)} frame pairs"
    return r.aggregate["pck"], note + (f"; {r.notes['pck']}" if "pck" in r.notes else "")


def _enlarge(img: np.ndarray, k: int) -> np.ndarray:
    return img if k == 1 else np.repeat(np.repeat(img, k, axis=0), k, axis=1)


# ---------------------------------------------------------------------------------------------- main


@dataclass
class ValResult:
    """What :func:`evaluate` wrote and computed."""

    step: int
    out_dir: Path
    aggregate: dict[str, Any]
    notes: dict[str, str]
    per_frame: list[dict[str, Any]]
    files: dict[str, Path]


SPLIT_FOLDERS = {False: "heldout", True: "train"}
"""``--data.is-train`` -> the folder of its scores inside ``val/<step>/``."""


def val_dir(work_dir: str | os.PathLike, step: int, is_train: bool = False, out_name: str = "val") -> Path:
    """Where run_val.py writes the scores of ``step`` on one split: ``WORK_DIR/<out_name>/<step>/heldout`` (the
    held-out frames or views) or ``.../train`` (the training frames)."""
    return Path(work_dir) / out_name / str(step) / SPLIT_FOLDERS[bool(is_train)]


def evaluate(cfg: ValConfig) -> ValResult:
    """Evaluate ``cfg.model`` of ``cfg.work_dir`` on the views ``cfg.data`` selects; see the module docstring."""
    check_val_flags(cfg)
    if not cfg.out_name or Path(cfg.out_name).name != cfg.out_name or cfg.out_name in (".", ".."):
        raise ValueError(f"--out-name must be a plain folder name, got {cfg.out_name!r}")
    work_dir = Path(cfg.work_dir)
    if not work_dir.is_dir():
        raise ValueError(f"--work-dir {work_dir} is not a folder")
    train_cfg = load_config(work_dir / "cfg.yaml")
    device = pick_device(cfg.device)
    ckpt_path = resolve_checkpoint(work_dir, cfg.model)
    payload = load_checkpoint(ckpt_path, map_location=device)
    step = int(payload["step"])
    try:
        model = SceneModel.from_state_dict(payload["model"]).to(device).eval()
    except (KeyError, RuntimeError, ValueError) as e:
        raise ValueError(
            f"checkpoint {ckpt_path}: its 'model' state dict is not a flow3d SceneModel ({type(e).__name__}: {e})"
        ) from None
    backend = cfg.render_backend or train_cfg.render_backend
    bg = torch.tensor(train_cfg.bg_color, device=device, dtype=torch.float32)

    seq = cfg.data.load()
    check_same_content(payload.get("data"), seq, ckpt_path)  # the data it was trained on (recorded since issue 14)
    if payload.get("camera_refine") is not None:  # cameras corrected during training (--optim.refine-cameras)
        from flow3d.scene.camera_refine import apply_to_sequence

        seq = apply_to_sequence(seq, payload["camera_refine"])
    if model.num_frames != seq.num_frames:
        raise ValueError(
            f"the checkpoint models {model.num_frames} frames but the data config loads {seq.num_frames}: "
            "evaluate with the data the model was trained on (default: the data config in cfg.yaml)"
        )
    held_out = not cfg.data.is_train and seq.val_views is not None
    if held_out:
        views = _held_out_views(seq)
        split = "held-out camera views"
    else:
        ids = (seq.train_ids if cfg.data.is_train else seq.val_ids).tolist()
        views = [_video_view(seq, t, True) for t in ids]
        split = "train frames" if cfg.data.is_train else "held-out frames"
    if not views:
        raise ValueError(
            f"no {split} to score in sequence {seq.name!r} (val_ids is empty: set --data.val-every >= 2, "
            "or score the training frames with --data.is-train True)"
        )
    logger.info("evaluating %s (step %d) on %d %s of %s", ckpt_path.name, step, len(views), split, seq.name)
    video_views = views
    if cfg.video and cfg.video_frames == "all" and not held_out:
        by_t = {v.t: v for v in views}
        video_views = [by_t.get(t) or _video_view(seq, t, False) for t in range(seq.num_frames)]

    out_dir = val_dir(work_dir, step, cfg.data.is_train, cfg.out_name)
    staging = out_dir.parent / f".{out_dir.name}.partial-{os.getpid()}"
    if staging.exists():
        shutil.rmtree(staging)
    made = [p for p in (out_dir.parent.parent, out_dir.parent) if not p.exists()]  # val/, val/<step>/
    staging.mkdir(parents=True)
    try:
        result = _evaluate_into(
            cfg, staging, model, seq, views, video_views, held_out, device, bg, backend, step, split, ckpt_path
        )
        replace_dir(staging, out_dir)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
        for folder in reversed(made):  # the folders made by this failed run
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
    logger.info("wrote the scores of the %s to %s", split, out_dir)
    result.out_dir = out_dir
    result.files = {k: out_dir / p.relative_to(staging) for k, p in result.files.items()}
    return result


def _evaluate_into(
    cfg, out, model, seq, views, video_views, held_out, device, bg, backend, step, split, ckpt_path
) -> ValResult:
    lpips = _make_lpips(cfg)
    renders: dict[int, dict[str, np.ndarray]] = {}  # index into video_views -> render
    image_cols: dict[str, list] = {}
    files: dict[str, Path] = {}
    scored_idx = [i for i, v in enumerate(video_views) if v.scored]
    for i, v in enumerate(tqdm(video_views, desc="render", dynamic_ncols=True)):
        r = _render_view(model, v, device, bg, backend)
        renders[i] = r
        if not v.scored:
            continue
        pred = torch.from_numpy(r["rgb"])[None]
        m = image_metrics(
            pred,
            v.image[None].float(),
            fg_mask=None if v.fg is None else v.fg[None].float(),
            covisible_mask=None if v.covisible is None else v.covisible[None].float(),
            valid_mask=v.valid[None].float(),
            lpips=lpips,
        )
        for k, val in m.items():
            image_cols.setdefault(k, []).append(val if isinstance(val, Unavailable) else float(val[0]))
    ns = len(scored_idx)
    sv = [video_views[i] for i in scored_idx]
    rd = torch.stack([torch.from_numpy(renders[i]["depth"]) for i in scored_idx])  # (S, H, W) rendered depth

    cols: dict[str, list] = {"frame": [v.t for v in sv], "view": [v.name for v in sv]}
    agg: dict[str, Any] = {}
    notes: dict[str, str] = {}
    # ---- images
    for k in (
        "psnr",
        "ssim",
        "lpips",
        "ssim_endo",
        "lpips_endo",
        "fg_psnr",
        "fg_ssim",
        "fg_lpips",
        "bg_psnr",
        "bg_ssim",
        "bg_lpips",
        "mpsnr",
        "mssim",
    ):
        if k.endswith("_endo") and not any(not bool(v.valid.all()) for v in sv):
            continue  # nothing ignored: the EndoNeRF-family numbers equal ssim / lpips
        if k in image_cols:
            cols[k] = image_cols[k]
        elif k.startswith(("fg_", "bg_")):
            cols[k] = [Unavailable("no foreground masks for these views")] * ns
        else:
            cols[k] = [Unavailable("no covisibility masks in this dataset (SoM's mPSNR/mSSIM need them)")] * ns
    img_agg, img_notes = aggregate_per_frame(
        [{k: cols[k][j] for k in cols if k not in ("frame", "view")} for j in range(ns)]
    )
    agg.update(img_agg)
    notes.update(img_notes)
    notes.setdefault("psnr", "dB, mean over views")
    notes.update(_region_notes(sv))
    if "ssim_endo" in agg:
        notes.setdefault("ssim_endo", "EndoNeRF-family protocol: both images x tissue mask, whole-image SSIM")

    # ---- depth vs ground truth
    valid = torch.stack([v.valid for v in sv])
    gt = torch.stack([v.gt_depth for v in sv]) if all(v.gt_depth is not None for v in sv) else None
    depth_keys = ["abs_rel", "rmse", "delta1"]
    seq_scale = None
    if gt is not None:
        seq_res = depth_metrics(rd, gt, valid, alignment="sequence")
        frm_res = depth_metrics(rd, gt, valid, alignment="frame")
        cols.update(_as_rows(seq_res.per_frame, "depth_", depth_keys))
        cols.update({f"depth_{k}_frame": [float(x) for x in frm_res.per_frame[k]] for k in depth_keys})
        agg.update({"depth_" + k: seq_res.aggregate[k] for k in depth_keys})
        agg["depth_scale"] = seq_scale = seq_res.aggregate["scale"]
        agg.update({f"depth_{k}_frame": frm_res.aggregate[k] for k in depth_keys})
        ss_res = depth_metrics(rd, gt, valid, alignment="sequence_scale_shift")
        cols.update({f"depth_{k}_scale_shift": [float(x) for x in ss_res.per_frame[k]] for k in depth_keys})
        agg.update({f"depth_{k}_scale_shift": ss_res.aggregate[k] for k in depth_keys})
        agg["depth_disp_scale"], agg["depth_disp_shift"] = ss_res.aggregate["scale"], ss_res.aggregate["shift"]
        notes["depth_abs_rel"] = (
            f"vs {seq.gt_depth_source} depth, one LSQ depth scale per sequence: absolute depth up to scale (*_frame: per frame)"
        )
        notes["depth_abs_rel_scale_shift"] = "one LSQ scale + shift of disparity per sequence: shape"
        agg["depth_reference"] = seq.gt_depth_source
        notes["depth_rmse"] = (
            "scene units" if seq.scene_scale == 1 else f"scene units (x {seq.scene_scale:g} = original)"
        )
        pd = torch.stack([v.prior_disp for v in sv]) if sv[0].prior_disp is not None else None
        if pd is not None:
            pvalid = valid & torch.stack([v.prior_valid for v in sv])
            p_seq = prior_depth_metrics(pd, gt, pvalid, alignment="sequence")
            p_frm = prior_depth_metrics(pd, gt, pvalid, alignment="frame")
            cols.update(_as_rows(p_seq.per_frame, "prior_", depth_keys))
            agg.update({"prior_" + k: p_seq.aggregate[k] for k in depth_keys})
            agg.update({f"prior_{k}_frame": p_frm.aggregate[k] for k in depth_keys})
            p_ss = prior_depth_metrics(pd, gt, pvalid, alignment="sequence_scale_shift")
            cols.update({f"prior_{k}_scale_shift": [float(x) for x in p_ss.per_frame[k]] for k in depth_keys})
            agg.update({f"prior_{k}_scale_shift": p_ss.aggregate[k] for k in depth_keys})
            notes["prior_abs_rel"] = "raw prior 1/disp, one LSQ depth scale per sequence"
            notes["prior_abs_rel_scale_shift"] = "raw prior disparity, one LSQ scale + shift per sequence"
        else:
            why = Unavailable("no depth prior for these views")
            agg.update({f"prior_{k}{a}": why for k in depth_keys for a in ("", "_frame", "_scale_shift")})
    else:
        why = Unavailable("no ground-truth depth in this dataset")
        for who in ("depth", "prior"):
            agg.update({f"{who}_{k}{a}": why for k in depth_keys for a in ("", "_frame", "_scale_shift")})

    # ---- never-seen surface (issue 26: the synthetic tissue scene knows the tissue under the instruments)
    if gt is not None and not held_out and seq.gt_never_seen is not None and seq.gt_hidden_images is not None:
        ts = [v.t for v in sv]
        ns_res = never_seen_metrics(
            torch.stack([torch.from_numpy(renders[i]["rgb"]) for i in scored_idx]),
            rd,
            seq.gt_hidden_images[ts].float(),
            gt,
            seq.gt_never_seen[ts],
            valid,
            seq_scale,
            torch.stack([torch.from_numpy(renders[i]["alpha"]) for i in scored_idx]),
        )
        cols.update({k: [float(x) for x in v] for k, v in ns_res.per_frame.items()})
        agg.update(ns_res.aggregate)
        notes["never_seen_psnr"] = (
            "dB over pixels whose tissue no training frame saw (under the instruments or not), vs the "
            "tissue without instruments; seen_*: visible pixels some training frame saw; depth with depth_scale"
        )

    # ---- depth order
    if sv[0].prior_disp is not None:
        pd = torch.stack([v.prior_disp for v in sv])
        pvalid = valid & torch.stack([v.prior_valid for v in sv])
        o = depth_order_accuracy(rd, pd, "disparity", num_pairs=cfg.ordinal_pairs, valid=pvalid & is_valid(rd))
        cols["ordinal_acc_prior"] = [float(x) for x in o.per_frame["accuracy"]]
        agg["ordinal_acc_prior"] = o.aggregate["accuracy"]
        notes["ordinal_acc_prior"] = f"{int(o.aggregate['num_pairs'])} pairs"
    else:
        agg["ordinal_acc_prior"] = Unavailable("no depth prior for these views")
    if gt is not None:
        o = depth_order_accuracy(rd, gt, "depth", num_pairs=cfg.ordinal_pairs, valid=valid & is_valid(rd))
        cols["ordinal_acc_gt"] = [float(x) for x in o.per_frame["accuracy"]]
        agg["ordinal_acc_gt"] = o.aggregate["accuracy"]
        notes["ordinal_acc_gt"] = f"vs {_reference_name(seq)}"
    else:
        agg["ordinal_acc_gt"] = Unavailable("no ground-truth depth in this dataset")

    # ---- temporal consistency
    if held_out:
        why = Unavailable("held-out camera views are not consecutive frames of one video")
        agg["temporal_consistency"] = agg["temporal_consistency_gt"] = why
    else:
        rendered = {v.t: renders[i]["depth"] for i, v in enumerate(video_views)}
        tc_cols, tc_agg, tc_notes = _temporal(cfg, model, seq, sv, rd, rendered, device, bg, backend)
        cols.update(tc_cols)
        agg.update(tc_agg)
        notes.update(tc_notes)

    # ---- tracking
    if held_out:
        why = Unavailable("tracking is scored on the video's frames, not on held-out camera views")
        agg["track_epe"] = why
    else:
        tr_cols, tr_agg, tr_notes = _tracking(model, seq, [v.t for v in sv], device, bg, backend, cfg.max_track_queries)
        cols.update(tr_cols)
        agg.update(tr_agg)
        notes.update(tr_notes)
    agg["keypoint_pck"] = Unavailable(
        "keypoint annotations are not loaded by the data layer (flow3d.data.iphone does not read them)"
        if held_out
        else "no keypoint annotations in this dataset"
    )
    agg["num_views"] = ns
    agg["step"] = step
    notes["num_views"] = split

    per_frame = [{k: cols[k][j] for k in cols} for j in range(ns)]
    files["metrics"], files["per_frame"] = write_metrics(out, per_frame, agg, notes)
    plot_keys = [
        k
        for k in (
            "psnr",
            "ssim",
            "fg_psnr",
            "lpips",
            "depth_abs_rel",
            "depth_abs_rel_frame",
            "depth_abs_rel_scale_shift",
            "prior_abs_rel",
            "prior_abs_rel_scale_shift",
            "ordinal_acc_prior",
            "ordinal_acc_gt",
            "temporal_consistency",
            "temporal_consistency_gt",
            "track_epe",
        )
        if k in cols
    ]
    plot_rows = [
        {"frame": cols["frame"][j], **{k: cols[k][j] for k in plot_keys if not isinstance(cols[k][j], Unavailable)}}
        for j in range(ns)
    ]
    try:
        files["plot"] = plot_per_frame_metrics(out / "per_frame.png", plot_rows)
    except ValueError as e:
        logger.warning("no per-frame plot: %s", e)

    if cfg.save_depth:
        ddir = out / "depth"
        ddir.mkdir()
        for v, i in zip(sv, scored_idx):
            np.save(ddir / f"{v.t:05d}.npy", renders[i]["depth"].astype(np.float32))
        meta = {
            "units": "scene units (z along the optical axis); x scene_scale = original units; 0 = nothing rendered",
            "scene_scale": seq.scene_scale,
            "frames": [v.t for v in sv],
            "views": [v.name for v in sv],
            "checkpoint": ckpt_path.name,
            "step": step,
        }
        (ddir / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
        files["depth"] = ddir
    if cfg.save_renders:
        import imageio.v2 as imageio

        rdir = out / "renders"
        rdir.mkdir()
        for v, i in zip(sv, scored_idx):
            imageio.imwrite(rdir / f"{v.t:05d}.png", to_uint8_rgb(renders[i]["rgb"]))
        files["renders"] = rdir

    if cfg.video:
        files.update(_write_videos(cfg, out, seq, video_views, renders, seq_scale))
    return ValResult(step=step, out_dir=out, aggregate=agg, notes=notes, per_frame=per_frame, files=files)


def _temporal(cfg, model, seq, sv, rd, rendered, device, bg, backend) -> tuple[dict, dict, dict]:
    """Relative depth change along the fb-consistent flow from each scored frame t to t+1 (t-1 for the last)."""
    cache = FlowCache(cfg.flow_cache_dir or Path(cfg.work_dir) / "flow_cache", backend="dis")
    tc, tc_gt = [], []
    gt_ok = seq.gt_depth is not None
    for j, v in enumerate(sv):
        n = v.t + 1 if v.t + 1 < seq.num_frames else v.t - 1
        if n < 0:
            tc.append(float("nan"))
            tc_gt.append(float("nan"))
            continue
        ign_t, ign_n = ~seq.valid_masks[v.t], ~seq.valid_masks[n]  # (H, W) ignored pixels (instruments)
        # flow on frames with ignored pixels inpainted (it does not depend on them); a pixel whose flow lands
        # on an ignored pixel of frame n is not scored
        fr = cache.get(
            v.t,
            n,
            fill_ignored(_to_u8(seq.images[v.t]), ign_t.numpy()),
            fill_ignored(_to_u8(seq.images[n]), ign_n.numpy()),
        )
        flow = torch.from_numpy(fr.flow)[None]
        H, W = ign_t.shape
        dest = (pixel_grid(H, W) + flow[0]).reshape(-1, 1, 2)  # (H*W, 1, 2) positions in frame n
        lands_ignored = touches_ignored(ign_n[None], dest).reshape(1, H, W)
        ok = torch.from_numpy(fr.valid)[None] & v.valid[None] & ~lands_ignored
        if n not in rendered:
            rendered[n] = _render_view(model, _video_view(seq, n, False), device, bg, backend)["depth"]
        d_next = torch.from_numpy(rendered[n])
        nan_zero = lambda d: torch.where(is_valid(d), d, torch.full_like(d, float("nan")))  # noqa: E731
        tc.append(float(temporal_consistency(rd[j][None], nan_zero(d_next)[None], flow, ok).per_frame["value"][0]))
        if gt_ok:
            res_gt = temporal_consistency(seq.gt_depth[v.t][None], nan_zero(seq.gt_depth[n])[None], flow, ok)
            tc_gt.append(float(res_gt.per_frame["value"][0]))
    cols = {"temporal_consistency": tc}
    agg = {"temporal_consistency": _nanmean(tc)}
    notes = {"temporal_consistency": "relative; compare with _gt"}
    if gt_ok:
        cols["temporal_consistency_gt"] = tc_gt
        agg["temporal_consistency_gt"] = _nanmean(tc_gt)
        notes["temporal_consistency_gt"] = f"same flow, {_reference_name(seq)}"
    else:
        agg["temporal_consistency_gt"] = Unavailable("no ground-truth depth in this dataset")
    return cols, agg, notes


def _reference_name(seq) -> str:
    """What the reference depth of the ``*_gt`` metrics is, for their labels: "ground-truth depth", or e.g.
    "stereo depth (the reference, not ground truth)" (``seq.gt_depth_source``, from gt_depth/SEQ/source.txt).
    The metric keys keep their ``_gt`` suffix (results files and sweeps read them)."""
    src = str(getattr(seq, "gt_depth_source", "ground truth") or "ground truth")
    return "ground-truth depth" if src == "ground truth" else f"{src} depth (the reference, not ground truth)"


def _region_notes(views: list[_View]) -> dict[str, str]:
    """Notes of the image metrics when pixels are ignored (instruments): psnr is over the tissue / valid
    pixels only, and the bg_* metrics have no pixels when the foreground covers every scored pixel (on
    endoscopy data all tissue is foreground)."""
    valid = torch.stack([v.valid for v in views])
    notes: dict[str, str] = {}
    no_bg = all(v.fg is not None for v in views) and not bool(
        torch.stack([(1 - v.fg.float()) * v.valid.float() for v in views]).gt(0).any()
    )
    if not bool(valid.all()):
        pct = 100.0 * float((~valid).float().mean())
        what = "tissue pixels" if no_bg else "valid pixels"
        notes["psnr"] = (
            f"dB over the {what} only ({pct:.1f}% ignored pixels, e.g. instruments, excluded), mean over views"
        )
    if no_bg:
        why = "no background: the foreground mask covers every scored pixel" + (
            " (all the tissue deforms)" if not bool(valid.all()) else ""
        )
        notes.update({"bg_psnr": why, "bg_ssim": why, "bg_lpips": why})
    return notes


def _nanmean(vals: list[float]) -> float:
    f = [x for x in vals if math.isfinite(x)]
    return sum(f) / len(f) if f else float("nan")


def depth_error_maps(
    depths: np.ndarray, gts: np.ndarray, valid: np.ndarray, scale: float
) -> tuple[np.ndarray, tuple[float, float]]:
    """The video's ``|error|`` panel: (``|scale * depths - gts|`` (T, H, W), NaN where no depth metric scores
    -- no reference depth (:func:`flow3d.depth.is_valid`) or an ignored pixel (``valid`` False, e.g. an
    instrument), drawn black -- and its colour range (0, 98th percentile of the scored errors))."""
    scored = is_valid(torch.from_numpy(gts)).numpy() & np.asarray(valid, dtype=bool)
    errs = np.where(scored, np.abs(scale * depths - gts), np.nan)
    finite = errs[np.isfinite(errs)]
    hi = float(np.percentile(finite, 98)) if finite.size else 1.0
    return errs, (0.0, hi if hi > 0 else 1.0)


def _write_videos(cfg, out: Path, seq, video_views: list[_View], renders, seq_scale) -> dict[str, Path]:
    """depth.mp4 + contact_sheet.png: input | rendered | depth | prior (scaled) | GT | |error|, one depth range."""
    T = len(video_views)
    depths = np.stack([renders[i]["depth"] for i in range(T)])  # (T, H, W)
    has_gt = all(v.gt_depth is not None for v in video_views)
    has_prior = all(v.prior_disp is not None for v in video_views)
    gts = np.stack([v.gt_depth.numpy() for v in video_views]) if has_gt else None
    ref = gts if has_gt else depths
    try:
        vmin, vmax = depth_range_for_video(ref)
    except ValueError:
        vmin, vmax = 0.0, 1.0
    prior_depths = None
    if has_prior:
        prior_depths, pv = (
            x.numpy()
            for x in disp_to_depth(
                torch.stack([v.prior_disp for v in video_views]), torch.stack([v.prior_valid for v in video_views])
            )
        )
        both = pv & is_valid(torch.from_numpy(ref)).numpy()
        den = float((prior_depths[both] ** 2).sum())
        s = float((prior_depths[both] * ref[both]).sum()) / den if den > 0 else 1.0
        prior_depths = prior_depths * s  # display only: one least-squares scale onto the reference depth
    errs, err_range = None, None
    if has_gt:
        s = seq_scale if seq_scale is not None and math.isfinite(seq_scale) else 1.0
        errs, err_range = depth_error_maps(depths, gts, np.stack([v.valid.numpy() for v in video_views]), s)
    src = str(getattr(seq, "gt_depth_source", "ground truth") or "ground truth")
    gt_title = "GT depth" if src == "ground truth" else f"{src} depth"
    H, W = depths.shape[1:]
    k = max(1, math.ceil(cfg.video_min_height / H))
    num_panels = 3 + (prior_depths is not None) + 2 * has_gt
    k_max = max(1, (MAX_VIDEO_WIDTH - 600) // (num_panels * (W + 2)))  # 600: the colour bars' room
    if k > k_max:
        logger.warning(
            "--video-min-height %d: panels enlarged x%d instead of x%d, so that depth.mp4's frames stay "
            "within %d pixels wide (the encoder's limit)",
            cfg.video_min_height,
            k_max,
            k,
            MAX_VIDEO_WIDTH,
        )
        k = k_max
    # frames are made as the video is written and only the contact sheet's are kept: memory is a few frames,
    # not the whole video (which --video-min-height and --video-frames all can make large)
    sheet_idx = sorted(set(np.linspace(0, T - 1, min(cfg.contact_sheet_frames, T)).round().astype(int).tolist()))
    kept: dict[int, np.ndarray] = {}

    def frames():
        for i, v in enumerate(video_views):
            panels = [
                ("input", to_uint8_rgb(v.image.numpy())),
                ("rendered", to_uint8_rgb(renders[i]["rgb"])),
                ("depth", colorize_depth(depths[i], vmin, vmax)),
            ]
            if prior_depths is not None:
                panels.append(("prior (scaled)", colorize_depth(prior_depths[i], vmin, vmax)))
            if has_gt:
                panels.append((gt_title, colorize_depth(gts[i], vmin, vmax)))
                panels.append(("|error|", colorize_scalar(errs[i], *err_range, cmap="magma")))
            if not v.scored:
                panels[0] = ("input (train)", panels[0][1])
            panels = [(t, _enlarge(p, k)) for t, p in panels]
            frame = depth_video_frame(panels, (vmin, vmax), v.t, units="scene", error_range=err_range)
            if i in sheet_idx:
                kept[i] = frame
            yield frame

    files = {"video": write_video(out / "depth.mp4", frames(), fps=cfg.fps, log=False)}  # `out` is a staging folder
    logger.info("depth.mp4: %d frames", T)
    files["contact_sheet"] = out / "contact_sheet.png"
    sheet = [kept[i] for i in sheet_idx]
    Hf, Wf = sheet[0].shape[:2]
    write_contact_sheet(files["contact_sheet"], sheet, num=len(sheet), cols=1 if Wf > 4 * Hf else None)
    return files


__all__ = ["ValConfig", "ValResult", "evaluate", "parse_val_args"]
