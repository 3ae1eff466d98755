"""`scopeloop predict --cells ...`: a model applied to the cells of new fields of view.

`predict_fields(model_dir, input_dir, out_csv, ...)`:
1. finds (or imports) the cells of every field (`trainer.cells.find_cells`) into
   ``<out>.cells/`` (cells.csv, crops, masks), with the model's own cell settings (the
   ``cells`` record of its config.json: crop rule, background, diameter, border) unless
   overridden, so a cell is cropped exactly as in the loop that trained the model;
2. predicts every crop (`trainer.reports.batch_predict.predict_folder`: the usual CSV, NPZ,
   flags and columns) and rewrites that CSV as the **per-cell table**: the cell's columns
   `image` (field key), `cell_id`, `x`, `y` (centroid, pixels of the field), `bbox_x0`,
   `bbox_y0`, `bbox_x1`, `bbox_y1`, `area` (pixels), `edge`, `field_quality` (the field's own
   verdict), `group` first, then every column predict wrote (`file` = the crop's key,
   `predicted_class`, `confidence`, flags, probabilities; columns added by other steps pass
   through unchanged). It opens as-is in pandas (one row per cell, one header line);
3. counts and proportions of each predicted class per field and per group
   (``<out>.image_counts.csv``, ``<out>.group_counts.csv``; group = `trainer.io.groups.group_of`
   on the field's file name with `group_pattern`, unmatched fields their own group by key).
   With the model's cross-validated confusion in its metrics.json the proportions are corrected
   for its known errors with 95% intervals (`trainer.stats.proportions.proportions_table`:
   columns proportion, lower, upper); otherwise plain shares of the predictions (lower/upper empty);
4. one overlay PNG per field (``<out>.overlays/<field key>.png``: each cell outlined in the
   colour of its predicted class, a legend) and a stacked bar plot of the class proportions per
   group (``<out>.groups.png``).
"""
from __future__ import annotations

import csv
import json
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

CELL_COLUMNS = ["image", "cell_id", "x", "y", "bbox_x0", "bbox_y0", "bbox_x1", "bbox_y1", "area", "edge",
                "field_quality", "group"]
PALETTE = [(230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240),
           (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (170, 110, 40), (128, 0, 0)]


def out_paths(out_csv) -> dict[str, Path]:
    """Where predict_fields writes, next to `out_csv`."""
    out = Path(out_csv)
    stem = out.with_suffix("")
    return {"csv": out, "cells": Path(f"{stem}.cells"), "image_counts": Path(f"{stem}.image_counts.csv"),
            "group_counts": Path(f"{stem}.group_counts.csv"), "overlays": Path(f"{stem}.overlays"),
            "groups_png": Path(f"{stem}.groups.png")}


def model_cell_settings(model_dir, border=None, diameter=None):
    """CellSettings for new fields: the model's ``cells`` record (config.json), `border` /
    `diameter` on top; the defaults for a model trained on single-cell images."""
    from trainer.cells.project import settings_from_record

    cfg = json.loads((Path(model_dir) / "config.json").read_text())
    rec = dict(cfg.get("cells") or {})
    return settings_from_record(rec, border=border, diameter=diameter), rec


def predict_fields(model_dir, input_dir, out_csv, mode: str = "auto", masks=None, points=None,
                   group_pattern: str | None = None, border: str | None = None, diameter: float | None = None,
                   batch_size: int = 64, low_confidence: float = 0.5, overlays: bool = True,
                   progress: bool = True) -> dict:
    """Per-cell predictions for a folder of fields (module doc). Returns predict_folder's summary
    plus "cells" (the CellReport), "fields", "image_counts", "group_counts", "overlays", "groups_png".
    Raises FileNotFoundError (no fields, no cells found in any field) and what find_cells raises."""
    from trainer.cells import find_cells
    from trainer.cells.project import cell_index, field_verdicts
    from trainer.io.groups import group_of
    from trainer.reports.batch_predict import predict_folder

    paths = out_paths(out_csv)
    settings, _ = model_cell_settings(model_dir, border, diameter)
    settings = settings.with_(crops=True)
    report = find_cells(input_dir, paths["cells"], settings, masks=masks if mode == "masks" else None,
                        points=points if mode == "points" else None)
    index = cell_index(paths["cells"])
    if not index:
        raise FileNotFoundError(f"no cells found in any field under '{input_dir}': {report.summary()}")
    summary = predict_folder(model_dir, paths["cells"] / "crops", paths["csv"], batch_size=batch_size,
                             progress=progress, low_confidence=low_confidence)
    fq = field_verdicts(input_dir, sorted({r["image"] for r in index.values()}))
    group = {}
    for r in index.values():
        group[r["image"]] = group_of(r["image"], group_pattern, "own-key") if group_pattern else r["image"]
    rows = _rewrite_table(paths["csv"], index, fq, group)
    classes = _classes(model_dir)
    summary.update(cells=report, fields=len({r["image"] for r in rows}))
    summary["image_counts"] = str(write_counts(rows, classes, "image", paths["image_counts"], model_dir))
    summary["group_counts"] = str(write_counts(rows, classes, "group", paths["group_counts"], model_dir))
    summary["groups_png"] = str(plot_group_proportions(paths["group_counts"], classes, paths["groups_png"]))
    summary["overlays"] = str(write_overlays(input_dir, paths["cells"], rows, classes, paths["overlays"],
                                             settings)) if overlays else None
    return summary


def _classes(model_dir) -> list[str]:
    return list(json.loads((Path(model_dir) / "config.json").read_text())["classes"])


def _rewrite_table(csv_path: Path, index: dict, fields_qc: dict, group: dict) -> list[dict]:
    """predict's CSV (one row per crop, `file` = cell key) -> the per-cell table, in place."""
    with open(csv_path, newline="") as f:
        reader = csv.DictReader(f)
        header = list(reader.fieldnames or [])
        rows = list(reader)
    out = []
    for r in rows:
        c = index.get(r["file"])
        if c is None:
            continue
        cell = {k: c[k] for k in CELL_COLUMNS if k in c}
        cell["field_quality"] = (fields_qc.get(c["image"]) or {}).get("verdict", "")
        cell["group"] = group.get(c["image"], c["image"])
        out.append({**cell, **r})
    out.sort(key=lambda r: (r["image"], int(r["cell_id"])))
    cols = CELL_COLUMNS + [h for h in header if h not in CELL_COLUMNS]
    tmp = csv_path.with_name(csv_path.name + ".part")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, cols, extrasaction="ignore")
        w.writeheader()
        w.writerows(out)
    tmp.replace(csv_path)
    return out


