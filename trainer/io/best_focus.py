"""Brightfield Z-stacks: the best-focus plane (variance of the Laplacian) and telling brightfield from fluorescence.

A maximum-intensity projection suits fluorescence (bright objects on a dark background: every
object at its brightest plane). On brightfield (dark or coloured objects on a bright background)
it keeps the brightest, most defocused value of every pixel and washes the cells out; such stacks
are read as their best-focus plane instead: the plane with the largest variance of the Laplacian
(Pech-Pacheco et al., "Diatom autofocusing in brightfield microscopy: a comparative study",
ICPR 2000, where it ranked first among the measures compared on brightfield stacks).
"""
from __future__ import annotations

import numpy as np

# a single-channel plane is brightfield when its median sits in the upper part of its range
# (bright background): (median - p1) / (p99 - p1) above this
BRIGHT_BACKGROUND = 0.5


def _grey(plane: np.ndarray) -> np.ndarray:
    """(H, W) float32 of an (H, W) or (H, W, C) plane (channels averaged), NaN/inf as 0."""
    a = np.asarray(plane, dtype=np.float32)
    if a.ndim > 2:
        a = a.reshape(a.shape[0], a.shape[1], -1).mean(axis=-1)
    return np.where(np.isfinite(a), a, 0.0).astype(np.float32)


def focus_score(plane: np.ndarray) -> float:
    """Variance of the Laplacian (scikit-image's 3x3 kernel) of a plane, channels averaged."""
    from skimage.filters import laplace

    g = _grey(plane)
    if min(g.shape) < 3:
        return 0.0
    return float(laplace(g, ksize=3)[1:-1, 1:-1].var())


def best_focus_index(planes) -> int:
    """Index of the sharpest of `planes` ((Z, H, W) or (Z, H, W, C), or a list of planes)."""
    return int(np.argmax([focus_score(p) for p in planes]))


def looks_brightfield(plane: np.ndarray) -> bool:
    """Brightfield rather than fluorescence: three 8-bit channels (a colour camera: stained
    samples, transmitted light), or one channel whose background is bright (the median in the
    upper half of the 1st-99th percentile range: objects dark on bright)."""
    a = np.asarray(plane)
    if a.ndim == 3 and a.shape[-1] == 3 and a.dtype == np.uint8:
        return True
    if a.ndim == 3 and a.shape[-1] != 1:
        return False  # several fluorescence channels
    g = _grey(a)
    lo, med, hi = np.percentile(g, (1, 50, 99))
    return bool(hi > lo and (med - lo) / (hi - lo) > BRIGHT_BACKGROUND)
