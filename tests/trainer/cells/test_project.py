"""trainer.cells.project: fields of view as a labeling project (keys, context views, per-field QC)."""
from __future__ import annotations

import numpy as np
import tifffile
from PIL import Image

from trainer.cells import CellSettings
from trainer.cells.project import cell_verdicts, prepare_cells, settings_from_record, settings_record, task_fields


def test_prepare_cells_keys_are_crops_with_context_views(field_dir, synth, tmp_path):
    tifffile.imwrite(field_dir / "b.tif", synth.image)
    rep, index = prepare_cells(field_dir, tmp_path / "cells", tmp_path / "previews", CellSettings(diameter=19))
    assert len(index) == rep.cells > 0 and {r["image"] for r in index.values()} == {"a.tif", "b.tif"}
    for key, row in index.items():
        assert key.startswith(row["image"] + "/") and key.endswith(f"_cell{int(row['cell_id']):05d}.png")
        crop = Image.open(tmp_path / "cells" / "crops" / key)
        view = Image.open(tmp_path / "previews" / (key + ".png"))
        assert max(view.size) > crop.size[0]        # the annotator sees more than the crop
    fields = task_fields(next(iter(index.values())))
    assert set(fields) == {"field", "cell_id", "cell_x", "cell_y", "cell_box", "cell_area", "cell_edge"}
    rec = settings_record(CellSettings(diameter=19), rep, "auto")
    assert rec["diameter"] == 19 and rec["background"] == "context" and rec["mode"] == "auto"
    again = settings_from_record(rec, border="skip")
    assert again.border == "skip" and again.diameter == 19


def test_a_flagged_field_marks_its_cells():
    index = {"a.tif/a_cell00001.png": {"image": "a.tif"}, "b.tif/b_cell00001.png": {"image": "b.tif"}}
    v = cell_verdicts(index, {"a.tif": {"verdict": "out_of_focus", "reason": "defocus 3"},
                              "b.tif": {"verdict": "duplicate", "reason": "x"}})
    assert v["a.tif/a_cell00001.png"]["verdict"] == "out_of_focus" and "field a.tif" in v["a.tif/a_cell00001.png"]["reason"]
    assert v["b.tif/b_cell00001.png"]["verdict"] == "ok"   # a field's duplicate verdict says nothing of a cell


def test_masked_background_setting_reaches_the_crops(field_dir, tmp_path):
    _, index = prepare_cells(field_dir, tmp_path / "cells", tmp_path / "previews",
                             CellSettings(diameter=19, background="masked"))
    crops = [np.asarray(Image.open(tmp_path / "cells" / "crops" / k)) for k in list(index)[:5]]
    assert all((c[0, 0] == c[0, -1]).all() for c in crops)   # corners painted with the fill colour
