"""Masks, points and boxes made elsewhere, read instead of computed.

- label images (0 background, one integer per cell): cellpose ``<stem>_cp_masks.png`` and
  ``<stem>_seg.npy`` (its ``masks`` entry; the file is a pickle: only import files you trust),
  StarDist / CellProfiler label TIFFs (``<stem>.tif``, ``<stem>_masks.tif``, ``<stem>_labels.tif``
  ...), 16-bit label PNGs; found next to each image's key under the masks folder (`find_mask`).
- QuPath GeoJSON (``<stem>.geojson``, "Export objects as GeoJSON"): detections and cells
  (Polygon / MultiPolygon; a cell's outline, not its nucleus), classification kept as ``label``;
  annotations (regions drawn by hand) are left out.
- a CSV of points or boxes: columns ``image,x,y`` and optionally ``bbox_x0,bbox_y0,bbox_x1,bbox_y1``
  (pixels, 0-based, x = column) and ``label``; ``image`` is the path relative to --images (or a
  file name that is unique there). A point becomes a disc of the given diameter, a box the ellipse
  inscribed in it.

Problems raise `CellInputError` with one sentence naming the file and what to do.
"""
from __future__ import annotations

import csv
import json
from collections import defaultdict
from pathlib import Path

import numpy as np
from skimage import draw, segmentation

MASK_SUFFIXES = ("_cp_masks.png", "_seg.npy", "_masks.tif", "_masks.tiff", "_masks.png", "_labels.tif",
                 "_labels.tiff", "_labels.png", "_label.tif", "_mask.tif", ".geojson", ".tif", ".tiff", ".png")
MIN_MEAN_AREA = 9  # a "label image" whose objects average fewer pixels is an intensity image


class CellInputError(Exception):
    """Input that cannot become cells; the message names the file and what to do."""


def is_mask_name(name: str) -> bool:
    """True for file names that importers read as masks (left out of the image list)."""
    n = name.lower()
    return any(n.endswith(s) for s in MASK_SUFFIXES[:10])


def find_mask(masks_dir, key: str, image_path=None) -> Path | None:
    """The mask file of the image `key` under `masks_dir`: same subfolder as the key first, then
    the top of `masks_dir`, trying MASK_SUFFIXES in order; never the image itself."""
    k = Path(key)
    root = Path(masks_dir)
    img = Path(image_path).resolve() if image_path else None
    for folder in (root / k.parent, root):
        for suf in MASK_SUFFIXES:
            p = folder / f"{k.stem}{suf}"
            if p.is_file() and (img is None or p.resolve() != img):
                return p
    return None


def read_label_image(path, shape, max_cells: int) -> np.ndarray:
    """int (H, W) labels from a label image file, checked against the field's `shape` (H, W);
    labels need not be consecutive (renumbered 1..n here)."""
    path = Path(path)
    name = path.name
    try:
        if name.endswith(".npy"):
            d = np.load(path, allow_pickle=True)
            d = d.item() if d.dtype == object else d
            lab = np.asarray(d["masks"] if isinstance(d, dict) else d)
        elif path.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            lab = tifffile.imread(path)
        else:
            from PIL import Image

            lab = np.asarray(Image.open(path))
    except Exception as exc:  # noqa: BLE001 - any decoder error becomes one sentence
        raise CellInputError(f"mask '{path}' cannot be read ({type(exc).__name__}: {exc}); export it again "
                             "as a label image (TIFF or PNG, one integer per cell)") from None
    lab = np.squeeze(lab)
    if lab.ndim != 2 or lab.dtype.kind not in "iub":
        raise CellInputError(f"mask '{path}' is not a label image (shape {lab.shape}, {lab.dtype}); give one "
                             "2-D integer image per field, 0 for background and one number per cell")
    if lab.shape != tuple(shape[:2]):
        raise CellInputError(f"mask '{path}' is {lab.shape[1]} x {lab.shape[0]} pixels but its image is "
                             f"{shape[1]} x {shape[0]}; make the masks from the same (unscaled, uncropped) images")
    if lab.dtype.kind == "i" and lab.min() < 0:
        raise CellInputError(f"mask '{path}' has negative values; a label image has 0 for background and "
                             "positive numbers for cells")
    lab, _, inv = segmentation.relabel_sequential(lab.astype(np.int64, copy=False))
    n = len(inv) - 1
    if n > max_cells:
        raise CellInputError(f"mask '{path}' has {n:,} objects, more than the limit of {max_cells:,} cells per "
                             "field; split the field into tiles, or raise --max-cells if it really holds that many")
    if n and (lab > 0).sum() / n < MIN_MEAN_AREA:
        raise CellInputError(f"mask '{path}' has {n:,} objects of {(lab > 0).sum() / n:.1f} pixels on average: "
                             "it looks like an intensity image, not a label image; give the segmentation's "
                             "label output (e.g. cellpose *_cp_masks.png)")
    return lab.astype(np.int32 if n < 2 ** 31 else np.int64)


