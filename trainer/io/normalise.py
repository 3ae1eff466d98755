"""Intensities to [0, 1]: per-image robust stretch, per-dataset ranges, a fixed bit depth; channels to three."""
from __future__ import annotations

from dataclasses import replace
from typing import Sequence

import numpy as np

from trainer.io.decode import _native, read_raw
from trainer.io.errors import ImageReadError, display_path
from trainer.io.formats import PERCENTILES
from trainer.io.settings import as_preprocessing


def to_unit_range(arr: np.ndarray, prep=None, path="image") -> np.ndarray:
    """float32 in [0, 1] by the project's normalisation (see the module doc); per-image by default:
    8-bit divided by 255, everything else stretched per channel."""
    prep = as_preprocessing(prep)
    arr = _native(arr)
    if prep.normalisation == "per-dataset":
        return _fixed_range(arr, prep.ranges, path)
    # "both": this is its per-image part (`to_model_input` adds the fixed range in G)
    if prep.normalisation == "bit-depth":
        if arr.dtype.kind == "f":
            raise ImageReadError(path, "is a floating-point image: it has no bit depth; use normalisation "
                                       "'per-image' or 'per-dataset' for this project")
        bits = prep.bit_depth or arr.dtype.itemsize * 8 - (1 if arr.dtype.kind == "i" else 0)
        return np.clip(arr.astype(np.float32) * np.float32(1.0 / (2 ** bits - 1)), 0.0, 1.0)
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


def _fixed_range(arr: np.ndarray, ranges, path) -> np.ndarray:
    a = arr.astype(np.float32)
    if a.ndim == 2:
        a = a[..., None]
    if len(ranges) != a.shape[-1]:
        raise ImageReadError(path, f"has {a.shape[-1]} channel(s); the project's per-dataset range has "
                                   f"{len(ranges)}: all images of a per-dataset project need the same channels")
    lo = np.array([r[0] for r in ranges], np.float32)
    hi = np.array([r[1] for r in ranges], np.float32)
    a = np.where(np.isfinite(a), a, lo)
    scale = np.where(hi > lo, 1.0 / np.maximum(hi - lo, 1e-12), 0.0).astype(np.float32)
    out = np.clip((a - lo) * scale, 0.0, 1.0)
    return out[..., 0] if arr.ndim == 2 else out


def dataset_ranges(paths: Sequence, prep=None, sample: int = 200, seed: int = 0,
                   percentiles=PERCENTILES, pixels_per_image: int = 20_000) -> tuple[tuple[float, float], ...]:
    """One fixed (lo, hi) intensity per channel for `per-dataset` normalisation: the 0.5th and
    99.8th percentiles of pixels pooled from up to `sample` images of the pool (stack choices
    of `prep` applied first; ``stack="planes"``: the middle plane of a stack). Unreadable images
    are left out; raises ValueError if none reads or the channel counts differ."""
    prep = replace(as_preprocessing(prep), normalisation="per-image", ranges=None)
    if prep.stack == "planes":
        prep = replace(prep, stack="plane", plane=None)
    rng = np.random.default_rng(seed)
    paths = list(paths)
    picked = [paths[i] for i in sorted(rng.choice(len(paths), min(sample, len(paths)), replace=False))] if paths else []
    pools, n_ch = [], None
    for p in picked:
        try:
            arr = _native(read_raw(p, prep=prep))
        except ImageReadError:
            continue
        flat = arr.reshape(-1, 1 if arr.ndim == 2 else arr.shape[-1]).astype(np.float64)
        if n_ch is None:
            n_ch = flat.shape[1]
        elif flat.shape[1] != n_ch:
            raise ValueError(f"'{display_path(p)}' has {flat.shape[1]} channel(s), other images {n_ch}: "
                             "per-dataset normalisation needs the same channels in every image")
        take = rng.choice(len(flat), min(pixels_per_image, len(flat)), replace=False)
        pools.append(flat[take])
    if not pools:
        raise ValueError("no readable image to compute the per-dataset intensity range from")
    allpx = np.concatenate(pools)
    allpx = np.where(np.isfinite(allpx), allpx, np.nan)
    lo, hi = np.nanpercentile(allpx, percentiles, axis=0)
    return tuple((float(a), float(b)) for a, b in zip(lo, hi))


def estimate_bit_depth(paths: Sequence, sample: int = 50, seed: int = 0) -> int:
    """Smallest camera depth (8, 10, 12, 14, 16 bits) holding the largest value of a sample."""
    rng = np.random.default_rng(seed)
    paths = list(paths)
    top = 0.0
    for i in sorted(rng.choice(len(paths), min(sample, len(paths)), replace=False)) if paths else []:
        try:
            top = max(top, float(np.nanmax(read_raw(paths[i]))))
        except (ImageReadError, ValueError):
            continue
    return next((b for b in (8, 10, 12, 14, 16) if top <= 2 ** b - 1), 32)


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
