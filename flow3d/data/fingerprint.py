"""What a checkpoint records about the data it was trained on, and the checks that a resumed training (and
``run_val.py``) use the same data.

    record = {"config": <the data config's fields>, **content_record(seq)}   # saved in every checkpoint
    check_data_config(record, config_now, ckpt)   # before loading: the config fields that change the content
    check_same_content(record, seq, ckpt)         # after loading: frame count, size, thumbnails, prior, tracks, cameras

The content record is small and compared with tolerances, not hashed: frame count and size exactly, an 8x8
thumbnail of every frame (a mean difference above 3 of 255 is another image; two JPEG decoders differ by at
most 1), an 8x8 thumbnail of the depth prior of every frame (standardised per frame, so the per-frame scale
and shift of ``--prior-align`` do not count), the number of 2D tracks and the mean of their visible
positions, the cameras to 1e-3 and the training frames. A mismatch is one ``ValueError`` naming the first
difference, in that order: the prior and the tracks come before the cameras, since the scene normalisation
computes the cameras from them (a changed prior would otherwise read as "the cameras differ"). A checkpoint
written before these records existed is not checked (and one without the prior or track record skips those).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn.functional as F

THUMB = 8
"""Thumbnail side in pixels."""
THUMB_TOLERANCE = 3.0
"""Largest mean absolute difference (0-255) of a frame's thumbnails that still counts as the same image."""
TRACKS_TOLERANCE_PX = 0.05
"""Largest change in pixels of the mean visible track position that counts as the same tracks (flow tracks
recomputed by another OpenCV build move by far less)."""
PRIOR_TOLERANCE = 0.1
"""Largest mean absolute difference of a frame's standardised prior thumbnails that counts as the same prior."""


