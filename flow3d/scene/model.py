"""The scene: foreground Gaussians moved by shared motion bases, plus static background Gaussians."""

from __future__ import annotations

from dataclasses import dataclass

import roma
import torch
import torch.nn as nn
from torch import Tensor

from flow3d.geometry import opencv_to_gsplat_Ks, quat_wxyz_to_xyzw, quat_xyzw_to_wxyz
from flow3d.render import rasterization
from flow3d.scene.gaussians import GaussianParams
from flow3d.scene.motion import MotionBases


@dataclass
class RenderOutput:
    """What one :meth:`SceneModel.render` call returns (B frames)."""

    img: Tensor | None  # (B, H, W, 3) RGB in [0, 1] composited over the background colour; None: depth_only
    depth: Tensor  # (B, H, W, 1) expected z-depth (scene units), 0 where nothing was hit
    alpha: Tensor  # (B, H, W, 1) accumulated opacity
    fg: Tensor | None  # (B, H, W, 1) rendered foreground weight; None: depth_only
    tracks_3d: Tensor | None  # (B, H, W, B_t, 3) positions at the target times, in the target cameras
    means2d: list[Tensor]  # per frame: (1, N, 2) screen-space means (grad drives densification)
    radii: list[Tensor]  # per frame: (1, N) or (1, N, 2) radii in pixels


