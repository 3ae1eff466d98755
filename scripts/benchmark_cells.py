"""Benchmark of finding cells in fields of view (trainer.cells), 2 CPU cores.

    nice -n 10 .venv/bin/python scripts/benchmark_cells.py [--data ../shared/data] [--parts bccd,synthetic,speed,large]

bccd: on <data>/fov_bccd (364 stained blood smears, boxes per cell), `find_cells` with its own
  choices (nothing per image): recall of annotated white cells and red cells (a box is found
  when one detection's centroid lies inside it, matched one-to-one by the Hungarian method on
  the distance to the box centre, all boxes of a field together), and detections per annotated
  red cell on fields whose red cells are fully boxed: the union of the RBC boxes covers >= 80 %
  of the field's red-cell foreground (pixels above Otsu's threshold of the smoothed grey
  absorbance, outside white-cell and platelet boxes; a fixed rule, not the pipeline's own).
  Detections per red cell = (detections - those matched to white-cell or platelet boxes) / RBC boxes.
synthetic: 20 synthetic fluorescence fields 1024 x 1024 (trainer.cells.synthetic): recall
  (IoU >= 0.5), merged pairs, split nuclei.
speed: fields/s of `find_cells` (crops, masks, csv) on 640 x 480 (the bccd run) and on 2048 x 2048
  synthetic fluorescence fields.
large: peak RSS of a child process running `find_cells` on one 20,000 x 20,000 uint16 field.
"""
from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

WBC = {"Neutrophil", "Eosinophil", "Lymphocyte", "Monocyte", "Basophil", "WBC_unknown"}


def match(cents, boxes):
    """{box index: detection index}, one-to-one, centroid inside the box (VOC boxes are 1-based)."""
    from scipy.optimize import linear_sum_assignment

    if not len(cents) or not boxes:
        return {}
    b = np.array(boxes, float) - 1
    c = np.asarray(cents, float)
    x, y = c[:, 0][None], c[:, 1][None]
    inside = (x >= b[:, :1]) & (x <= b[:, 2:3]) & (y >= b[:, 1:2]) & (y <= b[:, 3:4])
    cx, cy = (b[:, :1] + b[:, 2:3]) / 2, (b[:, 1:2] + b[:, 3:4]) / 2
    w, h = np.maximum(b[:, 2:3] - b[:, :1], 1), np.maximum(b[:, 3:4] - b[:, 1:2], 1)
    cost = np.where(inside, ((x - cx) / w) ** 2 + ((y - cy) / h) ** 2, 1e6)
    r, k = linear_sum_assignment(cost)
    return {i: j for i, j in zip(r, k) if cost[i, j] < 1e6}


def fully_boxed(img_path, boxes) -> bool:
    from scipy import ndimage as ndi
    from skimage import filters

    from trainer.cells.reading import read_raw

    a = read_raw(img_path).astype(np.float32) / 255
    s = ndi.gaussian_filter(1 - a.mean(-1), 2)
    fg = s > filters.threshold_otsu(s)
    other = np.zeros(fg.shape, bool)
    red = np.zeros(fg.shape, bool)
    for (x0, y0, x1, y1), k in boxes:
        sl = (slice(int(y0) - 1, int(y1)), slice(int(x0) - 1, int(x1)))
        (red if k == "RBC" else other)[sl] = True
    fg &= ~other
    return fg.sum() > 0 and (fg & red).sum() / fg.sum() >= 0.8


def part_bccd(data: Path, work: Path) -> dict:
    from trainer.cells import find_cells

    root = data / "fov_bccd"
    boxes = defaultdict(list)
    for r in csv.DictReader(open(root / "cells.csv")):
        if r["bbox_x0"]:
            b = [float(r[k]) for k in ("bbox_x0", "bbox_y0", "bbox_x1", "bbox_y1")]
        else:  # the two zero-size boxes: points, given a 40-pixel box
            b = [float(r["x"]) - 20, float(r["y"]) - 20, float(r["x"]) + 20, float(r["y"]) + 20]
        boxes[r["image"]].append((b, "WBC" if r["label"] in WBC else r["label"]))
    out = work / "bccd"
    t = time.time()
    rep = find_cells(root / "images", out)
    secs = time.time() - t
    det = defaultdict(list)
    for r in csv.DictReader(open(out / "cells.csv")):
        det[r["image"]].append((float(r["x"]), float(r["y"])))
    tot, found = defaultdict(int), defaultdict(int)
    fb_det = fb_rbc = fb_fields = 0
    missed_wbc = []
    for img, bl in sorted(boxes.items()):
        m = match(det[img], [b for b, _ in bl])
        for i, (_, k) in enumerate(bl):
            tot[k] += 1
            found[k] += i in m
            if k == "WBC" and i not in m:
                missed_wbc.append(img)
        n_rbc = sum(k == "RBC" for _, k in bl)
        if n_rbc and fully_boxed(root / "images" / img, bl):
            fb_fields += 1
            fb_rbc += n_rbc
            fb_det += len(det[img]) - sum(1 for i in m if bl[i][1] != "RBC")
    return {"fields": len(boxes), "seconds": round(secs, 1), "fields_per_s": round(len(boxes) / secs, 2),
            "diameter": rep.diameter, "diameter_from": rep.diameter_from,
            "recall": {k: round(found[k] / tot[k], 3) for k in sorted(tot)}, "boxes": dict(tot),
            "fully_boxed_fields": fb_fields, "fully_boxed_rbc": fb_rbc,
            "detections_per_rbc_fully_boxed": round(fb_det / max(fb_rbc, 1), 3),
            "missed_wbc": missed_wbc, "empty": rep.empty, "errors": rep.errors}


