"""`scopeloop init --cells ...`: a folder of fields of view as a project of cells (one task per cell).

Called by `scopeloop.projects.init`: `prepare` finds (or imports) the cells into ``<work>/cells``
(`trainer.cells.project.prepare_cells`: cells.csv, crops, masks, context views in
``<work>/previews``) and returns the cells record the project and its models keep; `quality`
judges the fields and hands a flagged field's verdict to its cells. `cli_settings` turns the
command-line options (``--cells auto``, ``--cells-masks DIR``, ``--cells-points CSV``,
``--cells-border``, ``--cells-diameter``) into the ``cells`` dict `projects.init` takes.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

CELL_MODES = ("auto", "masks", "points")


class CellsError(ValueError):
    """Cells cannot be found for a project; the message says what to do."""


def cli_settings(args) -> dict | None:
    """The ``cells`` dict of `projects.init` from ``--cells``/``--cells-masks``/``--cells-points``
    (+ ``--cells-border``, ``--cells-diameter``); None when none is given. Raises CellsError."""
    masks, points = getattr(args, "cells_masks", None), getattr(args, "cells_points", None)
    mode = getattr(args, "cells", None)
    if masks and points:
        raise CellsError("give --cells-masks or --cells-points, not both")
    if masks or points:
        mode = "masks" if masks else "points"
    if mode is None:
        return None
    if mode not in CELL_MODES:
        raise CellsError(f"--cells {mode}: use auto (find the cells), or --cells-masks DIR / --cells-points CSV")
    return {"mode": mode, "masks": masks, "points": points, "border": getattr(args, "cells_border", None),
            "diameter": getattr(args, "cells_diameter", None)}


def prepare(work: Path, fields: Path, cells: dict, stored: dict | None, reading: dict | None):
    """(cell key -> cells.csv row, the cells record for project.json and the model, one-line
    summary). The stored record's diameter and settings are kept on a re-run (the same cells get
    the same keys); `cells` overrides what it names. Raises CellsError when no field has cells."""
    from trainer.cells import CellInputError
    from trainer.cells.project import prepare_cells, settings_from_record, settings_record

    stored = dict(stored or {})
    mode = cells.get("mode") or stored.get("mode") or "auto"
    masks = cells.get("masks") or (stored.get("masks") if mode == "masks" else None)
    points = cells.get("points") or (stored.get("points") if mode == "points" else None)
    base = {k: v for k, v in stored.items() if k not in ("mode", "masks", "points")}
    if reading:
        base["reading"] = reading
    try:
        settings = settings_from_record(base, border=cells.get("border"), diameter=cells.get("diameter"))
        report, index = prepare_cells(fields, work / "cells", work / "previews", settings, masks=masks, points=points)
    except (CellInputError, FileNotFoundError, ValueError) as exc:
        raise CellsError(f"cells: {exc}") from None
    if not index:
        raise CellsError(f"no cells found in any field under '{fields}': {report.summary()}; give the cell size "
                         "with --cells-diameter, or import masks (--cells-masks) or points (--cells-points)")
    record = settings_record(settings, report, mode, masks, points)
    (work / "cells" / "init_report.json").write_text(json.dumps(report.to_dict(), indent=1, default=str))
    return index, record, report.summary().replace("\n", "\n  ")


def quality(work: Path, fields: Path, index: dict[str, dict]) -> tuple[dict, dict]:
    """(verdicts {cell key: {verdict, reason}}, summary) for `projects.init`: each field judged by
    its pixels (`trainer.cells.project.field_verdicts`), its flag handed to its cells; also
    ``summary["labels"]``: a ``file,label`` CSV of the classes an importer gave cells (points CSV
    ``label`` column, GeoJSON classifications), or None."""
    from trainer.cells.project import cell_verdicts, field_verdicts

    field_keys = sorted({r["image"] for r in index.values()})
    fq = field_verdicts(fields, field_keys)
    verdicts = cell_verdicts(index, fq)
    counts: dict = {}
    for v in verdicts.values():
        counts[v["verdict"]] = counts.get(v["verdict"], 0) + 1
    out = work / "cells" / "fields_qc.csv"
    with open(out, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["field", "verdict", "reason"])
        for k in field_keys:
            w.writerow([k, (fq.get(k) or {}).get("verdict", ""), (fq.get(k) or {}).get("reason", "")])
    labeled = {k: r["label"] for k, r in index.items() if r.get("label")}
    labels = None
    if labeled:
        labels = work / "cells" / "labels.csv"
        with open(labels, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["file", "label"])
            w.writerows(sorted(labeled.items()))
    return verdicts, {"counts": counts, "csv": str(out), "stored": False, "labels": labels}
