"""Large fields by tiles: bounded memory, every cell found once.

The field is read in bands of rows (`FieldSource.read_rows`: a large uncompressed TIFF is read
by file offset, never whole). Each band is cut into tiles of `tile` x `tile` core pixels plus a
margin of 3 expected diameters on every side; every tile is segmented with the same
`FieldPlan` (one threshold, one diameter for the whole field, measured once on a subsample and
a full-resolution centre crop), and a cell belongs to the tile whose core holds its centroid.
A cell cut by a tile border is therefore whole in the tile that owns it (the margin is wider
than a cell) and found once. Labels go to a tiled TIFF as soon as no later tile can touch them:
memory holds one band of raw pixels and one band of labels (for a 20,000 x 20,000 field with
2,048-pixel tiles: about 0.6 GB in all).
"""
from __future__ import annotations

import math

import numpy as np

from trainer.cells.auto import FieldPlan, plan_field
from trainer.cells.params import CellSettings
from trainer.cells.reading import FieldSource
from trainer.cells.segment import segment_signal
from trainer.cells.table import FieldWriter, cell_rows

MASK_TILE = 256


def plan_large(source: FieldSource, settings: CellSettings, name: str) -> FieldPlan:
    """The field's plan from every step-th pixel (at most ~2048 on a side) and, for the diameter,
    a full-resolution crop of at most tile x tile pixels at its centre."""
    h, w = source.shape
    step = max(1, math.ceil(max(h, w) / 2048))
    sample = source.sample(step)
    detail = None
    if settings.diameter is None:
        side = min(settings.tile, h, w)
        y0, x0 = (h - side) // 2, (w - side) // 2
        detail = source.read_rows(y0, y0 + side)[:, x0:x0 + side]
    return plan_field(sample, settings, step=step, name=name, detail=detail)


def segment_tiled(source: FieldSource, plan: FieldPlan, settings: CellSettings, writer: FieldWriter,
                  key: str, margin: int | None = None) -> list[dict]:
    """Segment `source` tile by tile, write its label image and crops through `writer`; returns the
    cells.csv rows (cell_id = label value, numbered in row-major tile order)."""
    h, w = source.shape
    t = settings.tile
    m = margin if margin is not None else int(math.ceil(3 * plan.diameter)) + 8
    m = min(m, t)
    fill = None
    rows: list[dict] = []
    next_id = 1
    # band label buffer: rows [buf_y0, buf_y0 + buf.shape[0]) of the field
    pending = np.zeros((0, w), np.uint32)
    pending_y0 = 0

    def emit(upto: int):
        """Yield full (MASK_TILE x W) strips of the pending labels below row `upto`."""
        nonlocal pending, pending_y0
        while pending_y0 + MASK_TILE <= upto or (upto >= h and pending.shape[0] > 0):
            strip = pending[:MASK_TILE]
            if strip.shape[0] < MASK_TILE:
                strip = np.pad(strip, ((0, MASK_TILE - strip.shape[0]), (0, 0)))
            pending = pending[MASK_TILE:]
            pending_y0 += MASK_TILE
            yield strip

    def strips():
        nonlocal pending, next_id, fill
        for y0 in range(0, h, t):
            y1 = min(h, y0 + t)
            ry0, ry1 = max(0, y0 - m), min(h, y1 + m)
            raw = source.read_rows(ry0, ry1)
            # grow the pending labels to cover rows up to ry1
            need = ry1 - pending_y0
            if need > pending.shape[0]:
                pending = np.concatenate([pending, np.zeros((need - pending.shape[0], w), np.uint32)])
            for x0 in range(0, w, t):
                x1 = min(w, x0 + t)
                rx0, rx1 = max(0, x0 - m), min(w, x1 + m)
                tile_raw = raw[:, rx0:rx1]
                lab = segment_signal(plan.signal(tile_raw), plan, settings)
                if lab.max() == 0:
                    continue
                tile_rows = cell_rows(lab, key, (h, w), origin=(ry0, rx0))
                keep = [r for r in tile_rows if y0 <= r["y"] < y1 and x0 <= r["x"] < x1
                        and not (settings.border == "skip" and r["edge"])]
                if not keep:
                    continue
                old = np.array([r["cell_id"] for r in keep])
                lut = np.zeros(lab.max() + 1, np.uint32)
                lut[old] = np.arange(next_id, next_id + len(keep), dtype=np.uint32)
                for r, new in zip(keep, lut[old]):
                    r["cell_id"] = int(new)
                next_id += len(keep)
                mapped = lut[lab]
                view = pending[ry0 - pending_y0:ry1 - pending_y0, rx0:rx1]
                np.copyto(view, mapped, where=(view == 0) & (mapped > 0))
                if settings.crops:
                    unit = plan.unit(tile_raw)
                    from trainer.cells.reading import to_rgb

                    rgb = to_rgb(unit, plan.channel if isinstance(plan.channel, int) else None) \
                        if unit.shape[-1] > 3 else to_rgb(unit)
                    if fill is None:
                        fill = (np.median(rgb.reshape(-1, 3), axis=0) * 255).astype(np.uint8)
                    writer.add_crops(keep, rgb, plan.diameter, settings.crop_scale, fill, origin=(ry0, rx0),
                                     labels=mapped, background=settings.background)
                rows.extend(keep)
                if len(rows) > settings.max_cells:
                    raise ValueError(f"more than {settings.max_cells:,} cells found; raise max_cells "
                                     "(--max-cells) if the field really holds that many")
            # rows above ry1 - 2m can no longer change: the next band starts writing at y1 - m
            done = h if y1 >= h else y1 - m
            for strip in emit(done):
                for xs in range(0, w, MASK_TILE):
                    tile_ = strip[:, xs:xs + MASK_TILE]
                    if tile_.shape[1] < MASK_TILE:
                        tile_ = np.pad(tile_, ((0, 0), (0, MASK_TILE - tile_.shape[1])))
                    yield tile_

    # the count of cells decides the mask dtype; uint32 keeps any count (labels < 2**32)
    writer.write_mask(strips(), shape=(h, w), n=2 ** 32 - 1, tile=MASK_TILE)
    return rows
