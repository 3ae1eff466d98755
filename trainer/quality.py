"""Image quality control: which images should no annotator spend a label on?

Every image of a pool gets continuous scores and one verdict among `VERDICTS`; the verdict names
the score that decided it (its value and the threshold it crossed). Flagged images are only
flagged: nothing here moves or deletes a file.

Scores (one row per image, see `QCResult`):

=================  =========================================================================
score              meaning (units, range)
=================  =========================================================================
brightness         99.9th percentile of the brightness plane (colour: mean of R, G, B;
                   otherwise the brightest channel), fraction of full scale, 0..1.
                   `too_dark` below the threshold (default 0.05: ~13 grey levels of 255).
saturated_share    share of pixels at the top of the real bit depth (within 0.5 % of full
                   scale), 0..1. Colour (8-bit RGB) images count a pixel when all three channels
                   clip (colour cameras routinely clip one channel of a bright background:
                   measured in pbc_blood, the red channel of 26 % of pixels, median);
                   grey / fluorescence images count each channel, the worst one decides.
                   `saturated` at or above the threshold (default 0.05).
structure          standard deviation of image detail at scales 1-8 px (differences of
                   Gaussians), camera noise subtracted, in the second most structured 64 px
                   patch, fraction of full scale, 0..~0.5. An empty field has ~0.
                   `blank` below the threshold (default 0.004: ~1 grey level of 255).
defocus_px         estimated extra Gaussian blur (sigma, in pixels of the file) relative to the
                   project's sharpest images, 0..8 (see "Focus" below); NaN when the image has
                   no structured patch. `out_of_focus` at or above the threshold (default 2.0).
defocus_sd         uncertainty of defocus_px: standard deviation of the predicted defocus
                   distribution (px). Large for flat / ambiguous content.
laplacian_focus    classical focus measure, normalised variance of the Laplacian
                   var(lap(I)) / mean(I)^2 (Pech-Pacheco et al., ICPR 2000; normalised as in
                   Santos et al., J. Microsc. 1997); dimensionless, >= 0, larger = sharper.
                   Recorded for every image; `focus_method="laplacian"` converts it to a
                   defocus_px through the same synthetic calibration and lets it decide.
duplicate_of       the image this one repeats: identical pixels (SHA-1 of the decoded array,
                   `duplicate_similarity` = 1), or a near duplicate: one of its 5 nearest images
                   in the FAISS index (centred cosine `duplicate_similarity` >= 0.80, default
                   `duplicate_candidate`) whose 48 x 48 thumbnail matches (`pixel_match`: the
                   best normalised cross-correlation over the 8 mirror images / right-angle
                   rotations and shifts up to 3 px of the thumbnail, -1..1) at >= 0.90 (default
                   `duplicate`). Catches mirrored, slightly shifted and re-encoded copies; two
                   different cells that merely look alike fail the pixel check. The later key in
                   sorted order is flagged; the first one stays `ok`.
unusual_z          robust z-score of the mean centred-cosine distance to the 5 nearest pool
                   images ((d - median) / (1.4826 MAD)); `unusual` at or above the threshold
                   (default 6: far in the tail of the pool's own distances).
=================  =========================================================================

Full scale is the real bit depth: 8-bit files 255; 16-bit files the smallest of 10/12/14/16
bits that holds the largest value in the pool (a 12-bit camera saved in 16-bit saturates at
4095), or `QCSettings.bit_depth`; float images the pool's largest value.

When several verdicts apply, the first in this order wins: too_dark, saturated, blank,
out_of_focus (defects of the image itself), then duplicate, unusual (relations to the pool): an
empty black frame is "too dark", not "a duplicate of another empty black frame", and a blurred
repeat of a field is "out of focus".

Focus without hand labels (after Yang et al., "Assessing microscope image focus quality with
deep learning", BMC Bioinformatics 19:77, 2018): the project's own sharpest images (top quarter
by laplacian_focus, at most 40) are blurred synthetically with Gaussians of sigma
`DEFOCUS_LEVELS`, camera-like noise is added back at the level measured in the source image
(Immerkaer's estimator, CVIU 1996) and quantised to the file's integer grid. A multinomial
logistic regression on cheap per-patch features (the share of detail energy in four difference-
of-Gaussian bands and the bands' signal-to-noise ratios) learns P(defocus level | patch). An
image's distribution is the mean over its structured patches: defocus_px is its mean and
defocus_sd its spread. Flat patches (detail not above the noise) are not asked: an empty
field has no defocus estimate (NaN) instead of a confident "in focus".

Usage::

    results = assess(paths, keys, embeddings=emb)        # list[QCResult]
    write_csv(results, "qc.csv")
"""
from __future__ import annotations

import csv
import hashlib
import json
import math
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from trainer.images import ImageReadError, SkipReport, image_key, list_images, read_raw

VERDICTS = ("ok", "blank", "out_of_focus", "saturated", "too_dark", "duplicate", "unusual")
PRIORITY = ("too_dark", "saturated", "blank", "out_of_focus", "duplicate", "unusual")
DEFOCUS_LEVELS = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0)
PATCH = 64  # patch side, working pixels
MAX_PATCHES = 64
MAX_SIDE = 1024  # larger images are binned by an integer factor before the focus features
TOP_TOLERANCE = 0.005  # a pixel "at the top" is within 0.5 % of full scale
BANDS = (1.0, 2.0, 4.0, 8.0)  # Gaussian sigmas: bands I-G1, G1-G2, G2-G4, G4-G8
SETTINGS_FILE = "qc_settings.json"
MAX_TRAIN_PATCHES = 8000
THUMB = 48
THUMB_SHIFT = 3


