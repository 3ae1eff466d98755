"""What the model and the annotator see of one cell: its crop and its context view.

* `cut_cell(rgb, row, side, fill, labels=None, background="context")` -> uint8 (side, side, 3):
  the square crop the model sees, centred on the cell's centroid. ``background="context"`` keeps
  the neighbourhood as it is; ``"masked"`` paints every pixel outside the cell's own mask
  (grown by `MASK_GROW` of the side, at least 2 px) with `fill`. Compared on fov_bccd by
  scripts/benchmark_cell_classification.py (crop margin, context vs masked); the default is
  ``"context"``; the crop side is `crop_side` (table.py): max(crop_scale x the folder's
  diameter, 1.2 x the cell's longer box side). `cut_crop` cuts any square window.
* `context_view(rgb, row, labels=None, diameter=None)` -> uint8 (S, S, 3): what the annotator
  sees in Label Studio: the cell with a margin of about one cell diameter around it, its
  outline drawn (from the label image; a box when there is none), other cells left as they are.
  A biologist judges a white cell by its neighbours (red cells give the scale and the stain).

Rows are cells.csv rows (`trainer.cells.table`): x, y, bbox_x0 ... bbox_y1 in pixels of the
field, cell_id = the cell's value in the label image. `rgb` is the field (H, W, 3), uint8 or
float in [0, 1]; `labels` the field's label image (H, W) or None.
"""
from __future__ import annotations

import numpy as np


BACKGROUNDS = ("context", "masked")
MASK_GROW = 0.03          # masked crops keep this fraction of the side around the mask (its rim)
OUTLINE = (255, 221, 0)   # the outline colour of the cell in its context view (yellow)
CONTEXT_MARGIN = 1.0      # context view: cell box plus this many cell diameters on each side ... capped
CONTEXT_MAX = 640         # ... at this side (pixels of the field), and shown at most at CONTEXT_SHOW px
CONTEXT_SHOW = 512


def cut_crop(rgb: np.ndarray, cx: float, cy: float, side: int, fill, origin=(0, 0)) -> np.ndarray:
    """uint8 (side, side, 3) around (cx, cy) (field pixels) from `rgb` ((h, w, 3) uint8 or float in
    [0, 1], whose top-left is `origin` in the field), `fill` outside."""
    oy, ox = origin
    x0, y0 = int(round(cx - side / 2)) - ox, int(round(cy - side / 2)) - oy
    out = np.empty((side, side, 3), np.uint8)
    out[:] = fill
    sy0, sx0 = max(0, y0), max(0, x0)
    sy1, sx1 = min(rgb.shape[0], y0 + side), min(rgb.shape[1], x0 + side)
    if sy1 > sy0 and sx1 > sx0:
        part = rgb[sy0:sy1, sx0:sx1]
        if part.dtype != np.uint8:
            part = (np.clip(part, 0, 1) * 255 + 0.5).astype(np.uint8)
        out[sy0 - y0:sy1 - y0, sx0 - x0:sx1 - x0] = part[..., :3]
    return out


def _as_uint8(rgb: np.ndarray) -> np.ndarray:
    if rgb.dtype == np.uint8:
        return rgb[..., :3]
    return (np.clip(rgb[..., :3], 0, 1) * 255 + 0.5).astype(np.uint8)


def cut_cell(rgb: np.ndarray, row: dict, side: int, fill, labels: np.ndarray | None = None,
             background: str = "context", origin=(0, 0)) -> np.ndarray:
    """uint8 (side, side, 3) crop of the cell `row`, centred on its centroid (see module doc).

    `origin` (y, x): the field pixel of rgb[0, 0] (and labels[0, 0]) for tiles. Raises
    ValueError for an unknown `background`, or "masked" without `labels`."""
    if background not in BACKGROUNDS:
        raise ValueError(f"background '{background}': use one of {', '.join(BACKGROUNDS)}")
    x, y = float(row["x"]), float(row["y"])
    out = cut_crop(rgb, x, y, side, fill, origin)
    if background == "context":
        return out
    if labels is None:
        raise ValueError("background 'masked' needs the field's label image")
    from scipy import ndimage as ndi

    own = _label_window(labels, x, y, side, origin) == int(row["cell_id"])
    grow = max(2, int(round(MASK_GROW * side)))
    own = ndi.binary_dilation(own, iterations=grow)
    out[~own] = np.asarray(fill, np.uint8)
    return out


