"""An on-disk cache of forward/backward flows and their fb-consistency masks.

Layout::

    cache_dir/
      <backend>-<key>/            one folder per (backend, options, fb rule, coefficients, frame size)
        settings.json             those settings in clear (the sidecar; ``key`` is a hash of it)
        00003_00004.npz           frames 3 <-> 4: both flow directions (float32, stored), fb masks and
                                  confidences (float16), deflated

A cache made with other settings lives in another folder and is never reused silently (a log line
says when other folders exist). A pair file stores both directions, so ``get(3, 4)`` and ``get(4, 3)``
share it. Files are written to a temporary name and renamed, so an interrupted run leaves no corrupt
file; an unreadable file, one without the CRC of its frames, or one computed from other frames (CRC of
the pixels differs), is recomputed with a warning. A cache folder that cannot be written (a file in the
way, no permission, a full disk) is skipped with one warning: the flows are then computed in memory.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import zipfile
import zlib
from pathlib import Path
from typing import NamedTuple

import numpy as np

from flow3d.fileio import remove_stale_temporaries, write_bytes, write_json
from flow3d.flow.consistency import FB_RULES, fb_mask_and_confidence
from flow3d.flow.estimate import check_flow_size, check_image_pair, estimate_flow
from flow3d.log import get_logger

logger = get_logger(__name__)

CACHE_VERSION = 1


class FlowResult(NamedTuple):
    """Flow from frame i to frame j with its forward-backward check toward j."""

    flow: np.ndarray  # (H, W, 2) float32, (dx, dy) pixels i -> j
    valid: np.ndarray  # (H, W) bool, fb-consistent and landing inside frame j
    conf: np.ndarray  # (H, W) float32 in [0, 1], soft version of ``valid``


def npz_bytes(arrays: dict[str, np.ndarray], stored: tuple[str, ...] = ()) -> bytes:
    """An ``.npz`` (read by ``np.load``) with every array deflated except those named in ``stored``.

    Float32 flow barely compresses (3.3 -> 2.9 MB at 854x480) at ~0.25 s per array, so flows are
    stored as is; masks and confidences shrink 60-100x and are deflated.
    """
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, arr in arrays.items():
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_STORED if name in stored else zipfile.ZIP_DEFLATED
            with zf.open(info, "w", force_zip64=True) as f:
                np.lib.format.write_array(f, np.asanyarray(arr), allow_pickle=False)
    return buf.getvalue()


def _image_crc(img: np.ndarray) -> int:
    return zlib.crc32(np.ascontiguousarray(img).tobytes())


def _jsonable(value):
    if isinstance(value, os.PathLike):
        return str(value)
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    return value


class FlowCache:
    """Flows between frames of one sequence, computed on a miss and kept in ``cache_dir``.

    ``FlowCache(cache_dir, backend="dis", fb_rule="squared", fb_coeffs=None, **options)``: ``options``
    go to :func:`flow3d.flow.estimate_flow`; ``fb_coeffs`` to the fb rule (see
    :mod:`flow3d.flow.consistency`). ``check_images`` (default True) stores a CRC of both frames and
    recomputes when the frames passed to :meth:`get` differ from the ones the file was made from.
    """

    def __init__(
        self,
        cache_dir: str | os.PathLike,
        backend: str = "dis",
        *,
        fb_rule: str = "squared",
        fb_coeffs: dict | None = None,
        check_images: bool = True,
        **options,
    ):
        if fb_rule not in FB_RULES:
            raise ValueError(f"unknown fb rule {fb_rule!r}; choose one of {sorted(FB_RULES)}")
        fb_coeffs = dict(fb_coeffs or {})
        unknown = sorted(set(fb_coeffs) - set(FB_RULES[fb_rule]))
        if unknown:
            raise ValueError(
                f"unknown fb_coeffs {unknown} for fb rule {fb_rule!r}; allowed: {sorted(FB_RULES[fb_rule])}"
            )
        self.cache_dir = Path(cache_dir)
        self.backend = backend
        self.options = {k: _jsonable(v) for k, v in sorted(options.items())}
        self.fb_rule = fb_rule
        self.fb_coeffs = {**FB_RULES[fb_rule], **fb_coeffs}
        self.check_images = check_images
        self._dirs: dict[tuple[int, int], Path] = {}
        self._disk = True  # False once the folder turned out unusable (one warning)

    # -- layout ---------------------------------------------------------------------------------
    def settings(self, height: int, width: int) -> dict:
        """The JSON sidecar: everything that changes the stored values."""
        return {
            "version": CACHE_VERSION,
            "backend": self.backend,
            "options": self.options,
            "fb_rule": self.fb_rule,
            "fb_coeffs": self.fb_coeffs,
            "frame_size_hw": [int(height), int(width)],
        }

    def folder(self, height: int, width: int) -> Path:
        """The sub-folder for these settings at this frame size (created, with its settings.json)."""
        if (height, width) in self._dirs:
            return self._dirs[(height, width)]
        settings = self.settings(height, width)
        text = json.dumps(settings, sort_keys=True, default=str)
        folder = self.cache_dir / f"{self.backend}-{hashlib.sha1(text.encode()).hexdigest()[:10]}"
        sidecar = folder / "settings.json"
        for p in remove_stale_temporaries(folder):
            logger.warning("removed %s, left in the flow cache by an interrupted write", p)
        if not sidecar.is_file():
            others = sorted(p.name for p in self.cache_dir.glob("*/settings.json")) if self.cache_dir.is_dir() else []
            if others:
                logger.info(
                    "flow cache %s: no folder for these settings yet (%d folder(s) made with other settings "
                    "are left untouched); computing into %s",
                    self.cache_dir,
                    len(others),
                    folder.name,
                )
            write_json(sidecar, settings, sort_keys=True, default=str)
        self._dirs[(height, width)] = folder
        return folder

    def path(self, i: int, j: int, height: int, width: int) -> Path:
        a, b = sorted((int(i), int(j)))
        return self.folder(height, width) / f"{a:05d}_{b:05d}.npz"

    def has(self, i: int, j: int, height: int, width: int) -> bool:
        """Whether the pair file exists (its content is checked only by :meth:`get`)."""
        return self.path(i, j, height, width).is_file()

    # -- access ---------------------------------------------------------------------------------
    def get(self, i: int, j: int, img_i: np.ndarray, img_j: np.ndarray) -> FlowResult:
        """Flow frame i -> frame j (images (H, W, 3) uint8), its fb mask toward j and confidence."""
        check_image_pair(img_i, img_j)
        if i == j:
            raise ValueError(f"i and j must differ, got i=j={i}")
        H, W = img_i.shape[:2]
        check_flow_size(H, W, self.backend, **self.options)
        forward = int(i) < int(j)  # the file stores (a -> b) and (b -> a) with a < b
        img_a, img_b = (img_i, img_j) if forward else (img_j, img_i)
        path = data = None
        if self._disk:
            try:
                path = self.path(i, j, H, W)
                data = self._load(path, img_a, img_b)
            except OSError as e:
                self._skip_disk(e)
        if data is None:
            data = self._compute(img_a, img_b)
            if self._disk and path is not None:
                try:
                    self._store(path, data)
                except OSError as e:
                    self._skip_disk(e)
        d = "ab" if forward else "ba"
        return FlowResult(data[f"flow_{d}"], data[f"valid_{d}"], data[f"conf_{d}"].astype(np.float32))

    def _skip_disk(self, e: OSError) -> None:
        self._disk = False
        logger.warning(
            "flow cache %s cannot be used (%s: %s): computing the flows without it",
            self.cache_dir,
            e.strerror or type(e).__name__,
            e.filename or e,
        )

    def _compute(self, img_a: np.ndarray, img_b: np.ndarray) -> dict:
        flow_ab = estimate_flow(img_a, img_b, self.backend, **self.options)
        flow_ba = estimate_flow(img_b, img_a, self.backend, **self.options)
        valid_ab, conf_ab = fb_mask_and_confidence(flow_ab, flow_ba, self.fb_rule, **self.fb_coeffs)
        valid_ba, conf_ba = fb_mask_and_confidence(flow_ba, flow_ab, self.fb_rule, **self.fb_coeffs)
        return {
            "flow_ab": flow_ab,
            "flow_ba": flow_ba,
            "valid_ab": valid_ab,
            "valid_ba": valid_ba,
            "conf_ab": conf_ab.astype(np.float16),
            "conf_ba": conf_ba.astype(np.float16),
            "crc": np.array([_image_crc(img_a), _image_crc(img_b)], dtype=np.int64),
        }

    def _store(self, path: Path, data: dict) -> None:
        write_bytes(path, npz_bytes(data, stored=("flow_ab", "flow_ba")))

    def _load(self, path: Path, img_a: np.ndarray, img_b: np.ndarray) -> dict | None:
        if not path.is_file():
            return None
        try:
            with np.load(path) as f:
                data = {k: f[k] for k in f.files}
            H, W = img_a.shape[:2]
            if data["flow_ab"].shape != (H, W, 2) or data["flow_ba"].shape != (H, W, 2):
                raise ValueError(f"flow shape {data['flow_ab'].shape} does not match frames {(H, W)}")
            missing = sorted({"flow_ab", "flow_ba", "valid_ab", "valid_ba", "conf_ab", "conf_ba", "crc"} - set(data))
            if missing:
                raise ValueError(f"no {', '.join(missing)} entry")
            if data["crc"].shape != (2,):
                raise ValueError(f"crc entry of shape {data['crc'].shape}, expected (2,)")
        except Exception as err:  # a damaged file is recomputed, not trusted
            logger.warning("flow cache file %s is damaged (%s); recomputing", path, err)
            return None
        if self.check_images and [int(c) for c in data["crc"]] != [_image_crc(img_a), _image_crc(img_b)]:
            logger.warning("flow cache file %s was computed from other frames; recomputing", path)
            return None
        return data
