"""Depth visualisation, panel composition, videos, contact sheets and per-frame metric plots.

Images here are numpy ``uint8`` arrays (H, W, 3) RGB. Depth colouring uses matplotlib's colormaps
(default ``turbo``) through a 256-entry lookup table; with :func:`colorize_depth` NEAR is red and FAR
is dark blue (turbo reversed), invalid pixels are black. Text is drawn with OpenCV's Hershey font.
Files are written atomically: to a temporary name in the same folder, then renamed.
"""

from __future__ import annotations

import errno
import os
import signal
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator, Mapping, Sequence

import cv2
import numpy as np

from flow3d.errors import Interrupted
from flow3d.fileio import atomic_path
from flow3d.log import get_logger

logger = get_logger(__name__)

_FONT = cv2.FONT_HERSHEY_SIMPLEX


def _to_numpy(x) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _lut(cmap: str) -> np.ndarray:
    """(256, 3) uint8 RGB table of a matplotlib colormap."""
    import matplotlib

    try:
        cm = matplotlib.colormaps[cmap]
    except KeyError:
        raise ValueError(f"cmap {cmap!r} is not a matplotlib colormap (e.g. 'turbo', 'viridis', 'magma')") from None
    return (cm(np.linspace(0.0, 1.0, 256))[:, :3] * 255.0 + 0.5).astype(np.uint8)


def colorize_scalar(
    values,
    vmin: float,
    vmax: float,
    cmap: str = "magma",
    invalid=None,
    invalid_color: tuple[int, int, int] = (0, 0, 0),
    reverse: bool = False,
) -> np.ndarray:
    """Map a scalar image (H, W) to colours: vmin -> cmap(0), vmax -> cmap(1) (swapped if ``reverse``).

    values: (H, W) numpy or torch; values outside [vmin, vmax] are clipped; non-finite values and
    pixels where ``invalid`` (H, W bool) is True get ``invalid_color``. Returns (H, W, 3) uint8.
    """
    v = _to_numpy(values).astype(np.float64)
    if v.ndim != 2:
        raise ValueError(f"values must be (H, W), got shape {v.shape}")
    if not (np.isfinite(vmin) and np.isfinite(vmax) and vmax > vmin):
        raise ValueError(f"need finite vmin < vmax, got vmin={vmin}, vmax={vmax}")
    bad = ~np.isfinite(v)
    if invalid is not None:
        inv = _to_numpy(invalid).astype(bool)
        if inv.shape != v.shape:
            raise ValueError(f"invalid must be (H, W) = {v.shape}, got {inv.shape}")
        bad |= inv
    t = np.clip((np.where(bad, vmin, v) - vmin) / (vmax - vmin), 0.0, 1.0)
    if reverse:
        t = 1.0 - t
    out = _lut(cmap)[np.round(t * 255).astype(np.int64)]
    out[bad] = np.asarray(invalid_color, dtype=np.uint8)
    return out


def colorize_depth(
    depth,
    vmin: float,
    vmax: float,
    cmap: str = "turbo",
    invalid=None,
    invalid_color: tuple[int, int, int] = (0, 0, 0),
) -> np.ndarray:
    """Colour a z-depth map (H, W) with a fixed range: NEAR (vmin) = red, FAR (vmax) = dark blue for turbo.

    The colormap is reversed so that near is warm (cmap(1)) and far is cold (cmap(0)). Depth <= 0,
    non-finite depth and ``invalid`` (H, W bool) pixels are ``invalid_color`` (black). Returns uint8
    (H, W, 3). Use one (vmin, vmax) for a whole video: :func:`depth_range_for_video`.
    """
    d = _to_numpy(depth)
    bad = ~(np.isfinite(d) & (d > 0))
    if invalid is not None:
        bad = bad | _to_numpy(invalid).astype(bool)
    return colorize_scalar(d, vmin, vmax, cmap=cmap, invalid=bad, invalid_color=invalid_color, reverse=True)


