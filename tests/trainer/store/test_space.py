"""One embedding-space id (trainer.store.space) for the model config, the report and the refresh worker."""
from __future__ import annotations

import json
from dataclasses import asdict

import pytest

from trainer.store.space import space_id, space_id_of

READ = {"stack": "plane", "plane": 1, "timepoint": 0, "normalisation": "bit-depth", "ranges": None, "bit_depth": 12}


def test_ids_of_old_configs_do_not_change():
    # config.json dicts as earlier versions wrote them, with the ids they were cached under
    old = {"backbone": "tf_efficientnet_lite0", "image_size": 224, "channels": None}
    assert space_id_of(old) == "tf_efficientnet_lite0-224px"                   # before "features" existed
    assert space_id_of(dict(old, features="final")) == "tf_efficientnet_lite0-224px"
    assert space_id_of(dict(old, features="multiscale", channels=[0, 2, 1])) == "tf_efficientnet_lite0-224px-ch0_2_1-ms"
    default_reading = {"stack": "mip", "plane": None, "timepoint": 0, "normalisation": "per-image",
                       "ranges": None, "bit_depth": None}
    assert space_id_of(dict(old, preprocessing=default_reading, features="multiscale")) == "tf_efficientnet_lite0-224px-ms"
    assert space_id_of(dict(old, preprocessing=READ, features="multiscale")) == "tf_efficientnet_lite0-224px-z1-nb12-ms"
    assert space_id("b", 96, [1], "t2", "multiscale", "20260101-000000") == "b-96px-ch1-t2-ms-ft20260101-000000"


def test_model_config_report_and_refresh_build_the_same_id():
    from scopeloop.refresh import _space_id
    from trainer.models.model import ModelConfig
    from trainer.reports.analysis import backbone_id

    for cfg in (ModelConfig(["a", "b"], image_size=96), ModelConfig(["a"], channels=[0, 2, 1], features="multiscale"),
                ModelConfig(["a", "b"], preprocessing=READ, features="multiscale"),
                ModelConfig(["a", "b"], channels=[1], preprocessing=dict(READ, normalisation="per-dataset", bit_depth=None,
                                                                         ranges=[[100, 4000], [0, 9], [0, 9]]))):
        d = json.loads(json.dumps(asdict(cfg)))  # as read back from config.json
        assert backbone_id(d) == cfg.backbone_id == space_id_of(d) == _space_id(d, None)
    # the refresh worker's project settings: the reading tag is part of the space (a change of
    # reading settings is a new embedding cache), features default to multiscale, -ft last
    project_model = {"backbone": "tf_efficientnet_lite0", "weights": "imagenet", "image_size": 224, "channels": None,
                     "preprocessing": READ}
    assert _space_id(project_model, None) == "tf_efficientnet_lite0-224px-z1-nb12-ms"
    assert _space_id(project_model, "20261130-120000") == "tf_efficientnet_lite0-224px-z1-nb12-ms-ft20261130-120000"
    assert _space_id(dict(project_model, preprocessing=None), None) == "tf_efficientnet_lite0-224px-ms"


@pytest.mark.slow
def test_an_old_model_folder_loads_with_the_id_it_had(tmp_path):
    """A version folder written before reading settings and features existed: same id, same cache."""
    import torch

    from trainer.models.model import ScopeModel

    folder = tmp_path / "v001"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({
        "classes": ["a", "b"], "backbone": "tf_efficientnet_lite0", "weights": "imagenet", "image_size": 224,
        "channels": None, "mean": [0.5] * 3, "std": [0.5] * 3, "weights_source": "shipped"}))
    torch.save({"weight": torch.zeros(2, 1280), "bias": torch.zeros(2)}, folder / "head.pt")
    model = ScopeModel.load(folder)
    assert model.config.backbone_id == "tf_efficientnet_lite0-224px"
    assert model.config.reader.is_default
