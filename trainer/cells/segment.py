"""The classical pipeline: smooth, threshold, split touching cells by a distance-transform
watershed, filter by size. The field's textbook recipe (e.g. scikit-image's "Watershed
segmentation" example; Beucher & Meyer 1993 for the marker-controlled watershed).

`segment_field(img, settings) -> labels` for one field held in memory; `segment_signal` does the
work on a signal already chosen (`trainer.cells.auto.FieldPlan`) and is what tiles call.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi
from skimage import filters, measure, morphology, segmentation

from trainer.cells.auto import FieldPlan, plan_field, remove_small, smooth
from trainer.cells.params import CellSettings

HOLE_FRACTION = 0.3  # holes below this fraction of a cell's area are filled (pale centres of red cells)


def foreground(s: np.ndarray, plan: FieldPlan, settings: CellSettings) -> np.ndarray:
    """bool (H, W): pixels of cells in a rescaled signal `s` (cells bright)."""
    if not np.isfinite(plan.threshold):
        return np.zeros(s.shape, bool)
    sm = smooth(s, plan.sigma)
    mask = sm > plan.threshold
    if settings.threshold == "local":
        block = int(4 * plan.diameter) | 1
        local = filters.threshold_local(sm, block_size=max(block, 3), method="gaussian")
        mask = (sm > local) & (sm > 0.5 * plan.threshold)
    cell_area = np.pi * plan.diameter ** 2 / 4
    mask = ~remove_small(~mask, max(1, int(HOLE_FRACTION * cell_area)))
    r = int(plan.diameter / 20)
    if r >= 1:  # break one-pixel bridges and spurs
        mask = ndi.binary_opening(mask, morphology.disk(r))
    return mask


def local_maxima(image: np.ndarray, min_distance: int, threshold: float) -> np.ndarray:
    """(n, 2) int64 row, col of the local maxima of `image` above `threshold`, no two closer than
    `min_distance` pixels (Chebyshev), highest first: what skimage's `peak_local_max(image,
    min_distance, threshold_abs, exclude_border=False)` returns, with the spacing of ties done here
    (skimage's KD-tree step crashed the interpreter inside the test suite; the candidates left after
    the maximum filter are few, one per cell, so a direct greedy pass costs nothing)."""
    size = 2 * int(min_distance) + 1
    peak = (image == ndi.maximum_filter(image, size=size, mode="nearest")) & (image > threshold)
    rows, cols = np.nonzero(peak)
    order = np.argsort(-image[rows, cols], kind="stable")
    rows, cols = rows[order], cols[order]
    keep = np.ones(len(rows), bool)
    for i in range(len(rows)):
        if keep[i]:  # accepted: drop the later candidates closer than min_distance (ties of a plateau)
            near = (np.abs(rows[i + 1:] - rows[i]) < min_distance) & (np.abs(cols[i + 1:] - cols[i]) < min_distance)
            keep[i + 1:] &= ~near
    return np.stack([rows[keep], cols[keep]], axis=1).astype(np.int64)


def split_cells(mask: np.ndarray, plan: FieldPlan, settings: CellSettings) -> np.ndarray:
    """int32 labels of `mask`: each connected component split by a watershed on its distance
    transform, one marker per local maximum of the distance at least split_distance * diameter
    from a higher one and at least split_depth * the expected radius from the background; then
    clusters with no neck divided by area (`split_by_area`)."""
    if not settings.split:
        return measure.label(mask).astype(np.int32)
    dist = ndi.distance_transform_edt(mask).astype(np.float32)
    h = max(1.0, settings.split_depth * plan.diameter / 2)
    coords = local_maxima(dist, max(1, int(settings.split_distance * plan.diameter)), h)
    markers = np.zeros(mask.shape, np.int32)
    n = len(coords)
    markers[tuple(coords.T)] = np.arange(1, n + 1)
    labels = segmentation.watershed(-dist, markers, mask=mask)
    rest, m = ndi.label(mask & (labels == 0))  # components too thin for a maximum of depth h
    if m:
        labels[rest > 0] = rest[rest > 0] + n
    if settings.split_area:
        labels = split_by_area(labels, plan, settings)
    return labels.astype(np.int32)


def split_by_area(labels: np.ndarray, plan: FieldPlan, settings: CellSettings) -> np.ndarray:
    """Objects larger than split_area x the expected cell area and less solid than split_solidity
    (clusters of overlapping cells, whose outline has no neck for the watershed) divided into
    k = round(area / (split_area_unit x cell area)) parts: k-means on the object's pixel
    coordinates (each part the pixels nearest one centre)."""
    from scipy.cluster.vq import kmeans2

    cell_area = np.pi * plan.diameter ** 2 / 4
    area = np.bincount(labels.ravel())
    big = np.flatnonzero(area >= settings.split_area * cell_area)
    big = big[big > 0]
    if not len(big):
        return labels
    out = labels.copy()
    nxt = int(labels.max()) + 1
    rng = np.random.default_rng(0)
    boxes = ndi.find_objects(labels)
    for lab in big:
        sl = boxes[lab - 1]
        obj = labels[sl] == lab
        p = measure.regionprops(obj.astype(np.uint8))[0]
        if p.solidity >= settings.split_solidity:
            continue
        k = int(round(p.area / (settings.split_area_unit * cell_area)))
        if k < 2:
            continue
        yx = p.coords.astype(np.float32)
        sample = yx[:: max(1, len(yx) // 4000)]
        init = sample[rng.choice(len(sample), k, replace=False)]
        cen, _ = kmeans2(sample, init, iter=20, minit="matrix")
        part = ((yx[:, None, :] - cen[None]) ** 2).sum(-1).argmin(1)
        for j in range(1, k):
            sel = part == j
            if sel.any():
                out[sl][p.coords[sel, 0], p.coords[sel, 1]] = nxt
                nxt += 1
    return out


def filter_sizes(labels: np.ndarray, plan: FieldPlan, settings: CellSettings) -> np.ndarray:
    """Labels with objects outside [min_area, max_area] x the expected cell area removed, then
    renumbered 1..n."""
    if labels.max() == 0:
        return labels
    cell_area = np.pi * plan.diameter ** 2 / 4
    area = np.bincount(labels.ravel())
    bad = (area < settings.min_area * cell_area) | (area > settings.max_area * cell_area)
    bad[0] = False
    if bad.any():
        labels = np.where(bad[labels], 0, labels)
    return segmentation.relabel_sequential(labels)[0].astype(np.int32)


def segment_signal(s: np.ndarray, plan: FieldPlan, settings: CellSettings) -> np.ndarray:
    """int32 (H, W) labels (0 background, 1..n cells) of a rescaled signal (plan.signal(raw))."""
    mask = foreground(s, plan, settings)
    if not mask.any():
        return np.zeros(s.shape, np.int32)
    return filter_sizes(split_cells(mask, plan, settings), plan, settings)


def drop_edge(labels: np.ndarray) -> np.ndarray:
    """Labels without the objects touching the image border, renumbered."""
    edge = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    out = np.where(np.isin(labels, edge[edge > 0]), 0, labels)
    return segmentation.relabel_sequential(out)[0].astype(np.int32)


def segment_field(img: np.ndarray, settings: CellSettings | None = None, name: str = "field",
                  return_plan: bool = False):
    """Cells of one field held in memory.

    img: (H, W) or (H, W, C) pixels in any dtype (8/16-bit, float); intensities are scaled by
        robust percentiles first (a hot pixel does not move the threshold).
    Returns int32 (H, W) labels (0 background, 1..n cells), or (labels, FieldPlan) with
    return_plan. Cells touching the border are dropped when settings.border == "skip"."""
    settings = settings or CellSettings()
    plan = plan_field(img, settings, name=name)
    labels = segment_signal(plan.signal(img), plan, settings) if np.isfinite(plan.threshold) \
        else np.zeros(img.shape[:2], np.int32)
    if settings.border == "skip":
        labels = drop_edge(labels)
    return (labels, plan) if return_plan else labels
