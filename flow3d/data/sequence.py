"""The one in-memory form every loader returns: :class:`VideoSequence`, plus the helpers the trainer
needs to initialise a scene from it (lifting 2D tracks to 3D, back-projecting background depth).

Conventions follow the glossary in :mod:`flow3d`. Everything lives on the CPU in float32 (bool/long where
said); the trainer moves what it needs with :meth:`VideoSequence.to`.

Ignored pixels (e.g. surgical instruments): a pixel to ignore is ``valid_masks == False``. There is no
separate ignore field: every loss term and metric skips invalid pixels, and the sequence itself applies
the mask to what was derived from the pixels (on construction): the prior is invalid there and track
entries there are unknown. ``fg_masks`` stays the dynamic-foreground mask; on endoscopy data it is 1 on
all tissue (it all deforms) and 0 on instruments.

Split: ``train_ids`` / ``val_ids`` index frames ``0..T-1`` (see :func:`flow3d.data.split.split_frames`).
The trainer must use only train frames: images, masks and depth priors of train frames, and track
entries whose query frame *and* target frame are both train frames (:meth:`VideoSequence.track_train_mask`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from flow3d import depth as depth_lib
from flow3d.geometry import bilinear_sample, pixel_grid, project_points, transform_points, unproject_pixels
from flow3d.log import get_logger

logger = get_logger(__name__)


@dataclass
class HeldOutViews:
    """Validation images from *other* cameras at the video's timestamps (DyCheck iPhone protocol).

    ``t`` indexes the video's frames (0..T-1): the view shows the scene at the time of frame ``t[v]``.
    """

    images: Tensor  # (V, H, W, 3) in [0, 1]
    valid_masks: Tensor  # (V, H, W) bool
    w2cs: Tensor  # (V, 4, 4)
    Ks: Tensor  # (V, 3, 3) OpenCV pixel-centre convention
    t: Tensor  # (V,) long, index into the video's frames
    names: list[str] = field(default_factory=list)
    covisible_masks: Optional[Tensor] = None  # (V, H, W) bool, pixels seen by the training camera
    fg_masks: Optional[Tensor] = None  # (V, H, W) float


class Tracks3D(NamedTuple):
    """2D tracks lifted to world points with the depth prior (Shape of Motion's initialisation input)."""

    points: Tensor  # (N, T, 3) world points, normalised scene units
    visible: Tensor  # (N, T) bool: confidently visible, in the foreground, depth valid, train frame
    invisible: Tensor  # (N, T) bool: confidently occluded (Shape of Motion's ``invisibles``)
    confidence: Tensor  # (N, T) float in [0, 1]
    colors: Tensor  # (N, 3) colour at the query pixel
    query_t: Tensor  # (N,) long


def _empty_tracks_3d(T: int) -> Tracks3D:
    """No track, with the shapes of ``T`` frames."""
    z = torch.zeros
    return Tracks3D(
        z(0, T, 3), z(0, T, dtype=torch.bool), z(0, T, dtype=torch.bool), z(0, T), z(0, 3), z(0, dtype=torch.long)
    )


class BgPoints(NamedTuple):
    """Back-projected background pixels of the depth prior."""

    points: Tensor  # (N, 3) world points
    normals: Tensor  # (N, 3) unit normals from the depth map, facing the camera
    colors: Tensor  # (N, 3)


@dataclass
class VideoSequence:
    """A monocular video with everything the trainer reads. See the module docstring for the split."""

    name: str
    images: Tensor  # (T, H, W, 3) float in [0, 1]
    fg_masks: Tensor  # (T, H, W) float in [0, 1], foreground
    valid_masks: Tensor  # (T, H, W) bool, pixels usable at all; False = ignore (e.g. an instrument)
    prior_disp: Tensor  # (T, H, W) disparity prior (1/z up to scale and shift), 0 where invalid
    prior_valid: Tensor  # (T, H, W) bool: given validity AND flow3d.depth.is_valid (set on construction)
    w2cs: Tensor  # (T, 4, 4) world -> camera, OpenCV axes
    Ks: Tensor  # (T, 3, 3) pixels, OpenCV pixel-centre convention
    time_ids: Tensor  # (T,) long, original frame numbers
    train_ids: Tensor  # (T_train,) long, indices into 0..T-1
    val_ids: Tensor  # (T_val,) long, indices into 0..T-1
    tracks_xy: Tensor  # (M, T, 2) OpenCV pixels; one row per track, all frames as targets
    tracks_visible: Tensor  # (M, T) bool
    tracks_conf: Tensor  # (M, T) float in [0, 1]; > 0 and not visible = confidently occluded
    tracks_query_t: Tensor  # (M,) long, the query frame of each track (0..T-1)
    scene_scale: float = 1.0
    """x_norm = (scene_transform @ x_orig)[:3] / scene_scale; depth_orig = depth_norm * scene_scale."""
    scene_transform: Tensor = field(default_factory=lambda: torch.eye(4))  # (4, 4)
    gt_depth: Optional[Tensor] = None  # (T, H, W) z-depth, normalised units; 0 where unknown
    gt_depth_source: str = "ground truth"
    """What ``gt_depth`` is: "ground truth" (synthetic scenes) or "stereo" (a stereo reconstruction such as
    EndoNeRF's ``depth/`` folder: a reference with holes and errors, not ground truth)."""
    gt_tracks_3d: Optional[Tensor] = None  # (M, T, 3) world points of the tracks above
    gt_points: Optional[Tensor] = None  # (T, H, W, 3) world point seen by each pixel at its frame's time
    gt_object_ids: Optional[Tensor] = None  # (T, H, W) long, -1 = static background, k = object k
    gt_object_poses: Optional[Tensor] = None  # (O, T, 4, 4) object -> world (normalised world)
    gt_prior_affine: Optional[Tensor] = None  # (T, 2): prior_disp = a_t / gt_depth + b_t before noise/blur
    # A deforming surface (the tissue scene) instead of rigid objects: its material points on a grid.
    gt_surface_points: Optional[Tensor] = None  # (T, Hs, Ws, 3) world position of each grid point at each frame
    gt_surface_uv: Optional[Tensor] = None  # (T, H, W, 2) grid coords (x, y) of the surface point behind each pixel
    gt_hidden_images: Optional[Tensor] = (
        None  # (T, H, W, 3) what the scene looks like without what ignored pixels show (the tissue under instruments)
    )
    gt_never_seen: Optional[Tensor] = None  # (T, H, W) bool: the pixel's surface point is seen by no training frame
    val_views: Optional[HeldOutViews] = None
    frame_names: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        """The one place where prior pixels and track entries are judged.

        * ``prior_valid`` keeps only pixels that pass :func:`flow3d.depth.is_valid` (finite, >
          ``flow3d.depth.EPS``) and are not ignored (``valid_masks``: the prior at an instrument is the
          instrument's, not the tissue's); the disparity is 0 wherever ``prior_valid`` is False.
        * A track entry that touches an ignored pixel (:func:`touches_ignored`) is neither visible nor
          confidently occluded (confidence 0); a track whose query point touches one (a point on an
          instrument) is unknown in every frame.

        Every loader ends by constructing the sequence, so this runs once per load (again, as a no-op,
        for copies); nothing downstream re-decides validity, and nothing mutates a sequence."""
        ok = self.prior_valid.to(torch.bool) & depth_lib.is_valid(self.prior_disp)
        n_bad = int((self.prior_valid.to(torch.bool) & ~ok).sum())
        if n_bad:
            logger.warning(
                "depth prior of %s: %d pixels are NaN/Inf or <= %g; they are masked out (prior_valid=False)",
                self.name,
                n_bad,
                depth_lib.EPS,
            )
        valid = self.valid_masks.to(torch.bool)
        self.prior_valid = ok & valid
        self.prior_disp = torch.where(self.prior_valid, self.prior_disp, torch.zeros_like(self.prior_disp))
        if not bool(valid.all()) and self.tracks_xy.shape[0] > 0:
            self._mask_tracks_on_ignored(~valid)

    def _mask_tracks_on_ignored(self, ignore: Tensor) -> None:
        """Track entries on ignored pixels become unknown; tracks starting on one become unknown everywhere."""
        on_ignored = touches_ignored(ignore, self.tracks_xy)  # (M, T)
        M = self.tracks_xy.shape[0]
        starts_ignored = on_ignored[torch.arange(M), self.tracks_query_t]  # (M,)
        unknown = on_ignored | starts_ignored[:, None]
        n_vis = int((unknown & self.tracks_visible).sum())
        if n_vis or bool(starts_ignored.any()):
            logger.info(
                "tracks of %s: %d tracks start on ignored pixels and %d visible entries lie on ignored "
                "pixels; they are unknown (not visible, confidence 0)",
                self.name,
                int(starts_ignored.sum()),
                n_vis,
            )
        self.tracks_visible = self.tracks_visible & ~unknown
        self.tracks_conf = torch.where(unknown, torch.zeros_like(self.tracks_conf), self.tracks_conf)

    # ---- basic properties -------------------------------------------------------------------------
    @property
    def num_frames(self) -> int:
        return int(self.images.shape[0])

    @property
    def img_wh(self) -> tuple[int, int]:
        """(W, H), width first."""
        return int(self.images.shape[2]), int(self.images.shape[1])

    @property
    def c2ws(self) -> Tensor:
        return torch.linalg.inv(self.w2cs)

    def prior_depth(self) -> Tensor:
        """(T, H, W) z-depth 1 / ``prior_disp`` where ``prior_valid``, 0 elsewhere."""
        return depth_lib.disp_to_depth(self.prior_disp, self.prior_valid)[0]

    def is_train_frame(self) -> Tensor:
        """(T,) bool, True for train frames."""
        out = torch.zeros(self.num_frames, dtype=torch.bool)
        out[self.train_ids] = True
        return out

    def track_train_mask(self) -> Tensor:
        """(M, T) bool: entries the trainer may use (query frame and target frame both in the train split)."""
        train = self.is_train_frame()
        return train[self.tracks_query_t][:, None] & train[None, :]

    def to(self, device) -> "VideoSequence":
        """A copy with every tensor moved to ``device``."""
        out = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if isinstance(v, Tensor):
                v = v.to(device)
            elif isinstance(v, HeldOutViews):
                v = HeldOutViews(**{k: (x.to(device) if isinstance(x, Tensor) else x) for k, x in vars(v).items()})
            out[f.name] = v
        return VideoSequence(**out)

    # ---- ground truth helpers (synthetic) ---------------------------------------------------------
    def _gt_points_moved(self, i: int, j: int) -> Tensor:
        """(H*W, 3) world points seen by frame i's pixels, moved with their object to frame j's time.
        A deforming surface: its point behind each pixel of frame i (also under an instrument), at time j."""
        if self.gt_surface_uv is not None and self.gt_surface_points is not None:
            grid = self.gt_surface_points[j].permute(2, 0, 1)[None]  # (1, 3, Hs, Ws)
            return bilinear_sample(grid, self.gt_surface_uv[i].reshape(1, -1, 2))[0]
        X = self.gt_points[i].reshape(-1, 3)
        ids = self.gt_object_ids[i].reshape(-1)
        Xj = X.clone()
        for k in range(self.gt_object_poses.shape[0]):
            sel = ids == k
            if sel.any():
                M = self.gt_object_poses[k, j] @ torch.linalg.inv(self.gt_object_poses[k, i])
                Xj[sel] = transform_points(M, X[sel])
        return Xj

    def gt_flow(self, i: int, j: int) -> Tensor:
        """True optical flow from frame i to frame j, (H, W, 2) pixels (dx, dy): pixel p of frame i moves
        to p + flow in frame j, occluded or not (see :meth:`gt_flow_visible`). Needs the synthetic GT
        (objects: gt_points/gt_object_ids/gt_object_poses; tissue: the flow of the tissue, also under
        instruments, from gt_surface_points/gt_surface_uv)."""
        rigid = self.gt_points is not None and self.gt_object_ids is not None and self.gt_object_poses is not None
        if not rigid and (self.gt_surface_uv is None or self.gt_surface_points is None):
            raise ValueError(
                f"sequence {self.name!r} has no ground-truth geometry (gt_points/gt_object_poses or gt_surface_*)"
            )
        Xj = self._gt_points_moved(i, j)
        xy, _ = project_points(Xj, self.Ks[j], self.w2cs[j])
        H, W = self.images.shape[1:3]
        return xy.reshape(H, W, 2) - pixel_grid(H, W, dtype=xy.dtype)

    def gt_flow_visible(self, i: int, j: int, rel_tol: float = 0.01) -> Tensor:
        """(H, W) bool: the point of frame i's pixel lands inside frame j and is not occluded there
        (its depth matches frame j's GT depth at the nearest pixel within ``rel_tol``). On the tissue scene
        ``gt_depth`` is the tissue's, so instruments do not occlude here: ``valid_masks`` marks them."""
        if self.gt_depth is None:
            raise ValueError(f"sequence {self.name!r} has no gt_depth")
        H, W = self.gt_depth.shape[1:]
        flow = self.gt_flow(i, j)
        xy = pixel_grid(H, W, dtype=flow.dtype) + flow
        _, z = project_points(self._gt_points_moved(i, j), self.Ks[j], self.w2cs[j])
        xi = xy[..., 0].round().long().reshape(-1)
        yi = xy[..., 1].round().long().reshape(-1)
        inside = (xi >= 0) & (xi < W) & (yi >= 0) & (yi < H) & (z > 0)
        zb = self.gt_depth[j][yi.clamp(0, H - 1), xi.clamp(0, W - 1)]
        return (inside & ((zb - z).abs() <= rel_tol * z.abs())).reshape(H, W)

    # ---- initialisation helpers -------------------------------------------------------------------
    def lift_tracks(self, idx: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        """The one lifting of 2D tracks to world points with the depth prior and the cameras.

        idx: (N,) long track rows (default: all M). Each entry's prior depth is read bilinearly at its
        position in its frame and unprojected with that frame's camera. Returns points (N, T, 3) and
        depth_ok (N, T) bool: the prior is valid at all four pixels the bilinear read touches. Visibility,
        masks and the split are the caller's to apply.
        """
        xy = self.tracks_xy.transpose(0, 1)  # (T, M, 2)
        if idx is not None:
            xy = xy[:, idx]
        depth = bilinear_sample(self.prior_depth()[:, None], xy)[..., 0]  # (T, N)
        depth_ok = bilinear_sample(self.prior_valid[:, None].float(), xy)[..., 0] > 0.999
        pts = unproject_pixels(xy, depth, self.Ks, self.c2ws)  # (T, N, 3)
        return pts.transpose(0, 1).contiguous(), depth_ok.transpose(0, 1).contiguous()

    def get_tracks_3d(
        self, num: int, generator: Optional[torch.Generator] = None, erosion_px: int = 3, min_visible_frac: float = 0.05
    ) -> Tracks3D:
        """Lift foreground tracks to world points with the depth prior and the cameras.

        Keeps tracks whose query frame is a train frame and whose query pixel lies in the (eroded)
        foreground with a valid prior; a target entry is ``visible`` when the track says so, it falls in
        the eroded foreground with a valid prior, and the target is a train frame. Tracks visible in
        fewer than ``min(min_visible_frac * T, 10th percentile)`` frames are dropped (as Shape of Motion
        does). Returns at most ``num`` tracks, sampled uniformly with ``generator``.
        """
        T = self.num_frames
        if self.tracks_xy.shape[0] == 0 or num <= 0:
            return _empty_tracks_3d(T)
        fg = erode(self.fg_masks > 0.5, erosion_px) & self.valid_masks
        usable = (fg & self.prior_valid).float()  # (T, H, W)
        xy = self.tracks_xy.transpose(0, 1)  # (T, M, 2)
        in_fg = bilinear_sample(usable[:, None], xy)[..., 0] > 0.999  # (T, M)
        in_img = (
            (xy[..., 0] >= 0)
            & (xy[..., 0] <= self.img_wh[0] - 1)
            & (xy[..., 1] >= 0)
            & (xy[..., 1] <= self.img_wh[1] - 1)
        )
        in_fg = in_fg & in_img
        train_q = self.is_train_frame()[self.tracks_query_t]  # (M,)
        M = xy.shape[1]
        keep = train_q & in_fg[self.tracks_query_t, torch.arange(M)]
        train_t = self.is_train_frame()[:, None]  # (T, 1)
        conf = self.tracks_conf.transpose(0, 1)
        visible = self.tracks_visible.transpose(0, 1) & in_fg & train_t
        invisible = (~self.tracks_visible.transpose(0, 1)) & (conf > 0) & in_fg & train_t
        counts = visible.sum(0)
        if keep.any():
            thresh = min(int(min_visible_frac * T), float(counts[keep].float().quantile(0.1)))
            keep = keep & (counts >= thresh) & (counts > 0)
        idx = torch.nonzero(keep).squeeze(1)
        if idx.numel() == 0:
            return _empty_tracks_3d(T)
        if idx.numel() > num:
            idx = idx[torch.randperm(idx.numel(), generator=generator)[:num]]
        pts, _ = self.lift_tracks(idx)  # (N, T, 3); validity is in `visible` (fg & prior valid)
        q = self.tracks_query_t[idx]
        return Tracks3D(
            pts,
            visible[:, idx].T.contiguous(),
            invisible[:, idx].T.contiguous(),
            (conf[:, idx] * (visible[:, idx] | invisible[:, idx])).T.contiguous(),
            self._query_colors(idx, q),
            q,
        )

    def _query_colors(self, idx: Tensor, q: Tensor) -> Tensor:
        """(N, 3) colours of tracks ``idx`` at their query pixels (``q``: their query frames)."""
        colors = torch.zeros(idx.numel(), 3, dtype=self.images.dtype)
        qxy = self.tracks_xy[idx, q]  # (N, 2)
        for qq in torch.unique(q).tolist():
            sel = q == qq
            img = self.images[qq].permute(2, 0, 1)[None]  # (1, 3, H, W)
            colors[sel] = bilinear_sample(img, qxy[sel][None])[0]
        return colors

    def get_bg_points(self, num: int, generator: Optional[torch.Generator] = None, erosion_px: int = 3) -> BgPoints:
        """Back-project the background of the depth prior in train frames to world points.

        Pixels: eroded background, valid image pixels, valid prior. Sampled uniformly over the pooled
        pixels of all train frames, at most ``num``. Normals come from the depth map's neighbours.
        """
        bg = erode(self.fg_masks <= 0.5, erosion_px) & self.valid_masks & self.prior_valid  # (T, H, W)
        depth = self.prior_depth()
        ids = self.train_ids
        sel = bg[ids]
        cand = torch.nonzero(sel)  # (P, 3): (frame in ids, y, x)
        if cand.shape[0] == 0:
            return BgPoints(torch.zeros(0, 3), torch.zeros(0, 3), torch.zeros(0, 3))
        if cand.shape[0] > num:
            cand = cand[torch.randperm(cand.shape[0], generator=generator)[:num]]
        f = ids[cand[:, 0]]
        y, x = cand[:, 1], cand[:, 2]
        pts_map = self._world_points(depth)  # (T, H, W, 3)
        normals = normals_from_points(pts_map, self.c2ws[:, :3, 3])  # (T, H, W, 3)
        return BgPoints(pts_map[f, y, x], normals[f, y, x], self.images[f, y, x])

    def _world_points(self, depth: Tensor) -> Tensor:
        T, H, W = depth.shape
        grid = pixel_grid(H, W, dtype=depth.dtype).reshape(1, -1, 2).expand(T, -1, -1)
        return unproject_pixels(grid, depth.reshape(T, -1), self.Ks, self.c2ws).reshape(T, H, W, 3)


def touches_ignored(ignore: Tensor, xy: Tensor) -> Tensor:
    """Whether a bilinear read at each track entry touches an ignored pixel: (M, T) bool.

    ignore: (T, H, W) bool; xy: (M, T, 2) OpenCV pixels, entry (m, t) in frame t. An entry touches an
    ignored pixel when any of the (up to four) pixels that :func:`flow3d.geometry.bilinear_sample` mixes
    there is ignored with a weight above 1e-3 (positions outside the image read the border). The one rule
    for "a track lands on an ignored pixel" (also :func:`flow3d.data.endoscopy.stop_tracks_on_ignored`).
    """
    ign = ignore.to(torch.float32)[:, None]  # (T, 1, H, W)
    w = bilinear_sample(ign, xy.transpose(0, 1).to(torch.float32))[..., 0]  # (T, M)
    return (w > 1e-3).transpose(0, 1).contiguous()


def erode(mask: Tensor, radius: int) -> Tensor:
    """Binary erosion of ``mask`` (..., H, W) bool with a square of side ``2 * radius + 1`` (border kept)."""
    if radius <= 0:
        return mask
    shape = mask.shape
    m = mask.reshape(-1, 1, *shape[-2:]).float()
    k = 2 * radius + 1
    out = -F.max_pool2d(-F.pad(m, (radius,) * 4, mode="replicate"), k, stride=1)
    return (out > 0.5).reshape(shape)


def normals_from_points(points: Tensor, cam_centers: Tensor) -> Tensor:
    """Unit normals of a point map (T, H, W, 3) from central differences, oriented towards the camera
    centres (T, 3). Border pixels use one-sided differences (replicate padding)."""
    p = points.permute(0, 3, 1, 2)
    p = F.pad(p, (1, 1, 1, 1), mode="replicate").permute(0, 2, 3, 1)
    dx = p[:, 1:-1, 2:] - p[:, 1:-1, :-2]
    dy = p[:, 2:, 1:-1] - p[:, :-2, 1:-1]
    n = F.normalize(torch.cross(dx, dy, dim=-1), dim=-1)
    to_cam = cam_centers[:, None, None, :] - points
    flip = (n * to_cam).sum(-1, keepdim=True) < 0
    return torch.where(flip, -n, n)
