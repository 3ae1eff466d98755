"""`find_cells(images_dir, out_dir, settings) -> CellReport`: every field of a folder to cells.csv.

Per field: the classical pipeline (`trainer.cells.segment`; by tiles for fields larger than
settings.tile, `trainer.cells.tiling`), or imported masks / GeoJSON / points
(`trainer.cells.importers`). A field that cannot be read, has no cells or has bad masks is
reported in one sentence and the rest of the folder goes on; each field is written all or
nothing (`trainer.cells.table`).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from trainer.cells import importers
from trainer.cells.auto import first_objects, measure_diameter, plan_field
from trainer.cells.params import CellSettings
from trainer.cells.reading import FieldSource, ImageReadError, image_key, list_images, to_rgb
from trainer.cells.segment import drop_edge, segment_signal
from trainer.cells.table import FieldWriter, cell_rows, write_table
from trainer.cells.tiling import plan_large, segment_tiled

DIAMETER_FIELDS = 8  # fields whose first objects give a folder's diameter


@dataclass
class CellReport:
    """What `find_cells` did: fields with cells, fields with none, fields refused (key -> sentence),
    notes (warnings), the diameter used and where it came from, cells in total, seconds."""

    fields: dict = field(default_factory=dict)  # key -> {"cells": n, "plan": {...}}
    empty: dict = field(default_factory=dict)  # key -> sentence
    errors: dict = field(default_factory=dict)  # key or file -> sentence
    notes: list = field(default_factory=list)
    diameter: float | None = None
    diameter_from: str = ""
    cells: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return dict(self.__dict__)

    def summary(self) -> str:
        lines = [f"{self.cells:,} cells in {len(self.fields)} field(s) ({self.seconds:.1f} s)"
                 + (f"; diameter {self.diameter:.1f} px ({self.diameter_from})" if self.diameter else "")]
        for k, v in list(self.empty.items())[:20]:
            lines.append(f"  no cells: {v}")
        for k, v in list(self.errors.items())[:20]:
            lines.append(f"  skipped: {v}")
        lines += [f"  note: {n}" for n in self.notes[:20]]
        return "\n".join(lines)


def folder_diameter(paths: list[Path], settings: CellSettings) -> float | None:
    """Expected cell diameter (pixels) from the first objects of up to DIAMETER_FIELDS fields,
    spread evenly over `paths` (unreadable ones left out); None when none has objects."""
    if not paths:
        return None
    idx = np.unique(np.linspace(0, len(paths) - 1, min(DIAMETER_FIELDS, len(paths))).astype(int))
    masks = []
    for i in idx:
        try:
            src = FieldSource(paths[i], settings.reading)
            if src.banded or max(src.shape) > 2 * settings.tile:
                continue  # a large field measures its own (centre crop)
            raw = src.read_all()
            plan = plan_field(raw, settings.with_(diameter=10.0))
            masks.append(first_objects(plan.signal(raw)))
        except (ImageReadError, ValueError):
            continue
    return measure_diameter(masks) if masks else None


def find_cells(images_dir, out_dir, settings: CellSettings | None = None, masks=None, points=None,
               progress=None) -> CellReport:
    """Find (or import) the cells of every field under `images_dir`; write `<out_dir>/cells.csv`,
    crops, label images and report.json (see `trainer.cells.table`).

    masks: folder of label images / GeoJSON named after the images (`importers.find_mask`);
    points: CSV of points or boxes (`importers.read_points_csv`); neither: the classical pipeline.
    progress: callable(done, total, key) or None. Raises FileNotFoundError for a missing folder and
    CellInputError for an unreadable points CSV; problems of single fields go to the report."""
    t0 = time.time()
    settings = settings or CellSettings()
    root, out = Path(images_dir), Path(out_dir)
    paths = [p for p in list_images(root) if not (masks or points) or not importers.is_mask_name(p.name)]
    paths = [p for p in paths if out.resolve() not in p.resolve().parents]
    report = CellReport()
    keys = [image_key(p, root) for p in paths]
    pts = {}
    if points:
        pts, notes = importers.read_points_csv(points, keys)
        report.notes += notes
    if settings.diameter is not None:
        report.diameter, report.diameter_from = float(settings.diameter), "setting"
    elif not masks:
        report.diameter = folder_diameter(paths, settings)
        if report.diameter:
            report.diameter_from = f"first objects of {min(DIAMETER_FIELDS, len(paths))} field(s)"
            settings = settings.with_(diameter=report.diameter)
    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    for i, (path, key) in enumerate(zip(paths, keys)):
        if progress:
            progress(i, len(paths), key)
        try:
            field_rows, info = _one_field(path, key, out, settings, masks, pts if points else None, report)
        except (ImageReadError, importers.CellInputError, ValueError, MemoryError) as exc:
            report.errors[key] = str(exc) if key in str(exc) or str(path) in str(exc) else f"{key}: {exc}"
            continue
        if not field_rows:
            report.empty[key] = info.pop("why", f"{key}: no cells found")
            continue
        report.fields[key] = {"cells": len(field_rows), **info}
        rows.extend(field_rows)
    report.cells = len(rows)
    report.seconds = round(time.time() - t0, 2)
    write_table(out, rows, {"settings": settings.to_dict(), **report.to_dict()})
    return report


def _one_field(path: Path, key: str, out: Path, settings: CellSettings, masks, pts, report: CellReport):
    src = FieldSource(path, settings.reading)
    h, w = src.shape
    if masks is None and pts is None and (src.banded or max(h, w) > settings.tile):
        plan = plan_large(src, settings, key)
        report.notes += plan.notes
        if not np.isfinite(plan.threshold):
            return [], {"why": _why_empty(key, plan)}
        with FieldWriter(out, key) as wr:
            rows = segment_tiled(src, plan, settings, wr, key)
            if not rows:
                wr.abort()
                return [], {"why": f"{key}: no object of the expected size found"}
            wr.commit()
        return rows, {"plan": plan.summary(), "tiled": True}
    raw = src.read_all()
    labels_src, info, names = "classical", {}, None
    diameter = settings.diameter
    if masks is not None:
        mfile = importers.find_mask(masks, key, path)
        if mfile is None:
            return [], {"why": f"{key}: no mask file found in '{masks}' (looked for {Path(key).stem}_cp_masks.png, "
                               f"_seg.npy, .tif, .geojson ...)"}
        if mfile.suffix.lower() in (".geojson", ".json"):
            labels, names = importers.read_geojson(mfile, (h, w), settings.max_cells)
            labels_src = "geojson"
        else:
            labels = importers.read_label_image(mfile, (h, w), settings.max_cells)
            labels_src = "masks"
        info["mask"] = str(mfile)
    elif pts is not None:
        field_pts = pts.get(key, [])
        if not field_pts:
            return [], {"why": f"{key}: the points CSV has no row for this image"}
        if diameter is None and not all(p["box"] for p in field_pts):
            raise ValueError(f"{key}: points without boxes need the cell diameter: give --diameter (pixels)")
        labels = importers.points_to_labels(field_pts, (h, w), diameter or 0, "points CSV", key)
        labels_src = "boxes" if all(p["box"] for p in field_pts) else "points"
    else:
        plan = plan_field(raw, settings, name=key)
        report.notes += plan.notes
        info["plan"] = plan.summary()
        if not np.isfinite(plan.threshold):
            return [], {"why": _why_empty(key, plan)}
        labels = segment_signal(plan.signal(raw), plan, settings)
        diameter = plan.diameter
    if settings.border == "skip" and labels.max():
        labels = drop_edge(labels) if names is None else labels
    rows = cell_rows(labels, key, (h, w), source=labels_src)
    if settings.border == "skip":
        rows = [r for r in rows if not r["edge"]]
    if not rows:
        return [], {"why": f"{key}: no cells found ({labels_src})"}
    for r in rows:
        if names is not None:
            r["label"] = names[r["cell_id"] - 1]
        if pts is not None:
            p = pts[key][r["cell_id"] - 1]
            r["x"], r["y"], r["label"] = p["x"], p["y"], p["label"]
    if diameter is None:  # imported masks: the median equivalent diameter of their cells
        diameter = float(np.median([2 * np.sqrt(r["area"] / np.pi) for r in rows]))
    with FieldWriter(out, key) as wr:
        if settings.crops:
            rgb = to_rgb(_unit(raw), settings_channels(settings))
            fill = (np.median(rgb.reshape(-1, 3), axis=0) * 255).astype(np.uint8)
            wr.add_crops(rows, rgb, diameter, settings.crop_scale, fill, labels=labels, background=settings.background)
        wr.write_mask(labels)
        wr.commit()
    return rows, info


def settings_channels(settings: CellSettings):
    r = settings.reading
    return list(r.channels) if getattr(r, "channels", None) else None


def _unit(raw):
    from trainer.cells.reading import robust_range, to_unit

    return to_unit(raw, *robust_range(raw))


def _why_empty(key: str, plan) -> str:
    if plan.diameter < 3:
        return f"{key}: no objects found to measure a cell size; give --diameter if the field has cells"
    return (f"{key}: no clear foreground (Otsu separability {plan.eta:.2f} < 0.66): the field looks blank "
            "or out of focus")
