"""`predict` with unseen-type flags, prediction sets and proportions (issue 25), on the bundled sample."""
import csv
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from trainer.io.folders import scan_imagefolder
from trainer.models.training import TrainConfig, save_version, train
from trainer.reports.batch_predict import predict_folder, resolve_model_dir
from trainer.stats.proportions import COLUMNS
from trainer.store.registry import ModelRegistry

pytestmark = pytest.mark.slow
SAMPLE = Path(__file__).resolve().parents[3] / "scopeloop" / "sample_data" / "wbc"
CONTRACT = ["predicted_class", "confidence", "novel_type", "novelty_score", "prediction_set"]


def _unseen_type(folder: Path, n: int = 8) -> None:
    """A type no white-cell model saw: many small dark dots (platelet clumps) on a pale green field."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True)
    for i in range(n):
        img = np.full((120, 120, 3), (200, 235, 200), np.uint8)
        for _ in range(40):
            y, x = rng.integers(5, 115, 2)
            img[y - 3:y + 3, x - 3:x + 3] = (40, 20, 90)
        Image.fromarray(img).save(folder / f"Platelet_{i:02d}.png")


def test_a_type_left_out_is_flagged_and_the_files_keep_the_contract(tmp_path):
    items, classes = scan_imagefolder(SAMPLE)
    keep = [c for c in classes if c != "Basophil"]
    items = [(p, c) for p, c in items if c in keep]
    cfg = TrainConfig()
    res = train([p for p, _ in items], [c for _, c in items], keep, cfg)
    assert res.publishable is not None and res.publishable.novelty is not None
    save_version(res, cfg, ModelRegistry(tmp_path / "m" / "registry"))
    folder = tmp_path / "new"
    shutil.copytree(SAMPLE / "Neutrophil", folder / "Neutrophil")
    _unseen_type(folder / "Platelet")
    out = tmp_path / "preds.csv"
    s = predict_folder(resolve_model_dir(tmp_path / "m"), folder, out, progress=False, quality=False,
                       group_pattern=r"^(Platelet|BloodImage)")
    rows = list(csv.DictReader(out.open()))
    header = list(rows[0])
    assert all(c in header for c in CONTRACT) and "out_of_distribution" in header and "p_Neutrophil" in header
    assert {r["novel_type"] for r in rows} <= {"true", "false"}
    flagged = {k: np.mean([r["novel_type"] == "true" for r in rows if r["file"].startswith(k)])
               for k in ("Platelet", "Neutrophil")}
    assert flagged["Platelet"] >= 0.5 > flagged["Neutrophil"]
    assert all(set(r["prediction_set"].split("|")) <= set(keep) for r in rows)
    assert s["counts"]["unseen type"] == sum(r["novel_type"] == "true" for r in rows)
    with open(out.with_suffix(".proportions.csv"), newline="") as f:
        table = list(csv.DictReader(f))
    assert list(table[0]) == list(COLUMNS)
    assert {r["group"] for r in table} == {"all", "Platelet", "BloodImage"}
    assert [r["class"] for r in table if r["group"] == "all"] == keep + ["unseen type"]
    for r in table:
        assert 0 <= float(r["lower"]) <= float(r["proportion"]) <= float(r["upper"]) <= 1
    assert Path(s["proportions_plot"]).is_file()


def test_an_older_version_without_them_still_predicts_and_says_so(tmp_path):
    items = [(p, c) for p, c in scan_imagefolder(SAMPLE)[0] if c in ("Eosinophil", "Neutrophil")]
    cfg = TrainConfig(image_size=64)
    res = train([p for p, _ in items], [c for _, c in items], ["Eosinophil", "Neutrophil"], cfg)
    res.publishable = None  # as saved before issue 25
    save_version(res, cfg, ModelRegistry(tmp_path / "m" / "registry"))
    out = tmp_path / "p.csv"
    s = predict_folder(resolve_model_dir(tmp_path / "m"), SAMPLE / "Neutrophil", out, progress=False, quality=False)
    assert "retrain" in s["publishable_note"] and s["novel_type"] is None
    rows = list(csv.DictReader(out.open()))
    assert all(c in rows[0] for c in CONTRACT) and rows[0]["novel_type"] == ""
    assert next(csv.DictReader(out.with_suffix(".proportions.csv").open()))["lower"] == ""
