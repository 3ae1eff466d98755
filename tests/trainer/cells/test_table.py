import csv

import numpy as np
import tifffile
from PIL import Image

from trainer.cells import COLUMNS, CellSettings, find_cells
from trainer.cells.synthetic import score


def test_cells_csv_contract(field_dir, tmp_path, synth):
    out = tmp_path / "out"
    rep = find_cells(field_dir, out)
    rows = list(csv.DictReader(open(out / "cells.csv")))
    assert list(rows[0]) == COLUMNS
    assert rep.cells == len(rows) == synth.labels.max()
    lab = tifffile.imread(out / "masks" / "a_masks.tif")
    assert lab.dtype == np.uint16 and score(synth.labels, lab.astype(int))["recall"] == 1.0
    for r in rows:
        assert r["image"] == "a.tif" and r["edge"] in ("true", "false")
        x, y, cid = float(r["x"]), float(r["y"]), int(r["cell_id"])
        assert int(r["bbox_x0"]) <= x < int(r["bbox_x1"]) and int(r["bbox_y0"]) <= y < int(r["bbox_y1"])
        assert int(r["area"]) == (lab == cid).sum()
        assert lab[int(round(y)), int(round(x))] == cid or int(r["area"]) < 400
        crop = Image.open(out / r["crop"])
        assert crop.size[0] == crop.size[1] >= 2 * rep.diameter - 1
    assert not (out / ".tmp").exists()


def test_bad_field_reported_rest_goes_on(field_dir, tmp_path):
    (field_dir / "broken.tif").write_bytes(b"not a tiff")
    blank = np.full((128, 128), 500, np.uint16)
    tifffile.imwrite(field_dir / "blank.tif", blank)
    out = tmp_path / "out"
    rep = find_cells(field_dir, out, CellSettings(diameter=18))
    assert list(rep.fields) == ["a.tif"]
    assert "broken.tif" in rep.errors["broken.tif"]
    assert "blank.tif" in rep.empty["blank.tif"]
    assert not (out / "crops" / "blank.tif").exists() and not (out / "masks" / "blank_masks.tif").exists()
    assert not (out / "crops" / "broken.tif").exists()
