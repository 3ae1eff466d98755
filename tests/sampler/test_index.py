import json

import numpy as np
import pytest

from sampler.index import BackboneMismatch, EmbeddingIndex


def data(n=600, d=24, seed=0):
    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return x, [f"cls{i % 3}/img_{i:04d}.tif" for i in range(n)]


def test_build_search_roundtrip(tmp_path):
    x, keys = data()
    idx = EmbeddingIndex.build(x, keys, "tf_efficientnet_lite0")
    assert idx.kind == "flat" and len(idx) == 600
    sims, rows = idx.search(x[:5], k=3)
    assert list(rows[:, 0]) == [0, 1, 2, 3, 4]
    assert np.allclose(sims[:, 0], 1, atol=1e-5)
    idx.save(tmp_path / "index")
    meta = json.loads((tmp_path / "index" / "meta.json").read_text())
    assert meta["backbone"] == "tf_efficientnet_lite0" and meta["ntotal"] == 600
    back = EmbeddingIndex.load(tmp_path / "index", backbone="tf_efficientnet_lite0")
    assert back.keys == keys and len(back) == 600
    s2, r2 = back.search(x[:5], k=3)
    assert np.array_equal(rows, r2) and np.allclose(sims, s2)
    assert back.search_keys(x[7:8], 1)[0][0][0] == keys[7]


def test_incremental_add_persists(tmp_path):
    x, keys = data()
    idx = EmbeddingIndex.build(x[:400], keys[:400], "bb")
    idx.save(tmp_path)
    idx = EmbeddingIndex.load(tmp_path)
    assert idx.add(x, keys) == 200  # the first 400 are already there
    assert idx.add(x[:10], keys[:10]) == 0
    idx.save(tmp_path)
    back = EmbeddingIndex.load(tmp_path, backbone="bb")
    assert len(back) == 600 and back.row(keys[599]) == 599
    assert back.search(x[599:600], 1)[1][0, 0] == 599


def test_backbone_change_forces_rebuild(tmp_path):
    x, keys = data()
    EmbeddingIndex.build(x, keys, "old_backbone").save(tmp_path)
    with pytest.raises(BackboneMismatch):
        EmbeddingIndex.load(tmp_path, backbone="new_backbone")
    x2 = np.random.default_rng(9).standard_normal((300, 40)).astype(np.float32)
    idx = EmbeddingIndex.load_or_build(tmp_path, x2, keys[:300], "new_backbone")
    assert idx.backbone == "new_backbone" and idx.dim == 40 and len(idx) == 300
    assert EmbeddingIndex.load(tmp_path, backbone="new_backbone").dim == 40
    # same backbone, more images: incremental
    idx = EmbeddingIndex.load_or_build(tmp_path, np.vstack([x2, x2[:5] + 1]),
                                       keys[:300] + ["new/a", "new/b", "new/c", "new/d", "new/e"], "new_backbone")
    assert len(idx) == 305


def test_approximate_index_past_threshold(tmp_path):
    x, keys = data(n=3000, d=16)
    idx = EmbeddingIndex.build(x[:1000], keys[:1000], "bb", approx_threshold=2000)
    assert idx.kind == "flat"
    idx.add(x, keys)
    assert idx.kind == "ivf" and len(idx) == 3000
    rows = idx.search(x[:200], 1)[1][:, 0]
    assert (rows == np.arange(200)).mean() > 0.95
    idx.save(tmp_path)
    back = EmbeddingIndex.load(tmp_path, backbone="bb")
    assert back.kind == "ivf" and np.array_equal(back.search(x[:50], 1)[1], idx.search(x[:50], 1)[1])
