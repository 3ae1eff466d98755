"""Synthetic fluorescence-nuclei fields with known masks, and how to score a segmentation on them.

`make_field` draws nuclei of several shapes (round, elongated ellipses, irregular "kidney"
outlines) and brightnesses (0.25 to 1 of the brightest), some as touching pairs, blurred by a
Gaussian point-spread function with a background offset and Gaussian noise, as a 16-bit camera
writes them. `score` matches found to true objects one-to-one (IoU >= 0.5) and counts merged
pairs and split cells.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi
from scipy.optimize import linear_sum_assignment
from skimage import draw


@dataclass
class SyntheticField:
    """image: uint16 (H, W); labels: int32 (H, W) true nuclei; pairs: [(label_a, label_b)] touching."""

    image: np.ndarray
    labels: np.ndarray
    pairs: list


def _nucleus(rng, r: float, kind: str, cy: float, cx: float, shape):
    if kind == "round":
        return draw.ellipse(cy, cx, r, r * rng.uniform(0.9, 1.1), shape=shape)
    if kind == "ellipse":
        return draw.ellipse(cy, cx, r * 1.25, r * 0.75, shape=shape, rotation=rng.uniform(0, np.pi))
    t = np.linspace(0, 2 * np.pi, 48, endpoint=False)  # irregular: a smooth random radius
    rad = r * (1 + 0.12 * np.sin(2 * t + rng.uniform(0, 6)) + 0.08 * np.sin(3 * t + rng.uniform(0, 6)))
    return draw.polygon(cy + rad * np.sin(t), cx + rad * np.cos(t), shape=shape)


def make_field(shape=(512, 512), n: int = 60, pairs: int = 10, radius=(7.0, 12.0), seed: int = 0,
               noise: float = 0.02, blur: float = 1.0, peak: int = 3000, offset: int = 200) -> SyntheticField:
    """A field of `n` isolated nuclei plus `pairs` touching pairs (centres (r1 + r2) * 0.95 apart);
    radius range in pixels; intensities: offset + peak * brightness (+ noise * peak), uint16."""
    rng = np.random.default_rng(seed)
    h, w = shape
    labels = np.zeros(shape, np.int32)
    bright = np.zeros(shape, np.float32)
    placed: list[tuple[float, float, float]] = []
    out_pairs = []
    kinds = ("round", "ellipse", "irregular")

    def free(cy, cx, r):
        return all((cy - y) ** 2 + (cx - x) ** 2 > (r + rr + 6) ** 2 for y, x, rr in placed)

    def put(cy, cx, r):
        rr, cc = _nucleus(rng, r, kinds[rng.integers(3)], cy, cx, shape)
        lab = labels.max() + 1
        labels[rr, cc] = lab
        bright[rr, cc] = rng.uniform(0.25, 1.0)
        return lab

    for want_pair in [True] * pairs + [False] * n:
        for _ in range(200):
            r1 = rng.uniform(*radius)
            if want_pair:
                r2 = rng.uniform(*radius)
                a = rng.uniform(0, np.pi)
                d = (r1 + r2) * 0.95
                m = r1 * 1.3 + 4
                cy, cx = rng.uniform(m, h - m - d), rng.uniform(m, w - m - d)
                cy2, cx2 = cy + d * np.sin(a), cx + d * np.cos(a)
                if not (m < cy2 < h - m and m < cx2 < w - m):
                    continue
                if free(cy, cx, r1) and free(cy2, cx2, r2):
                    la, lb = put(cy, cx, r1), put(cy2, cx2, r2)
                    placed.extend([(cy, cx, r1), (cy2, cx2, r2)])
                    out_pairs.append((int(la), int(lb)))
                    break
            else:
                m = r1 * 1.3 + 2
                cy, cx = rng.uniform(m, h - m), rng.uniform(m, w - m)
                if free(cy, cx, r1):
                    put(cy, cx, r1)
                    placed.append((cy, cx, r1))
                    break
    out_pairs = [(a, b) for a, b in out_pairs if (labels == a).any() and (labels == b).any()]
    img = ndi.gaussian_filter(bright, blur) if blur else bright
    img = offset + peak * (img + rng.normal(0, noise, shape).astype(np.float32))
    return SyntheticField(np.clip(img, 0, 65535).astype(np.uint16), labels, out_pairs)


def score(true: np.ndarray, pred: np.ndarray, pairs=(), iou: float = 0.5) -> dict:
    """recall / precision of a one-to-one IoU >= `iou` matching (Hungarian on IoU), merged pairs
    (a found object covering >= 50 % of both nuclei of a touching pair) and split nuclei (a true
    nucleus whose pixels are >= 20 % in each of two found objects)."""
    nt, npred = int(true.max()), int(pred.max())
    inter = np.zeros((nt + 1, npred + 1))
    np.add.at(inter, (true.ravel(), pred.ravel()), 1)
    at, ap = inter.sum(1), inter.sum(0)
    union = at[:, None] + ap[None, :] - inter
    ious = np.where(union > 0, inter / np.maximum(union, 1), 0)[1:, 1:]
    matched = 0
    if nt and npred:
        r, c = linear_sum_assignment(-ious)
        matched = int((ious[r, c] >= iou).sum())
    frac_t = inter[1:, 1:] / np.maximum(at[1:, None], 1)  # share of each true nucleus in each found object
    merged = sum(1 for a, b in pairs if npred and ((frac_t[a - 1] >= 0.5) & (frac_t[b - 1] >= 0.5)).any())
    split = int(((frac_t >= 0.2).sum(1) >= 2).sum()) if npred else 0
    return {"true": nt, "found": npred, "matched": matched, "recall": matched / nt if nt else 1.0,
            "precision": matched / npred if npred else 1.0, "pairs": len(pairs), "merged_pairs": merged,
            "split": split}
