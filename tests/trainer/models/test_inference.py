import csv

import numpy as np
import pytest

from trainer.io.folders import image_key, list_images, scan_imagefolder
from trainer.models.inference import embed_paths, run_model
from trainer.models.training import TrainConfig, save_version, train
from trainer.reports.batch_predict import predict_folder, resolve_model_dir
from trainer.store.embeddings import EmbeddingCache
from trainer.store.registry import ModelRegistry

pytestmark = pytest.mark.slow


@pytest.fixture
def trained(small_bccd, tmp_path):
    items, classes = scan_imagefolder(small_bccd)
    cfg = TrainConfig(image_size=64)
    res = train([p for p, _ in items], [c for _, c in items], classes, cfg)
    reg = ModelRegistry(tmp_path / "models" / "registry")
    save_version(res, cfg, reg)
    return tmp_path / "models"


def test_predict_folder_writes_csv_and_arrays_and_skips_bad_files(trained, small_bccd, tmp_path):
    (small_bccd / "Monocyte" / "broken.tif").write_bytes(b"II*\x00 not really")
    out = tmp_path / "pred" / "predictions.csv"
    summary = predict_folder(resolve_model_dir(trained), small_bccd, out, progress=False)
    rows = list(csv.DictReader(open(out)))
    assert len(rows) == summary["predicted"] == 40
    assert set(rows[0]) >= {"file", "predicted_class", "confidence", "low_confidence", "p_Monocyte"}
    assert all(abs(sum(float(r[k]) for k in r if k.startswith("p_")) - 1) < 0.01 for r in rows)
    agree = np.mean([r["predicted_class"] == r["file"].split("/")[0] for r in rows])
    assert agree > 0.6  # images it was trained on
    arrays = np.load(out.with_suffix(".npz"))
    # the multiscale embedding (trainer.models.features): 192 + 320 + 1280 for tf_efficientnet_lite0
    assert arrays["embeddings"].shape == (40, 1792) and arrays["probs"].shape == (40, 4)
    assert "broken.tif" in out.with_suffix(".skipped.json").read_text()


def test_resolve_model_dir_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither a model folder"):
        resolve_model_dir(tmp_path)


def test_embedding_cache_embeds_only_new_images(small_bccd, tmp_path):
    paths = list_images(small_bccd)
    keys = [image_key(p, small_bccd) for p in paths]
    calls = []

    def embed(ps):
        calls.append(len(ps))
        from trainer.models.backbone import create_backbone
        net, pre, _ = create_backbone()
        return run_model(net, ps, 64, pre.mean, pre.std)

    cache = EmbeddingCache(tmp_path / "emb")
    k1, e1, _ = cache.update(keys[:30], paths[:30], embed)
    k2, e2, _ = cache.update(keys, paths, embed)
    assert calls == [30, 10] and k2[:30] == k1 and e2.shape == (40, 1280)
    assert np.allclose(e2[:30], e1)
    e3, rows, skipped = embed_paths(paths[:5], image_size=64)
    assert e3.shape == (5, 1280) and len(skipped) == 0
