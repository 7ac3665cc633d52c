"""The training loop: data -> initial scene -> steps (render, loss terms, optimiser, densification) ->
checkpoints. ``run_training.py`` builds a :class:`flow3d.config.TrainConfig` and calls :func:`train`.

Reliability, in the order a run meets it:

- :func:`train` checks the work dir (a file, or not writable: one error) and locks it
  (:class:`flow3d.workdir.WorkDirLock`: a second training in the same folder refuses at once), before the
  data loads.
- A run resumes from ``checkpoints/last.ckpt`` (or the newest intact ``model_<step>.ckpt``,
  :func:`flow3d.checkpoint.resume_point`). The checkpoint records the data it was trained on; other data is
  one error: the data options before anything loads, the content (frame count, size, thumbnails, cameras)
  once it has loaded (:mod:`flow3d.data.fingerprint`). It also records the options it was trained with: an
  option that shapes the model or its optimisation and differs is one error naming each field with both
  values, unless ``--resume-with-changes`` (recorded in cfg.yaml's ``history``); the options marked
  :data:`flow3d.config.RESUME_SAFE` may change (logged); ``--max-steps`` below the step is an error. A
  finished run re-run with nothing to train writes no file.
- The log names the device and the rasterizer; on the CPU, a run expected to take over an hour (measured on
  its first steps) says so once, with the CPU presets.
- The learning rates are a pure function of (step, max_steps) (:func:`lr_factor`), so a run resumed with a
  larger ``--max-steps`` follows the new schedule exactly.
- SIGINT (Ctrl-C) or SIGTERM stops at the next step boundary, saves ``last.ckpt`` at that step and raises
  :class:`flow3d.errors.Interrupted` (the CLI exits with 130 / 143); a second signal aborts at once (every
  file on disk stays whole: writes are atomic).
"""

from __future__ import annotations

import dataclasses
import json
import signal
import threading
import time
from pathlib import Path

import torch
from torch import Tensor
from tqdm import tqdm

from flow3d.checkpoint import resume_point, save_checkpoint
from flow3d.config import (
    TrainConfig,
    config_history,
    config_to_dict,
    data_config_record,
    describe_changes,
    flag_name,
    resume_differences,
    save_config,
    validate_config,
)
from flow3d.data import apply_prior_drift, check_data_config, check_same_content, content_record, estimate_prior_drift
from flow3d.depth import disp_to_depth
from flow3d.device import pick_device
from flow3d.errors import Interrupted, TrainingError, signal_name
from flow3d.fileio import remove_stale_temporaries, write_json
from flow3d.log import get_logger
from flow3d.losses.photometric import psnr
from flow3d.scene.camera_refine import camera_refine_state, make_camera_refine
from flow3d.scene.init import initialize_scene
from flow3d.scene.model import RenderOutput, SceneModel
from flow3d.scene.strategy import DensifyStrategy
from flow3d.train import depth_order
from flow3d.train.batch import UsableTracks, batch_to, sample_batch
from flow3d.train.context import StepContext
from flow3d.train.neighbors import prepare_neighbor_flows
from flow3d.train.terms import active_terms, check_weights, compute_terms, needs_of, weighted_total
from flow3d.workdir import WorkDirLock, prepare_work_dir

logger = get_logger(__name__)

LR_FIELDS = {  # parameter name -> OptimConfig field
    "means": "lr_means",
    "quats": "lr_quats",
    "scales": "lr_scales",
    "opacities": "lr_opacities",
    "colors": "lr_colors",
    "motion_coefs": "lr_motion_coefs",
    "rots": "lr_bases_rots",
    "transls": "lr_bases_transls",
}
DECAYING = {"means", "rots", "transls"}


def named_params(model: SceneModel) -> dict[str, torch.nn.Parameter]:
    """'fg.means', 'bg.colors', 'bases.rots', ... -> parameter (the optimiser dict keys)."""
    out = {}
    for group in ("fg", "bg", "bases"):
        mod = getattr(model, group)
        if mod is not None:
            for name, p in mod.params.items():
                out[f"{group}.{name}"] = p
    return out


_CPU_FUSED_ADAM = tuple(int(x) for x in torch.__version__.split("+")[0].split(".")[:2]) >= (2, 4)
"""torch has a fused CPU Adam from 2.4 on (the package supports torch >= 2.1)."""


