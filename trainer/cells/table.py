"""The output contract: ``<out>/cells.csv``, one PNG crop per cell, one label image per field.

``cells.csv`` columns (`COLUMNS`): image (path relative to --images, '/' separators), cell_id
(1..n within the field; the cell's value in its label image), x, y (centroid, pixels of the
original image, x = column, y = row, 0-based), bbox_x0, bbox_y0, bbox_x1, bbox_y1 (pixels,
x1/y1 exclusive), area (pixels), edge (true when the cell touches the image border), crop (its
PNG relative to <out>, empty without crops), source (classical, masks, geojson, points, boxes),
label (a class given by an importer, else empty).

Label images: ``<out>/masks/<image key without suffix>_masks.tif`` (uint16, uint32 above 65,535
cells; 0 = background), zlib-compressed. Crops: ``<out>/crops/<image key>/<image stem>_cell<cell_id:05d>.png``,
square, side = crop_scale * diameter and at least 1.2 x the cell's longer box side, centred on
the centroid; outside the field (and, with background "masked", outside the cell's own mask)
it is filled with the field's median colour (`trainer.cells.crops.cut_cell`).

All or nothing per field: crops and mask go to ``<out>/.tmp/`` first and are moved into place
only when the whole field is written (`FieldWriter.commit`); cells.csv is replaced atomically.
"""
from __future__ import annotations

import csv
import json
import os
import shutil
import uuid
from pathlib import Path

import numpy as np
from PIL import Image
from skimage import measure

from trainer.cells.crops import cut_cell, cut_crop  # noqa: F401 - cut_crop: its home is crops.py

COLUMNS = ["image", "cell_id", "x", "y", "bbox_x0", "bbox_y0", "bbox_x1", "bbox_y1", "area", "edge",
           "crop", "source", "label"]


def mask_path(key: str) -> str:
    """Label image of a field, relative to <out>."""
    p = Path(key)
    return (Path("masks") / p.parent / f"{p.stem}_masks.tif").as_posix()


def crop_dir(key: str) -> str:
    return (Path("crops") / key).as_posix()


def crop_name(key: str, cell_id: int) -> str:
    """File name of a cell's crop: ``<field stem>_cell<id:05d>.png`` (the field's name stays in
    it, so a file-name group pattern finds a cell's slide or well, and exported names are unique)."""
    return f"{Path(key).stem}_cell{int(cell_id):05d}.png"


def label_dtype(n: int):
    return np.uint16 if n <= np.iinfo(np.uint16).max else np.uint32


def cell_rows(labels: np.ndarray, key: str, image_shape, origin=(0, 0), source: str = "classical") -> list[dict]:
    """One row per object of `labels` (a field, or a tile whose top-left pixel is `origin` (y, x)
    in a field of `image_shape` (H, W)); cell_id = the object's label value."""
    rows = []
    oy, ox = origin
    h, w = image_shape[:2]
    for p in measure.regionprops(labels):
        y0, x0, y1, x1 = p.bbox
        cy, cx = p.centroid
        rows.append({"image": key, "cell_id": int(p.label), "x": round(cx + ox, 2), "y": round(cy + oy, 2),
                     "bbox_x0": x0 + ox, "bbox_y0": y0 + oy, "bbox_x1": x1 + ox, "bbox_y1": y1 + oy,
                     "area": int(p.area), "edge": bool(y0 + oy == 0 or x0 + ox == 0 or y1 + oy == h or x1 + ox == w),
                     "crop": "", "source": source, "label": ""})
    return rows


def crop_side(row: dict, diameter: float, crop_scale: float) -> int:
    long_side = max(row["bbox_x1"] - row["bbox_x0"], row["bbox_y1"] - row["bbox_y0"])
    return int(round(max(crop_scale * diameter, 1.2 * long_side, 8)))


class FieldWriter:
    """Writes one field's crops and label image under ``<out>/.tmp/`` and moves them into place
    on `commit`; `abort` (or an exception inside ``with``) leaves nothing behind."""

    def __init__(self, out_dir, key: str):
        self.out = Path(out_dir)
        self.key = key
        self.tmp = self.out / ".tmp" / uuid.uuid4().hex
        (self.tmp / "crops").mkdir(parents=True)
        self.rows: list[dict] = []

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            self.abort()
        return False

    def add_crops(self, rows: list[dict], rgb: np.ndarray, diameter: float, crop_scale: float, fill,
                  origin=(0, 0), labels: np.ndarray | None = None, background: str = "context") -> None:
        """Save a crop for each row (cut from `rgb`, top-left at `origin`) and fill row["crop"].
        `labels` (same window as `rgb`) and `background` ("context" or "masked"): see
        `trainer.cells.crops.cut_cell`."""
        for r in rows:
            side = crop_side(r, diameter, crop_scale)
            img = cut_cell(rgb, r, side, fill, labels, background, origin)
            name = crop_name(self.key, r["cell_id"])
            Image.fromarray(img).save(self.tmp / "crops" / name, compress_level=1)
            r["crop"] = f"{crop_dir(self.key)}/{name}"

    def write_mask(self, labels_or_tiles, shape=None, n: int | None = None, tile: int = 256) -> None:
        """The label image: an array, or an iterator of (tile, tile) tiles in row-major order for a
        field of `shape` with `n` cells (large fields)."""
        import tifffile

        dst = self.tmp / "masks.tif"
        if isinstance(labels_or_tiles, np.ndarray):
            lab = labels_or_tiles
            tifffile.imwrite(dst, lab.astype(label_dtype(int(lab.max()) if lab.size else 0)),
                             compression="zlib", compressionargs={"level": 1})
        else:
            dt = label_dtype(n or 0)
            tifffile.imwrite(dst, (t.astype(dt) for t in labels_or_tiles), shape=tuple(shape), dtype=dt,
                             tile=(tile, tile), compression="zlib", compressionargs={"level": 1},
                             bigtiff=int(np.prod(shape)) * np.dtype(dt).itemsize > 2 ** 31)

    def commit(self) -> list[dict]:
        crops = self.out / crop_dir(self.key)
        mask = self.out / mask_path(self.key)
        for p in (crops, mask):
            p.parent.mkdir(parents=True, exist_ok=True)
        if crops.exists():
            shutil.rmtree(crops)
        if any((self.tmp / "crops").iterdir()):
            os.replace(self.tmp / "crops", crops)
        if (self.tmp / "masks.tif").exists():
            os.replace(self.tmp / "masks.tif", mask)
        shutil.rmtree(self.tmp, ignore_errors=True)
        return self.rows

    def abort(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)


def write_table(out_dir, rows: list[dict], report: dict | None = None) -> Path:
    """Replace ``<out>/cells.csv`` (and ``report.json`` when given) atomically."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / "cells.csv.tmp"
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, COLUMNS, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({**r, "edge": "true" if r["edge"] else "false"})
    os.replace(tmp, out / "cells.csv")
    if report is not None:
        t = out / "report.json.tmp"
        t.write_text(json.dumps(report, indent=1, default=str))
        os.replace(t, out / "report.json")
    shutil.rmtree(out / ".tmp", ignore_errors=True)
    return out / "cells.csv"


def read_table(path) -> list[dict]:
    """Rows of a cells.csv (strings), for tests and importers."""
    with open(path, newline="") as f:
        return list(csv.DictReader(f))