def read_geojson(path, shape, max_cells: int) -> tuple[np.ndarray, list[str]]:
    """(int32 (H, W) labels, class name per label) from a QuPath GeoJSON export."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CellInputError(f"GeoJSON '{path}' cannot be read ({exc}); export it again from QuPath "
                             "(File > Export objects as GeoJSON)") from None
    feats = data.get("features", []) if isinstance(data, dict) else data
    if isinstance(data, dict) and data.get("type") == "Feature":
        feats = [data]
    lab = np.zeros(shape[:2], np.int32)
    names: list[str] = []
    for f in feats:
        props = f.get("properties") or {}
        if str(props.get("objectType", "detection")).lower() == "annotation":
            continue
        geom = f.get("geometry") or {}
        polys = [geom.get("coordinates", [])] if geom.get("type") == "Polygon" else \
            geom.get("coordinates", []) if geom.get("type") == "MultiPolygon" else []
        if not polys:
            continue
        if len(names) >= max_cells:
            raise CellInputError(f"GeoJSON '{path}' has more than {max_cells:,} detections, the limit per field; "
                                 "raise --max-cells if the field really holds that many")
        names.append(str((props.get("classification") or {}).get("name", "")))
        for poly in polys:
            ring = np.asarray(poly[0], float)
            if ring.ndim != 2 or ring.shape[0] < 3:
                continue
            if (ring[:, 0].max() < 0 or ring[:, 1].max() < 0 or ring[:, 0].min() >= shape[1]
                    or ring[:, 1].min() >= shape[0]):
                raise CellInputError(f"GeoJSON '{path}' has a detection outside its {shape[1]} x {shape[0]} image "
                                     f"(near x={ring[0, 0]:.0f}, y={ring[0, 1]:.0f}); export it from the same image")
            rr, cc = draw.polygon(ring[:, 1], ring[:, 0], shape=shape[:2])
            lab[rr, cc] = len(names)
    present = np.unique(lab)
    if len(present) - 1 < len(names):  # a detection fully covered by later ones: renumber
        lab, _, inv = segmentation.relabel_sequential(lab)
        names = [names[i - 1] for i in inv[1:]]
    return lab, names


def read_points_csv(path, keys: list[str]) -> tuple[dict[str, list[dict]], list[str]]:
    """({image key: [{"x", "y", "box": (x0, y0, x1, y1) | None, "label"}]}, notes) from a points/boxes
    CSV; rows naming images not in `keys` are left out with one note."""
    path = Path(path)
    by_name = defaultdict(list)
    for k in keys:
        by_name[Path(k).name].append(k)
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError) as exc:
        raise CellInputError(f"points CSV '{path}' cannot be read ({exc})") from None
    if not rows or not {"image", "x", "y"} <= set(rows[0]):
        raise CellInputError(f"points CSV '{path}' needs the columns image,x,y (and optionally "
                             "bbox_x0,bbox_y0,bbox_x1,bbox_y1,label)")
    out: dict[str, list[dict]] = defaultdict(list)
    unknown: dict[str, int] = defaultdict(int)
    keyset = set(keys)
    for i, r in enumerate(rows, start=2):
        img = (r["image"] or "").strip().replace("\\", "/")
        key = img if img in keyset else (by_name[img][0] if len(by_name.get(img, [])) == 1 else None)
        if key is None:
            unknown[img] += 1
            continue
        try:
            x, y = float(r["x"]), float(r["y"])
            box = None
            if all((r.get(c) or "").strip() for c in ("bbox_x0", "bbox_y0", "bbox_x1", "bbox_y1")):
                box = tuple(float(r[c]) for c in ("bbox_x0", "bbox_y0", "bbox_x1", "bbox_y1"))
        except ValueError:
            raise CellInputError(f"points CSV '{path}' line {i}: x, y and bbox values must be numbers") from None
        out[key].append({"x": x, "y": y, "box": box, "label": (r.get("label") or "").strip()})
    notes = []
    if unknown:
        ex = ", ".join(f"'{k}'" for k in list(unknown)[:3])
        notes.append(f"points CSV '{path}' names {len(unknown)} image(s) not found under --images ({ex}; "
                     f"{sum(unknown.values())} row(s) left out); write the image path relative to --images")
    return dict(out), notes


def points_to_labels(points: list[dict], shape, diameter: float, csv_path, key: str) -> np.ndarray:
    """int32 (H, W) labels: a disc of `diameter` per point, the inscribed ellipse per box; larger
    objects drawn first so that small ones stay visible. Raises CellInputError for a point outside."""
    h, w = shape[:2]
    bad = [p for p in points if not (0 <= p["x"] < w and 0 <= p["y"] < h)]
    if bad:
        raise CellInputError(f"points CSV '{csv_path}' has {len(bad)} point(s) of '{key}' outside its {w} x {h} "
                             f"pixels (e.g. x={bad[0]['x']:g}, y={bad[0]['y']:g}); x is the column and y the row, "
                             "in pixels of the original image")
    lab = np.zeros((h, w), np.int32)
    r = diameter / 2
    def size(p):
        b = p["box"]
        return (b[2] - b[0]) * (b[3] - b[1]) if b else diameter ** 2
    order = sorted(range(len(points)), key=lambda i: -size(points[i]))
    for i in order:
        p = points[i]
        if p["box"]:
            x0, y0, x1, y1 = p["box"]
            cy, cx, ry, rx = (y0 + y1) / 2, (x0 + x1) / 2, max((y1 - y0) / 2, 0.5), max((x1 - x0) / 2, 0.5)
        else:
            cy, cx, ry, rx = p["y"], p["x"], r, r
        rr, cc = draw.ellipse(cy, cx, ry, rx, shape=(h, w))
        if len(rr) == 0:
            rr, cc = np.array([int(cy)]), np.array([int(cx)])
        lab[rr, cc] = i + 1
    return lab