def _calibration(model_dir, classes):
    """(C, C+1) calibration confusion from the model's cross-validated estimate, or None."""
    try:
        from trainer.stats.estimate import from_metrics
        from trainer.stats.proportions import calibration_matrix
    except ImportError:
        return None
    p = Path(model_dir) / "metrics.json"
    if not p.is_file():
        return None
    try:
        est = from_metrics(json.loads(p.read_text()))
    except Exception:  # noqa: BLE001 - no usable estimate: plain shares
        return None
    if not est or list(est.get("classes") or []) != list(classes) or not est.get("confusion_matrix"):
        return None
    cm = np.asarray(est["confusion_matrix"], float)
    if cm.ndim != 2 or cm.shape[0] != len(classes) or cm.sum() <= 0:
        return None
    if cm.shape[1] == len(classes):  # (C, C) -> (C, C+1): no item flagged as an unseen type
        cm = np.hstack([cm, np.zeros((len(classes), 1))])
    return calibration_matrix(cm)


def write_counts(rows: list[dict], classes: list[str], by: str, path: Path, model_dir=None) -> Path:
    """One row per field (`by`="image") or group (`by`="group") and class: `by`, class, cells
    (cells in the field/group), count (predicted as the class), proportion, lower, upper (95%
    interval, corrected for the model's errors when its confusion is known, else empty)."""
    names = sorted({r[by] for r in rows})
    pred = np.array([classes.index(r["predicted_class"]) for r in rows], int)
    keys = np.array([r[by] for r in rows])
    cal = _calibration(model_dir, classes) if model_dir is not None else None
    corrected = {}
    if cal is not None and len(rows):
        from trainer.stats.proportions import proportions_table

        for t in proportions_table(pred, cal, classes, groups=keys.tolist(), draws=1000):
            corrected[(t["group"], t["class"])] = t
    out = []
    for name in names:
        sel = keys == name
        n = int(sel.sum())
        cnt = Counter(pred[sel].tolist())
        for i, c in enumerate(classes):
            t = corrected.get((name, c))
            out.append({by: name, "class": c, "cells": n, "count": cnt.get(i, 0),
                        "proportion": f"{t['proportion'] if t else cnt.get(i, 0) / max(n, 1):.4f}",
                        "lower": f"{t['lower']:.4f}" if t else "", "upper": f"{t['upper']:.4f}" if t else ""})
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, [by, "class", "cells", "count", "proportion", "lower", "upper"])
        w.writeheader()
        w.writerows(out)
    return path


