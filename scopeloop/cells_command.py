"""`scopeloop cells`: find (or import) the cells of a folder of fields of view.

Registered by scopeloop/cli.py: ``add_parser(subparsers)`` then ``args.func(args)`` (= `run`).
Writes <out>/cells.csv, crops/, masks/ and report.json (contract: trainer/cells/table.py).
"""
from __future__ import annotations

import argparse
import sys


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "cells", help="find every cell in a folder of fields of view (or import masks/points made elsewhere)",
        description="Find the cells of each field of view under --images and write <out>/cells.csv (one row "
                    "per cell: image, cell_id, centroid x,y, box, area, edge, crop), a PNG crop per cell and a "
                    "label image per field. Without --masks/--points an offline classical pipeline (threshold + "
                    "watershed) measures modality, signal and cell diameter itself.")
    p.add_argument("--images", required=True, help="folder of fields of view (searched recursively)")
    p.add_argument("--out", required=True, help="output folder (cells.csv, crops/, masks/, report.json)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--masks", help="folder of label images made elsewhere (cellpose *_cp_masks.png / *_seg.npy, "
                                     "StarDist/CellProfiler label TIFFs, QuPath *.geojson), named after the images")
    src.add_argument("--points", help="CSV of points or boxes: image,x,y[,bbox_x0,bbox_y0,bbox_x1,bbox_y1][,label]")
    p.add_argument("--modality", default="auto", choices=["auto", "brightfield", "fluorescence"],
                   help="brightfield (cells darker/coloured on a bright background) or fluorescence (bright on "
                        "dark); default: decided per field from its background")
    p.add_argument("--channel", default="auto",
                   help="signal to threshold: auto (the best-separating one), a channel number, or od, saturation, "
                        "grey, hematoxylin, eosin, dab (RGB brightfield)")
    p.add_argument("--diameter", type=float, default=None,
                   help="expected cell diameter in pixels (default: measured on the first fields)")
    p.add_argument("--threshold", default="li", choices=["li", "otsu", "triangle", "local"])
    p.add_argument("--border", default="label", choices=["label", "skip"],
                   help="cells touching the image border: keep them (flagged edge=true) or skip them")
    p.add_argument("--crop-scale", type=float, default=2.0, help="crop side = this x the cell diameter")
    p.add_argument("--no-crops", action="store_true", help="write no crops (cells.csv and masks only)")
    p.add_argument("--no-split", action="store_true", help="do not split touching cells")
    p.add_argument("--tile", type=int, default=2048, help="fields larger than this are processed by tiles")
    p.add_argument("--max-cells", type=int, default=200_000, help="most cells accepted per field")
    p.add_argument("--channels", default=None, help="reading: image channels, e.g. 0,2,1")
    p.add_argument("--stack", default="mip", choices=["mip", "plane"], help="reading: Z-stacks (default: maximum "
                                                                             "intensity projection)")
    p.set_defaults(func=run)
    return p


def settings_from_args(args):
    from trainer.cells import CellSettings

    reading = None
    if args.channels or args.stack != "mip":
        reading = {"stack": args.stack}
        if args.channels:
            reading["channels"] = [int(c) for c in args.channels.split(",")]
    return CellSettings(modality=args.modality, channel=args.channel, diameter=args.diameter,
                        threshold=args.threshold, border=args.border, crop_scale=args.crop_scale,
                        crops=not args.no_crops, split=not args.no_split, tile=args.tile,
                        max_cells=args.max_cells, reading=reading)


def run(args) -> int:
    """Exit status 0 when at least one field has cells, 2 for a user error (one line, no traceback)."""
    from trainer.cells import CellInputError, find_cells

    try:
        settings = settings_from_args(args)
        report = find_cells(args.images, args.out, settings, masks=args.masks, points=args.points,
                            progress=lambda i, n, k: print(f"\r{i + 1}/{n} {k}"[:100].ljust(100), end="",
                                                           file=sys.stderr, flush=True))
    except (CellInputError, FileNotFoundError, ValueError) as exc:
        print(f"\nerror: {exc}", file=sys.stderr)
        return 2
    print(file=sys.stderr)
    print(report.summary())
    print(f"wrote {args.out}/cells.csv")
    return 0 if report.fields else 2


def add_cell_args(p, predict: bool = False) -> None:
    """The options that make `init` / `predict` work on fields of view (one task / row per cell)."""
    g = p.add_argument_group("fields of view (one cell per task / row)")
    g.add_argument("--cells", choices=["auto"], default=None,
                   help="the images are fields of view: find every cell (offline, `scopeloop cells`) and "
                        + ("predict each cell: per-cell table, counts per image and group, overlays" if predict
                           else "make one task per cell, shown in its neighbourhood"))
    g.add_argument("--cells-masks", default=None, metavar="DIR",
                   help="import cells from label images made elsewhere (cellpose, StarDist, CellProfiler, QuPath GeoJSON)")
    g.add_argument("--cells-points", default=None, metavar="CSV",
                   help="import cells from a CSV of points or boxes: image,x,y[,bbox_x0,bbox_y0,bbox_x1,bbox_y1][,label]")
    g.add_argument("--cells-border", choices=["label", "skip"], default=None,
                   help="cells touching the field's border: keep them (flagged edge) or skip them "
                        "(default: the project's / model's setting, else label)")
    g.add_argument("--cells-diameter", type=float, default=None,
                   help="expected cell diameter in pixels (default: " + ("the model's" if predict else "measured") + ")")
    if predict:
        g.add_argument("--group-pattern", default=None,
                       help="regex on a field's file name whose first group is its group (well, condition), "
                            "e.g. '^(\\w+?)_'; counts and proportions per group")
        g.add_argument("--no-overlays", action="store_true", help="write no overlay PNG per field")


def run_predict(args, model_dir) -> int:
    """`scopeloop predict --cells ...` (see trainer.reports.cell_results)."""
    from scopeloop.cells_project import cli_settings
    from trainer.reports.cell_results import predict_fields

    spec = cli_settings(args)
    s = predict_fields(model_dir, args.input, args.out, mode=spec["mode"], masks=spec["masks"], points=spec["points"],
                       group_pattern=args.group_pattern, border=spec["border"], diameter=spec["diameter"],
                       batch_size=args.batch_size, low_confidence=args.low_confidence, overlays=not args.no_overlays)
    print(f"model: {model_dir}")
    print(s["cells"].summary())
    print(f"{s['predicted']} cells of {s['fields']} field(s) predicted -> {s['csv']} (one row per cell)")
    for c, n in s["counts"].items():
        print(f"  {c:<20} {n}")
    print(f"{s['low_confidence']} low-confidence predictions (below {args.low_confidence:.2f}, flagged in the CSV)")
    print(f"counts and proportions per field: {s['image_counts']}; per group: {s['group_counts']}")
    print(f"proportions per group: {s['groups_png']}")
    if s.get("overlays"):
        print(f"overlays (cells coloured by predicted class): {s['overlays']}/")
    return 0