def depth_range_for_video(
    depths, valid=None, percentiles: tuple[float, float] = (2, 98), max_samples: int = 2_000_000
) -> tuple[float, float]:
    """One (vmin, vmax) for a whole video: percentiles of the valid depths of all frames.

    depths: (T, H, W) (numpy or torch); valid: (T, H, W) bool or None (then finite and > 0).
    Uses at most ``max_samples`` evenly strided values. Raises ValueError when no value is valid.
    Returns floats with vmax > vmin (widened by 1e-6 relative if the depths are constant).
    """
    d = _to_numpy(depths).astype(np.float64)
    ok = np.isfinite(d) & (d > 0)
    if valid is not None:
        v = _to_numpy(valid).astype(bool)
        if v.shape != d.shape:
            raise ValueError(f"valid must have depths' shape {d.shape}, got {v.shape}")
        ok &= v
    vals = d[ok]
    if vals.size == 0:
        raise ValueError("depths has no valid value (finite, > 0 and inside valid) to choose a colour range from")
    if vals.size > max_samples:
        vals = vals[:: int(np.ceil(vals.size / max_samples))]
    lo, hi = np.percentile(vals, percentiles)
    if not hi > lo:
        eps = max(abs(lo), 1.0) * 1e-6
        lo, hi = lo - eps, hi + eps
    return float(lo), float(hi)


def _put_text(
    img: np.ndarray, text: str, org: tuple[int, int], scale: float, color=(255, 255, 255), thickness: int = 1
) -> None:
    cv2.putText(img, text, org, _FONT, scale, color, thickness, cv2.LINE_AA)


def _font_scale_for_height(px: int) -> float:
    """Hershey font scale whose capital letters are about ``px`` pixels tall."""
    return max(px, 6) / 22.0


def _nice_ticks(vmin: float, vmax: float, num_ticks: int) -> np.ndarray:
    """Round tick values inside [vmin, vmax] (matplotlib's MaxNLocator), at least the two ends."""
    from matplotlib.ticker import MaxNLocator

    t = MaxNLocator(nbins=max(num_ticks - 1, 1), steps=[1, 2, 2.5, 5, 10]).tick_values(vmin, vmax)
    span = vmax - vmin
    t = t[(t >= vmin - 1e-9 * span) & (t <= vmax + 1e-9 * span)]
    return t if len(t) >= 2 else np.array([vmin, vmax])


def _fmt_tick(v: float, step: float) -> str:
    decimals = int(np.clip(np.ceil(-np.log10(step)) if step > 0 else 2, 0, 4))
    return f"{v:.{decimals}f}"


