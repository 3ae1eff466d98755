"""Fields of view end to end on a real Label Studio (issue 24): `init --cells auto` on three
fields gives one task per cell whose image is the cell in its neighbourhood, a label on a cell
trains the model (its config records how cells are cropped), `predict --cells auto` writes the
per-cell table, counts per field and group and one overlay per field, and the dataset export
writes the labeled cells with their field, position, box and the masks."""
from __future__ import annotations

import csv
import io
import json
import shutil
import uuid
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image

from scopeloop.cli import main

pytestmark = [pytest.mark.labelstudio, pytest.mark.slow]

FOV = Path(__file__).resolve().parents[2] / "scopeloop" / "sample_data" / "fov"
FIELDS = ["BloodImage_00000.jpg", "BloodImage_00009.jpg", "BloodImage_00020.jpg"]


def _fields(root: Path) -> Path:
    root.mkdir(parents=True)
    for f in FIELDS:
        shutil.copy(FOV / f, root / f)
    return root


def test_cells_as_tasks_train_predict_export(label_studio, tmp_path, monkeypatch, capsys):
    from ml_backend.labelstudio.client import LabelStudioClient
    from scopeloop.refresh import Refresher
    from trainer.store.workspace import Workspace

    monkeypatch.setenv("LOCAL_FILES_DOCUMENT_ROOT", "/")
    monkeypatch.setenv("SCOPELOOP_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("LABEL_STUDIO_URL", label_studio.url)
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", label_studio.token)
    fields = _fields(tmp_path / f"smears-{uuid.uuid4().hex[:6]}")
    args = ["init", "--images", str(fields), "--classes", "White cell,Red cell", "--no-backend", "--cells", "auto",
            "--image-size", "128"]
    assert main(args) == 0
    out = capsys.readouterr().out
    work = tmp_path / "home" / "projects" / fields.name
    project = json.loads((work / "project.json").read_text())
    with open(work / "cells" / "cells.csv", newline="") as f:
        cells = list(csv.DictReader(f))
    assert f"{len(cells)} task(s) created" in out and "cells:" in out and len(cells) >= 3 * 8
    assert Path(project["images_root"]) == (work / "cells" / "crops").resolve()
    assert Path(project["fields_root"]) == fields.resolve()
    assert project["cells"]["diameter"] > 20 and project["model"]["cells"]["background"] == "context"

    # one task per cell; its image is the context view (larger than the crop, outline drawn)
    client = LabelStudioClient(label_studio.url, label_studio.token)
    pid = project["ls_project_id"]
    tasks = {t["data"]["key"]: t for t in client.list_tasks(pid, fields="all")}
    assert len(tasks) == len(cells) and {t["data"]["field"] for t in tasks.values()} == set(FIELDS)
    key = next(k for k in tasks if k.startswith(FIELDS[0]))
    r = requests.get(label_studio.url + tasks[key]["data"]["image"],
                     headers={"Authorization": f"Token {label_studio.token}"}, timeout=10)
    assert r.status_code == 200
    shown = np.asarray(Image.open(io.BytesIO(r.content)).convert("RGB"))
    crop = np.asarray(Image.open(work / "cells" / "crops" / key))
    assert shown.shape[0] * shown.shape[1] > crop.shape[0] * crop.shape[1]
    assert ((shown == (255, 221, 0)).all(-1)).sum() > 20   # the cell's outline
    assert tasks[key]["data"]["cell_id"] == int(key[-9:-4]) and "qc" in tasks[key]["data"]

    # re-running init adds nothing and keeps the cells' keys
    assert main(args) == 0
    assert "0 task(s) created" in capsys.readouterr().out

    # labels on cells train the model: the largest cell of each field is its white cell
    largest = {f: max((c for c in cells if c["image"] == f), key=lambda c: int(c["area"])) for f in FIELDS}
    white = {c["crop"][len("crops/"):] for c in largest.values()}
    red = [k for k in sorted(tasks) if k not in white][:6]
    for k in list(white) + red:
        client.create_annotation(tasks[k]["id"], "White cell" if k in white else "Red cell", "label", "image")
    ws = Workspace(work)
    Refresher(ws, client, log=lambda *a: None).run("quick")
    version = ws.registry.current()
    assert version is not None
    cfg = json.loads((ws.registry.path(version) / "config.json").read_text())
    assert cfg["cells"]["background"] == "context" and cfg["cells"]["diameter"] == project["cells"]["diameter"]

    # predict on fields: per-cell table, counts per field and group, overlays, group plot
    preds = tmp_path / "out" / "preds.csv"
    assert main(["predict", "--input", str(fields), "--out", str(preds), "--model", str(work / "registry"),
                 "--cells", "auto", "--group-pattern", r"^(BloodImage)_"]) == 0
    assert "one row per cell" in capsys.readouterr().out
    with open(preds, newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(cells)
    for col in ("image", "cell_id", "x", "y", "bbox_x0", "bbox_y1", "area", "edge", "predicted_class", "confidence",
                "low_confidence", "quality", "field_quality", "group"):
        assert col in rows[0], col
    assert {r["image"] for r in rows} == set(FIELDS) and {r["group"] for r in rows} == {"BloodImage"}
    with open(tmp_path / "out" / "preds.image_counts.csv", newline="") as f:
        counts = list(csv.DictReader(f))
    assert len(counts) == 2 * len(FIELDS)
    for fname in FIELDS:
        mine = [c for c in counts if c["image"] == fname]
        assert sum(int(c["count"]) for c in mine) == int(mine[0]["cells"]) == sum(r["image"] == fname for r in rows)
        assert abs(sum(float(c["proportion"]) for c in mine) - 1) < 1e-3
        overlay = Image.open(tmp_path / "out" / "preds.overlays" / f"{fname}.png")
        assert overlay.size == (640, 480)
    assert (tmp_path / "out" / "preds.group_counts.csv").is_file() and (tmp_path / "out" / "preds.groups.png").is_file()

    # the dataset export: the labeled cells' crops, their field, position and box, the masks
    exp = tmp_path / "export"
    assert main(["export", "dataset", "--workdir", str(work), "--out", str(exp), "--offline"]) == 0
    with open(exp / "cells.csv", newline="") as f:
        manifest = list(csv.DictReader(f))
    assert len(manifest) == len(white) + len(red)
    assert {m["field"] for m in manifest} <= set(FIELDS) and all((exp / m["file"]).is_file() for m in manifest)
    assert all(m["bbox_x1"] and m["x"] for m in manifest)
    assert sorted(p.name for p in (exp / "masks").iterdir()) == sorted(f"{Path(f).stem}_masks.tif" for f in FIELDS)