def _label_window(labels: np.ndarray, cx: float, cy: float, side: int, origin=(0, 0)) -> np.ndarray:
    """(side, side) window of a label image centred like `cut_crop` (0 outside the field)."""
    oy, ox = origin
    x0, y0 = int(round(cx - side / 2)) - ox, int(round(cy - side / 2)) - oy
    out = np.zeros((side, side), labels.dtype)
    sy0, sx0 = max(0, y0), max(0, x0)
    sy1, sx1 = min(labels.shape[0], y0 + side), min(labels.shape[1], x0 + side)
    if sy1 > sy0 and sx1 > sx0:
        out[sy0 - y0:sy1 - y0, sx0 - x0:sx1 - x0] = labels[sy0:sy1, sx0:sx1]
    return out


def context_window(row: dict, shape, diameter: float | None = None) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1) of the context view of `row` in a field of `shape` (H, W): the cell's box
    grown by CONTEXT_MARGIN cell diameters (the cell's own box side when `diameter` is None),
    square, at most CONTEXT_MAX px, clipped to the field (then shifted to stay square where it can)."""
    h, w = shape[:2]
    bw, bh = row["bbox_x1"] - row["bbox_x0"], row["bbox_y1"] - row["bbox_y0"]
    d = float(diameter or max(bw, bh))
    side = int(min(max(max(bw, bh) + 2 * CONTEXT_MARGIN * d, 64), CONTEXT_MAX, max(h, w)))
    cx, cy = float(row["x"]), float(row["y"])
    x0 = int(round(min(max(cx - side / 2, 0), max(w - side, 0))))
    y0 = int(round(min(max(cy - side / 2, 0), max(h - side, 0))))
    return x0, y0, min(w, x0 + side), min(h, y0 + side)


def context_view(rgb: np.ndarray, row: dict, labels: np.ndarray | None = None,
                 diameter: float | None = None, show: int = CONTEXT_SHOW) -> np.ndarray:
    """uint8 (h, w, 3), h and w <= `show`: the cell in its neighbourhood, outlined (see module doc)."""
    from skimage.segmentation import find_boundaries

    x0, y0, x1, y1 = context_window(row, rgb.shape, diameter)
    view = _as_uint8(rgb[y0:y1, x0:x1]).copy()
    if labels is not None:
        own = labels[y0:y1, x0:x1] == int(row["cell_id"])
        edge = find_boundaries(own, mode="outer")
        thick = max(1, round(max(view.shape[:2]) / 256))
        if thick > 1:
            from scipy import ndimage as ndi

            edge = ndi.binary_dilation(edge, iterations=thick - 1)
        view[edge] = OUTLINE
    if labels is None or not view[..., 0].size or not (labels[y0:y1, x0:x1] == int(row["cell_id"])).any():
        _draw_box(view, int(row["bbox_x0"]) - x0, int(row["bbox_y0"]) - y0, int(row["bbox_x1"]) - x0,
                  int(row["bbox_y1"]) - y0, max(2, max(view.shape[:2]) // 200))
    if max(view.shape[:2]) > show:
        from PIL import Image

        im = Image.fromarray(view)
        im.thumbnail((show, show), Image.BILINEAR)
        view = np.asarray(im)
    return view


def _draw_box(view: np.ndarray, x0: int, y0: int, x1: int, y1: int, t: int) -> None:
    h, w = view.shape[:2]
    x0, y0, x1, y1 = max(0, x0), max(0, y0), min(w, x1), min(h, y1)
    if x1 <= x0 or y1 <= y0:
        return
    view[y0:min(y0 + t, y1), x0:x1] = OUTLINE
    view[max(y1 - t, y0):y1, x0:x1] = OUTLINE
    view[y0:y1, x0:min(x0 + t, x1)] = OUTLINE
    view[y0:y1, max(x1 - t, x0):x1] = OUTLINE
