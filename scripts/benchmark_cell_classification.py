"""Classification on the cells scopeloop finds vs hand-cut crops of the same cells (issue 24), 2 CPU cores.

    nice -n 10 .venv/bin/python scripts/benchmark_cell_classification.py [--data ../shared/data] \
        [--cache /tmp/scopeloop_cell_cls] [--seeds 5] [--md /tmp/bench_cell_classification.md] [--le-seeds 3]

On <data>/fov_bccd (364 stained blood-smear fields, one box and class per annotated cell):
1. `trainer.cells.find_cells` with its own choices finds the cells (as `scopeloop cells` does).
2. Every annotated white cell of the four usable types (Neutrophil, Eosinophil, Lymphocyte, Monocyte;
   Basophil (2 cells) and WBC_unknown left out) is matched to one detection, one-to-one (a detection's
   centroid inside the box; scripts/benchmark_cells.py `match`, all white-cell boxes of a field together).
3. Crops of the matched cells, in several variants (`trainer.cells.crops.cut_cell`):
   * ``box``: centred on the annotation box, side = max(2 x folder diameter, 1.2 x the box's longer side)
     (the hand-cut reference);
   * ``found``: centred on the detection's centroid, same rule on the detection's box (scopeloop's default);
   * ``found_f1.6`` / ``found_f2.2``: a wider margin (1.6 / 2.2 x the cell's longer side);
   * ``found_masked``: the default crop with everything outside the cell's mask (grown 3 % of the side)
     painted with the field's median colour.
4. The product's embedding (tf_efficientnet_lite0, 224 px, multiscale features, both orientations),
   cached under --cache; the shipped learner (`trainer.models.head.fit_head`) cross-validated
   (`trainer.models.cross_validation.cross_validate`, stratified 5-fold) on the same cells for each
   variant, over --seeds fold assignments: macro-F1 mean and spread, and the paired difference of each
   variant against ``box`` (bootstrap 95 % interval on seed 0's out-of-fold predictions).
5. With --le-seeds N: scripts/benchmark_label_efficiency.py on the ImageFolder of the ``found`` crops.

Writes <cache>/results.json and the markdown section to --md.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

CLASSES = ["Eosinophil", "Lymphocyte", "Monocyte", "Neutrophil"]
WBC = {"Neutrophil", "Eosinophil", "Lymphocyte", "Monocyte", "Basophil", "WBC_unknown"}
VARIANTS = {  # name: (centre from, fit x longer side, background)
    "box": ("box", 1.2, "context"),
    "found": ("found", 1.2, "context"),
    "found_f1.6": ("found", 1.6, "context"),
    "found_f2.2": ("found", 2.2, "context"),
    "found_masked": ("found", 1.2, "masked"),
}


def find(images: Path, out: Path) -> dict:
    from trainer.cells import CellSettings, find_cells

    if not (out / "cells.csv").is_file():
        t = time.time()
        rep = find_cells(images, out, CellSettings(crops=False))
        print(f"found {rep.cells} cells in {len(rep.fields)} fields ({time.time() - t:.0f} s), diameter {rep.diameter:.1f}")
    return json.loads((out / "report.json").read_text())


def matched_cells(data: Path, found: Path) -> list[dict]:
    from benchmark_cells import match

    det = defaultdict(list)
    with open(found / "cells.csv", newline="") as f:
        for r in csv.DictReader(f):
            det[r["image"]].append(r)
    ann = defaultdict(list)
    with open(data / "cells.csv", newline="") as f:
        for r in csv.DictReader(f):
            if r["label"] in WBC and r["bbox_x0"]:
                ann[Path(r["image"]).name].append(r)
    cells = []
    for img, boxes in sorted(ann.items()):
        dets = det.get(img, [])
        m = match([(float(d["x"]), float(d["y"])) for d in dets],
                  [[float(b[k]) for k in ("bbox_x0", "bbox_y0", "bbox_x1", "bbox_y1")] for b in boxes])
        for bi, di in m.items():
            b = boxes[bi]
            if b["label"] in CLASSES:
                cells.append({"image": img, "label": b["label"], "found": dets[di],
                              "box": [float(b[k]) - 1 for k in ("bbox_x0", "bbox_y0", "bbox_x1", "bbox_y1")]})
    return cells


def write_crops(data: Path, found: Path, cells: list[dict], diameter: float, cache: Path) -> None:
    import tifffile
    from PIL import Image

    from trainer.cells.crops import cut_cell
    from trainer.cells.table import mask_path
    from trainer.io.read import read_image

    todo = [v for v in VARIANTS if not (cache / "crops" / v / ".done").exists()]
    if not todo:
        return
    by_image = defaultdict(list)
    for c in cells:
        by_image[c["image"]].append(c)
    for img, cs in by_image.items():
        rgb = read_image(data / "fov_bccd" / "images" / img)
        labels = tifffile.imread(found / mask_path(img))
        fill = (np.median(rgb.reshape(-1, 3), axis=0) * 255).astype(np.uint8)
        for c in cs:
            f = c["found"]
            frow = {"x": float(f["x"]), "y": float(f["y"]), "cell_id": int(f["cell_id"])}
            flong = max(int(f["bbox_x1"]) - int(f["bbox_x0"]), int(f["bbox_y1"]) - int(f["bbox_y0"]))
            b = c["box"]
            brow = {"x": (b[0] + b[2]) / 2, "y": (b[1] + b[3]) / 2, "cell_id": 0}
            blong = max(b[2] - b[0], b[3] - b[1])
            for v in todo:
                centre, fit, bg = VARIANTS[v]
                row, long = (brow, blong) if centre == "box" else (frow, flong)
                side = int(round(max(2.0 * diameter, fit * long, 8)))
                crop = cut_cell(rgb, row, side, fill, labels if bg == "masked" else None, bg)
                dst = cache / "crops" / v / c["label"] / f"{Path(img).stem}_cell{int(f['cell_id']):05d}.png"
                dst.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(crop).save(dst)
    for v in todo:
        (cache / "crops" / v / ".done").write_text("ok")


def embed(cache: Path, variant: str, cells: list[dict]) -> np.ndarray:
    from trainer.models.inference import embed_paths

    dst = cache / "embeddings" / f"{variant}.npy"
    if dst.is_file():
        return np.load(dst)
    paths = [cache / "crops" / variant / c["label"] / f"{Path(c['image']).stem}_cell{int(c['found']['cell_id']):05d}.png"
             for c in cells]
    t = time.time()
    X, rows, skipped = embed_paths(paths, features="multiscale", image_size=224, progress=False)
    assert len(rows) == len(paths), skipped.summary()
    print(f"embedded {variant}: {len(paths)} crops in {time.time() - t:.0f} s")
    dst.parent.mkdir(parents=True, exist_ok=True)
    np.save(dst, X)
    return X


def evaluate(X: dict, y: np.ndarray, seeds: int, groups) -> dict:
    from trainer.models.cross_validation import cross_validate
    from trainer.models.head import single_thread
    from trainer.stats.estimate import paired_difference
    from trainer.stats.metrics import confusion_matrix, scores_from_confusions

    res, preds = {}, {}
    with single_thread():
        for v, Xv in X.items():
            f1s = []
            for s in range(seeds):
                _, oof = cross_validate(Xv, y, CLASSES, groups=groups, seed=s)
                pred = np.nan_to_num(oof, nan=0).argmax(1)
                f1s.append(float(scores_from_confusions(confusion_matrix(y, pred, len(CLASSES))[None])["macro_f1"][0]))
                if s == 0:
                    preds[v] = pred
            res[v] = {"macro_f1": float(np.mean(f1s)), "sd": float(np.std(f1s)), "per_seed": f1s}
    for v in X:
        if v != "box":
            d = paired_difference(y, preds[v], preds["box"], len(CLASSES), groups=groups)
            res[v]["vs_box_seed0"] = {k: d[k] for k in ("diff", "low", "high")}
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=str(REPO.parent / "shared" / "data"))
    ap.add_argument("--cache", default="/tmp/scopeloop_cell_cls")
    ap.add_argument("--seeds", type=int, default=5, help="fold assignments for the cross-validation")
    ap.add_argument("--le-seeds", type=int, default=0, help="also run the label-efficiency benchmark with this many seeds")
    ap.add_argument("--md", default="/tmp/bench_cell_classification.md")
    args = ap.parse_args()
    data, cache = Path(args.data), Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    rep = find(data / "fov_bccd" / "images", cache / "found")
    diameter = float(rep["diameter"])
    cells = matched_cells(data / "fov_bccd", cache / "found")
    n_annotated = 0
    with open(data / "fov_bccd" / "cells.csv", newline="") as f:
        n_annotated = sum(r["label"] in CLASSES for r in csv.DictReader(f))
    print(f"{len(cells)} of {n_annotated} annotated white cells of {', '.join(CLASSES)} matched to a detection")
    write_crops(data, cache / "found", cells, diameter, cache)
    X = {v: embed(cache, v, cells) for v in VARIANTS}
    y = np.array([CLASSES.index(c["label"]) for c in cells])
    res = evaluate(X, y, args.seeds, None)
    out = {"n_cells": len(cells), "n_annotated": n_annotated, "counts": dict(Counter(c["label"] for c in cells)),
           "diameter": diameter, "seeds": args.seeds, "variants": {k: list(v) for k, v in VARIANTS.items()},
           "results": res, "seconds": round(time.time() - t0)}
    le = None
    if args.le_seeds:
        le_out = cache / "label_efficiency"
        cmd = [sys.executable, str(REPO / "scripts" / "benchmark_label_efficiency.py"), "--data",
               str(cache / "crops" / "found"), "--out", str(le_out), "--seeds", str(args.le_seeds)]
        print(" ".join(cmd))
        subprocess.run(cmd, check=True, env=dict(os.environ))
        le = json.loads((le_out / "results.json").read_text()).get("headline")
        out["label_efficiency"] = {"command": " ".join(cmd), "headline": le}
    (cache / "results.json").write_text(json.dumps(out, indent=1))
    Path(args.md).write_text(markdown(out, args))
    print(Path(args.md).read_text())
    return 0


def markdown(out: dict, args) -> str:
    r = out["results"]
    lines = ["## Cells from fields of view: classification on the cells found (issue 24)", "",
             "Command (2 shared CPU cores; embeddings cached under --cache):", "",
             f"    nice -n 10 .venv/bin/python scripts/benchmark_cell_classification.py --seeds {args.seeds}"
             + (f" --le-seeds {args.le_seeds}" if args.le_seeds else ""), "",
             (f"fov_bccd: {out['n_cells']} of {out['n_annotated']} annotated white cells of the four usable types "
             f"({', '.join(f'{c} {n}' for c, n in sorted(out['counts'].items()))}) matched one-to-one to a cell "
             f"`find_cells` found with its own choices (folder diameter {out['diameter']:.1f} px). Shipped learner "
             f"(`fit_head` on the multiscale embedding, 224 px), stratified 5-fold cross-validation over "
             f"{out['seeds']} fold assignments, the same cells in every row."), "",
             "| crop | centre | side | background | macro-F1 (mean +- sd) | minus `box` (seed 0, 95 % interval) |",
             "|---|---|---|---|--:|--:|"]
    for v, (centre, fit, bg) in out["variants"].items():
        d = r[v].get("vs_box_seed0")
        dd = f"{d['diff']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}]" if d else "-"
        lines.append(f"| `{v}` | {centre} | max(2 x diameter, {fit} x longer side) | {bg} | "
                     f"{r[v]['macro_f1']:.3f} +- {r[v]['sd']:.3f} | {dd} |")
    le = out.get("label_efficiency")
    if le:
        lines += ["", "Label efficiency on the ImageFolder of the `found` crops:", "", f"    {le['command']}", "",
                  "```", json.dumps(le["headline"], indent=1)[:3000], "```"]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
