"""Automatic choices per field: modality, the signal to threshold, its threshold, the cell diameter.

Nothing here is tuned per image: each choice is a measurement on the field itself.

- modality (`choose_modality`): the background is what most pixels show; a bright background
  (median intensity above 0.5 after the reader's robust scaling) is brightfield (cells darker or
  more coloured), a dark one fluorescence (cells bright).
- signal (`choose_signal`): among candidate signals in which cells are bright (fluorescence: each
  channel; brightfield: mean optical density, saturation, grey and each inverted channel), the one
  whose Otsu threshold separates best, measured by Otsu's separability
  eta = between-class variance / total variance (Otsu 1979, IEEE Trans. SMC 9:62). Stain signals
  from colour deconvolution (hematoxylin, eosin, DAB; Ruifrok & Johnston 2001, Anal. Quant.
  Cytol. Histol. 23:291, `skimage.color.rgb2hed`) show nuclei only: they are chosen explicitly.
- diameter (`measure_diameter`): the area-weighted median equivalent diameter of the convex
  objects (solidity >= 0.9) among the first objects found (light smoothing, Otsu threshold):
  convex objects are single cells, not clusters; weighting by area keeps specks and noise from
  shrinking it. One 640 x 480 smear field holds too few isolated cells for a stable figure, so
  `trainer.cells.find.find_cells` pools the first objects of up to 8 fields of a folder (one
  microscope, one magnification) unless a diameter is given.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage as ndi
from skimage import color, filters, measure

from trainer.cells.params import CellSettings
from trainer.cells.reading import robust_range, to_unit

BRIGHT_BACKGROUND = 0.5  # median scaled intensity above which a field is brightfield
MIN_SEPARABILITY = 0.66  # below this the field has no clear foreground (pure noise gives 2/pi = 0.64)
MIN_OBJECT_PX = 16  # objects smaller than this never count for the diameter
CONVEX = 0.9  # objects at least this solid are single cells for the diameter


def choose_modality(unit: np.ndarray) -> tuple[str, float]:
    """("brightfield" | "fluorescence", median intensity) of a scaled (H, W, C) field in [0, 1]."""
    med = float(np.median(unit.mean(axis=-1)))
    return ("brightfield" if med > BRIGHT_BACKGROUND else "fluorescence"), med


def candidates(n_channels: int, modality: str) -> list:
    """Signal names tried by channel="auto": fluorescence: each channel index; brightfield RGB:
    "od", "saturation" and "grey" (signals in which every kind of cell shows); grey brightfield: "grey"."""
    if modality == "fluorescence":
        return list(range(n_channels))
    if n_channels >= 3:
        return ["od", "saturation", "grey"]
    return ["grey"]


def signal(unit: np.ndarray, modality: str, channel) -> np.ndarray:
    """float32 (H, W) in which cells are bright, from a scaled (H, W, C) field in [0, 1].

    channel: an index (brightfield: inverted, 1 - value) or a name (see CellSettings.channel).
    Raises ValueError for a channel the image lacks."""
    c = unit.shape[-1]
    if isinstance(channel, (int, np.integer)):
        if not -c <= channel < c:
            raise ValueError(f"channel {channel}: the image has {c} channel(s) (0 to {c - 1})")
        s = unit[..., channel]
        return s if modality == "fluorescence" else 1.0 - s
    rgb = unit[..., :3] if c >= 3 else np.repeat(unit[..., :1], 3, axis=-1)
    if channel == "grey":
        g = unit.mean(axis=-1)
        return g if modality == "fluorescence" else 1.0 - g
    if channel == "od":
        return (-np.log(np.maximum(rgb, 1.0 / 255.0))).mean(axis=-1).astype(np.float32)
    if channel == "saturation":
        mx = rgb.max(axis=-1)
        return ((mx - rgb.min(axis=-1)) / np.maximum(mx, 1e-3)).astype(np.float32)
    if c < 3:
        raise ValueError(f"channel '{channel}' needs an RGB image; this one has {c} channel(s)")
    k = {"hematoxylin": 0, "eosin": 1, "dab": 2}[channel]
    return color.rgb2hed(rgb)[..., k].astype(np.float32)


def rescale(s: np.ndarray, lo=None, hi=None) -> tuple[np.ndarray, float, float]:
    """(s mapped to [0, 1] between its 0.5th and 99.8th percentiles (or lo, hi), lo, hi)."""
    if lo is None:
        flat = s.ravel()[:: max(1, s.size // 1_000_000)]
        lo, hi = (float(v) for v in np.percentile(flat, (0.5, 99.8)))
    out = (s - np.float32(lo)) * np.float32(1.0 / (hi - lo) if hi > lo else 0.0)
    return np.clip(out, 0, 1, out=out), lo, hi


def separability(s: np.ndarray) -> tuple[float, float]:
    """(Otsu threshold, eta = between-class / total variance) of a signal in [0, 1]."""
    hist, edges = np.histogram(s, bins=256, range=(0.0, 1.0))
    if hist.max() == hist.sum():
        return 1.0, 0.0
    centres = (edges[:-1] + edges[1:]) / 2
    t = float(filters.threshold_otsu(hist=(hist, centres)))
    p = hist / hist.sum()
    w1 = p[centres > t].sum()
    if w1 in (0, 1):
        return t, 0.0
    mu = (p * centres).sum()
    mu1 = (p * centres)[centres > t].sum() / w1
    mu0 = (p * centres)[centres <= t].sum() / (1 - w1)
    var = (p * (centres - mu) ** 2).sum()
    return t, float(w1 * (1 - w1) * (mu1 - mu0) ** 2 / var) if var > 0 else 0.0


def background_ceiling(sm: np.ndarray, sds: float) -> float:
    """A threshold just above the background of a smoothed, rescaled signal (cells bright):
    the background's mode (the histogram peak below Otsu's threshold) plus `sds` x its spread,
    the root mean square deviation of the pixels below the mode (the side cells never reach).
    Faint cells (pale red cells next to a dark white cell) lie above it even where a global
    threshold between two classes puts them with the background. Returns 1.0 when no
    background peak can be measured."""
    hist, edges = np.histogram(sm, bins=256, range=(0.0, 1.0))
    centres = (edges[:-1] + edges[1:]) / 2
    if hist.max() == hist.sum():
        return 1.0
    t = float(filters.threshold_otsu(hist=(hist, centres)))
    h = ndi.gaussian_filter1d(hist.astype(float), 2)
    low = centres < t
    if not low.any():
        return 1.0
    mode = float(centres[int(np.argmax(np.where(low, h, -1.0)))])
    flat = sm.ravel()[:: max(1, sm.size // 1_000_000)]
    below = flat[flat < mode]
    if below.size < 100:
        return 1.0
    return mode + sds * float(np.sqrt(np.mean((below - mode) ** 2)))


def smooth(s: np.ndarray, sigma: float) -> np.ndarray:
    return ndi.gaussian_filter(s, sigma, mode="nearest") if sigma > 0 else s


def choose_signal(unit: np.ndarray, modality: str, sigma: float = 1.0) -> tuple[object, dict]:
    """(best signal name, {name: eta}) over `candidates` (see module doc)."""
    scores = {}
    for ch in candidates(unit.shape[-1], modality):
        s, _, _ = rescale(signal(unit, modality, ch))
        scores[ch] = separability(smooth(s, sigma))[1]
    return max(scores, key=scores.get), scores


def first_objects(s: np.ndarray, step: int = 1) -> np.ndarray:
    """bool mask of the first objects found in a rescaled signal (cells bright): light smoothing
    (sigma 1 pixel), Otsu's threshold, specks below MIN_OBJECT_PX removed, holes filled."""
    sm = smooth(s, 1.0 / step)
    t, eta = separability(sm)
    if eta < MIN_SEPARABILITY:
        return np.zeros(s.shape, bool)
    return ndi.binary_fill_holes(remove_small(sm > t, max(2, MIN_OBJECT_PX // (step * step))))


def measure_diameter(masks, step: int = 1) -> float | None:
    """Expected cell diameter in pixels from the first objects of one or more fields (module doc).

    masks: bool (H, W) masks (`first_objects`), pooled; step: their pixel size in image pixels.
    Returns the area-weighted median equivalent diameter (sqrt(4 area / pi)) of the convex
    objects (solidity >= CONVEX), single cells rather than clusters; of all objects when none is
    convex; None when there is no object."""
    areas, solid = [], []
    for m in masks:
        t = measure.regionprops_table(measure.label(m), properties=("area", "solidity"))
        areas.append(t["area"])
        solid.append(t["solidity"])
    if not areas or not sum(len(a) for a in areas):
        return None
    area, sol = np.concatenate(areas).astype(float), np.concatenate(solid)
    if (sol >= CONVEX).any():
        area = area[sol >= CONVEX]
    eq = np.sqrt(4 * area / np.pi)
    order = np.argsort(eq)
    cum = np.cumsum(area[order])
    return float(eq[order][np.searchsorted(cum, cum[-1] / 2)] * step)


def remove_small(mask: np.ndarray, min_px: int) -> np.ndarray:
    """`mask` without connected components (8-connected) of fewer than `min_px` pixels."""
    lab, n = ndi.label(mask, structure=np.ones((3, 3), bool))
    if n == 0:
        return mask
    keep = np.bincount(lab.ravel()) >= min_px
    keep[0] = False
    return keep[lab]


@dataclass
class FieldPlan:
    """Everything decided once per field (and shared by all its tiles).

    modality, channel: the signal (see `signal`); lo, hi: per-channel raw range (C,);
    s_lo, s_hi: the signal's range; threshold: on the rescaled signal in [0, 1] (nan: no clear
    foreground, the field has no cells); diameter (pixels), sigma (smoothing, pixels);
    eta: Otsu separability of the chosen signal; notes: plain sentences for the report."""

    modality: str
    channel: object
    lo: np.ndarray
    hi: np.ndarray
    s_lo: float
    s_hi: float
    threshold: float
    diameter: float
    sigma: float
    eta: float
    measured: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)

    def unit(self, raw: np.ndarray) -> np.ndarray:
        return to_unit(raw, self.lo, self.hi)

    def signal(self, raw: np.ndarray) -> np.ndarray:
        """Rescaled signal (H, W) float32 in [0, 1], unsmoothed."""
        return rescale(signal(self.unit(raw), self.modality, self.channel), self.s_lo, self.s_hi)[0]

    def summary(self) -> dict:
        return {"modality": self.modality, "channel": self.channel, "threshold": round(self.threshold, 4),
                "diameter": round(self.diameter, 1), "sigma": round(self.sigma, 2), "eta": round(self.eta, 3),
                **self.measured}


def plan_field(raw: np.ndarray, settings: CellSettings, step: int = 1, name: str = "field",
               detail: np.ndarray | None = None) -> FieldPlan:
    """Measure a field's `FieldPlan` from `raw` pixels ((H, W) or (H, W, C), any dtype): the whole
    field, or every `step`-th pixel of a large one, with `detail` a full-resolution part of it for
    the diameter. `name` appears in notes. Raises ValueError for an impossible channel."""
    lo, hi = robust_range(raw)
    unit = to_unit(raw, lo, hi)
    auto_mod, med = choose_modality(unit)
    notes, measured = [], {"background": round(med, 3)}
    modality = auto_mod if settings.modality == "auto" else settings.modality
    if settings.modality != "auto" and settings.modality != auto_mod:
        looks = "bright" if auto_mod == "brightfield" else "dark"
        notes.append(f"{name} looks like {auto_mod} (a {looks} background, median {med:.2f}) but is segmented "
                     f"as {settings.modality} as asked; use --modality auto or {auto_mod} if its cells are "
                     f"{'darker than' if auto_mod == 'brightfield' else 'brighter than'} the background")
    measured["modality_from"] = "setting" if settings.modality != "auto" else "background"
    if settings.channel == "auto":
        channel, scores = choose_signal(unit, modality, sigma=max(1.0 / step, 0.5))
        measured["signal_eta"] = {str(k): round(v, 3) for k, v in scores.items()}
    else:
        channel = settings.channel
    s, s_lo, s_hi = rescale(signal(unit, modality, channel))
    del unit
    d = settings.diameter
    if d is None:
        d = measure_diameter([first_objects(s, step)], step) if detail is None else measure_diameter(
            [first_objects(rescale(signal(to_unit(detail, lo, hi), modality, channel), s_lo, s_hi)[0])])
        measured["diameter_from"] = "first objects of this field"
        d = d or 0.0
    else:
        measured["diameter_from"] = "setting"
    d = float(d)
    sigma = settings.smooth if settings.smooth is not None else max(1.0, d / 25)
    sm = smooth(s, sigma / step)
    t, eta = separability(sm)
    if settings.threshold in ("li", "triangle"):
        t = float(getattr(filters, f"threshold_{settings.threshold}")(sm))
    if settings.background_sds is not None and settings.threshold != "local":
        ceiling = background_ceiling(sm, settings.background_sds)
        if ceiling < t:
            measured["threshold_from"] = "background"
            t = ceiling
    if eta < MIN_SEPARABILITY or d < 3:
        t = float("nan")
    return FieldPlan(modality, channel, lo, hi, s_lo, s_hi, t, d, sigma, eta, measured, notes)