def make_optimizers(model: SceneModel, cfg: TrainConfig) -> dict[str, torch.optim.Optimizer]:
    """One Adam per parameter (the densification strategy resizes each parameter with its moments), at the
    learning rates of step 0 (:func:`set_learning_rates`). Adam runs its fused kernel (one call per parameter
    instead of a dozen element-wise ops; deterministic on the CPU), except where torch has none (MPS; CPU before 2.4)."""
    optimizers = {}
    for key, p in named_params(model).items():
        pname = key.split(".", 1)[1]
        fused = p.device.type == "cuda" or (p.device.type == "cpu" and _CPU_FUSED_ADAM)
        optimizers[key] = torch.optim.Adam([p], lr=getattr(cfg.optim, LR_FIELDS[pname]), eps=1e-15, fused=fused)
    set_learning_rates(optimizers, cfg, 0)
    return optimizers


def lr_factor(step: int, max_steps: int, final_factor: float) -> float:
    """Factor of the decaying learning rates (means, bases) at ``step``: ``final_factor ** (step / max_steps)``,
    held at ``final_factor`` from ``max_steps`` on.

    A pure function of (step, max_steps), not a scheduler's state: a run resumed with a larger
    ``--max-steps`` follows the new schedule from its step on, and ends with exactly the learning rates of a
    straight run of the new length (the steps before the resume keep the rates they had)."""
    return final_factor ** (min(step, max_steps) / max(max_steps, 1))


def set_learning_rates(optimizers: dict[str, torch.optim.Optimizer], cfg: TrainConfig, step: int) -> None:
    """Set every optimiser's learning rate for ``step``: the configured rate, times :func:`lr_factor` for the
    decaying parameters."""
    factor = lr_factor(step, cfg.max_steps, cfg.optim.lr_final_factor)
    for key, opt in optimizers.items():
        pname = key.split(".", 1)[1]
        lr = getattr(cfg.optim, LR_FIELDS[pname]) * (factor if pname in DECAYING else 1.0)
        for group in opt.param_groups:
            group["lr"] = lr


