"""Fields of view as pixels: the project's reader for ordinary fields, row bands for large TIFFs.

The one place this package imports the image reader (`trainer.io`): `read_raw` (pixels in the
file's own dtype after the reading settings: Z projection, time point) and the same intensity
scaling as `trainer.io.normalise.to_unit_range` (8-bit / 255; other types stretched per channel
between the 0.5th and 99.8th percentiles, so a hot pixel cannot move a threshold).

A large, uncompressed, single-plane TIFF is never read whole: `FieldSource.read_rows` reads only
the rows asked for, by file offset (no memory map, so resident memory stays the band's size).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from trainer.io.decode import read_raw
from trainer.io.errors import ImageReadError, display_path
from trainer.io.folders import image_key, list_images
from trainer.io.normalise import to_three_channels
from trainer.io.settings import as_preprocessing

__all__ = ["FieldSource", "ImageReadError", "display_path", "image_key", "list_images", "open_field",
           "robust_range", "to_unit", "to_rgb", "PERCENTILES"]

PERCENTILES = (0.5, 99.8)
BAND_BYTES = 256 << 20  # TIFFs larger than this (uncompressed, one plane) are read by row bands


def robust_range(raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel (lo, hi) float32 arrays of shape (C,): (0, 255) for uint8, else the 0.5th and
    99.8th percentiles (robust to hot pixels and saturated spots)."""
    a = raw if raw.ndim == 3 else raw[..., None]
    c = a.shape[-1]
    if raw.dtype == np.uint8:
        return np.zeros(c, np.float32), np.full(c, 255.0, np.float32)
    flat = a.reshape(-1, c)
    if flat.dtype.kind == "f":
        flat = np.where(np.isfinite(flat), flat, 0)
    if flat.shape[0] > 2_000_000:  # a strided sample gives the same percentiles to < 0.1 %
        flat = flat[:: flat.shape[0] // 1_000_000]
    lo, hi = np.percentile(flat, PERCENTILES, axis=0)
    return lo.astype(np.float32), hi.astype(np.float32)


def to_unit(raw: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """float32 (H, W, C) in [0, 1]: each channel mapped from [lo, hi] (see `robust_range`)."""
    a = raw.astype(np.float32)
    if a.ndim == 2:
        a = a[..., None]
    if raw.dtype.kind == "f":
        a = np.where(np.isfinite(a), a, lo)
    scale = np.where(hi > lo, 1.0 / np.maximum(hi - lo, 1e-12), 0.0).astype(np.float32)
    a -= lo
    a *= scale
    return np.clip(a, 0.0, 1.0, out=a)


def to_rgb(unit: np.ndarray, channels=None) -> np.ndarray:
    """(H, W, 3) as the models see it (the reader's documented channel mapping)."""
    return to_three_channels(unit, channels)


class FieldSource:
    """One field of view: `shape` (H, W), `n_channels`, `dtype`, `read_rows(y0, y1)` -> raw
    pixels (h, W) or (h, W, C) in the file's dtype, and `sample(step)` -> every step-th row and
    column. `banded` is True when rows are read from the file on demand (large TIFF)."""

    def __init__(self, path, reading=None, band_bytes: int = BAND_BYTES):
        self.path = Path(path)
        self.prep = as_preprocessing(reading)
        self._raw = None
        self._tiff = _tiff_layout(self.path, band_bytes) if self.prep.is_default else None
        if self._tiff is None:
            self._raw = read_raw(self.path, prep=self.prep)
            self.shape = self._raw.shape[:2]
            self.n_channels = 1 if self._raw.ndim == 2 else self._raw.shape[2]
            self.dtype = self._raw.dtype
        else:
            self.shape, self.n_channels, self.dtype = self._tiff["shape"], self._tiff["c"], self._tiff["dtype"]

    @property
    def banded(self) -> bool:
        return self._raw is None

    def read_rows(self, y0: int, y1: int) -> np.ndarray:
        if self._raw is not None:
            return self._raw[y0:y1]
        t = self._tiff
        h, w, c = self.shape[0], self.shape[1], t["c"]
        y0, y1 = max(0, y0), min(h, y1)
        item = t["file_dtype"].itemsize
        with open(self.path, "rb") as f:
            arr = np.fromfile(f, t["file_dtype"], count=(y1 - y0) * w * c, offset=t["offset"] + y0 * w * c * item)
        arr = arr.astype(self.dtype, copy=False).reshape((y1 - y0, w, c) if c > 1 else (y1 - y0, w))
        return arr

    def read_all(self) -> np.ndarray:
        return self._raw if self._raw is not None else self.read_rows(0, self.shape[0])

    def sample(self, step: int) -> np.ndarray:
        """Every `step`-th row and column (the whole field when step is 1)."""
        if self._raw is not None or step <= 1:
            return self.read_all()[::step, ::step]
        rows = [self.read_rows(y, y + 1)[0, ::step] for y in range(0, self.shape[0], step)]
        return np.stack(rows)


def _tiff_layout(path: Path, band_bytes: int):
    """Offsets of an uncompressed, contiguous, single-plane TIFF larger than `band_bytes`; None
    for anything else (read whole by the project's reader)."""
    if path.suffix.lower() not in (".tif", ".tiff", ".btf", ".tf8") or not path.is_file():
        return None
    try:
        import tifffile

        with tifffile.TiffFile(path) as tf:
            s = tf.series[0]
            page = s.keyframe
            if s.nbytes <= band_bytes or s.dataoffset is None or page.compression != 1:
                return None
            axes = s.axes.replace("S", "C")
            orient = page.tags.get(274)
            if axes not in ("YX", "YXC") or (orient is not None and int(orient.value) not in (0, 1)):
                return None
            shape = tuple(s.shape)
            c = shape[2] if len(shape) == 3 else 1
            fdt = np.dtype(s.dtype)
            return {"shape": shape[:2], "c": c, "offset": int(s.dataoffset), "file_dtype": fdt,
                    "dtype": fdt.newbyteorder("=")}
    except Exception:  # noqa: BLE001 - not a plain TIFF: the reader decides (and names the error)
        return None


def open_field(path, reading=None) -> FieldSource:
    """A `FieldSource` for `path`; raises `ImageReadError` naming the file."""
    return FieldSource(path, reading)
