"""The refresh worker reads with the project's reading settings (set at init), everywhere."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import tifffile

from scopeloop.refresh import Refresher
from trainer.io.errors import SkipReport
from trainer.io.settings import Preprocessing
from trainer.store.workspace import Workspace

READ = {"stack": "plane", "plane": 0, "timepoint": 0, "normalisation": "bit-depth", "ranges": None, "bit_depth": 12}


@pytest.fixture
def project(tmp_path):
    root = tmp_path / "images"
    root.mkdir()
    for i in range(3):
        tifffile.imwrite(root / f"s{i}.tif", np.full((3, 16, 16), 100 * (i + 1), np.uint16), imagej=True,
                         metadata={"axes": "ZYX"})
    ws = Workspace(tmp_path / "proj")
    ws.update_project(images_root=str(root), classes=["a", "b"], ls_project_id=1,
                      model={"backbone": "tf_efficientnet_lite0", "weights": "imagenet", "image_size": 32,
                             "channels": [0], "preprocessing": READ})
    return ws


def test_embedding_training_and_fine_tune_get_the_project_reader(project, monkeypatch):
    import trainer.models.inference
    import trainer.models.training

    r = Refresher(project, client=None, log=lambda *_: None)
    want = Preprocessing(channels=(0,), stack="plane", plane=0, normalisation="bit-depth", bit_depth=12)
    assert r.reader == want
    space, _ = r.space()
    assert space == "tf_efficientnet_lite0-32px-ch0-z0-nb12-ms"  # a change of reading is a new space

    seen = {}

    def fake_run_model(net, paths, size, mean, std, channels=None, **kw):
        seen["reader"] = channels
        return SimpleNamespace(embeddings=np.ones((len(paths), 4), np.float32), rows=np.arange(len(paths)),
                               skipped=SkipReport())

    monkeypatch.setattr(trainer.models.inference, "run_model", fake_run_model)
    monkeypatch.setattr(Refresher, "backbone", lambda self, w: (None, SimpleNamespace(mean=[0.5] * 3, std=[0.5] * 3), "src"))
    keys, emb = r.embed_all(["s0.tif", "s1.tif", "s2.tif"])
    assert seen["reader"] == want and emb.shape == (3, 4)
    assert (project.root / "embeddings" / space / "keys.json").is_file()

    cfg = r._model_config(None)  # the published model carries the settings: /predict, export, predict read alike
    assert cfg.reader == want and cfg.backbone_id == "tf_efficientnet_lite0-32px-ch0-z0-nb12-ms"

    class Stop(Exception):
        pass

    def fake_train(paths, labels, classes, config, **kw):
        seen["train"] = config
        raise Stop

    monkeypatch.setattr(trainer.models.training, "train", fake_train)
    with pytest.raises(Stop):
        r.deep_finetune({"s0.tif": "a", "s1.tif": "b", "s2.tif": "a"})
    assert seen["train"].preprocessing == READ and seen["train"].channels == [0]
