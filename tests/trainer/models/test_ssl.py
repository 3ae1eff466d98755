"""Self-supervised adaptation (trainer.models.ssl): runs on CPU, changes the backbone and its space."""
import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from trainer.io.folders import image_key, scan_imagefolder
from trainer.models.backbone import create_backbone
from trainer.models.ssl import SSLConfig, adapt, augment_view, save_backbone

SAMPLE = Path(__file__).resolve().parents[3] / "scopeloop" / "sample_data" / "wbc"


def test_views_keep_shape_and_differ():
    x = torch.rand(3, 32, 32)
    a = augment_view(x, random.Random(0), 0.6)
    b = augment_view(x, random.Random(1), 0.6)
    assert a.shape == x.shape and not torch.allclose(a, b)


def test_one_short_epoch_on_cpu_changes_the_embedding(tmp_path):
    items, _ = scan_imagefolder(SAMPLE)
    paths = [p for p, _ in items][:16]
    net, pre, _ = create_backbone(features="multiscale")
    before = {k: v.clone() for k, v in net.state_dict().items()}
    res = adapt(net, paths, 64, pre.mean, pre.std, config=SSLConfig(epochs=1, batch_size=8, device="cpu"),
                log=lambda *_: None)
    assert len(res.history) == 1 and np.isfinite(res.history[0]["loss"]) and res.history[0]["images"] == 16
    assert res.images_per_second > 0
    changed = [k for k, v in net.state_dict().items() if v.dtype.is_floating_point and not torch.equal(v, before[k])]
    assert changed, "the backbone did not learn anything"
    path = save_backbone(net, tmp_path)
    again, _, source = create_backbone(weights=str(path), features="multiscale")
    imagenet, _, _ = create_backbone(features="multiscale")
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(again.eval()(x), net.eval()(x), atol=1e-5)
        assert not torch.allclose(again(x), imagenet.eval()(x), atol=1e-3)


@pytest.mark.slow
def test_deep_refresh_with_ssl_makes_a_new_embedding_space(tmp_path, monkeypatch):
    from scopeloop.refresh import Refresher
    from trainer.store.workspace import Workspace

    items, classes = scan_imagefolder(SAMPLE)
    ws = Workspace(tmp_path / "proj")
    ws.update_project(images_root=str(SAMPLE), classes=classes, ls_project_id=1,
                      model={"backbone": "tf_efficientnet_lite0", "weights": "imagenet", "image_size": 64, "channels": None})
    r = Refresher(ws, client=None, device="cpu", log=lambda *_: None)
    space_before, _ = r.space()
    labels = {image_key(p, SAMPLE): c for p, c in items}
    monkeypatch.setenv("SCOPELOOP_SSL_EPOCHS", "1")
    monkeypatch.setenv("SCOPELOOP_DEEP_EPOCHS", "1")
    r.deep_finetune(labels, sorted(labels))
    space_after, weights = r.space()
    assert space_after != space_before and weights is not None and weights.is_file()
    assert ws.project["last_ssl"]["epochs"] == 1 and ws.project["last_ssl"]["images"] == 51
    # 51 labels: the adapted backbone is the new space itself (no supervised fine-tune on top), and
    # since it learned from no label, every label may judge it
    assert weights.name.startswith("backbone-ssl-") and ws.project["last_deep"]["ssl_only"]
    assert json.loads(weights.with_suffix(".keys.json").read_text()) == []
    assert "-ms" in space_before  # the multiscale embedding is the default for a new project
    # no label yet (the first nightly after init): the space adapts all the same
    ws.update_project(finetuned_backbone=None, finetuned_version=None)
    r.deep_finetune({}, sorted(labels))
    assert r.space()[0] not in (space_before, space_after) and ws.project["last_deep"] == {"labels": 0, "ssl_only": True}


def test_ssl_runs_by_default_on_a_gpu_worker_only(tmp_path, monkeypatch):
    from scopeloop.loop.deep import SSL_EPOCHS_GPU
    from scopeloop.refresh import Refresher
    from trainer.store.workspace import Workspace

    ws = Workspace(tmp_path / "proj")
    ws.update_project(images_root=str(SAMPLE), classes=["a", "b"], ls_project_id=1,
                      model={"backbone": "tf_efficientnet_lite0", "weights": "imagenet", "image_size": 64})
    monkeypatch.delenv("SCOPELOOP_SSL_EPOCHS", raising=False)
    cpu = Refresher(ws, client=None, device="cpu", log=lambda *_: None)
    gpu = Refresher(ws, client=None, device="cuda", log=lambda *_: None)  # only its device type is read
    assert cpu.ssl_epochs() == 0 and gpu.ssl_epochs() == SSL_EPOCHS_GPU > 0
    monkeypatch.setenv("SCOPELOOP_SSL_EPOCHS", "3")
    assert cpu.ssl_epochs() == 3
    monkeypatch.setenv("SCOPELOOP_SSL_EPOCHS", "0")
    assert gpu.ssl_epochs() == 0
    # a GPU worker without the 'ssl' extra: skipped with a message that says how to install it
    monkeypatch.setenv("SCOPELOOP_SSL_EPOCHS", "auto")
    said = []
    gpu.log = said.append
    monkeypatch.setattr("importlib.util.find_spec", lambda name, *a: None if name == "lightly" else object())
    assert gpu.ssl_epochs() == 0 and "scopeloop[ssl]" in said[0]
