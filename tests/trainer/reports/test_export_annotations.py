"""The dataset export's per-task annotations, consensus label and its confidence (issue 26): fast,
on a few small synthetic images and a labels snapshot with a team (as the label sync leaves it)."""
import csv

import numpy as np
from PIL import Image

from ml_backend.labelstudio.sync import apply_consensus
from trainer.reports.export_dataset import ANNOTATION_FIELDS, export_dataset
from trainer.store.workspace import Workspace

CLASSES = ["Eosinophil", "Lymphocyte", "Neutrophil"]


def _rows(path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _snapshot(keys) -> dict:
    """Task 1: one annotator. Task 2: alice and bob agree. Task 3: alice and carol say
    Neutrophil, bob (last) says Eosinophil: the consensus is Neutrophil, not the last answer."""
    team = {1: [("alice", "Eosinophil")], 2: [("alice", "Lymphocyte"), ("bob", "Lymphocyte")],
            3: [("alice", "Neutrophil"), ("carol", "Neutrophil"), ("bob", "Eosinophil")]}
    tasks = {}
    for i, key in enumerate(keys, start=1):
        anns = [{"id": 10 * i + j, "label": lab, "annotator": who, "created_at": f"2024-05-01T10:0{j}:00",
                 "updated_at": f"2024-05-01T10:0{j}:00"} for j, (who, lab) in enumerate(team[i])]
        tasks[str(i)] = {"key": key, "label": anns[-1]["label"], "annotations": anns,
                         "disagreement": len({a["label"] for a in anns}) > 1}
    return {"cursor": "x", "project_id": 1, "tasks": tasks}


def test_export_writes_annotations_and_consensus_with_confidence(tmp_path):
    root = tmp_path / "images"
    keys = ["Eosinophil/a.png", "Lymphocyte/b.png", "Neutrophil/c.png"]
    for k in keys:
        (root / k).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((16, 16, 3), 120, np.uint8)).save(root / k)
    ws = Workspace(tmp_path / "work")
    ws.update_project(images_root=str(root), classes=CLASSES, name="team")
    snap = apply_consensus(_snapshot(keys), CLASSES)  # what sync_labels saves
    assert snap["tasks"]["3"]["label"] == "Neutrophil" and snap["tasks"]["3"]["last_label"] == "Eosinophil"
    ws.save_labels(snap)
    out = tmp_path / "export"
    export_dataset(ws, out)

    manifest = {r["task_id"]: r for r in _rows(out / "manifest.csv")}
    assert manifest["3"]["label"] == "Neutrophil" and manifest["3"]["file"].startswith("images/Neutrophil/")
    assert manifest["3"]["consensus_rule"] in ("majority", "posterior") and 0.5 < float(manifest["3"]["consensus_confidence"]) < 1
    assert manifest["2"]["consensus_rule"] == "unanimous" and float(manifest["2"]["consensus_confidence"]) > 0.5
    assert manifest["1"]["consensus_rule"] == "single" and manifest["1"]["consensus_confidence"] == ""

    anns = _rows(out / "annotations.csv")
    assert list(anns[0]) == ANNOTATION_FIELDS
    assert len(anns) == 6  # every annotation, not one per task
    three = [r for r in anns if r["task_id"] == "3"]
    assert [(r["annotator"], r["label"], r["agrees_with_consensus"]) for r in three] == [
        ("alice", "Neutrophil", "yes"), ("carol", "Neutrophil", "yes"), ("bob", "Eosinophil", "no")]
    assert {r["consensus_label"] for r in three} == {"Neutrophil"}
    assert three[0]["consensus_confidence"] == manifest["3"]["consensus_confidence"]
    readme = (out / "README.md").read_text()
    assert "annotations.csv" in readme and "several annotators: 2" in readme
