import csv
import json

import numpy as np
import pytest
import tifffile
from PIL import Image

from trainer.cells import CellInputError, CellSettings, find_cells
from trainer.cells.importers import points_to_labels, read_label_image, read_points_csv


def _rows(out):
    return list(csv.DictReader(open(out / "cells.csv")))


@pytest.mark.parametrize("name", ["a_cp_masks.png", "a_seg.npy", "a.tif", "a_masks.tif"])
def test_label_images_imported(field_dir, tmp_path, synth, name):
    masks = tmp_path / "masks"
    masks.mkdir()
    lab = synth.labels.astype(np.uint16)
    if name.endswith(".png"):
        Image.fromarray(lab).save(masks / name)
    elif name.endswith(".npy"):
        np.save(masks / name, {"masks": lab, "outlines": None}, allow_pickle=True)
    else:
        tifffile.imwrite(masks / name, lab)
    out = tmp_path / "out"
    rep = find_cells(field_dir, out, masks=masks)
    rows = _rows(out)
    assert rep.cells == len(rows) == synth.labels.max()
    assert {r["source"] for r in rows} == {"masks"}
    assert np.array_equal(tifffile.imread(out / "masks" / "a_masks.tif"), lab)


def test_cellpose_masks_next_to_images_are_not_fields(field_dir, tmp_path, synth):
    Image.fromarray(synth.labels.astype(np.uint16)).save(field_dir / "a_cp_masks.png")
    rep = find_cells(field_dir, tmp_path / "out", masks=field_dir)
    assert list(rep.fields) == ["a.tif"]


def test_geojson_detections(field_dir, tmp_path):
    masks = tmp_path / "masks"
    masks.mkdir()
    sq = lambda x, y, s: [[[x, y], [x + s, y], [x + s, y + s], [x, y + s], [x, y]]]
    feats = [{"type": "Feature", "geometry": {"type": "Polygon", "coordinates": sq(10, 10, 20)},
              "properties": {"objectType": "detection", "classification": {"name": "Tumor"}}},
             {"type": "Feature", "geometry": {"type": "MultiPolygon", "coordinates": [sq(100, 50, 30)]},
              "properties": {"objectType": "cell"}},
             {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": sq(0, 0, 300)},
              "properties": {"objectType": "annotation"}}]
    (masks / "a.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": feats}))
    out = tmp_path / "out"
    find_cells(field_dir, out, masks=masks)
    rows = _rows(out)
    assert [r["label"] for r in rows] == ["Tumor", ""] and {r["source"] for r in rows} == {"geojson"}
    assert abs(float(rows[1]["x"]) - 115) < 1


def test_points_and_boxes(field_dir, tmp_path):
    pts = tmp_path / "p.csv"
    pts.write_text("image,x,y,bbox_x0,bbox_y0,bbox_x1,bbox_y1,label\n"
                   "a.tif,50,60,,,,,B\n"
                   "a.tif,200,100,180,80,220,120,T\n"
                   "other.tif,5,5,,,,,B\n")
    out = tmp_path / "out"
    rep = find_cells(field_dir, out, CellSettings(diameter=20), points=pts)
    rows = _rows(out)
    assert [(float(r["x"]), float(r["y"]), r["label"]) for r in rows] == [(50, 60, "B"), (200, 100, "T")]
    assert "other.tif" in rep.notes[0] and "relative to --images" in rep.notes[0]


def test_points_outside_the_image_refuse_that_field(field_dir, tmp_path):
    pts = tmp_path / "p.csv"
    pts.write_text("image,x,y\na.tif,5000,10\n")
    rep = find_cells(field_dir, tmp_path / "out", CellSettings(diameter=20), points=pts)
    assert not rep.fields and "outside its 384 x 384 pixels" in rep.errors["a.tif"]
    assert not (tmp_path / "out" / "crops" / "a.tif").exists()


def test_mask_size_mismatch_is_one_sentence(field_dir, tmp_path):
    masks = tmp_path / "masks"
    masks.mkdir()
    tifffile.imwrite(masks / "a.tif", np.ones((100, 120), np.uint16))
    rep = find_cells(field_dir, tmp_path / "out", masks=masks)
    msg = rep.errors["a.tif"]
    assert "120 x 100" in msg and "384 x 384" in msg and "same" in msg and msg.count(".") <= 3


def test_label_image_with_70000_objects(tmp_path):
    lab = np.arange(1, 70_001, dtype=np.uint32).reshape(280, 250)
    tifffile.imwrite(tmp_path / "m.tif", lab)
    with pytest.raises(CellInputError, match="intensity image"):
        read_label_image(tmp_path / "m.tif", (280, 250), max_cells=200_000)
    with pytest.raises(CellInputError, match="limit of 50,000"):
        read_label_image(tmp_path / "m.tif", (280, 250), max_cells=50_000)
    big = np.kron(np.arange(1, 70_001, dtype=np.uint32).reshape(280, 250), np.ones((4, 4), np.uint32))
    tifffile.imwrite(tmp_path / "big.tif", big)
    assert read_label_image(tmp_path / "big.tif", big.shape, max_cells=200_000).max() == 70_000


def test_points_csv_needs_columns(tmp_path):
    p = tmp_path / "p.csv"
    p.write_text("file,col,row\n")
    with pytest.raises(CellInputError, match="image,x,y"):
        read_points_csv(p, ["a.tif"])


def test_points_to_labels_small_on_top():
    lab = points_to_labels([{"x": 50, "y": 50, "box": (0, 0, 100, 100), "label": ""},
                            {"x": 50, "y": 50, "box": None, "label": ""}], (120, 120), 10, "p.csv", "a")
    assert lab[50, 50] == 2 and lab[20, 50] == 1