# ============================================================ settings

@dataclass
class QCSettings:
    """Per-project thresholds (defaults measured in docs/benchmarks.md, "Image quality control").

    Load from a JSON object with any subset of these fields (`QCSettings.from_dict`)."""

    too_dark: float = 0.05  # brightness below -> too_dark
    saturated: float = 0.05  # saturated_share at/above -> saturated
    blank: float = 0.004  # structure below -> blank
    out_of_focus: float = 2.0  # defocus_px at/above -> out_of_focus
    duplicate: float = 0.90  # pixel_match at/above (for an embedding candidate) -> duplicate
    duplicate_candidate: float = 0.80  # centred cosine similarity at/above -> checked for duplicate
    unusual: float = 6.0  # unusual_z at/above -> unusual
    focus_method: str = "learned"  # "learned" or "laplacian"
    bit_depth: int | None = None  # None: inferred from the pool
    flagged: str = "end"  # in the suggested order: "end" (after every ok image) or "exclude"

    def __post_init__(self):
        if self.focus_method not in ("learned", "laplacian"):
            raise ValueError(f"QC setting focus_method={self.focus_method!r}: use 'learned' or 'laplacian'")
        if self.flagged not in ("end", "exclude"):
            raise ValueError(f"QC setting flagged={self.flagged!r}: use 'end' or 'exclude'")
        if self.bit_depth is not None and not 1 <= int(self.bit_depth) <= 32:
            raise ValueError(f"QC setting bit_depth={self.bit_depth!r}: give the camera's bits (8, 12, 16, ...)")

    @classmethod
    def from_dict(cls, d: dict | None, source: str = "QC settings") -> "QCSettings":
        d = dict(d or {})
        known = {f.name for f in fields(cls)}
        bad = sorted(set(d) - known)
        if bad:
            raise ValueError(f"{source}: unknown field(s) {', '.join(bad)}; known: {', '.join(sorted(known))}")
        for k, v in d.items():
            if k in ("focus_method", "flagged") or (k == "bit_depth" and v is None):
                continue
            if not isinstance(v, (int, float)) or isinstance(v, bool):
                raise ValueError(f"{source}: field '{k}' must be a number, got {v!r}")
        return cls(**d)

    @classmethod
    def load(cls, path) -> "QCSettings":
        """From a JSON file; a missing file gives the defaults."""
        p = Path(path)
        if not p.is_file():
            return cls()
        try:
            d = json.loads(p.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"QC settings file '{p}' is not valid JSON ({exc}); fix or delete it") from None
        if not isinstance(d, dict):
            raise ValueError(f"QC settings file '{p}' must hold a JSON object of thresholds")
        return cls.from_dict(d, source=f"QC settings file '{p}'")


# ============================================================ per-image pixel measurements

@dataclass
class PixelStats:
    """What one read of an image yields (raw units: the file's own grey levels)."""

    dtype: str
    shape: tuple
    colour: bool
    sha1: str
    raw_max: float
    bright_p999: float  # raw units
    top_share: dict  # bits -> share of pixels at the top for that bit depth
    noise: float  # Immerkaer noise sigma of the grey plane, raw units
    laplacian_focus: float
    energies: np.ndarray  # (P, 4) band energies per patch, raw units^2
    scale: int  # binning factor applied before the focus features
    thumb: np.ndarray | None = None  # (THUMB, THUMB) float32 grey thumbnail, for near duplicates
    seconds: float = 0.0


_NOISE_GAIN = None


def _noise_band_gain() -> np.ndarray:
    """Energy of each band for unit white noise (so noise can be subtracted per band)."""
    global _NOISE_GAIN
    if _NOISE_GAIN is None:
        rng = np.random.default_rng(0)
        z = rng.standard_normal((512, 512)).astype(np.float32)
        _NOISE_GAIN = _patch_energies(z).mean(0)
    return _NOISE_GAIN


def immerkaer_noise(g: np.ndarray) -> float:
    """Gaussian noise sigma of a grey image (Immerkaer, CVIU 64:300, 1996), in its units."""
    h, w = g.shape
    if h < 3 or w < 3:
        return 0.0
    c = g[1:-1, 1:-1]
    m = (g[:-2, :-2] + g[:-2, 2:] + g[2:, :-2] + g[2:, 2:]
         - 2 * (g[:-2, 1:-1] + g[2:, 1:-1] + g[1:-1, :-2] + g[1:-1, 2:]) + 4 * c)
    return float(math.sqrt(math.pi / 2) * np.abs(m).mean() / 6.0)


def laplacian_focus(g: np.ndarray) -> float:
    """Normalised variance of the Laplacian: var(lap(I)) / mean(I)^2 (dimensionless, >= 0)."""
    lap = (g[:-2, 1:-1] + g[2:, 1:-1] + g[1:-1, :-2] + g[1:-1, 2:] - 4 * g[1:-1, 1:-1])
    mu = float(g.mean())
    return float(lap.var() / max(mu * mu, 1e-12))


