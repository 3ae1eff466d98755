"""Reading microscopy images into the one shape every model here eats.

Microscopes write PNG/JPEG (brightfield, 8-bit RGB) and TIFF (8/16-bit or float, grayscale or
N channels, channel-first or channel-last). Everything becomes float32 (H, W, 3) in [0, 1]:

* intensities: 8-bit images are divided by 255 (their look is already meaningful, as in the
  ImageNet photos the backbone learned from). 16-bit, 32-bit and float images get a per-image,
  per-channel robust stretch: the 0.5th percentile maps to 0 and the 99.8th to 1. Fluorescence
  cameras use a few hundred grey levels of 65,536, so a fixed /65535 would give black images.
* channels -> the backbone's 3 inputs (the documented mapping):
  1 channel -> copied to R, G and B;  2 channels -> R = ch0, G = ch1, B = 0;
  3 channels -> R, G, B;  4 channels from PNG/JPEG (RGBA) -> alpha dropped;
  N > 3 TIFF channels -> the first three, unless `channels=[i, j, k]` picks others
  (1, 2 or 3 indices, mapped like 1/2/3-channel images).
* axis order: a TIFF whose first axis is short (<= 16) and last axis long is channel-first.

A file that cannot be read raises `ImageReadError`, naming the file and the reason; batch
readers catch it, skip the image and record it in a `SkipReport`.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"}
TIFF_SUFFIXES = {".tif", ".tiff"}
PERCENTILES = (0.5, 99.8)
MAX_CHANNEL_AXIS = 16


class ImageReadError(Exception):
    """An image file that cannot be turned into pixels; the message names file and reason."""

    def __init__(self, path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"cannot read image '{path}': {reason}")


@dataclass
class SkipReport:
    """Images a batch job skipped, with the reason: reported, never silently dropped."""

    skipped: list[dict] = field(default_factory=list)

    def add(self, path, reason: str) -> None:
        self.skipped.append({"path": str(path), "reason": reason})

    def __len__(self) -> int:
        return len(self.skipped)

    def summary(self) -> str:
        if not self.skipped:
            return "no image skipped"
        lines = [f"{len(self.skipped)} image(s) skipped:"]
        lines += [f"  {s['path']}: {s['reason']}" for s in self.skipped[:20]]
        if len(self.skipped) > 20:
            lines.append(f"  ... and {len(self.skipped) - 20} more (see the JSON report)")
        return "\n".join(lines)

    def write_json(self, path) -> None:
        Path(path).write_text(json.dumps({"count": len(self.skipped), "skipped": self.skipped}, indent=1))


# ---------------------------------------------------------------- raw decoding

def _read_tiff(path: Path) -> np.ndarray:
    import tifffile

    try:
        arr = tifffile.imread(path)
    except Exception as exc:  # tifffile raises many types for broken files
        raise ImageReadError(path, f"not a readable TIFF ({type(exc).__name__}: {exc})") from None
    arr = np.squeeze(np.asarray(arr))
    if arr.ndim == 3 and arr.shape[0] <= MAX_CHANNEL_AXIS and arr.shape[-1] > MAX_CHANNEL_AXIS:
        arr = np.moveaxis(arr, 0, -1)  # channel-first -> channel-last
    if arr.ndim not in (2, 3):
        raise ImageReadError(
            path, f"has {arr.ndim} dimensions {arr.shape}; save one 2-D plane (with channels) per file"
        )
    return arr


def _read_pil(path: Path, draft_size: int | None = None) -> np.ndarray:
    try:
        with Image.open(path) as im:
            if draft_size and im.format == "JPEG":
                im.draft("RGB", (draft_size, draft_size))  # decode at reduced scale: much faster
            im.load()
            if im.mode in ("I;16", "I;16B", "I;16L", "I"):
                return np.asarray(im, dtype=np.uint16 if im.mode.startswith("I;16") else np.int32)
            if im.mode == "F":
                return np.asarray(im, dtype=np.float32)
            if im.mode not in ("L", "RGB"):
                im = im.convert("RGB")
            return np.asarray(im)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ImageReadError(path, f"not a readable image ({exc})") from None


def read_raw(path, draft_size: int | None = None) -> np.ndarray:
    """Pixels in the file's own dtype, (H, W) or (H, W, C)."""
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(path, "file not found")
    if path.stat().st_size == 0:
        raise ImageReadError(path, "file is empty (0 bytes)")
    if path.suffix.lower() in TIFF_SUFFIXES:
        arr = _read_tiff(path)
    else:
        arr = _read_pil(path, draft_size)
    if arr.size == 0 or min(arr.shape[:2]) < 2:
        raise ImageReadError(path, f"image is too small {arr.shape}")
    return arr