def plot_group_proportions(group_counts: Path, classes: list[str], dst: Path) -> Path:
    """Stacked bars: each group's proportion of each class (from ``<out>.group_counts.csv``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shares: dict = defaultdict(dict)
    cells = {}
    with open(group_counts, newline="") as f:
        for r in csv.DictReader(f):
            shares[r["group"]][r["class"]] = float(r["proportion"])
            cells[r["group"]] = int(r["cells"])
    groups = sorted(shares)
    fig, ax = plt.subplots(figsize=(max(4.0, 0.6 * len(groups) + 2.5), 4.0))
    bottom = np.zeros(len(groups))
    for i, c in enumerate(classes):
        v = np.array([shares[g].get(c, 0.0) for g in groups])
        ax.bar(range(len(groups)), v, bottom=bottom, color=np.array(PALETTE[i % len(PALETTE)]) / 255, label=c)
        bottom += v
    ax.set_xticks(range(len(groups)), [f"{g}\n(n={cells[g]})" for g in groups], rotation=45 if len(groups) > 6 else 0,
                  ha="right" if len(groups) > 6 else "center", fontsize=8)
    ax.set_ylabel("proportion of cells")
    ax.set_ylim(0, 1)
    ax.set_title("Predicted cell types per group")
    ax.legend(fontsize=8, bbox_to_anchor=(1.01, 1), loc="upper left")
    fig.tight_layout()
    fig.savefig(dst, dpi=100)
    plt.close(fig)
    return dst


def write_overlays(input_dir, cells_dir: Path, rows: list[dict], classes: list[str], out_dir: Path,
                   settings=None, max_side: int = 1600) -> Path:
    """``<out_dir>/<field key>.png`` per field: cells outlined in their predicted class's colour
    (from the field's label image; a box without one), a legend in the top-left corner; fields
    larger than `max_side` are shown downscaled. Unreadable fields are left out."""
    import tifffile
    from PIL import Image, ImageDraw
    from skimage.segmentation import find_boundaries

    from trainer.cells.find import _unit, settings_channels
    from trainer.cells.reading import FieldSource, ImageReadError, to_rgb
    from trainer.cells.table import mask_path

    by_field: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        by_field[r["image"]].append(r)
    for key, cells in by_field.items():
        try:
            src = FieldSource(Path(input_dir) / key, getattr(settings, "reading", None))
            step = max(1, int(np.ceil(max(src.shape) / max_side)))
            rgb = (to_rgb(_unit(src.sample(step)), settings_channels(settings) if settings else None) * 255
                   ).astype(np.uint8)
            mfile = cells_dir / mask_path(key)
            labels = tifffile.imread(mfile)[::step, ::step] if mfile.is_file() and not src.banded else None
        except (ImageReadError, ValueError, OSError):
            continue
        colour = {int(c["cell_id"]): PALETTE[classes.index(c["predicted_class"]) % len(PALETTE)] for c in cells}
        img = rgb.copy()
        if labels is not None:
            edges = find_boundaries(labels, mode="inner")
            lut = np.zeros((int(labels.max()) + 1, 3), np.uint8)
            has = np.zeros(int(labels.max()) + 1, bool)
            for cid, col in colour.items():
                if cid < len(lut):
                    lut[cid], has[cid] = col, True
            sel = edges & has[labels]
            img[sel] = lut[labels[sel]]
        im = Image.fromarray(img)
        draw = ImageDraw.Draw(im)
        if labels is None:
            for c in cells:
                draw.rectangle([int(c["bbox_x0"]) // step, int(c["bbox_y0"]) // step, int(c["bbox_x1"]) // step,
                                int(c["bbox_y1"]) // step], outline=colour[int(c["cell_id"])], width=2)
        present = Counter(c["predicted_class"] for c in cells)
        y = 4
        draw.rectangle([2, 2, 8 + 9 * max(len(f"{c} ({present[c]})") for c in classes), 6 + 14 * len(classes)],
                       fill=(255, 255, 255))
        for i, c in enumerate(classes):
            draw.rectangle([5, y + 2, 13, y + 10], fill=PALETTE[i % len(PALETTE)])
            draw.text((17, y), f"{c} ({present.get(c, 0)})", fill=(0, 0, 0))
            y += 14
        dst = out_dir / f"{key}.png"
        dst.parent.mkdir(parents=True, exist_ok=True)
        im.save(dst)
    return out_dir
