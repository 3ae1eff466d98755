"""Image quality (issue 14) in the HTML report and in the dataset export, on the generated QC set."""
import csv
import json
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest

from label_config import UNUSABLE
from trainer.io.folders import list_images
from trainer.quality.project import project_qc
from trainer.reports.export_dataset import export_dataset
from trainer.reports.html import build_report
from trainer.store.workspace import Workspace

QC = Path(__file__).resolve().parents[2] / "data" / "qc"
LABELS = {"ok_00.png": "round", "ok_01.png": "long", "ok_02.png": "round", "ok_04.png": "long",
          "out_of_focus_01.png": "round",  # flagged, labeled anyway: used as labeled
          "blank_01.png": UNUSABLE}        # the annotators' answer "unusable image"


@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> Workspace:
    w = Workspace(tmp_path_factory.mktemp("qcproj") / "work")
    w.update_project(images_root=str(QC), classes=["round", "long"], name="QC set")
    keys = [p.name for p in list_images(QC)]
    project_qc(w.root, QC, keys, log=lambda *_: None)
    tasks = {}
    for i, k in enumerate(keys, 1):
        lab = LABELS.get(k)
        anns = [{"id": i, "label": lab, "annotator": "ann", "created_at": "2024-05-01T10:00:00",
                 "updated_at": "2024-05-01T10:00:00"}] if lab else []
        tasks[str(i)] = {"key": k, "label": lab, "annotations": anns, "disagreement": False}
    w.save_labels({"cursor": "x", "project_id": 1, "tasks": tasks})
    return w


class _Page(HTMLParser):
    def __init__(self):
        super().__init__()
        self.ids, self.cards, self._row, self.rows = set(), {}, None, {}

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if "id" in a:
            self.ids.add(a["id"])
        if tag == "tr" and a.get("id", "").startswith("qc-count-"):
            self._row = a["id"][9:]
            self.rows[self._row] = []
        if tag == "div" and "card" in a.get("class", ""):
            kind = a["class"].split()[-1]
            self.cards[kind] = self.cards.get(kind, 0) + 1
        if tag == "img" and self.cards:
            assert a["src"].startswith("data:image/jpeg;base64,")

    def handle_endtag(self, tag):
        if tag == "tr":
            self._row = None

    def handle_data(self, data):
        if self._row is not None and data.strip():
            self.rows[self._row].append(data.strip())


def test_report_has_an_image_quality_section_with_counts_and_a_montage(ws, tmp_path):
    s = build_report(ws, tmp_path / "r.html")
    assert "image-quality" in s["sections"]
    qs = s["image_quality"]
    assert qs["images"] == 21 and qs["counts"]["ok"] == 16 and qs["unusable"] == 1 and qs["flagged_labeled"] == 1
    page = _Page()
    text = (tmp_path / "r.html").read_text(encoding="utf-8")
    page.feed(text)
    assert {"image-quality", "table-image-quality", "qc-montage"} <= page.ids
    # counts per verdict with n and share
    assert page.rows["ok"][:3] == ["ok", "16", "76.2 %"]
    for v in ("blank", "out_of_focus", "saturated", "too_dark", "duplicate"):
        assert page.rows[v][:2] == [v, "1"], page.rows
        assert f"qc-montage-{v}" in page.ids and page.cards[f"qc-{v}"] == 1
    assert page.cards["qc-ok"] == 6  # a montage row: at most 6 examples per verdict
    assert "unusual" not in page.rows  # verdicts nobody got are not listed
    # each example is captioned with its deciding score
    assert re.search(r"blank_01\.png</b><br>structure [0-9.e-]+ &lt; 0\.004", text)
    assert "1 flagged image(s) were labeled anyway" in text and "unusable image</b> for 1 image" in text


def test_export_lists_verdicts_and_can_leave_flagged_images_out(ws, tmp_path):
    s = export_dataset(ws, tmp_path / "all", val_fraction=0, test_fraction=0)
    rows = {r["key"]: r for r in csv.DictReader(open(tmp_path / "all" / "manifest.csv", newline=""))}
    # labeled images are exported whatever their verdict, with it in the manifest
    assert set(rows) == {k for k, v in LABELS.items() if v != UNUSABLE}
    assert rows["out_of_focus_01.png"]["qc_verdict"] == "out_of_focus" and rows["out_of_focus_01.png"]["label"] == "round"
    assert rows["out_of_focus_01.png"]["qc_reason"].startswith("defocus_px ")
    assert rows["ok_00.png"]["qc_verdict"] == "ok" and rows["ok_00.png"]["qc_reason"] == ""
    # the "unusable" answer is never a class: listed as such, no folder for it
    left = {x["key"]: x["reason"] for x in s["left_out"]}
    assert left == {"blank_01.png": f"answered '{UNUSABLE}' by an annotator (not a class, not exported)"}
    assert json.loads((tmp_path / "all" / "label_map.json").read_text()) == {"0": "round", "1": "long"}
    assert sorted(p.name for p in (tmp_path / "all" / "images").iterdir()) == ["long", "round"]
    assert s["image_quality"] == {"judged": True, "exclude_flagged": False, "exported": {"ok": 4, "out_of_focus": 1},
                                  "unusable": 1, "flagged_left_out": 0}
    assert "images annotators answered 'unusable': 1" in (tmp_path / "all" / "README.md").read_text()
    # --exclude-flagged: the flagged one is left out by name, with its verdict
    s2 = export_dataset(ws, tmp_path / "clean", val_fraction=0, test_fraction=0, exclude_flagged=True)
    left2 = {x["key"]: x["reason"] for x in s2["left_out"]}
    assert s2["exported"] == 4 and left2["out_of_focus_01.png"].startswith("image quality: out_of_focus (defocus_px ")
    assert s2["image_quality"]["flagged_left_out"] == 1


def test_export_cli_option(ws, tmp_path, capsys):
    from scopeloop.cli import main

    assert main(["export", "dataset", "--workdir", str(ws.root), "--offline", "--out", str(tmp_path / "e"),
                 "--val-fraction", "0", "--test-fraction", "0", "--exclude-flagged"]) == 0
    out = capsys.readouterr().out
    assert "4 labeled images exported" in out and "image quality: out_of_focus" in out