# ---------------------------------------------------------------- normalisation

def to_unit_range(arr: np.ndarray) -> np.ndarray:
    """float32 in [0, 1]; 8-bit divided by 255, everything else stretched per channel."""
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) * (1.0 / 255.0)
    a = arr.astype(np.float32)
    if a.ndim == 2:
        a = a[..., None]
    if arr.dtype == np.uint16:  # no NaN/inf possible; histogram percentiles: 2-3x faster, same values
        lo, hi = _percentiles_uint16(arr if arr.ndim == 3 else arr[..., None], PERCENTILES)
    else:
        finite = np.isfinite(a)
        if not finite.all():
            a = np.where(finite, a, 0.0)
        lo, hi = np.percentile(a.reshape(-1, a.shape[-1]), PERCENTILES, axis=0)
    scale = np.where(hi > lo, 1.0 / np.maximum(hi - lo, 1e-12), 0.0).astype(np.float32)
    out = np.clip((a - lo.astype(np.float32)) * scale, 0.0, 1.0)
    return out[..., 0] if arr.ndim == 2 else out


def _percentiles_uint16(arr: np.ndarray, q) -> np.ndarray:
    """np.percentile(arr.reshape(-1, C).astype(float32), q, axis=0) of a uint16 (H, W, C) image,
    from per-channel histograms instead of a partition: same order statistics, same linear
    interpolation (numpy's _lerp), float64 like np.percentile; bit-identical results."""
    flat = arr.reshape(-1, arr.shape[-1])
    n = flat.shape[0]
    out = np.empty((len(q), flat.shape[1]), np.float64)
    for c in range(flat.shape[1]):
        cum = np.cumsum(np.bincount(flat[:, c]))
        for j, p in enumerate(q):
            idx = (p / 100.0) * (n - 1)
            k = int(np.floor(idx))
            t = idx - k
            lo = float(np.searchsorted(cum, k, side="right"))
            hi = float(np.searchsorted(cum, min(k + 1, n - 1), side="right"))
            d = hi - lo
            out[j, c] = lo + d * t if t < 0.5 else hi - d * (1.0 - t)
    return out


def to_three_channels(arr: np.ndarray, channels: Sequence[int] | None = None, path="image") -> np.ndarray:
    """Map (H, W) / (H, W, C) to (H, W, 3) following the documented channel mapping."""
    if arr.ndim == 2:
        arr = arr[..., None]
    n = arr.shape[-1]
    if channels is not None:
        channels = list(channels)
        bad = [c for c in channels if not -n <= c < n]
        if not 1 <= len(channels) <= 3 or bad:
            raise ImageReadError(path, f"channels={channels} does not fit an image with {n} channel(s)")
        arr = arr[..., channels]
        n = arr.shape[-1]
    elif n > 3:
        arr = arr[..., :3]
        n = 3
    if n == 1:
        return np.repeat(arr, 3, axis=-1)
    if n == 2:
        return np.concatenate([arr, np.zeros_like(arr[..., :1])], axis=-1)
    return arr


def read_image(path, channels: Sequence[int] | None = None) -> np.ndarray:
    """float32 (H, W, 3) in [0, 1]; raises ImageReadError naming the file."""
    raw = read_raw(path)
    return to_three_channels(to_unit_range(raw), channels, path)


