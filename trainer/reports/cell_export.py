"""The dataset export of a project of cells (fields of view): where each exported cell came from.

`export_cells(project, rows, out)` is called by `trainer.reports.export_dataset.export_dataset`
when the project has a ``cells`` record. Next to the usual ImageFolder of crops (the exact
pixels the model saw) it writes:

* ``cells.csv``: one row per exported cell: file (its crop in the export), label, split, group,
  field (the field of view's key under the project's ``fields_root``), cell_id, x, y (centroid,
  pixels of the field), bbox_x0, bbox_y0, bbox_x1, bbox_y1 (pixels, x1/y1 exclusive), area
  (pixels), edge (touches the field's border), key (the cell's key in the project);
* ``masks/<field key without suffix>_masks.tif``: the label image of every field with an
  exported cell (uint16/uint32, 0 = background; a cell's value is its cell_id), copied from the
  project's ``<work>/cells/masks``;
* ``cell_settings.json``: how cells were found and cropped (the project's ``cells`` record).
"""
from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

CELL_FIELDS = ["file", "label", "split", "group", "field", "cell_id", "x", "y", "bbox_x0", "bbox_y0", "bbox_x1",
               "bbox_y1", "area", "edge", "key"]


def export_cells(workspace, rows: list[dict], out: Path) -> dict:
    """Write cells.csv, masks/ and cell_settings.json for the exported `rows` (export manifest
    rows: key, file, label, split, group); returns {"cells", "masks", "fields_root"}."""
    from trainer.cells.project import cell_index
    from trainer.cells.table import mask_path

    cells_dir = Path(workspace.root) / "cells"
    index = cell_index(cells_dir)
    table, fields = [], set()
    for r in rows:
        c = index.get(r["key"])
        if c is None:
            continue
        fields.add(c["image"])
        table.append({**{k: r.get(k, "") for k in ("file", "label", "split", "group", "key")},
                      "field": c["image"], **{k: c[k] for k in CELL_FIELDS if k in c and k not in ("label",)}})
    with open(out / "cells.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, CELL_FIELDS, extrasaction="ignore", lineterminator="\n")
        w.writeheader()
        w.writerows(table)
    masks = 0
    for field in sorted(fields):
        src = cells_dir / mask_path(field)
        if src.is_file():
            dst = out / mask_path(field)
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst)
            masks += 1
    project = workspace.project
    (out / "cell_settings.json").write_text(json.dumps(project.get("cells") or {}, indent=1))
    return {"cells": len(table), "masks": masks, "fields_root": project.get("fields_root")}