def _pyramid(g: np.ndarray) -> list:
    """Band-pass pyramid: [I - G1 (full res), G1 - G2 (1/2 res), G2 - G4 (1/4), G4 - G8 (1/8)].

    G_s is a Gaussian blur of sigma s file pixels. Each level is blurred on a grid decimated by
    2 (sigma sqrt(3)/2 of that grid brings sigma s to 2s), so all four bands cost about one
    full-resolution filter. Mean squares of a band are comparable across levels."""
    from scipy.ndimage import gaussian_filter

    cur = gaussian_filter(g, 1.0, mode="reflect", truncate=3.0)
    out = [g - cur]
    step = math.sqrt(3.0) / 2.0
    for _ in range(len(BANDS) - 1):
        d = np.ascontiguousarray(cur[::2, ::2])
        cur = gaussian_filter(d, step, mode="reflect", truncate=3.0)
        out.append(d - cur)
    return out


def _patch_energies_from(levels: list) -> np.ndarray:
    """(P, 4) mean square of each band in a grid of PATCH x PATCH patches (at most MAX_PATCHES)."""
    h, w = levels[0].shape
    ph, pw = min(PATCH, h), min(PATCH, w)
    ny, nx = h // ph, w // pw
    oy, ox = (h - ny * ph) // 2, (w - nx * pw) // 2
    cols = []
    for lv, b in enumerate(levels):
        f = 2 ** lv
        qh, qw = max(ph // f, 1), max(pw // f, 1)
        y0, x0 = oy // f, ox // f
        blk = b[y0:y0 + ny * qh, x0:x0 + nx * qw]
        if blk.shape != (ny * qh, nx * qw):  # tiny image: pad the last level
            blk = np.pad(blk, ((0, ny * qh - blk.shape[0]), (0, nx * qw - blk.shape[1])), mode="edge")
        blk = blk.reshape(ny, qh, nx, qw).astype(np.float64)
        cols.append(np.einsum("yaxb,yaxb->yx", blk, blk).reshape(-1) / float(qh * qw))
    e = np.stack(cols, 1)
    if len(e) > MAX_PATCHES:
        e = e[np.linspace(0, len(e) - 1, MAX_PATCHES).round().astype(int)]
    return e


def _patch_energies(g: np.ndarray) -> np.ndarray:
    return _patch_energies_from(_pyramid(g))


def grey_plane(raw: np.ndarray) -> tuple[np.ndarray, np.ndarray, bool]:
    """(grey float32 (H, W), brightness plane (H, W), is_colour) in raw units.

    Colour (8-bit RGB): grey = brightness = mean of R, G, B (returned as the integer sum
    R+G+B in the brightness plane, a third of it is the mean). Otherwise grey = mean of the
    channels, brightness = the brightest channel."""
    a = raw
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    colour = a.ndim == 3 and a.shape[-1] == 3 and a.dtype == np.uint8
    if a.ndim == 2:
        return a.astype(np.float32), a, False
    if colour:  # channel by channel: numpy reductions over a short last axis are slow
        s3 = a[..., 0].astype(np.uint16)
        s3 += a[..., 1]
        s3 += a[..., 2]
        return s3.astype(np.float32) * np.float32(1.0 / 3.0), s3, True
    g = a[..., 0].astype(np.float32)
    m = a[..., 0].copy()
    for c in range(1, a.shape[-1]):
        g += a[..., c]
        np.maximum(m, a[..., c], out=m)
    return g * np.float32(1.0 / a.shape[-1]), m, False


def _p999(plane: np.ndarray, divide: float = 1.0) -> float:
    """99.9th percentile (nearest rank) of a plane; integer planes by histogram (fast)."""
    if plane.dtype.kind == "u" and plane.dtype.itemsize <= 2:
        cum = np.cumsum(np.bincount(plane.ravel()))
        return float(np.searchsorted(cum, 0.999 * cum[-1])) / divide
    return float(np.percentile(plane, 99.9)) / divide


def _bin(g: np.ndarray, f: int) -> np.ndarray:
    if f == 1:
        return g
    h, w = (g.shape[0] // f) * f, (g.shape[1] // f) * f
    return g[:h, :w].reshape(h // f, f, w // f, f).mean((1, 3))


def _top_shares(raw: np.ndarray, colour: bool) -> dict:
    """Share of pixels at the top of each candidate bit depth (colour: all channels clip)."""
    a = raw if raw.ndim == 3 else raw[..., None]
    if raw.dtype == np.uint8:
        cands = [8]
    elif np.issubdtype(raw.dtype, np.integer):
        cands = [8, 10, 12, 14, 16] + ([32] if raw.dtype.itemsize > 2 else [])
    else:  # float: relative to the image's own maximum (see module doc)
        top = float(np.nanmax(a)) if a.size else 0.0
        hit = a >= top * (1 - TOP_TOLERANCE) if top > 0 else np.zeros(a.shape, bool)
        share = float(hit.all(-1).mean() if colour else hit.reshape(-1, a.shape[-1]).mean(0).max())
        return {"float": share}
    out = {}
    amax = int(a.max())
    for bits in cands:
        top = 2 ** bits - 1
        if amax < top * (1 - TOP_TOLERANCE):
            out[bits] = 0.0
            continue
        if colour:
            lo = np.minimum(np.minimum(a[..., 0], a[..., 1]), a[..., 2])
            out[bits] = float(np.count_nonzero(lo >= top * (1 - TOP_TOLERANCE)) / lo.size)
        else:
            thr = top * (1 - TOP_TOLERANCE)
            out[bits] = max(float(np.count_nonzero(a[..., c] >= thr)) for c in range(a.shape[-1])) / (a.shape[0] * a.shape[1])
    return out


def measure(raw: np.ndarray) -> PixelStats:
    """All per-image measurements from the decoded pixels (`trainer.images.read_raw`)."""
    t0 = time.perf_counter()
    raw = np.asarray(raw)
    if not np.issubdtype(raw.dtype, np.number):
        raise ValueError(f"pixels of type {raw.dtype} are not numbers")
    sha = hashlib.sha1(f"{raw.dtype.str}{raw.shape}".encode())
    sha.update(np.ascontiguousarray(raw).tobytes())
    g, bright, colour = grey_plane(raw)
    if raw.dtype.kind == "f" and not np.isfinite(g).all():
        g = np.nan_to_num(g, nan=0.0, posinf=0.0, neginf=0.0)
        bright = np.nan_to_num(bright, nan=0.0, posinf=0.0, neginf=0.0)
    f = max(1, int(math.ceil(max(g.shape) / MAX_SIDE)))
    gw = _bin(g, f)
    energies = _patch_energies(gw)
    return PixelStats(
        dtype=str(raw.dtype), shape=tuple(raw.shape), colour=colour, sha1=sha.hexdigest(),
        raw_max=float(np.max(raw)), bright_p999=_p999(bright, 3.0 if colour else 1.0),
        top_share=_top_shares(raw, colour), noise=immerkaer_noise(gw), laplacian_focus=laplacian_focus(g),
        energies=energies, scale=f, thumb=thumbnail(g), seconds=time.perf_counter() - t0)


def thumbnail(g: np.ndarray) -> np.ndarray:
    """(THUMB, THUMB) area-averaged grey thumbnail (aspect ratio not kept: near duplicates only)."""
    from PIL import Image

    return np.asarray(Image.fromarray(np.ascontiguousarray(g, dtype=np.float32), mode="F")
                      .resize((THUMB, THUMB), Image.BOX), dtype=np.float32)


def _dihedral(t: np.ndarray) -> list:
    return [np.rot90(x, k) for x in (t, t[:, ::-1]) for k in range(4)]


def pixel_match(a: np.ndarray, b: np.ndarray, max_shift: int = THUMB_SHIFT) -> float:
    """Best normalised cross-correlation of thumbnail `b` with `a` over the 8 mirror images /
    right-angle rotations of `b` and circular shifts up to `max_shift` px (FFT), -1..1."""
    def norm(x):
        x = x.astype(np.float64) - x.mean()
        n = np.linalg.norm(x)
        return x / n if n > 0 else x

    A = np.fft.rfft2(norm(a))
    best = -1.0
    for t in _dihedral(b):
        c = np.fft.irfft2(A * np.conj(np.fft.rfft2(norm(np.ascontiguousarray(t)))), s=a.shape)
        c = np.roll(c, (max_shift, max_shift), axis=(0, 1))[:2 * max_shift + 1, :2 * max_shift + 1]
        best = max(best, float(c.max()))
    return best


def full_scale(stats: Sequence[PixelStats], bit_depth: int | None = None) -> tuple[float, int | str]:
    """(full-scale value, bit depth or 'float') of a pool: the real bit depth (module doc)."""
    if not stats:
        return 255.0, 8
    if bit_depth:
        return float(2 ** int(bit_depth) - 1), int(bit_depth)
    dtypes = {s.dtype for s in stats}
    if dtypes == {"uint8"}:
        return 255.0, 8
    stats = [s for s in stats if s.dtype != "uint8"]  # a mixed pool: the others decide
    dtypes = {s.dtype for s in stats}
    if any(d.startswith("float") for d in dtypes):
        return max(max(s.raw_max for s in stats), 1e-12), "float"
    m = max(s.raw_max for s in stats)
    for bits in (8, 10, 12, 14, 16, 32):
        if m <= 2 ** bits - 1:
            # 8 bits only when every file is 8-bit: a 16-bit file that happens to stay below 256
            # is still a (dim) 16-bit exposure
            if bits == 8 and dtypes != {"uint8"}:
                continue
            return float(2 ** bits - 1), bits
    return float(m), 32


def structure(energies: np.ndarray, noise: float, scale_value: float) -> np.ndarray:
    """Per patch: std of detail in bands 1-8 px with the noise part subtracted, / full scale."""
    gain = _noise_band_gain()
    sig = energies[:, 1:].sum(1) - 2.0 * noise * noise * gain[1:].sum()
    return np.sqrt(np.maximum(sig, 0.0)) / scale_value


def image_structure(per_patch: np.ndarray) -> float:
    """The second most structured patch (one speck of dust does not make a field non-blank)."""
    if len(per_patch) == 0:
        return 0.0
    if len(per_patch) == 1:
        return float(per_patch[0])
    return float(np.sort(per_patch)[-2])


# ============================================================ focus model

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


# ============================================================ embedding scores

def centred_unit(emb: np.ndarray) -> np.ndarray:
    """Rows centred on the pool mean and L2-normalised (CNN features share a large common part)."""
    from sampler.space import normalize_rows

    x = np.array(emb, dtype=np.float32, copy=True)
    x -= x.mean(0, keepdims=True)
    return normalize_rows(x)


QC_APPROX_THRESHOLD = 20_000  # images: above this the neighbours are found approximately (PCA + IVF)
QC_PCA_DIM = 128  # the approximate search's width (similarities are then recomputed in full)


def _pca_unit(x: np.ndarray, dim: int, seed: int = 0, sample: int = 20_000) -> np.ndarray:
    """Rows of x projected on their top `dim` principal directions (from a sample), unit length."""
    from sampler.space import CHUNK_ROWS, normalize_rows

    rng = np.random.default_rng(seed)
    s = x[np.sort(rng.choice(len(x), min(len(x), sample), replace=False))].astype(np.float64)
    s -= s.mean(0)
    _, vecs = np.linalg.eigh(s.T @ s)
    proj = np.ascontiguousarray(vecs[:, ::-1][:, :dim], dtype=np.float32)
    out = np.empty((len(x), dim), np.float32)
    for a in range(0, len(x), CHUNK_ROWS):
        out[a:a + CHUNK_ROWS] = normalize_rows(x[a:a + CHUNK_ROWS] @ proj)
    return out


def embedding_scores(emb: np.ndarray, keys: Sequence[str], k: int = 5,
                     approx_threshold: int | None = None) -> dict:
    """The k nearest other images (FAISS inner-product index on centred unit vectors) and the
    robust z-score of the mean distance to them: {'rows' (n, k), 'sims' (n, k), 'unusual_z' (n,),
    'index': 'flat' | 'pca-flat' | 'pca-ivf'}.

    Every image asks for its neighbours, so an exact search costs n^2 x dim: 9 s at 20,000 x 1280
    on 2 cores, ~4 minutes at 100,000, hours at 1,000,000. Above `approx_threshold` images
    (default QC_APPROX_THRESHOLD) the neighbours are found in a QC_PCA_DIM-wide PCA projection,
    with an IVF index (sampler.index) once that is large enough, and their similarities are then
    computed exactly in the full space (k per image): a neighbour can be missed, never mis-scored."""
    import sampler  # noqa: F401  (pins OpenBLAS before faiss loads)
    from sampler.index import EmbeddingIndex

    n = len(keys)
    out = {"rows": np.full((n, k), -1, np.int64), "sims": np.full((n, k), np.nan), "unusual_z": np.full(n, np.nan),
           "index": "flat"}
    if n < 2:
        return out
    x = centred_unit(emb)
    limit = QC_APPROX_THRESHOLD if approx_threshold is None else max(int(approx_threshold), 2)
    kk = min(k + 1, n)
    if n <= limit or x.shape[1] <= QC_PCA_DIM:
        # exact below the limit; a narrow embedding above it: IVF in the full space
        idx = EmbeddingIndex.build(x, list(keys), backbone="qc-centred", approx_threshold=n + 1 if n <= limit else limit)
        out["index"] = idx.kind
        sims, rows = idx.search(x, kk)
    else:
        z = _pca_unit(x, QC_PCA_DIM)
        idx = EmbeddingIndex.build(z, list(keys), backbone="qc-centred-pca", approx_threshold=limit)
        out["index"] = "pca-" + idx.kind
        _, rows = idx.search(z, kk)
        del z
        sims = np.full(rows.shape, -np.inf, np.float32)
        for a in range(0, n, 4096):  # the exact similarity of every neighbour found
            r = rows[a:a + 4096]
            v = np.einsum("ij,ikj->ik", x[a:a + 4096], x[np.maximum(r, 0)])
            sims[a:a + 4096] = np.where(r >= 0, v, -np.inf)
        o = np.argsort(-sims, axis=1, kind="stable")
        rows, sims = np.take_along_axis(rows, o, 1), np.take_along_axis(sims, o, 1)
    del idx
    # drop each image itself (and missing neighbours), keep the first k others: vectorised (n can be 10^6)
    keep = (rows != np.arange(n)[:, None]) & (rows >= 0)
    first = np.argsort(~keep, axis=1, kind="stable")[:, :k]
    r = np.take_along_axis(rows, first, 1)
    s = np.take_along_axis(sims, first, 1).astype(np.float64)
    kept = np.take_along_axis(keep, first, 1)
    w = r.shape[1]
    out["rows"][:, :w] = np.where(kept, r, -1)
    out["sims"][:, :w] = np.where(kept, s, np.nan)
    if n >= 10:
        cnt = kept.sum(1)
        d = np.where(cnt > 0, np.where(kept, 1.0 - s, 0.0).sum(1) / np.maximum(cnt, 1), np.nan)
        med = np.nanmedian(d)
        mad = 1.4826 * np.nanmedian(np.abs(d - med))
        out["unusual_z"] = (d - med) / max(mad, 1e-6)
    return out


# ============================================================ the pass

@dataclass
class QCResult:
    key: str
    verdict: str
    reason: str  # the deciding score, e.g. "structure 0.0012 < 0.004"
    decided_by: str  # the deciding score's name ('' for ok)
    brightness: float
    saturated_share: float
    structure: float
    defocus_px: float
    defocus_sd: float
    laplacian_focus: float
    laplacian_defocus_px: float
    duplicate_of: str = ""
    duplicate_similarity: float = float("nan")
    pixel_match: float = float("nan")
    unusual_z: float = float("nan")

    def row(self) -> dict:
        d = asdict(self)
        return {k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in d.items()}


CSV_FIELDS = [f.name for f in fields(QCResult)]


@dataclass
class QCReport:
    results: list
    skipped: SkipReport
    settings: QCSettings
    full_scale: float
    bit_depth: object
    focus: FocusModel | None
    seconds: dict

    def counts(self) -> dict:
        c = {v: 0 for v in VERDICTS}
        for r in self.results:
            c[r.verdict] += 1
        return c

    def by_key(self) -> dict:
        return {r.key: r for r in self.results}

    def summary(self) -> str:
        n = len(self.results)
        lines = [f"{n} images checked (full scale {self.full_scale:g}, bit depth {self.bit_depth}; "
                 f"focus model: {self._focus_line()})"]
        for v, c in self.counts().items():
            lines.append(f"  {v:<13} {c:>6}  ({100.0 * c / max(n, 1):.1f} %)")
        return "\n".join(lines)

    def _focus_line(self) -> str:
        if self.focus is None:
            return "none (too few structured images), focus not judged"
        return (f"{self.settings.focus_method}, learned from {self.focus.n_images} sharpest images, "
                f"{self.focus.n_patches} synthetic patches")


def _decide(r: QCResult, s: QCSettings, exact: bool) -> None:
    checks = [
        ("too_dark", "brightness", r.brightness, r.brightness < s.too_dark, "<", s.too_dark),
        ("saturated", "saturated_share", r.saturated_share, r.saturated_share >= s.saturated, ">=", s.saturated),
        ("blank", "structure", r.structure, r.structure < s.blank, "<", s.blank),
    ]
    dpx = r.laplacian_defocus_px if s.focus_method == "laplacian" else r.defocus_px
    dname = "laplacian_defocus_px" if s.focus_method == "laplacian" else "defocus_px"
    checks.append(("out_of_focus", dname, dpx, bool(np.isfinite(dpx) and dpx >= s.out_of_focus), ">=", s.out_of_focus))
    if r.duplicate_of:
        thr = 1.0 if exact else s.duplicate
        name = "identical pixels" if exact else "pixel_match"
        checks.append(("duplicate", name, r.pixel_match, True, ">=", thr))
    uz = r.unusual_z
    checks.append(("unusual", "unusual_z", uz, bool(np.isfinite(uz) and uz >= s.unusual), ">=", s.unusual))
    for verdict, name, val, hit, op, thr in checks:
        if hit:
            r.verdict, r.decided_by = verdict, name
            if verdict == "duplicate":
                r.reason = f"{name} with {r.duplicate_of}" + ("" if exact else f" ({val:.3f} {op} {thr:g}, "
                                                                             f"embedding {r.duplicate_similarity:.3f})")
            else:
                r.reason = f"{name} {val:.4g} {op} {thr:g}"
            return
    r.verdict, r.decided_by, r.reason = "ok", "", ""


def assess(paths: Sequence, keys: Sequence[str] | None = None, embeddings: np.ndarray | None = None,
           embedding_keys: Sequence[str] | None = None, settings: QCSettings | None = None,
           progress: Callable[[int, int], None] | None = None, seed: int = 0,
           stats_cache: dict | None = None) -> QCReport:
    """Quality verdict for every readable image of a pool.

    paths: image files; keys: their identities (default: the paths as strings);
    embeddings: optional (N, D) rows for `embedding_keys` (default: `keys`) - without them
    near-duplicates and `unusual` are not judged (exact duplicates still are).
    Unreadable files are skipped and listed in `QCReport.skipped`, never raised.
    stats_cache: {key: PixelStats}; keys found there are not read again, new ones are added.
    """
    settings = settings or QCSettings()
    keys = [str(p) for p in paths] if keys is None else [str(k) for k in keys]
    if len(keys) != len(paths):
        raise ValueError(f"{len(keys)} keys for {len(paths)} paths")
    t0 = time.perf_counter()
    skipped = SkipReport()
    stats: list[PixelStats] = []
    ok_keys, ok_paths = [], []
    t_read = 0.0
    for i, (p, k) in enumerate(zip(paths, keys)):
        if stats_cache is not None and k in stats_cache:
            stats.append(stats_cache[k])
            ok_keys.append(k)
            ok_paths.append(p)
            continue
        try:
            tr = time.perf_counter()
            raw = read_raw(p)
            t_read += time.perf_counter() - tr
            st = measure(raw)
        except (ImageReadError, ValueError) as exc:
            skipped.add(p, getattr(exc, "reason", str(exc)))
            continue
        stats.append(st)
        ok_keys.append(k)
        ok_paths.append(p)
        if stats_cache is not None:
            stats_cache[k] = st
        if progress:
            progress(i + 1, len(paths))
    t_measure = time.perf_counter() - t0 - t_read
    fs, bits = full_scale(stats, settings.bit_depth)
    results = []
    per_patch = []
    for k, st in zip(ok_keys, stats):
        # 8-bit files are 8-bit whatever else the pool holds (a mixed pool: the rest by inference)
        fs_i, bits_i = (255.0, 8) if st.dtype == "uint8" and not settings.bit_depth else (fs, bits)
        if bits_i == "float":
            sat = st.top_share.get("float", 0.0)
        else:
            sat = st.top_share.get(bits_i, 0.0) if isinstance(bits_i, int) else 0.0
        sp = structure(st.energies, st.noise, fs_i)
        per_patch.append(sp)
        results.append(QCResult(k, "ok", "", "", st.bright_p999 / fs_i, float(sat), image_structure(sp),
                                float("nan"), float("nan"), st.laplacian_focus, float("nan")))
    # ---- focus: learn from the sharpest usable images, then predict every image
    t1 = time.perf_counter()
    usable = [i for i, r in enumerate(results)
              if r.brightness >= settings.too_dark and r.saturated_share < settings.saturated
              and r.structure >= settings.blank]
    focus = None
    if len(usable) >= 2:
        usable.sort(key=lambda i: -stats[i].laplacian_focus)
        n_sharp = int(min(40, max(2, math.ceil(len(usable) / 4))))
        sharp = usable[:n_sharp]
        greys = [grey_plane(read_raw(ok_paths[i]))[0] for i in sharp]
        focus = fit_focus_model(greys, [stats[i].noise * stats[i].scale for i in sharp], stats[sharp[0]].dtype, fs,
                                settings.blank, [ok_keys[i] for i in sharp], seed=seed)
    if focus is not None:
        pred = focus.predict(stats, [sp >= settings.blank for sp in per_patch], _noise_floor(stats[0].dtype, fs))
        for r, (mu, sd), st in zip(results, pred, stats):
            r.defocus_px, r.defocus_sd = float(mu), float(sd)
            r.laplacian_defocus_px = focus.laplacian_defocus(st.laplacian_focus)
    t_focus = time.perf_counter() - t1
    # ---- duplicates: identical pixels first, then near-identical embeddings
    t2 = time.perf_counter()
    order = sorted(range(len(results)), key=lambda i: results[i].key)
    first_by_hash: dict = {}
    exact = set()
    for i in order:
        h = stats[i].sha1
        if h in first_by_hash:
            results[i].duplicate_of, results[i].duplicate_similarity = results[first_by_hash[h]].key, 1.0
            exact.add(i)
        else:
            first_by_hash[h] = i
    if embeddings is not None:
        ekeys = [str(k) for k in (embedding_keys if embedding_keys is not None else keys)]
        emb = np.asarray(embeddings, dtype=np.float32)
        if emb.ndim != 2 or len(emb) != len(ekeys):
            raise ValueError(f"embeddings: expected one row per key ({len(ekeys)}), got shape {emb.shape}")
        erow = {k: j for j, k in enumerate(ekeys)}
        have = [i for i in range(len(results)) if results[i].key in erow]
        if len(have) >= 2:
            sub = emb[[erow[results[i].key] for i in have]]
            es = embedding_scores(sub, [results[i].key for i in have])
            rank = {i: o for o, i in enumerate(order)}
            for j, i in enumerate(have):
                results[i].unusual_z = float(es["unusual_z"][j])
                if i in exact:
                    continue
                best = None
                for nn, sim in zip(es["rows"][j], es["sims"][j]):
                    if nn < 0 or not sim >= settings.duplicate_candidate:
                        continue
                    other = have[int(nn)]
                    if rank[other] > rank[i]:
                        continue  # the pair is reported on the later image
                    m = pixel_match(stats[other].thumb, stats[i].thumb)
                    if m >= settings.duplicate and (best is None or m > best[1]):
                        best = (other, m, float(sim))
                if best is not None:
                    other = best[0]
                    results[i].duplicate_of = results[other].key
                    results[i].pixel_match, results[i].duplicate_similarity = best[1], best[2]
    t_dup = time.perf_counter() - t2
    for i, r in enumerate(results):
        _decide(r, settings, i in exact)
    seconds = {"read": round(t_read, 3), "measure": round(t_measure, 3), "focus_fit_predict": round(t_focus, 3),
               "embedding_scores": round(t_dup, 3), "total": round(time.perf_counter() - t0, 3)}
    return QCReport(results, skipped, settings, fs, bits, focus, seconds)


def write_csv(results: Sequence[QCResult], path) -> Path:
    """One row per image: key, verdict, the deciding score, and every score (module doc)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        w.writeheader()
        for r in results:
            w.writerow(r.row())
    tmp.replace(path)
    return path


def qc_folder(folder, out_csv, settings: QCSettings | None = None, embed: bool = True,
              backbone: str = "tf_efficientnet_lite0", image_size: int = 224, progress: bool = False) -> QCReport:
    """`scopeloop qc`: every image under `folder` -> `out_csv` (keys relative to the folder).

    With `embed`, images are embedded with `backbone` (offline ImageNet weights by default) for
    near-duplicates and `unusual`; without, those two verdicts are not judged."""
    paths = list_images(folder)
    if not paths:
        raise FileNotFoundError(f"no images (png/jpg/tif) found under '{folder}'")
    keys = [image_key(p, folder) for p in paths]
    emb = ekeys = None
    if embed:
        from trainer.inference import embed_paths

        e, rows, _ = embed_paths(paths, backbone=backbone, image_size=image_size, progress=progress)
        emb, ekeys = e, [keys[r] for r in rows]
    report = assess(paths, keys, emb, ekeys, settings)
    write_csv(report.results, out_csv)
    if len(report.skipped):
        report.skipped.write_json(Path(out_csv).with_suffix(".skipped.json"))
    return report


# ============================================================ in the loop (a project's work directory)

QC_DIR = "qc"


def project_settings(workdir) -> QCSettings:
    """The project's thresholds: <workdir>/qc_settings.json (any subset of QCSettings' fields)."""
    return QCSettings.load(Path(workdir) / SETTINGS_FILE)


def load_verdicts(workdir) -> dict:
    """{key: {"verdict", "reason"}} from the last quality pass of a project ({} before the first)."""
    p = Path(workdir) / QC_DIR / "verdicts.json"
    if not p.is_file():
        return {}
    return json.loads(p.read_text()).get("verdicts", {})


def project_qc(workdir, images_root, keys: Sequence[str], embeddings: np.ndarray | None = None,
               log: Callable[[str], None] = print, store: bool = True) -> dict:
    """Verdicts of a project's images, kept in <workdir>/qc/ and re-judged only when the set of
    images, the settings or the embeddings changed: stats.pkl (per-image measurements: each image
    is read once, new images only), verdicts.json ({key: {verdict, reason}} + counts, and whether
    embeddings judged them), qc.csv (every score). `embeddings` rows match `keys` (the project's
    embedding cache). `store=False` returns verdicts without replacing verdicts.json / qc.csv
    (measurements are still cached): `init` judging new images of a project whose last pass had
    embeddings, which a pixel-only pass must not overwrite."""
    import os
    import pickle

    d = Path(workdir) / QC_DIR
    settings = project_settings(workdir)
    keys = [str(k) for k in keys]
    sig = hashlib.sha1(("\n".join(sorted(keys)) + json.dumps(asdict(settings), sort_keys=True)
                        + _embedding_tag(embeddings)).encode()).hexdigest()
    vfile = d / "verdicts.json"
    if vfile.is_file():
        old = json.loads(vfile.read_text())
        if old.get("signature") == sig:
            return old.get("verdicts", {})
    d.mkdir(parents=True, exist_ok=True)
    sfile = d / "stats.pkl"
    cache = {}
    if sfile.is_file():
        try:
            with open(sfile, "rb") as f:
                cache = pickle.load(f)
        except Exception:  # a damaged cache is rebuilt, never fatal
            cache = {}
    n_before = len(cache)
    root = Path(images_root)
    report = assess([root / k for k in keys], keys, embeddings, keys if embeddings is not None else None,
                    settings, stats_cache=cache)
    if len(cache) != n_before or not sfile.is_file():  # ~10 KB an image: rewritten only when it grew
        tmp = sfile.with_name("stats.pkl.part")
        with open(tmp, "wb") as f:
            pickle.dump(cache, f, protocol=pickle.HIGHEST_PROTOCOL)
        os.replace(tmp, sfile)
    verdicts = {r.key: {"verdict": r.verdict, "reason": r.reason} for r in report.results}
    if not store:
        return verdicts
    write_csv(report.results, d / "qc.csv")
    data = {"signature": sig, "counts": report.counts(), "images": len(report.results),
            "bit_depth": report.bit_depth, "focus": report._focus_line(), "seconds": report.seconds,
            "embeddings": embeddings is not None, "verdicts": verdicts}
    t = vfile.with_name("verdicts.json.part")
    t.write_text(json.dumps(data))
    os.replace(t, vfile)
    flagged = {v: c for v, c in report.counts().items() if v != "ok" and c}
    log(f"image quality: {len(cache) - n_before} new image(s) measured, {sum(flagged.values())} of "
        f"{len(report.results)} flagged {flagged if flagged else ''}".rstrip())
    return verdicts


def _embedding_tag(embeddings) -> str:
    """Which embeddings judged the pool: none (at `init`, before the first embedding) or a cheap
    fingerprint of them, so near duplicates and `unusual` are judged again once embeddings exist
    and whenever the embedding space changes (a deep refresh)."""
    if embeddings is None:
        return "|no-embeddings"
    e = np.asarray(embeddings)
    if e.ndim != 2 or not len(e):
        return f"|emb{e.shape}"
    step = max(1, len(e) // 64)
    return f"|emb{e.shape}:" + hashlib.sha1(np.ascontiguousarray(e[::step, :16], dtype=np.float32).tobytes()).hexdigest()


def order_flagged_last(order: np.ndarray, keys: Sequence[str], verdicts: dict, flagged: str = "end") -> np.ndarray:
    """The suggested order with flagged images after every ok one ("end", their order kept) or
    left out ("exclude"). Images without a verdict (unreadable, not yet judged) count as ok."""
    order = np.asarray(order, dtype=np.int64)
    bad = np.array([verdicts.get(keys[r], {}).get("verdict", "ok") != "ok" for r in order], dtype=bool)
    if not bad.any():
        return order
    if flagged == "exclude":
        return order[~bad]
    return np.concatenate([order[~bad], order[bad]])


def rank_with_qc(workdir, images_root, order: np.ndarray, keys: Sequence[str], embeddings=None,
                 log: Callable[[str], None] = print) -> np.ndarray:
    """What the refresh calls after ranking: flagged images leave the head of the order.
    A failing quality pass is logged and leaves the order as it was (it never blocks a refresh)."""
    try:
        verdicts = project_qc(workdir, images_root, keys, embeddings, log=log)
        return order_flagged_last(order, keys, verdicts, project_settings(workdir).flagged)
    except Exception as exc:  # noqa: BLE001 - QC is advisory in the loop
        log(f"image quality control skipped this time: {type(exc).__name__}: {exc}")
        return np.asarray(order, dtype=np.int64)