def prior_thumbnails(disp: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """(T, 8, 8) float32: per cell the mean prior over its valid pixels, standardised per frame (zero mean, unit
    standard deviation over the cells with a valid pixel; NaN in cells without one). A per-frame scale (> 0) and
    shift of the prior leaves it unchanged."""
    v = valid.float()[:, None]
    d = torch.where(valid, disp.float(), torch.zeros_like(disp, dtype=torch.float32))[:, None]
    num = F.adaptive_avg_pool2d(d, (THUMB, THUMB))[:, 0]
    den = F.adaptive_avg_pool2d(v, (THUMB, THUMB))[:, 0]
    cell = torch.where(den > 0, num / den.clamp_min(1e-12), torch.full_like(num, float("nan")))
    flat = cell.reshape(len(cell), -1)
    mean = flat.nanmean(1, keepdim=True)
    std = ((flat - mean) ** 2).nanmean(1, keepdim=True).sqrt().clamp_min(1e-12)
    return ((flat - mean) / std).reshape(cell.shape).contiguous()


def tracks_summary(seq) -> list[float]:
    """[number of tracks, mean x, mean y of their visible positions] (0s without tracks)."""
    xy, vis = seq.tracks_xy, seq.tracks_visible
    if xy is None or xy.shape[0] == 0 or not bool(vis.any()):
        return [float(0 if xy is None else xy.shape[0]), 0.0, 0.0]
    m = xy[vis].double().mean(0)
    return [float(xy.shape[0]), float(m[0]), float(m[1])]


def thumbnails(images: torch.Tensor, valid_masks: Optional[torch.Tensor] = None) -> torch.Tensor:
    """(T, 8, 8, 3) uint8 area averages of ``images`` (T, H, W, 3) in [0, 1], with ignored pixels
    (``valid_masks`` (T, H, W) False, e.g. instruments) zero-filled: what training never sees does not
    identify the data."""
    if valid_masks is not None:
        images = images * valid_masks[..., None].to(images.dtype)
    x = images.permute(0, 3, 1, 2).float()  # (T, 3, H, W)
    small = F.adaptive_avg_pool2d(x, (THUMB, THUMB))  # (T, 3, 8, 8)
    return (small.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous()


def content_record(seq) -> dict[str, Any]:
    """Frame count, size (W, H), training frames, thumbnails, cameras and a short digest of them all."""
    rec = {
        "num_frames": int(seq.num_frames),
        "img_wh": [int(v) for v in seq.img_wh],
        "train_ids": [int(t) for t in seq.train_ids.tolist()],
        "thumbnails": thumbnails(seq.images, seq.valid_masks),
        "prior": prior_thumbnails(seq.prior_disp, seq.prior_valid),
        "tracks": tracks_summary(seq),
        "w2cs": seq.w2cs.detach().float().cpu().clone(),
        "Ks": seq.Ks.detach().float().cpu().clone(),
    }
    h = hashlib.sha1(repr((rec["num_frames"], rec["img_wh"], rec["train_ids"])).encode())
    h.update(rec["thumbnails"].numpy().tobytes())
    rec["digest"] = h.hexdigest()[:12]
    return rec


def _describe(rec: dict) -> str:
    W, H = rec["img_wh"]
    return f"{rec['num_frames']} frames of {W}x{H}"


def content_differences(old: dict, seq) -> Optional[str]:
    """The first way the loaded sequence ``seq`` differs from the content record ``old``, or None."""
    new = content_record(seq)
    if (old["num_frames"], list(old["img_wh"])) != (new["num_frames"], new["img_wh"]):
        return f"it was trained on {_describe(old)}, the data now loads {_describe(new)}"
    diff = (old["thumbnails"].float() - new["thumbnails"].float()).abs().mean(dim=(1, 2, 3))  # (T,)
    bad = torch.nonzero(diff > THUMB_TOLERANCE).flatten().tolist()
    if bad:
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        return (
            f"frame {bad[0]}{more} is not the image it was trained on "
            f"(mean thumbnail difference {float(diff[bad[0]]):.1f} of 255)"
        )
    why = _prior_or_tracks_difference(old, new)
    if why is not None:
        return why
    for key in ("w2cs", "Ks"):
        if not torch.allclose(old[key].float(), new[key], rtol=1e-3, atol=1e-3):
            err = float((old[key].float() - new[key]).abs().max())
            return f"the cameras ({key}) differ from the ones it was trained on (largest difference {err:.3g})"
    if list(old["train_ids"]) != new["train_ids"]:
        return "the training frames differ (another --data.val-every?)"
    return None


def _prior_or_tracks_difference(old: dict, new: dict) -> Optional[str]:
    if "prior" in old:
        a, b = old["prior"].float(), new["prior"]
        if a.shape != b.shape:
            return "the depth prior differs from the one it was trained on"
        both = torch.isfinite(a) & torch.isfinite(b)
        one = torch.isfinite(a) ^ torch.isfinite(b)
        diff = torch.where(both, (a - b).abs(), torch.zeros_like(a)).sum(dim=(1, 2)) / both.sum(dim=(1, 2)).clamp_min(1)
        bad = torch.nonzero((diff > PRIOR_TOLERANCE) | one.any(dim=(1, 2))).flatten().tolist()
        if bad:
            more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
            return (
                f"the depth prior of frame {bad[0]}{more} differs from the one it was trained on (mean "
                f"difference {float(diff[bad[0]]):.2f} standard deviations of its 8x8 thumbnail; another "
                "--data.depth-type or changed prior files?)"
            )
    if "tracks" in old:
        (n0, *m0), (n1, *m1) = old["tracks"], new["tracks"]
        if int(n0) != int(n1) or any(abs(a - b) > TRACKS_TOLERANCE_PX for a, b in zip(m0, m1)):
            return (
                f"the 2D tracks differ from the ones it was trained on ({int(n0)} tracks then, {int(n1)} now; "
                "changed track files or track options?)"
            )
    return None


def check_same_content(record: Optional[dict], seq, ckpt: Path) -> None:
    """``ValueError`` when ``seq`` is not the data checkpoint ``ckpt`` was trained on (``record`` its
    ``"data"`` entry; None for an older checkpoint: nothing to check)."""
    if not record or "num_frames" not in record:
        return
    why = content_differences(record, seq)
    if why is not None:
        raise ValueError(
            f"checkpoint {ckpt} does not match the data: {why}. Use the data it was trained on, "
            "or another --work-dir for a new training"
        )


def config_differences(old: dict, new: dict, prefix: str = "data.") -> list[str]:
    """``"data.end was -1, now 12"`` for every field whose value differs between two config records."""
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key, "(absent)"), new.get(key, "(absent)")
        if a != b:
            out.append(f"{prefix}{key} was {a!r}, now {b!r}")
    return out


def check_data_config(record: Optional[dict], config_now: dict, ckpt: Path) -> None:
    """``ValueError`` when the data config of this run differs from the one checkpoint ``ckpt`` was trained
    with, in a field that changes the loaded data (``record`` its ``"data"`` entry; checked before loading)."""
    if not record or "config" not in record:
        return
    diffs = config_differences(record["config"], config_now)
    if diffs:
        raise ValueError(
            f"checkpoint {ckpt} was trained on other data: {'; '.join(diffs)}. Resume with the data options it was "
            "trained with, or use another --work-dir for a new training"
        )


__all__ = [
    "check_data_config",
    "check_same_content",
    "config_differences",
    "content_differences",
    "content_record",
    "prior_thumbnails",
    "thumbnails",
    "tracks_summary",
]
