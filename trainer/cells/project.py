"""Fields of view as a labeling project: each cell becomes an image of its own, with a context view.

`prepare_cells(fields, cells_dir, previews_dir, settings, masks=None, points=None)` runs
`find_cells` into ``cells_dir`` (cells.csv, ``crops/``, ``masks/``, report.json) and writes, for
every cell, the annotator's context view (`trainer.cells.crops.context_view`: the cell outlined
in its neighbourhood) as ``<previews_dir>/<cell key>.png``.

**Cell keys.** A cell is identified everywhere by the path of its crop relative to
``<cells_dir>/crops``: ``<field key>/<field stem>_cell<id:05d>.png`` (e.g.
``plate1/A01.tif/A01_cell00017.png``). The crop is a plain PNG, the exact pixels the model sees,
so the reader, the embedding cache, /predict, the refresh and the dataset export read a cell as
they read any image, under the project's ``images_root`` = ``<cells_dir>/crops``. `cell_index`
maps a cell key back to its field, id, centroid and box (cells.csv).

Per-field quality: `field_verdicts` judges the fields themselves (`trainer.quality.assess`,
pixels only) and `cell_verdicts` hands a field's non-ok verdict (blank, out of focus, saturated,
too dark) to each of its cells.
"""
from __future__ import annotations

import csv
from pathlib import Path

from trainer.cells.crops import context_view
from trainer.cells.find import CellReport, find_cells, settings_channels
from trainer.cells.params import CellSettings
from trainer.cells.table import mask_path

CROPS = "crops"
FIELD_FLAGS = ("blank", "out_of_focus", "saturated", "too_dark")  # a field's verdicts its cells inherit


def cell_key(row: dict) -> str:
    """The key of a cells.csv row (its crop relative to ``<cells_dir>/crops``)."""
    crop = str(row["crop"])
    return crop[len(CROPS) + 1:] if crop.startswith(CROPS + "/") else crop


def cell_index(cells_dir) -> dict[str, dict]:
    """cell key -> its cells.csv row (strings), for every cell with a crop; {} without cells.csv."""
    path = Path(cells_dir) / "cells.csv"
    if not path.is_file():
        return {}
    with open(path, newline="") as f:
        return {cell_key(r): r for r in csv.DictReader(f) if r.get("crop")}


def task_fields(row: dict) -> dict:
    """What a cell's Label Studio task carries besides its key: field, cell_id, centroid, box,
    area and edge (numbers as numbers; shown as Data Manager columns)."""
    def num(v):
        f = float(v)
        return int(f) if f.is_integer() else round(f, 1)

    return {"field": row["image"], "cell_id": int(row["cell_id"]), "cell_x": num(row["x"]), "cell_y": num(row["y"]),
            "cell_box": [int(row[k]) for k in ("bbox_x0", "bbox_y0", "bbox_x1", "bbox_y1")],
            "cell_area": int(row["area"]), "cell_edge": str(row["edge"]).lower() == "true"}


def prepare_cells(fields, cells_dir, previews_dir, settings: CellSettings | None = None, masks=None, points=None,
                  progress=None) -> tuple[CellReport, dict[str, dict]]:
    """Find (or import) the cells of every field under `fields`, write their crops and context
    views; returns (the `CellReport`, cell key -> cells.csv row). Raises what `find_cells` raises
    (FileNotFoundError, CellInputError); a field it refuses is in the report, the rest go on."""
    settings = (settings or CellSettings()).with_(crops=True)
    report = find_cells(fields, cells_dir, settings, masks=masks, points=points, progress=progress)
    index = cell_index(cells_dir)
    write_context_views(fields, cells_dir, previews_dir, index, settings, report.diameter)
    return report, index