class SceneModel(nn.Module):
    """Foreground (``fg``, with ``motion_coefs``) and background (``bg``, static) Gaussians, and bases."""

    def __init__(self, fg: GaussianParams, bases: MotionBases, bg: GaussianParams | None = None):
        super().__init__()
        if not fg.has_motion:
            raise ValueError("fg Gaussians need motion_coefs")
        if fg.params["motion_coefs"].shape[1] != bases.num_bases:
            raise ValueError(
                f"fg motion_coefs have K={fg.params['motion_coefs'].shape[1]} but bases have K={bases.num_bases}"
            )
        self.fg = fg
        self.bases = bases
        self.bg = bg

    @classmethod
    def from_state_dict(cls, state: dict[str, Tensor]) -> "SceneModel":
        fg = GaussianParams.from_state_dict(state, "fg.params.")
        bases = MotionBases(state["bases.params.rots"], state["bases.params.transls"])
        bg = GaussianParams.from_state_dict(state, "bg.params.") if "bg.params.means" in state else None
        model = cls(fg, bases, bg)
        model.load_state_dict(state)
        return model

    @property
    def num_frames(self) -> int:
        return self.bases.num_frames

    @property
    def num_fg(self) -> int:
        return self.fg.num_gaussians

    @property
    def num_bg(self) -> int:
        return 0 if self.bg is None else self.bg.num_gaussians

    def fg_means_quats_at(self, ts: Tensor, num_quats: int | None = None) -> tuple[Tensor, Tensor]:
        """Foreground centres (N, B, 3) and wxyz quaternions (N, B', 4) at frames ``ts`` (B,).

        ``num_quats``: quaternions only for the first B' = ``num_quats`` frames (default all): callers that
        need the centres at more frames (the track targets) blend every frame's bases in one call."""
        R, t = self.bases.compute_transforms(ts, self.fg.get_coefs())  # (N, B, 3, 3), (N, B, 3)
        # R @ mean as a broadcast product: einsum would run a batched matmul of N*B 3x3 matrices (slow on the CPU)
        means = (R * self.fg.get_means()[:, None, None, :]).sum(-1) + t
        q_motion = roma.rotmat_to_unitquat(R[:, :num_quats])  # xyzw
        q_can = quat_wxyz_to_xyzw(self.fg.get_quats())[:, None].expand_as(q_motion)
        quats = quat_xyzw_to_wxyz(roma.quat_product(q_motion, q_can))
        return means, quats

    def render(
        self,
        ts: Tensor,
        w2cs: Tensor,
        Ks: Tensor,
        img_wh: tuple[int, int],
        *,
        target_ts: Tensor | None = None,
        target_w2cs: Tensor | None = None,
        bg_color: Tensor | None = None,
        backend: str = "auto",
        depth_only: bool = False,
    ) -> RenderOutput:
        """Render frames ``ts`` (B,) from cameras ``w2cs`` (B, 4, 4), ``Ks`` (B, 3, 3) (OpenCV convention).

        With ``target_ts`` (B_t,) and ``target_w2cs`` (B_t, 4, 4), also renders each Gaussian's position at
        every target time in that target's camera frame (Shape of Motion's track channels).
        ``depth_only`` composites the depth channel alone (``img`` and ``fg`` are None): the same depth,
        alpha, screen-space means and radii as a full render, without the colour channels' work.
        """
        if depth_only and target_ts is not None:
            raise ValueError("depth_only renders have no track channels: give target_ts=None")
        W, H = img_wh
        B = ts.shape[0]
        # the frames' and the targets' centres from one blend of the bases
        all_ts = ts if target_ts is None else torch.cat([ts, target_ts.to(ts.device)])
        all_means, fg_quats = self.fg_means_quats_at(all_ts, num_quats=B)  # (N, B [+ B_t], 3), (N, B, 4)
        fg_means = all_means[:, :B]  # (N, B, 3)
        n_fg = self.num_fg
        ones = fg_means.new_ones(n_fg, 1)
        parts_scales = [self.fg.get_scales()]
        parts_opac = [self.fg.get_opacities()]
        parts_rgb = [self.fg.get_colors()]
        parts_fg = [ones]
        if self.bg is not None:
            parts_scales.append(self.bg.get_scales())
            parts_opac.append(self.bg.get_opacities())
            parts_rgb.append(self.bg.get_colors())
            parts_fg.append(fg_means.new_zeros(self.num_bg, 1))
        scales = torch.cat(parts_scales)
        opacities = torch.cat(parts_opac)
        static_colors = torch.cat([torch.cat(parts_rgb), torch.cat(parts_fg)], dim=-1)  # (N, 4)

        if target_ts is not None:
            if target_w2cs is None or target_w2cs.shape[0] != target_ts.shape[0]:
                raise ValueError("target_w2cs must be given with one camera per target time")
            fg_targets = all_means[:, B:]  # (N, B_t, 3)
            if self.bg is not None:
                bg_targets = self.bg.get_means()[:, None].expand(-1, target_ts.shape[0], -1)
                fg_targets = torch.cat([fg_targets, bg_targets])
            # each position in its target's camera, as a broadcast product: a batched matmul with an inner
            # size of 3 (transform_points) was ~10 ms per step here on the CPU
            R, tvec = target_w2cs[:, :3, :3], target_w2cs[:, :3, 3]  # (B_t, 3, 3), (B_t, 3)
            tracks_cam = (R * fg_targets[:, :, None, :]).sum(-1) + tvec  # (N, B_t, 3)
            track_colors = tracks_cam.reshape(fg_targets.shape[0], -1)  # (N, B_t*3)
            static_colors = torch.cat([static_colors, track_colors], dim=-1)

        if bg_color is None:
            bg_color = fg_means.new_ones(3)
        D = static_colors.shape[-1]
        backgrounds = torch.cat([bg_color, bg_color.new_zeros(D - 3)])[None]  # (1, D)
        Ks_gs = opencv_to_gsplat_Ks(Ks)
        imgs, depths, alphas, fgs, tracks, means2d, radii = [], [], [], [], [], [], []
        for b in range(B):
            means = fg_means[:, b]
            quats = fg_quats[:, b]
            if self.bg is not None:
                means = torch.cat([means, self.bg.get_means()])
                quats = torch.cat([quats, self.bg.get_quats()])
            if depth_only:  # "ED": the colours are not composited (nor their background)
                colors, alpha, meta = rasterization(
                    means,
                    quats,
                    scales,
                    opacities,
                    static_colors,
                    w2cs[b : b + 1],
                    Ks_gs[b : b + 1],
                    W,
                    H,
                    render_mode="ED",
                    backend=backend,
                )
                depths.append(colors)
                alphas.append(alpha)
                means2d.append(meta["means2d"])
                radii.append(meta["radii"])
                continue
            colors, alpha, meta = rasterization(
                means,
                quats,
                scales,
                opacities,
                static_colors,
                w2cs[b : b + 1],
                Ks_gs[b : b + 1],
                W,
                H,
                backgrounds=backgrounds,
                render_mode="RGB+ED",
                backend=backend,
            )
            imgs.append(colors[..., :3])
            fgs.append(colors[..., 3:4])
            if target_ts is not None:
                tracks.append(colors[..., 4:D].reshape(1, H, W, -1, 3))
            depths.append(colors[..., D : D + 1])
            alphas.append(alpha)
            means2d.append(meta["means2d"])
            radii.append(meta["radii"])
        return RenderOutput(
            img=torch.cat(imgs) if imgs else None,
            depth=torch.cat(depths),
            alpha=torch.cat(alphas),
            fg=torch.cat(fgs) if fgs else None,
            tracks_3d=torch.cat(tracks) if tracks else None,
            means2d=means2d,
            radii=radii,
        )