def colorbar_image(
    height: int,
    vmin: float,
    vmax: float,
    cmap: str = "turbo",
    reverse: bool = True,
    label: str = "depth",
    units: str = "",
    num_ticks: int = 5,
    width: int | None = None,
) -> np.ndarray:
    """A vertical colour bar (height, width, 3) uint8 with tick labels, to put beside a panel.

    The top of the bar is ``vmax`` and the bottom ``vmin``; colours follow :func:`colorize_scalar`
    (``reverse=True`` matches :func:`colorize_depth`). ``label`` (and ``units``, e.g. "m" or "scene
    units") is written above the bar. Text size scales with ``height``.
    """
    if height < 40:
        raise ValueError(f"height must be >= 40 pixels for a legible colour bar, got {height}")
    if not (np.isfinite(vmin) and np.isfinite(vmax) and vmax > vmin):
        raise ValueError(f"need finite vmin < vmax, got vmin={vmin}, vmax={vmax}")
    text_px = int(np.clip(height / 28, 8, 18))
    scale = _font_scale_for_height(text_px)
    ticks = _nice_ticks(vmin, vmax, num_ticks)
    step = ticks[1] - ticks[0] if len(ticks) > 1 else (vmax - vmin)
    labels = [_fmt_tick(v, step) for v in ticks]
    (tw, _), _ = cv2.getTextSize(max(labels, key=len), _FONT, scale, 1)
    bar_w = max(12, text_px + 4)
    pad = max(4, text_px // 2)
    if width is None:
        width = pad + bar_w + 4 + tw + pad
    title = label if not units else f"{label} [{units}]"
    (ttw, _), _ = cv2.getTextSize(title, _FONT, scale, 1)
    width = max(width, ttw + 2 * pad)
    img = np.full((height, width, 3), 30, dtype=np.uint8)
    top = pad + text_px + pad + text_px // 2
    bottom = height - pad - text_px // 2
    span = bottom - top
    # Column of values from vmax (top) to vmin (bottom).
    col = np.linspace(vmax, vmin, span)[:, None].repeat(bar_w, axis=1)
    img[top:bottom, pad : pad + bar_w] = colorize_scalar(col, vmin, vmax, cmap=cmap, reverse=reverse)
    _put_text(img, title, (pad, pad + text_px), scale)
    for v, s in zip(ticks, labels):
        y = int(round(bottom - 1 - (v - vmin) / (vmax - vmin) * (span - 1)))
        cv2.line(img, (pad + bar_w, y), (pad + bar_w + 3, y), (255, 255, 255), 1)
        _put_text(img, s, (pad + bar_w + 6, y + text_px // 2), scale)
    return img


def label_frame(img: np.ndarray, text: str, corner: str = "top-left") -> np.ndarray:
    """Return a copy of ``img`` (H, W, 3) uint8 with ``text`` (e.g. "frame 12") on a dark box in a corner."""
    img = np.ascontiguousarray(_check_rgb(img, "img")).copy()
    H, W = img.shape[:2]
    text_px = int(np.clip(H / 24, 8, 24))
    scale = _font_scale_for_height(text_px)
    (tw, th), base = cv2.getTextSize(text, _FONT, scale, 1)
    pad = max(3, text_px // 3)
    x0 = pad if corner.endswith("left") else W - tw - 3 * pad
    y0 = pad if corner.startswith("top") else H - th - base - 3 * pad
    cv2.rectangle(img, (x0, y0), (x0 + tw + 2 * pad, y0 + th + base + 2 * pad), (0, 0, 0), -1)
    _put_text(img, text, (x0 + pad, y0 + pad + th), scale)
    return img


def _check_rgb(img, name: str) -> np.ndarray:
    a = _to_numpy(img)
    if a.ndim != 3 or a.shape[2] != 3 or a.dtype != np.uint8:
        raise ValueError(f"{name} must be an (H, W, 3) uint8 image, got shape {a.shape} dtype {a.dtype}")
    return a


def to_uint8_rgb(img) -> np.ndarray:
    """(H, W, 3) float in [0, 1] (numpy or torch) or uint8 -> (H, W, 3) uint8 (clipped, rounded)."""
    a = _to_numpy(img)
    if a.dtype == np.uint8:
        return a
    return (np.clip(np.nan_to_num(a.astype(np.float64)), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def compose_panels(
    panels: Sequence[tuple[str, np.ndarray]], title_height: int | None = None, gap: int = 2
) -> np.ndarray:
    """Put (title, image) panels side by side with a title strip above each; returns uint8 (H', W', 3).

    Images are (H_i, W_i, 3) uint8; shorter ones are padded with black at the bottom to the tallest.
    Untitled panels (title "") still get the strip, so a colour bar lines up with its depth panel.
    """
    if len(panels) == 0:
        raise ValueError("panels must hold at least one (title, image) pair")
    imgs = [_check_rgb(im, f"panels[{i}] image") for i, (_, im) in enumerate(panels)]
    H = max(im.shape[0] for im in imgs)
    if title_height is None:
        title_height = int(np.clip(H / 12, 16, 40))
    text_px = int(title_height * 0.55)
    scale = _font_scale_for_height(text_px)
    cols = []
    for (title, _), im in zip(panels, imgs):
        w = im.shape[1]
        col = np.zeros((title_height + H, w, 3), dtype=np.uint8)
        col[:title_height] = 45
        col[title_height : title_height + im.shape[0]] = im
        if title:
            s = scale
            (tw, th), _ = cv2.getTextSize(title, _FONT, s, 1)
            if tw > w - 4:  # shrink to fit the panel width
                s = s * (w - 4) / tw
                (tw, th), _ = cv2.getTextSize(title, _FONT, s, 1)
            _put_text(col, title, (max(2, (w - tw) // 2), (title_height + th) // 2), s)
        cols.append(col)
        cols.append(np.full((title_height + H, gap, 3), 255, dtype=np.uint8))
    return np.concatenate(cols[:-1], axis=1)


def _ffmpeg_exe() -> str:
    """Path of the ffmpeg binary imageio will use; RuntimeError with the fix when there is none."""
    try:
        import imageio_ffmpeg
    except ImportError:
        raise RuntimeError(
            "writing videos needs ffmpeg through the imageio-ffmpeg package: pip install imageio-ffmpeg"
        ) from None
    try:
        return imageio_ffmpeg.get_ffmpeg_exe()
    except RuntimeError as e:
        raise RuntimeError(
            f"writing videos needs an ffmpeg binary and none was found ({e}); pip install imageio-ffmpeg "
            "(it ships one) or set IMAGEIO_FFMPEG_EXE to an ffmpeg executable"
        ) from None


def write_video(
    path: str | Path, frames: Iterable[np.ndarray], fps: float = 10.0, quality: int = 8, log: bool = True
) -> Path:
    """Write (H, W, 3) uint8 frames to an H.264 mp4 (yuv420p) with imageio + ffmpeg, atomically.

    All frames must have one size; odd sizes are padded with one black row/column (yuv420p needs
    even sizes), never resized. ``quality`` is imageio-ffmpeg's 0-10. Returns the path.
    Raises RuntimeError with the fix when ffmpeg is missing, ValueError on bad frames.
    ``log=False``: no "wrote ..." line (a caller writing into a staging folder names the final place itself).
    """
    path = Path(path)
    if fps <= 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    _ffmpeg_exe()
    try:
        with atomic_path(path) as tmp:
            n = _write_frames(tmp, frames, fps, quality)
            if tmp.stat().st_size == 0:  # ffmpeg refused the frames (e.g. too wide) and imageio said nothing
                raise OSError(errno.EIO, "ffmpeg could not encode the video and wrote nothing (see its message above)")
    except Exception as e:
        interrupt = _interrupt_behind(e)
        if interrupt is not None and interrupt is not e:
            raise interrupt from None  # not the ffmpeg error the interrupt caused: exit 128 + the signal
        if isinstance(e, OSError) and "FFMPEG COMMAND" in str(e):  # imageio-ffmpeg's: its whole command line
            first = str(e).strip().splitlines()[0] if str(e).strip() else "ffmpeg stopped"
            raise OSError(
                e.errno, f"ffmpeg could not encode the video ({first}; see ffmpeg's message above)", str(path)
            ) from None
        raise
    if log:
        logger.info("wrote %d frames to %s", n, path)
    return path


def _interrupt_behind(exc: BaseException) -> Interrupted | None:
    """The :class:`flow3d.errors.Interrupted` (SIGTERM) that ``exc`` was raised while handling, if any.

    imageio-ffmpeg turns any exception in its pipe write into an ``IOError`` carrying ffmpeg's text, so a
    SIGTERM that lands during a write would otherwise end the command with exit 1 and ffmpeg's text."""
    seen, todo = set(), [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        if isinstance(e, Interrupted):
            return e
        seen.add(id(e))
        todo += [e.__cause__, e.__context__]
    return None


@contextmanager
def _sigterm_after_block() -> Iterator[None]:
    """SIGTERM arriving inside the block is handled when the block ends (by the handler that was installed,
    e.g. :func:`flow3d.cli.sigterm_raises`'s): a frame is never cut off in the middle of ffmpeg's pipe (ffmpeg
    then prints errors about a corrupt packet). Main thread only; elsewhere the block runs as is."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[int] = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: pending.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
        if pending:
            if callable(previous):
                previous(signal.SIGTERM, None)
            elif previous == signal.SIG_DFL:
                os.kill(os.getpid(), signal.SIGTERM)


def _write_frames(tmp: Path, frames: Iterable[np.ndarray], fps: float, quality: int) -> int:
    import imageio.v2 as imageio

    n = 0
    size = None
    writer = None
    try:
        for i, fr in enumerate(frames):
            fr = _check_rgb(fr, f"frames[{i}]")
            if size is None:
                size = fr.shape
                writer = imageio.get_writer(
                    tmp,
                    format="FFMPEG",
                    mode="I",
                    fps=fps,
                    codec="libx264",
                    quality=quality,
                    pixelformat="yuv420p",
                    macro_block_size=1,
                )
            elif fr.shape != size:
                raise ValueError(f"frames[{i}] has shape {fr.shape}, expected {size} like frames[0]")
            H, W = fr.shape[:2]
            if H % 2 or W % 2:
                fr = np.pad(fr, ((0, H % 2), (0, W % 2), (0, 0)))
            with _sigterm_after_block():
                writer.append_data(np.ascontiguousarray(fr))
            n += 1
        if n == 0:
            raise ValueError("frames is empty: nothing to write")
    finally:
        if writer is not None:
            writer.close()
    return n


def _write_png(path: Path, img: np.ndarray) -> Path:
    import imageio.v2 as imageio

    with atomic_path(path) as tmp:
        imageio.imwrite(tmp, img, format="PNG")
    return path


def write_contact_sheet(
    path: str | Path, frames: Sequence[np.ndarray], num: int = 6, cols: int | None = None
) -> list[int]:
    """Save ``num`` evenly spaced frames (first and last included) as one PNG grid; returns their indices.

    frames: sequence of (H, W, 3) uint8 of one size (e.g. the composed video frames); ``cols``
    defaults to 2 for wide frames (W > 2 H) and 3 otherwise. Grid cells are separated by 4 white pixels.
    """
    path = Path(path)
    T = len(frames)
    if T == 0:
        raise ValueError("frames is empty: nothing to put on a contact sheet")
    if num < 1:
        raise ValueError(f"num must be >= 1, got {num}")
    idx = sorted(set(np.linspace(0, T - 1, min(num, T)).round().astype(int).tolist()))
    imgs = [_check_rgb(frames[i], f"frames[{i}]") for i in idx]
    H, W = imgs[0].shape[:2]
    for i, im in zip(idx, imgs):
        if im.shape[:2] != (H, W):
            raise ValueError(f"frames[{i}] has shape {im.shape}, expected {(H, W, 3)} like frames[{idx[0]}]")
    if cols is None:
        cols = 2 if W > 2 * H else 3
    cols = min(cols, len(imgs))
    rows = -(-len(imgs) // cols)
    g = 4
    sheet = np.full((rows * H + (rows - 1) * g, cols * W + (cols - 1) * g, 3), 255, dtype=np.uint8)
    for k, im in enumerate(imgs):
        r, c = divmod(k, cols)
        sheet[r * (H + g) : r * (H + g) + H, c * (W + g) : c * (W + g) + W] = im
    _write_png(path, sheet)
    return idx


def plot_per_frame_metrics(
    path: str | Path, table: Sequence[Mapping[str, object]] | Mapping[str, Sequence[float]], x_key: str = "frame"
) -> Path:
    """Plot each numeric per-frame metric against the frame index, one small subplot per metric (PNG).

    table: a list of per-frame rows (dicts; ``x_key`` gives the frame index, else the row number) or a
    dict metric -> list of values. Non-numeric columns are ignored; NaN/None values leave gaps.
    Uses matplotlib's Agg canvas directly (no global backend change, no display needed).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    path = Path(path)
    if isinstance(table, Mapping):
        cols = {k: list(v) for k, v in table.items()}
        n = max((len(v) for v in cols.values()), default=0)
        xs = cols.pop(x_key, list(range(n)))
    else:
        rows = list(table)
        n = len(rows)
        xs = [r.get(x_key, i) for i, r in enumerate(rows)]
        keys: list[str] = []
        for r in rows:
            keys += [k for k in r if k != x_key and k not in keys]
        cols = {k: [r.get(k) for r in rows] for k in keys}
    series = {}
    for k, vals in cols.items():
        nums = []
        for v in vals:
            try:
                nums.append(float(v) if v is not None else float("nan"))
            except (TypeError, ValueError):
                nums = None
                break
        if nums is not None and any(np.isfinite(nums)):
            series[k] = nums
    if n == 0 or not series:
        raise ValueError("table has no numeric per-frame column to plot")
    ncols = 2 if len(series) > 1 else 1
    nrows = -(-len(series) // ncols)
    fig = Figure(figsize=(5.0 * ncols, 2.2 * nrows), dpi=100)
    FigureCanvasAgg(fig)
    for i, (k, vals) in enumerate(series.items()):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        ax.plot(xs[: len(vals)], vals, marker=".", linewidth=1)
        ax.set_title(k, fontsize=9)
        ax.set_xlabel(x_key, fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return path


def depth_video_frame(
    panels: Sequence[tuple[str, np.ndarray]],
    depth_range: tuple[float, float],
    frame_index: int,
    units: str = "",
    cmap: str = "turbo",
    error_range: tuple[float, float] | None = None,
    error_cmap: str = "magma",
) -> np.ndarray:
    """One video frame: ``panels`` side by side, a depth colour bar at the right, "frame N" on the first.

    panels: (title, (H, W, 3) uint8) already coloured (use :func:`colorize_depth` with ``depth_range``
    for depth panels so the bar applies). With ``error_range`` a second bar ("|error|", low = dark for
    magma) follows, for an error panel coloured by :func:`colorize_scalar` with that range and
    ``error_cmap``. Returns (H', W', 3) uint8.
    """
    if len(panels) == 0:
        raise ValueError("panels must hold at least one (title, image) pair")
    H = max(_check_rgb(im, f"panels[{i}] image").shape[0] for i, (_, im) in enumerate(panels))
    first_title, first = panels[0]
    labelled = [(first_title, label_frame(first, f"frame {frame_index}"))] + list(panels[1:])
    bar = colorbar_image(H, depth_range[0], depth_range[1], cmap=cmap, reverse=True, label="depth", units=units)
    bars = [("", bar)]
    if error_range is not None:
        bars.append(
            (
                "",
                colorbar_image(
                    H, error_range[0], error_range[1], cmap=error_cmap, reverse=False, label="|error|", units=units
                ),
            )
        )
    return compose_panels(labelled + bars)