def write_context_views(fields, cells_dir, previews_dir, index: dict[str, dict], settings: CellSettings,
                        diameter: float | None) -> int:
    """Write ``<previews_dir>/<cell key>.png`` for every cell of `index` whose view is missing or
    older than its field; returns how many were written. A field that cannot be read again is
    skipped (its cells then show their crop)."""
    import tifffile
    from PIL import Image

    from trainer.cells.find import _unit
    from trainer.cells.reading import FieldSource, ImageReadError, to_rgb

    by_field: dict[str, list[tuple[str, dict]]] = {}
    for k, r in index.items():
        by_field.setdefault(r["image"], []).append((k, r))
    previews, cells_dir, written = Path(previews_dir), Path(cells_dir), 0
    for field_key, items in by_field.items():
        src_path = Path(fields) / field_key
        try:
            mtime = src_path.stat().st_mtime
        except OSError:
            continue
        todo = [(k, r) for k, r in items if not (previews / (k + ".png")).is_file()
                or (previews / (k + ".png")).stat().st_mtime < mtime]
        if not todo:
            continue
        try:
            src = FieldSource(src_path, settings.reading)
            if src.banded:  # a huge field: its cells show their crops
                continue
            rgb = to_rgb(_unit(src.read_all()), settings_channels(settings))
            mfile = cells_dir / mask_path(field_key)
            labels = tifffile.imread(mfile) if mfile.is_file() else None
        except (ImageReadError, ValueError, OSError):
            continue
        for k, r in todo:
            row = {kk: (float(v) if kk in ("x", "y") else int(float(v)) if kk.startswith("bbox") or kk == "cell_id" else v)
                   for kk, v in r.items()}
            view = context_view(rgb, row, labels, diameter)
            dst = previews / (k + ".png")
            dst.parent.mkdir(parents=True, exist_ok=True)
            tmp = dst.with_name(dst.name + ".part")
            Image.fromarray(view).save(tmp, format="PNG", compress_level=3)
            tmp.replace(dst)
            written += 1
    return written


def field_verdicts(fields, keys: list[str]) -> dict[str, dict]:
    """{field key: {"verdict", "reason"}} from the fields' pixels (`trainer.quality.assess`, no
    embeddings); {} when the check cannot run."""
    try:
        from trainer.quality.assess import assess

        qc = assess([Path(fields) / k for k in keys], keys)
    except Exception:  # noqa: BLE001 - advisory, as every QC pass
        return {}
    return {k: {"verdict": v.verdict, "reason": v.reason} for k, v in qc.by_key().items()}


def cell_verdicts(index: dict[str, dict], fields_qc: dict[str, dict], own: dict | None = None) -> dict[str, dict]:
    """Each cell's verdict: its field's when that is a FIELD_FLAGS verdict (reason names the
    field), else the cell's `own` verdict (default ok)."""
    out = {}
    for k, r in index.items():
        f = fields_qc.get(r["image"]) or {}
        if f.get("verdict") in FIELD_FLAGS:
            out[k] = {"verdict": f["verdict"], "reason": f"field {r['image']}: {f.get('reason', '')}".strip()}
        else:
            out[k] = (own or {}).get(k) or {"verdict": "ok", "reason": ""}
    return out


def settings_record(settings: CellSettings, report: CellReport, mode: str, masks=None, points=None) -> dict:
    """The project's ``cells`` record (project.json, and the model's config): how cells were
    found and cropped, the diameter used. JSON-ready."""
    d = settings.to_dict()
    d.update({"mode": mode, "masks": str(masks) if masks else None, "points": str(points) if points else None,
              "diameter": float(report.diameter) if report.diameter else d.get("diameter")})
    return d


def settings_from_record(record: dict | None, **override) -> CellSettings:
    """CellSettings from a ``cells`` record (unknown keys ignored), `override` on top."""
    from dataclasses import fields as dc_fields

    names = {f.name for f in dc_fields(CellSettings)}
    d = {k: v for k, v in dict(record or {}).items() if k in names}
    d.update({k: v for k, v in override.items() if v is not None})
    return CellSettings(**d)
