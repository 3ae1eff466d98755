"""trainer.cells.crops: the crop the model sees (context or masked) and the annotator's context view."""
from __future__ import annotations

import numpy as np
import pytest

from trainer.cells.crops import OUTLINE, context_view, cut_cell
from trainer.cells.table import cell_rows, crop_name


def _field():
    rgb = np.full((200, 300, 3), 200, np.uint8)
    labels = np.zeros((200, 300), np.uint16)
    yy, xx = np.mgrid[:200, :300]
    for cid, (cy, cx) in enumerate([(100, 100), (100, 140), (40, 260)], start=1):
        disc = (yy - cy) ** 2 + (xx - cx) ** 2 < 18 ** 2
        labels[disc] = cid
        rgb[disc] = (60 * cid, 30, 120)
    return rgb, labels


def test_masked_crop_paints_neighbours_context_keeps_them():
    rgb, labels = _field()
    row = cell_rows(labels, "f.png", labels.shape)[0]
    ctx = cut_cell(rgb, row, 80, (200, 200, 200))
    masked = cut_cell(rgb, row, 80, (200, 200, 200), labels, "masked")
    assert ctx.shape == masked.shape == (80, 80, 3)
    assert (ctx[40, 40] == masked[40, 40]).all()          # the cell itself
    neighbour = (ctx == (120, 30, 120)).all(-1)            # cell 2 in the context crop
    assert neighbour.sum() > 100 and (masked[neighbour] == 200).all()
    with pytest.raises(ValueError, match="label image"):
        cut_cell(rgb, row, 80, (0, 0, 0), None, "masked")
    with pytest.raises(ValueError, match="background"):
        cut_cell(rgb, row, 80, (0, 0, 0), labels, "blurred")


def test_context_view_outlines_only_its_cell_and_keeps_neighbours():
    rgb, labels = _field()
    rows = cell_rows(labels, "f.png", labels.shape)
    view = context_view(rgb, rows[0], labels, diameter=36)
    outline = (view == OUTLINE).all(-1)
    assert outline.sum() > 50
    ys, xs = np.nonzero(outline)
    assert xs.max() - xs.min() < 50 and ys.max() - ys.min() < 50   # one cell outlined, not its neighbour
    assert ((view == (120, 30, 120)).all(-1)).any()                   # the neighbour is in view
    boxed = context_view(rgb, rows[2], None, diameter=36)           # no label image: a box
    assert (boxed == OUTLINE).all(-1).sum() > 50


def test_crop_names_keep_the_field_name():
    assert crop_name("plate1/A01.tif", 17) == "A01_cell00017.png"
