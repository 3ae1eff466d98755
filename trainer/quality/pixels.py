"""Per-image pixel measurements (`PixelStats`): exposure, saturation, noise (Immerkaer, CVIU 1996), detail energy per patch, thumbnails for near-duplicates."""
from __future__ import annotations

import hashlib
import math
import time
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from trainer.quality.settings import (
    BANDS,
    MAX_PATCHES,
    MAX_SIDE,
    PATCH,
    THUMB,
    THUMB_SHIFT,
    TOP_OBJECT,
    TOP_TOLERANCE,
)


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
    # the brightness of the field's brightest object: the TOP_OBJECT-th brightest pixel (one
    # nucleus on a dark field counts, a few hot pixels do not); NaN in measurements cached before it
    bright_top: float = float("nan")

    @property
    def content(self) -> float:
        """How bright the field's content is (raw units): the 99.9th percentile, or its brightest
        object when that is brighter (a single nucleus covers far less than 0.1 % of a field)."""
        top = self.bright_top if math.isfinite(self.bright_top) else self.bright_p999
        return max(self.bright_p999, top)


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


def _p999(plane: np.ndarray, divide: float = 1.0, q: float = 0.999) -> float:
    """99.9th percentile (nearest rank; or quantile `q`) of a plane; integer planes by histogram (fast)."""
    if plane.dtype.kind == "u" and plane.dtype.itemsize <= 2:
        cum = np.cumsum(np.bincount(plane.ravel()))
        return float(np.searchsorted(cum, q * cum[-1])) / divide
    return float(np.percentile(plane, 100.0 * q)) / divide


def _top_object(plane: np.ndarray, divide: float = 1.0) -> float:
    """The TOP_OBJECT-th brightest value of a plane: a bright object's level, not a hot pixel's."""
    n = plane.size
    if n == 0:
        return 0.0
    return _p999(plane, divide, max(0.0, 1.0 - TOP_OBJECT / n))


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
    """All per-image measurements from the decoded pixels (`trainer.io.decode.read_raw`)."""
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
        energies=energies, scale=f, thumb=thumbnail(g), seconds=time.perf_counter() - t0,
        bright_top=_top_object(bright, 3.0 if colour else 1.0))


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


def _robust_max(s: PixelStats) -> float:
    """An image's largest value without its few outliers (hot pixels, a burnt-in scale bar)."""
    v = s.content if math.isfinite(s.bright_top) else s.raw_max
    return v if math.isfinite(v) else 0.0


def float_scale(stats: Sequence[PixelStats]) -> float | None:
    """Full scale of a pool's floating-point images: 1.0 when all of them hold values in [0, 1]
    (normalised images), else None: a float image has no bit depth, each is judged against its
    own range (only a black one is too dark)."""
    floats = [_robust_max(s) for s in stats if s.dtype.startswith("float")]
    return 1.0 if floats and max(floats) <= 1.0 + TOP_TOLERANCE else None


def full_scale(stats: Sequence[PixelStats], bit_depth: int | None = None) -> tuple[float, int | str]:
    """(full-scale value, bit depth or 'float') of a pool: the real bit depth, estimated from the
    images' largest values without their outliers (a 12-bit camera in 16-bit files: 4095, also
    when one file holds a hot pixel at 65535); floats: `float_scale` (module doc)."""
    if not stats:
        return 255.0, 8
    if bit_depth:
        return float(2 ** int(bit_depth) - 1), int(bit_depth)
    dtypes = {s.dtype for s in stats}
    if dtypes == {"uint8"}:
        return 255.0, 8
    stats = [s for s in stats if s.dtype != "uint8"]  # a mixed pool: the others decide
    ints = [s for s in stats if not s.dtype.startswith("float")]
    if not ints:  # floats only
        return float_scale(stats) or max(max(_robust_max(s) for s in stats), 1e-12), "float"
    stats = ints  # integer files decide the pool's depth; float files are judged by `float_scale`
    dtypes = {s.dtype for s in stats}
    m = max(_robust_max(s) for s in stats)
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