class StopRequest:
    """SIGINT and SIGTERM during training: the first one asks the loop to stop at the next step boundary
    (``signum`` is then set); a second one raises :class:`flow3d.errors.Interrupted` at once. Installed in the
    main thread only; the previous handlers come back on exit."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.signum: int | None = None
        self._previous: dict = {}

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def _handle(self, signum, frame) -> None:
        if self.signum is not None:
            raise Interrupted(
                signum,
                f"aborted by a second {signal_name(signum)}; the files on disk are whole: "
                "run the same command again to resume from the last checkpoint",
            )
        self.signum = signum

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous = {}


def scene_extent(model: SceneModel) -> float:
    pts = model.fg.get_means() if model.bg is None else torch.cat([model.fg.get_means(), model.bg.get_means()])
    centre = pts.median(dim=0).values
    return float((pts - centre).norm(dim=-1).quantile(0.9).clamp_min(1e-3).detach())


def align_prior(seq, mode: str):
    """``seq`` with its prior's drift over time removed (``--prior-align``; deterministic, so a resumed run
    gets the same prior)."""
    if mode == "none":
        return seq
    return apply_prior_drift(seq, estimate_prior_drift(seq, fit=mode))


def _recorded_config(path: Path, payload: dict, cfg_path: Path) -> dict | None:
    """The options checkpoint ``payload`` (at ``path``) was trained with: the ``config`` it records, or for a
    checkpoint of an older version WORK_DIR/cfg.yaml; None (logged) when neither can be read."""
    old = payload.get("config")
    if isinstance(old, dict):
        return old
    import yaml

    try:
        old = yaml.safe_load(cfg_path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError, UnicodeDecodeError):
        old = None
    if not isinstance(old, dict):
        logger.warning(
            "%s records no options and %s cannot be read: the options of this command are not compared with "
            "the checkpoint's",
            path,
            cfg_path,
        )
        return None
    return old


class Trainer:
    """Owns the run: the sequence, the model and its optimisers, the densification state, the RNGs."""

    def __init__(self, cfg: TrainConfig, seq=None):
        self.cfg = cfg
        self.work_dir = Path(cfg.work_dir)
        self.device = pick_device(cfg.device)
        self.weights = check_weights(cfg.losses)  # before anything slow: a config error stops here
        self.terms = active_terms(self.weights)
        self.needs = needs_of(self.terms)
        resume = resume_point(self.work_dir / "checkpoints")  # an unusable checkpoint or other data stop here
        self.history: list = []  # cfg.yaml's record of --resume-with-changes
        if resume is not None:
            check_data_config(resume[1].get("data"), data_config_record(cfg.data), resume[0])
            self.history = self._check_resume_config(*resume)
        self.finished = resume is not None and self._is_finished(int(resume[1]["step"]))
        logger.info("device %s, render backend %s", self.device, describe_backend(cfg.render_backend, self.device))
        seq = seq if seq is not None else cfg.data.load()  # its prior validity was decided on loading
        _log_split(cfg.data, seq)
        self.data_record = {"config": data_config_record(cfg.data), **content_record(seq)}
        self.seq = align_prior(seq, cfg.prior_align)
        self.usable_tracks = UsableTracks.of(self.seq)  # once per sequence, not per step
        # Seeding, once, here at the start; a resumed run restores both generators from its checkpoint.
        torch.manual_seed(cfg.seed)
        self.generator = torch.Generator().manual_seed(cfg.seed)
        self.step = 0
        self.nonfinite_in_row = 0
        self.timing = {"render": 0.0, "losses": 0.0, "backward_optim": 0.0, "steps": 0}
        self._camera_state = None  # --optim.refine-cameras: the corrections of a resumed run
        if resume is not None:
            check_same_content(resume[1].get("data"), self.seq, resume[0])
            self._resume(*resume)
        else:
            self._initialize()
        self.all_w2cs = self.seq.w2cs.to(self.device)
        self.cam_refine = self.cam_opt = None
        if cfg.optim.refine_cameras:
            self.cam_refine, self.cam_opt = make_camera_refine(
                self.seq.num_frames, self.seq.train_ids, cfg.optim.lr_cameras, self.device, self._camera_state
            )
        self.writer = None
        self.reported: set = set()  # (term, frame) pairs already warned about, shared across steps
        if self.finished:  # nothing to train: nothing more is prepared (and no file is written)
            self.neighbor_flows = self.k_obj = None
            return
        self.neighbor_flows = (
            prepare_neighbor_flows(self.seq, cfg.losses.order, self.work_dir) if "flow" in self.needs else None
        )
        if self.neighbor_flows is not None and not self.neighbor_flows:
            flow_terms = sorted(t.name for t in self.terms if "flow" in needs_of((t,)))
            stride = cfg.losses.order.neighbor_stride
            logger.warning(
                "%s %d: no training frame has a neighbour (%d training frames), so %s get no pixel pairs and do "
                "nothing in this run; use a stride below %d",
                flag_name("losses.order.neighbor_stride"),
                stride,
                len(self.seq.train_ids),
                ", ".join(flow_terms) or "the flow terms",
                max(len(self.seq.train_ids), 2),
            )
        self.k_obj = depth_order.calibrate_k_obj(self.seq) if "k_obj" in self.needs else None

    def _check_resume_config(self, path: Path, payload: dict) -> list:
        """The options of this command against those checkpoint ``payload`` was trained with (the ``config`` it
        records; a checkpoint of an older version: WORK_DIR/cfg.yaml), before the data loads. Returns the
        history to write in cfg.yaml. ``--max-steps`` below the checkpoint's step, or a changed option that
        shapes the model or its optimisation without ``--resume-with-changes``, is one ``ValueError``;
        safe changes (:data:`flow3d.config.RESUME_SAFE`) are logged."""
        cfg, step = self.cfg, int(payload["step"])
        cfg_path = self.work_dir / "cfg.yaml"
        history = (
            list(payload["config_history"])
            if isinstance(payload.get("config_history"), list)
            else config_history(cfg_path)
        )
        if cfg.max_steps < step:
            raise ValueError(
                f"--max-steps {cfg.max_steps} is below the step of {path} ({step}): a training never goes back; "
                f"give --max-steps {step} or more to continue it, or another --work-dir for a new training"
            )
        old = _recorded_config(path, payload, cfg_path)
        if old is None:
            return history
        guarded, safe = resume_differences(old, cfg)
        if guarded and not cfg.resume_with_changes:
            raise ValueError(
                f"{path} (step {step}) was trained with other options than this command's (checkpoint -> now): "
                f"{describe_changes(guarded)}. "
                f"Give another --work-dir for a new training with these options, or add --resume-with-changes to "
                f"continue this one with them (recorded in the history of {cfg_path})"
            )
        if safe:
            logger.info(
                "resuming with changed options that are safe to change (checkpoint -> now): %s", describe_changes(safe)
            )
        if guarded:
            logger.warning(
                "--resume-with-changes: continuing %s (step %d) with changed options: %s (recorded in %s)",
                path,
                step,
                describe_changes(guarded),
                cfg_path,
            )
            history.append(
                {
                    "step": step,
                    "time": time.strftime("%Y-%m-%d %H:%M:%S"),
                    "changed": {flag_name(n): {"from": o, "to": v} for n, o, v in guarded + safe},
                }
            )
        return history

    def _is_finished(self, step: int) -> bool:
        """The checkpoint is the end of this training: at ``--max-steps``, with its numbered checkpoint and
        train_stats.json written (an interruption on the last step leaves them to write)."""
        if step < self.cfg.max_steps:
            return False
        if not (self.work_dir / "checkpoints" / f"model_{step}.ckpt").is_file():
            return False
        try:
            return json.loads((self.work_dir / "train_stats.json").read_text(encoding="utf-8")).get("steps") == step
        except (OSError, ValueError, AttributeError):
            return False

    def _initialize(self) -> None:
        model, can_t = initialize_scene(self.seq, self.cfg.init, self.generator)
        self.model = model.to(self.device)
        self.canonical_t = can_t
        self.optimizers = make_optimizers(self.model, self.cfg)
        self.strategy = DensifyStrategy(self.cfg.densify, scene_extent(self.model))
        self.strategy_state = self.strategy.initialize_state()

    # ------------------------------------------------------------------------------------ checkpoints
    def _payload(self) -> dict:
        return {
            "step": self.step,
            "model": self.model.state_dict(),
            "optimizers": {k: o.state_dict() for k, o in self.optimizers.items()},
            "data": self.data_record,
            "strategy_state": self.strategy_state,
            "scene_extent": self.strategy.scene_extent,
            "canonical_t": self.canonical_t,
            "rng": {"torch": torch.get_rng_state(), "generator": self.generator.get_state()},
            "camera_refine": None if self.cam_refine is None else camera_refine_state(self.cam_refine, self.cam_opt),
            "config": config_to_dict(dataclasses.replace(self.cfg, resume_with_changes=False)),
            "config_history": self.history,
        }

    def save(self, numbered: bool) -> Path:
        """Write ``model_<step>.ckpt`` (when ``numbered``) and ``last.ckpt``; returns the path of ``last.ckpt``."""
        payload = self._payload()
        ckpt_dir = self.work_dir / "checkpoints"
        if numbered:
            save_checkpoint(ckpt_dir / f"model_{self.step}.ckpt", payload)
        save_checkpoint(ckpt_dir / "last.ckpt", payload)
        return ckpt_dir / "last.ckpt"

    def _resume(self, path: Path, payload: dict) -> None:
        """Continue from checkpoint ``payload`` (read from ``path``): model, optimisers, densification, RNGs.
        Checkpoints of older versions (with learning-rate scheduler states) load too: the rates follow the step.
        A payload whose parts do not fit (another program's) is one ``ValueError`` naming the file."""
        try:
            self._restore(path, payload)
        except (KeyError, TypeError, IndexError, RuntimeError) as e:
            if isinstance(e, RuntimeError) and not any(k in str(e) for k in ("state_dict", "size mismatch", "loading")):
                raise
            raise ValueError(
                f"checkpoint {path} cannot be resumed from ({type(e).__name__}: {' '.join(str(e).split())[:300]}): "
                "it was not written by this version of run_training.py; move it away, or give another "
                "--work-dir"
            ) from None

    def _restore(self, path: Path, payload: dict) -> None:
        self.model = SceneModel.from_state_dict(payload["model"]).to(self.device)
        self.optimizers = make_optimizers(self.model, self.cfg)
        for k, o in self.optimizers.items():
            o.load_state_dict(payload["optimizers"][k])
        set_learning_rates(self.optimizers, self.cfg, int(payload["step"]))
        self.strategy = DensifyStrategy(self.cfg.densify, payload["scene_extent"])
        self.strategy_state = payload["strategy_state"]
        self.canonical_t = payload["canonical_t"]
        self.step = int(payload["step"])
        torch.set_rng_state(payload["rng"]["torch"])
        self.generator.set_state(payload["rng"]["generator"])
        self._camera_state = payload.get("camera_refine")
        logger.info("resumed from %s at step %d", path, self.step)

    # ------------------------------------------------------------------------------------------ steps
    def train_step(self) -> dict[str, Tensor] | None:
        """One optimisation step: render -> loss terms -> optimiser step.

        Returns the unweighted terms with 'total' and 'psnr' (detached, for logging), or None when the
        step was skipped because the loss was not finite."""
        t0 = time.perf_counter()
        batch = batch_to(
            sample_batch(
                self.seq,
                self.cfg.batch_size,
                self.cfg.num_targets,
                self.cfg.losses.num_track_samples,
                self.generator,
                self.usable_tracks,
            ),
            self.device,
        )
        if self.cam_refine is not None:
            batch = self.cam_refine.refine_batch(batch)
        all_w2cs = self.current_w2cs()
        out, next_out = self._render(batch, all_w2cs)
        t1 = time.perf_counter()
        values = compute_terms(self._context(batch, out, next_out, all_w2cs), self.terms)
        total = weighted_total(values, self.weights)
        t2 = time.perf_counter()
        if not torch.isfinite(total):
            self._skip(values)
            return None
        valid = list(batch.valid_masks) + (
            list(self.seq.valid_masks[self._next_ts(batch)].to(self.device)) if next_out is not None else []
        )
        self._optimise(total, [r for r in (out, next_out) if r is not None], batch.img_wh, valid)
        self._add_timing(t0, t1, t2)
        self._last_out, self._last_batch = out, batch
        logged = {k: v.detach() for k, v in values.items()}
        logged["total"] = total.detach()
        logged["psnr"] = psnr(out.img.detach(), batch.imgs, batch.valid_masks[..., None]).mean()
        return logged

    def _render(self, batch, all_w2cs: Tensor) -> tuple[RenderOutput, RenderOutput | None]:
        """The batch's frames (with the track channels when a term needs tracks) and, when a term needs
        them, their flow neighbours."""
        cfg, tracks = self.cfg, "tracks" in self.needs
        bg = torch.tensor(cfg.bg_color, device=self.device)
        out = self.model.render(
            batch.ts,
            batch.w2cs,
            batch.Ks,
            batch.img_wh,
            target_ts=batch.target_ts if tracks else None,
            target_w2cs=batch.target_w2cs if tracks else None,
            bg_color=bg,
            backend=cfg.render_backend,
        )
        if "neighbor_render" not in self.needs:
            return out, None
        next_ts = self._next_ts(batch).to(self.device)
        # the terms read the neighbours' depth only (flow3d.train.depth_order): no colour channels
        next_out = self.model.render(
            next_ts,
            all_w2cs[next_ts],
            self.seq.Ks[next_ts.cpu()].to(self.device),
            batch.img_wh,
            backend=cfg.render_backend,
            depth_only=True,
        )
        return out, next_out

    def _next_ts(self, batch) -> Tensor:
        """(B,) long on the CPU: each batch frame's flow neighbour (itself when it has none)."""
        flows = self.neighbor_flows
        return torch.tensor([flows[t].next_t if t in flows else t for t in batch.ts.tolist()])

    def _context(self, batch, out: RenderOutput, next_out: RenderOutput | None, all_w2cs: Tensor) -> StepContext:
        return StepContext(
            batch=batch,
            out=out,
            model=self.model,
            cfg=self.cfg.losses,
            generator=self.generator,
            step=self.step,
            all_w2cs=all_w2cs,
            next_out=next_out,
            neighbor_flows=self.neighbor_flows,
            k_obj=self.k_obj,
            reported=self.reported,
        )

    def _optimise(
        self, total: Tensor, renders: list[RenderOutput], img_wh: tuple[int, int], valid: list[Tensor]
    ) -> None:
        """Backward, one Adam step per parameter, densification, learning-rate schedules. ``valid``: each
        rendered frame's (H, W) valid mask, in the order of the renders' frames (densification statistics)."""
        self.nonfinite_in_row = 0
        info = {
            "means2d": [m for r in renders for m in r.means2d],
            "radii": [x for r in renders for x in r.radii],
            "img_wh": img_wh,
            "valid": valid,
            "batch_size": len(renders[0].means2d),
        }
        self.strategy.step_pre_backward(self.model, self.optimizers, self.strategy_state, self.step, info)
        total.backward()
        for o in self._all_optimizers():
            o.step()
        self.strategy.step_post_backward(self.model, self.optimizers, self.strategy_state, self.step, info)
        for o in self._all_optimizers():
            o.zero_grad(set_to_none=True)
        self.step += 1
        set_learning_rates(self.optimizers, self.cfg, self.step)

    def _skip(self, values: dict[str, Tensor]) -> None:
        """A non-finite loss: nothing is updated; too many in a row stop the run with a clear error."""
        bad = [k for k, v in values.items() if not torch.isfinite(v)]
        self.nonfinite_in_row += 1
        logger.warning(
            "step %d: non-finite loss in %s; step skipped (%d in a row)", self.step, bad, self.nonfinite_in_row
        )
        if self.nonfinite_in_row >= self.cfg.max_nonfinite_steps:
            raise TrainingError(
                f"{self.nonfinite_in_row} consecutive steps had a non-finite loss ({self._nonfinite_advice(bad)})"
            )
        for o in self._all_optimizers():
            o.zero_grad(set_to_none=True)
        self.step += 1
        set_learning_rates(self.optimizers, self.cfg, self.step)

    def _nonfinite_advice(self, bad: list[str]) -> str:
        """What the non-finite terms ``bad`` point at: weights too large (every term finite, their weighted sum
        not), a diverged optimisation (the scene's parameters are not finite), or the terms' inputs."""
        top = max(self.terms, key=lambda t: abs(self.weights[t.name]))
        largest = f"the largest weight is {flag_name('losses.' + top.weight)} {self.weights[top.name]:g}"
        if not bad or bad == ["total"]:
            return (
                f"every term is finite but their weighted sum is not: a loss weight is too large ({largest}); lower it"
            )
        params = named_params(self.model)
        diverged = sorted(k for k, p in params.items() if not bool(torch.isfinite(p.detach()).all()))
        if diverged:
            return (
                f"terms {bad}; the scene's parameters {diverged[:4]} are no longer finite: the optimisation "
                f"diverged; lower the learning rates (--optim.lr-*) or large loss weights ({largest})"
            )
        return (
            f"terms {bad} with finite parameters: check their inputs (the depth prior for the depth terms, the "
            f"tracks for the track terms) and the learning rates"
        )

    def _all_optimizers(self) -> list:
        """The scene's optimisers and, with --optim.refine-cameras, the cameras' (kept out of the dict that the
        densification strategy resizes)."""
        return list(self.optimizers.values()) + ([self.cam_opt] if self.cam_opt is not None else [])

    def current_w2cs(self) -> Tensor:
        """(T, 4, 4) cameras of every frame, with the learned corrections when --optim.refine-cameras is on."""
        return self.all_w2cs if self.cam_refine is None else self.cam_refine.all_w2cs(self.all_w2cs)

    def _add_timing(self, t0: float, t1: float, t2: float) -> None:
        self.timing["render"] += t1 - t0
        self.timing["losses"] += t2 - t1
        self.timing["backward_optim"] += time.perf_counter() - t2
        self.timing["steps"] += 1

    # ----------------------------------------------------------------------------------------- logging
    def _log(self, terms: dict[str, Tensor]) -> None:
        if self.writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(self.work_dir / "tb"))
        for k, v in terms.items():
            self.writer.add_scalar(f"train/{k}", float(v), self.step)
        self.writer.add_scalar("train/num_fg", self.model.num_fg, self.step)
        self.writer.add_scalar("train/num_bg", self.model.num_bg, self.step)

    def _log_images(self) -> None:
        if self.writer is None:
            return
        out, b = self._last_out, self._last_batch
        depth = out.depth[0, ..., 0].detach()
        prior_depth, _ = disp_to_depth(b.prior_disp[0], b.prior_valid[0])
        norm = lambda d: (d - d.min()) / (d.max() - d.min()).clamp_min(1e-8)  # noqa: E731
        panel = torch.cat(
            [
                out.img[0].detach().clamp(0, 1),
                norm(depth)[..., None].expand(-1, -1, 3),
                norm(prior_depth)[..., None].expand(-1, -1, 3),
            ],
            dim=1,
        )
        self.writer.add_image("train/rgb|depth|prior_depth", panel.cpu(), self.step, dataformats="HWC")

    @torch.no_grad()
    def eval_psnr(self, ids: Tensor) -> float:
        """Mean PSNR over the valid pixels (``valid_masks``: not over ignored ones) of the frames ``ids``
        rendered from their cameras (held-out frames for validation)."""
        if len(ids) == 0:
            return float("nan")
        vals = []
        w2cs = self.current_w2cs()
        for t in ids.tolist():
            ts = torch.tensor([t], device=self.device)
            out = self.model.render(
                ts,
                w2cs[t : t + 1],
                self.seq.Ks[t : t + 1].to(self.device),
                (self.seq.images.shape[2], self.seq.images.shape[1]),
                bg_color=torch.tensor(self.cfg.bg_color, device=self.device),
                backend=self.cfg.render_backend,
            )
            valid = self.seq.valid_masks[t : t + 1, ..., None].to(self.device)  # (1, H, W, 1)
            vals.append(float(psnr(out.img, self.seq.images[t : t + 1].to(self.device), valid)))
        return sum(vals) / len(vals)

    def fit(self) -> dict:
        """Train from the current step to ``max_steps``; returns the stats also written to train_stats.json.

        SIGINT / SIGTERM: saves ``last.ckpt`` at the step boundary and raises :class:`flow3d.errors.Interrupted`."""
        cfg = self.cfg
        if self.finished:
            return self._nothing_to_train()
        self.work_dir.mkdir(parents=True, exist_ok=True)
        for folder in (self.work_dir, self.work_dir / "checkpoints"):
            for p in remove_stale_temporaries(folder):
                logger.warning("removed %s, left by an interrupted write", p)
        save_config(cfg, self.work_dir / "cfg.yaml", self.history)
        start = self.step
        t_start = time.perf_counter()
        self._step_times: list[float] = []
        bar = tqdm(total=cfg.max_steps, initial=start, desc="train", dynamic_ncols=True)
        with StopRequest() as stop:
            try:
                while self.step < cfg.max_steps and stop.signum is None:
                    t0 = time.perf_counter()
                    self._fit_step(bar)
                    self._expected_time(time.perf_counter() - t0, start)
            finally:
                bar.close()  # an error raised mid-training starts its own line, not the bar's
            last = self.save(numbered=stop.signum is None)  # interrupted: last.ckpt at this step only
        if stop.signum is not None:
            raise Interrupted(
                stop.signum,
                f"interrupted by {signal_name(stop.signum)} at step {self.step}: saved {last}; "
                "run the same command again to resume",
            )
        return self._finish(start, time.perf_counter() - t_start)

    def _nothing_to_train(self) -> dict:
        """A finished training re-run: no step to take, no file written; the stats it wrote are returned."""
        stats_path = self.work_dir / "train_stats.json"
        logger.info(
            "nothing to train: %s is at step %d = --max-steps; no file was written (raise --max-steps to train on)",
            self.work_dir / "checkpoints",
            self.step,
        )
        return {**json.loads(stats_path.read_text(encoding="utf-8")), "steps_this_run": 0}

    EXPECTED_TIME_STEPS = 6
    """Steps timed (the first, with its warm-up, left out) before the expected time of a CPU run is logged."""
    LONG_CPU_RUN_S = 3600.0
    """A CPU run expected to take longer than this is told about the CPU presets."""

    def _expected_time(self, seconds: float, start: int) -> None:
        """On the CPU: after the first few steps, one line with the expected time of the run when it exceeds
        :data:`LONG_CPU_RUN_S` (a config sized for a GPU), naming the CPU presets."""
        if self.device.type != "cpu" or self._step_times is None:
            return
        self._step_times.append(seconds)
        if len(self._step_times) < self.EXPECTED_TIME_STEPS:
            return
        times, self._step_times = self._step_times[1:], None  # measured once
        per_step = sum(times) / len(times)
        left = (self.cfg.max_steps - self.step) * per_step
        if left > self.LONG_CPU_RUN_S:
            with tqdm.external_write_mode():  # a line of its own, not glued to the bar's
                logger.warning(
                    "on the CPU this run takes about %s more (%.2f s/step over steps %d-%d, %d steps to go): its "
                    "config is sized for a GPU; for a CPU run in minutes use --preset cpu_demo (or --preset "
                    "cpu_endonerf for endoscopy)",
                    _duration(left),
                    per_step,
                    start + 2,
                    self.step,
                    self.cfg.max_steps - self.step,
                )

    def _fit_step(self, bar) -> None:
        """One step of :meth:`fit` with its logging and periodic checkpoints."""
        cfg = self.cfg
        terms = self.train_step()
        bar.update(1)
        if terms is None:
            return
        if self.step % cfg.log_every == 0 or self.step == cfg.max_steps:
            bar.set_postfix(
                loss=f"{float(terms['total']):.4f}",
                psnr=f"{float(terms['psnr']):.2f}",
                n=self.model.num_fg + self.model.num_bg,
            )
            self._log(terms)
        if cfg.image_every > 0 and self.step % cfg.image_every == 0:
            self._log_images()
        if cfg.save_every > 0 and self.step % cfg.save_every == 0:
            self.save(numbered=True)

    def _finish(self, start: int, wall: float) -> dict:
        """train_stats.json (valid JSON: null where a value is not finite) and the closing log line."""
        n = max(self.timing["steps"], 1)
        if len(self.seq.val_ids) == 0:
            logger.info(
                "no held-out frame (%d frames, --data.val-every %s): val_psnr is null in train_stats.json",
                self.seq.num_frames,
                getattr(self.cfg.data, "val_every", "?"),
            )
        stats = {
            "steps": self.step,
            "steps_this_run": self.step - start,
            "wall_seconds": wall,
            "seconds_per_step": {k: self.timing[k] / n for k in ("render", "losses", "backward_optim")},
            "num_fg": self.model.num_fg,
            "num_bg": self.model.num_bg,
            "val_psnr": self.eval_psnr(self.seq.val_ids) if len(self.seq.val_ids) else None,
            "train_psnr": self.eval_psnr(self.seq.train_ids[: min(4, len(self.seq.train_ids))]),
        }
        write_json(self.work_dir / "train_stats.json", stats)
        if self.writer is not None:
            self.writer.close()
        held_out = "none" if stats["val_psnr"] is None else f"{stats['val_psnr']:.2f} dB"
        logger.info(
            "done: %d steps in %.1f s; held-out PSNR %s; per step: render %.3f s, losses %.3f s, backward+optim %.3f s",
            self.step,
            wall,
            held_out,
            *stats["seconds_per_step"].values(),
        )
        return stats


