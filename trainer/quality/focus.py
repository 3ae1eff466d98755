"""The per-project focus model: P(defocus level | patch) learned from the pool's own sharpest images blurred synthetically."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from trainer.quality.pixels import (
    PixelStats,
    _bin,
    _noise_band_gain,
    _patch_energies,
    immerkaer_noise,
    laplacian_focus,
    structure,
)
from trainer.quality.settings import DEFOCUS_LEVELS, MAX_SIDE, MAX_TRAIN_PATCHES


def patch_features(energies: np.ndarray, noise: float, floor: float) -> np.ndarray:
    """(P, 8) features of each patch: log10 share of detail energy per band, log10 band SNR."""
    gain = _noise_band_gain()
    nvar = max(noise, floor) ** 2
    tot = energies.sum(1, keepdims=True) + 1e-12
    share = np.log10(energies / tot + 1e-6)
    snr = np.log10(energies / (nvar * gain[None, :]) + 1e-3)
    return np.concatenate([share, snr], 1)


def _noise_floor(dtype: str, scale_value: float) -> float:
    return 0.5 if not dtype.startswith("float") else 1e-4 * scale_value


@dataclass
class FocusModel:
    """P(defocus level | patch features), fitted per project on synthetic defocus.

    levels: Gaussian sigmas in file pixels (`DEFOCUS_LEVELS`); `predict` -> (defocus_px,
    defocus_sd) per image, NaN where an image has no structured patch. `lap_curve` maps
    log10(laplacian_focus) to defocus_px for the classical method (isotonic fit on the same
    synthetic images)."""

    clf: object
    levels: np.ndarray
    lap_curve: object = None
    n_images: int = 0
    n_patches: int = 0
    sharp_keys: list = field(default_factory=list)

    def predict(self, stats: Sequence[PixelStats], structured: Sequence[np.ndarray], floor: float) -> np.ndarray:
        """(N, 2) defocus_px and defocus_sd per image (NaN without a structured patch)."""
        from threadpoolctl import threadpool_limits

        feats = [patch_features(st.energies[m], st.noise, floor) for st, m in zip(stats, structured)]
        out = np.full((len(stats), 2), np.nan)
        n = [len(f) for f in feats]
        if not sum(n):
            return out
        with threadpool_limits(1):  # tiny problem: threads only contend
            P = self.clf.predict_proba(np.concatenate([f for f in feats if len(f)]))
        s = 0
        for i, (st, k) in enumerate(zip(stats, n)):
            if k == 0:
                continue
            p = P[s:s + k].mean(0)
            s += k
            lv = self.levels * st.scale
            mu = float((p * lv).sum())
            out[i] = mu, math.sqrt(max(float((p * (lv - mu) ** 2).sum()), 0.0))
        return out

    def laplacian_defocus(self, lap: float) -> float:
        if self.lap_curve is None:
            return float("nan")
        return float(self.lap_curve.predict([math.log10(max(lap, 1e-12))])[0])


def synthetic_defocus(g: np.ndarray, sigma: float, noise: float, integer: bool, rng) -> np.ndarray:
    """Gaussian blur of `sigma` px, camera-like noise added back at `noise`, quantised if integer."""
    from scipy.ndimage import gaussian_filter

    out = gaussian_filter(g, sigma, mode="reflect", truncate=3.0) if sigma > 0 else g.copy()
    if noise > 0:
        out = out + rng.normal(0.0, noise, out.shape).astype(np.float32)
    if integer:
        out = np.round(out)
    return out.astype(np.float32)


def fit_focus_model(grey_images: Sequence[np.ndarray], noises: Sequence[float], dtype: str, scale_value: float,
                    blank_threshold: float, keys: Sequence[str] = (), seed: int = 0) -> FocusModel | None:
    """Fit the per-project focus model on the (sharp) grey images given; None if nothing to learn."""
    from sklearn.isotonic import IsotonicRegression
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import PolynomialFeatures, StandardScaler

    rng = np.random.default_rng(seed)
    integer = not dtype.startswith("float")
    floor = _noise_floor(dtype, scale_value)
    X, y, lap_x, lap_y = [], [], [], []
    for g, nz in zip(grey_images, noises):
        f = max(1, int(math.ceil(max(g.shape) / MAX_SIDE)))
        nz_file = max(nz, floor)  # file-level noise sigma
        for li, s in enumerate(DEFOCUS_LEVELS):
            b = synthetic_defocus(g, s * f, nz_file, integer, rng)
            gw = _bin(b, f)
            e = _patch_energies(gw)
            nzw = immerkaer_noise(gw)
            ok = structure(e, nzw, scale_value) >= blank_threshold
            if ok.any():
                X.append(patch_features(e[ok], nzw, floor))
                y.append(np.full(int(ok.sum()), li))
            lap_x.append(math.log10(max(laplacian_focus(b), 1e-12)))
            lap_y.append(s)
    if not X:
        return None
    X, y = np.concatenate(X), np.concatenate(y)
    if len(np.unique(y)) < 2:
        return None
    clf = make_pipeline(StandardScaler(), PolynomialFeatures(2), StandardScaler(),
                        LogisticRegression(C=1.0, max_iter=500))
    from threadpoolctl import threadpool_limits

    if len(X) > MAX_TRAIN_PATCHES:  # enough for a 10-class model on 8 features; keeps the fit ~1 s
        pick = rng.choice(len(X), MAX_TRAIN_PATCHES, replace=False)
        X, y = X[pick], y[pick]
    with threadpool_limits(1):  # measured: 20x faster than letting BLAS threads contend
        clf.fit(X, y)
    # classes the classifier saw, in level order
    levels = np.asarray(DEFOCUS_LEVELS, np.float64)[clf.classes_]
    iso = IsotonicRegression(increasing=False, out_of_bounds="clip").fit(lap_x, lap_y)
    return FocusModel(clf, levels, iso, len(grey_images), len(X), list(keys))