def load_for_model(path, size: int, channels: Sequence[int] | None = None) -> np.ndarray:
    """float32 (size, size, 3) in [0, 1], the fast path for training and inference.

    8-bit RGB/grey images are resized in uint8 by Pillow before conversion (the expensive part
    of decoding is then done on few pixels); other images are stretched first, then resized.
    Non-square images are padded (edge reflection) to a square so cells keep their shape.
    """
    raw = read_raw(path, draft_size=size)
    if raw.dtype == np.uint8 and (raw.ndim == 2 or raw.shape[-1] in (1, 3)) and channels is None:
        img = _resize_uint8(_pad_square(raw), size)
        return to_three_channels(img.astype(np.float32) * (1.0 / 255.0), None, path)
    unit = to_three_channels(to_unit_range(raw), channels, path)
    return _resize_float(_pad_square(unit), size)


def _pad_square(arr: np.ndarray) -> np.ndarray:
    h, w = arr.shape[:2]
    if h == w:
        return arr
    d = abs(h - w)
    pad = [(d // 2, d - d // 2), (0, 0)] if h < w else [(0, 0), (d // 2, d - d // 2)]
    pad += [(0, 0)] * (arr.ndim - 2)
    return np.pad(arr, pad, mode="reflect" if min(h, w) > d // 2 + 1 else "edge")


def _resize_uint8(arr: np.ndarray, size: int) -> np.ndarray:
    if arr.shape[0] == size:
        return arr
    im = Image.fromarray(arr[..., 0] if arr.ndim == 3 and arr.shape[-1] == 1 else arr)
    return np.asarray(im.resize((size, size), Image.BILINEAR, reducing_gap=2.0))


def _resize_float(arr: np.ndarray, size: int) -> np.ndarray:
    if arr.shape[0] == size:
        return np.ascontiguousarray(arr, dtype=np.float32)
    chans = [
        np.asarray(Image.fromarray(np.ascontiguousarray(arr[..., c])).resize((size, size), Image.BILINEAR))
        for c in range(arr.shape[-1])
    ]
    return np.stack(chans, axis=-1).astype(np.float32)


def save_preview(src, dst_png, max_side: int = 512, channels: Sequence[int] | None = None) -> Path:
    """Contrast-stretched 8-bit PNG for the browser (TIFF and 16-bit cannot be shown as is)."""
    img = read_image(src, channels)
    im = Image.fromarray((img * 255.0 + 0.5).astype(np.uint8))
    im.thumbnail((max_side, max_side), Image.BILINEAR)
    dst = Path(dst_png)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(dst.name + ".part")
    im.save(tmp, format="PNG")
    tmp.replace(dst)
    return dst


# ---------------------------------------------------------------- folders

def _visible(p: Path, root: Path) -> bool:
    return not any(part.startswith(".") for part in p.relative_to(root).parts)


def list_images(folder, recursive: bool = True) -> list[Path]:
    """Image files under `folder` (by suffix), sorted, hidden files and folders left out."""
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder '{folder}' does not exist or is not a folder")
    it: Iterable[Path] = root.rglob("*") if recursive else root.iterdir()
    return sorted(p for p in it if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and _visible(p, root))


def image_key(path, root) -> str:
    """The image's identity everywhere in scopeloop: its path relative to the image root.

    Symbolic links are not resolved: labs often link images in from other folders."""
    import os

    return Path(os.path.abspath(path)).relative_to(os.path.abspath(root)).as_posix()


def scan_imagefolder(root) -> tuple[list[tuple[Path, str]], list[str]]:
    """ImageFolder layout (one sub-folder per class) -> [(path, class)], sorted class names."""
    root = Path(root)
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise FileNotFoundError(
            f"'{root}' has no class sub-folders; expected ImageFolder layout <root>/<class>/<image>"
        )
    items = [(p, c) for c in classes for p in list_images(root / c)]
    return items, classes
