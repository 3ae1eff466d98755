"""Safe promotion on real embeddings of the dev set (the Label Studio side is tested e2e)."""
import json

import numpy as np
import pytest

from scopeloop.refresh import Refresher, fixed_split, is_validation
from trainer.images import image_key, scan_imagefolder
from trainer.workspace import Workspace

pytestmark = pytest.mark.slow
from tests.dev_data import BCCD as _DEV_DATA  # noqa: E402
BCCD = _DEV_DATA


@pytest.fixture
def refresher(tmp_path):
    items, classes = scan_imagefolder(BCCD)
    ws = Workspace(tmp_path / "proj")
    ws.update_project(images_root=str(BCCD), classes=classes, ls_project_id=1,
                      model={"backbone": "tf_efficientnet_lite0", "weights": "imagenet", "image_size": 64, "channels": None})
    r = Refresher(ws, client=None, log=lambda *_: None)
    keys = [image_key(p, BCCD) for p, _ in items]
    labels = {image_key(p, BCCD): c for p, c in items}
    all_keys, emb = r.embed_all(keys)
    return r, ws, all_keys, emb, labels, classes


def test_fixed_split_is_stable_as_labels_grow():
    keys = [f"img_{i}.png" for i in range(200)]
    y = [i % 2 for i in range(200)]
    _, val_small = fixed_split(keys[:100], y[:100])
    _, val_big = fixed_split(keys, y)
    assert set(keys[i] for i in val_small) <= set(keys[i] for i in val_big)
    assert all(is_validation(keys[i]) for i in val_big) and 20 <= len(val_big) <= 60


def test_worse_model_is_held_back_and_current_keeps_serving(refresher):
    r, ws, keys, emb, labels, classes = refresher
    row = {k: i for i, k in enumerate(keys)}
    lab = sorted(labels)
    y = [classes.index(labels[k]) for k in lab]
    X = emb[[row[k] for k in lab]]
    v1, probs1, gate1 = r._train_and_gate("quick", lab, y, X, emb)
    assert gate1["promoted"] and gate1["gate"] == "first model" and ws.registry.current() == v1
    # an annotator mixes up the labels of the training images: the candidate must not replace
    # the good model (validation images keep their labels, both models are scored on them)
    rng = np.random.default_rng(0)
    tr, _ = fixed_split(lab, y)
    y_bad = list(y)
    for i, j in zip(tr, rng.permutation(tr)):
        y_bad[i] = y[j]
    v2, probs2, gate2 = r._train_and_gate("quick", lab, y_bad, X, emb)
    assert not gate2["promoted"] and "held back" in gate2["gate"]
    assert ws.registry.current() == v1 == v2
    assert np.allclose(probs2, probs1, atol=1e-5)  # still the current model's predictions
    held = ws.registry.versions()[-1]
    assert held != v1
    metrics = json.loads((ws.registry.path(held) / "metrics.json").read_text())
    assert metrics["gate"]["promoted"] is False and "held back" in metrics["gate"]["reason"]
    # the same good labels again: promoted (within tolerance)
    v3, _, gate3 = r._train_and_gate("quick", lab, y, X, emb)
    assert gate3["promoted"] and ws.registry.current() == v3 != v1
