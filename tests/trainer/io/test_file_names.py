"""File names a file system allows but UTF-8 text does not (or URLs mangle): batch prediction
writes every one of them to CSV/JSON, with the documented \\xNN escape for non-UTF-8 bytes."""
import csv
import json
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from trainer.io.folders import path_for_key
from trainer.models.training import TrainConfig, save_version, train
from trainer.reports.batch_predict import predict_folder
from trainer.store.registry import ModelRegistry

pytestmark = pytest.mark.slow

NAMES = ["serum 10%FBS A1.png", "x%20y.png", "a+b #1?.png", "細胞.png", os.fsdecode(b"cell_\xe9\xff.png")]


def _img(kind: int, i: int) -> Image.Image:
    rng = np.random.default_rng(i + 100 * kind)
    a = rng.integers(0, 40, (48, 48, 3)).astype(np.uint8)
    if kind:
        a[12:36, 12:36] = 220  # a bright square: class 1
    return Image.fromarray(a)


def test_predict_writes_every_name_losslessly(tmp_path):
    data = tmp_path / "data"
    for kind, cls in enumerate(["dark", "square"]):
        (data / cls).mkdir(parents=True)
        for i in range(6):
            _img(kind, i).save(data / cls / f"{i}.png")
    paths = sorted(data.rglob("*.png"))
    labels = [p.parent.name for p in paths]
    cfg = TrainConfig(image_size=32)
    res = train(paths, labels, ["dark", "square"], cfg)
    reg = ModelRegistry(tmp_path / "registry")
    model_dir = reg.path(save_version(res, cfg, reg))
    new = tmp_path / "new"
    new.mkdir()
    for i, name in enumerate(NAMES):
        _img(i % 2, 50 + i).save(os.path.join(os.fsencode(new), os.fsencode(name)), format="PNG")
    (new / os.fsdecode(b"broken_\xff.png")).write_bytes(b"x")  # unreadable, non-UTF-8: reported
    out = predict_folder(model_dir, new, tmp_path / "pred.csv", progress=False, plot=False)
    assert out["predicted"] == len(NAMES) and len(out["skipped"]) == 1
    with open(tmp_path / "pred.csv", encoding="utf-8", newline="") as f:
        files = [r["file"] for r in csv.DictReader(f)]
    assert sorted(files) == sorted(NAMES[:4] + ["cell_\\xe9\\xff.png"])
    for key in files:  # every written name leads back to its file
        assert path_for_key(new, key).is_file(), key
    skipped = json.loads((tmp_path / "pred.skipped.json").read_text(encoding="utf-8"))
    assert skipped["skipped"][0]["path"].endswith("broken_\\xff.png")
    shutil.rmtree(new)