def _log_split(data_cfg, seq) -> None:
    """Training always fits the training frames; ``--data.is-train`` selects the split run_val.py scores. Said
    once, as a warning when the command asks for the other split."""
    n_train, n_val = len(seq.train_ids), len(seq.val_ids)
    split = f"{n_train} training frames ({n_val} held out, --data.val-every {getattr(data_cfg, 'val_every', '?')})"
    if getattr(data_cfg, "is_train", True) is False:
        logger.warning(
            "--data.is-train False does not change what trains: run_training.py always fits the %s; "
            "--data.is-train selects the frames run_val.py scores",
            split,
        )
    else:
        logger.info("training on the %s", split)


def _duration(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 60:.0f} min" if seconds >= 60 else f"{seconds:.0f} s"


def describe_backend(name: str, device: torch.device) -> str:
    """The rasterizer ``--render-backend name`` gives on ``device`` ('auto' resolved, as the renderer does)."""
    if name not in ("auto", "cpu"):
        return name
    if device.type == "cuda" and name == "auto":
        from flow3d.render import gsplat_backend

        return "gsplat" if gsplat_backend.gsplat_available_for(torch.empty(0, device=device)) else "torch"
    if device.type != "cpu":
        return "torch"
    from flow3d.render import compiled

    if compiled.load_extension():
        return "cpu (the compiled CPU rasterizer)"
    return f"torch (the compiled CPU rasterizer is unavailable: {compiled.load_error()})"


def train(cfg: TrainConfig) -> dict:
    """Train (or resume) in ``cfg.work_dir``; see the module docstring for what is checked first."""
    validate_config(cfg)
    work_dir = prepare_work_dir(cfg.work_dir)  # a file, or a folder that cannot be written: one error, first
    with WorkDirLock(work_dir):
        return Trainer(cfg).fit()