def part_synthetic(work: Path, n: int = 20, size: int = 1024) -> dict:
    import tifffile

    from trainer.cells import find_cells
    from trainer.cells.synthetic import make_field, score

    d = work / "synth"
    d.mkdir(parents=True, exist_ok=True)
    truth = {}
    for i in range(n):
        f = make_field((size, size), n=220, pairs=40, seed=100 + i)
        tifffile.imwrite(d / f"f{i:02d}.tif", f.image)
        truth[f"f{i:02d}.tif"] = f
    find_cells(d, work / "synth_out")
    agg = defaultdict(int)
    for k, f in truth.items():
        lab = tifffile.imread(work / "synth_out" / "masks" / f"{Path(k).stem}_masks.tif").astype(np.int64)
        for kk, v in score(f.labels, lab, f.pairs).items():
            agg[kk] += v if kk not in ("recall", "precision") else 0
    return {"fields": n, "size": size, "true": agg["true"], "found": agg["found"],
            "recall": round(agg["matched"] / agg["true"], 4), "precision": round(agg["matched"] / agg["found"], 4),
            "pairs": agg["pairs"], "merged_pairs": agg["merged_pairs"], "split": agg["split"]}


def part_speed(work: Path, n: int = 5) -> dict:
    import tifffile

    from trainer.cells import find_cells
    from trainer.cells.synthetic import make_field

    d = work / "speed2048"
    d.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        tifffile.imwrite(d / f"f{i}.tif", make_field((2048, 2048), n=900, pairs=100, seed=200 + i).image)
    t = time.time()
    rep = find_cells(d, work / "speed_out")
    secs = time.time() - t
    return {"fields": n, "size": 2048, "cells": rep.cells, "seconds": round(secs, 1),
            "fields_per_s": round(n / secs, 3)}


def part_large(work: Path, side: int = 20_000) -> dict:
    import tifffile

    from trainer.cells.synthetic import make_field

    d = work / "large"
    d.mkdir(parents=True, exist_ok=True)
    path = d / "wsi.tif"
    mm = tifffile.memmap(path, shape=(side, side), dtype=np.uint16)
    block = 2000
    for y in range(0, side, block):  # a different synthetic block everywhere: cells cut by tile borders
        for x in range(0, side, block):
            mm[y:y + block, x:x + block] = make_field((block, block), n=500, pairs=40,
                                                      seed=1000 + y // block * 100 + x // block).image
        mm.flush()
    del mm
    code = ("import resource, time, json; from trainer.cells import find_cells, CellSettings; t = time.time(); "
            f"r = find_cells(r'{d}', r'{work / 'large_out'}', CellSettings(crops=False)); "
            "print(json.dumps({'cells': r.cells, 'seconds': round(time.time() - t, 1), "
            "'peak_rss_mb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024, "
            "'errors': r.errors}))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    if res.returncode:
        return {"error": res.stderr[-2000:]}
    out = json.loads(res.stdout.strip().splitlines()[-1])
    out["field"] = f"{side} x {side} uint16 ({path.stat().st_size / 2 ** 30:.2f} GiB, uncompressed TIFF)"
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=str(REPO.parent / "shared" / "data"))
    ap.add_argument("--parts", default="bccd,synthetic,speed,large")
    ap.add_argument("--work", default=None, help="scratch folder (default: a temporary one)")
    ap.add_argument("--out", default=str(REPO / "test-artifacts" / "benchmark_cells.json"))
    args = ap.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="bench_cells_"))
    results = {}
    for part in args.parts.split(","):
        t = time.time()
        results[part] = part_bccd(Path(args.data), work) if part == "bccd" else \
            part_synthetic(work) if part == "synthetic" else part_speed(work) if part == "speed" else part_large(work)
        print(part, json.dumps(results[part], default=str)[:1500], f"({time.time() - t:.0f} s)", flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=1, default=str))


if __name__ == "__main__":
    main()
