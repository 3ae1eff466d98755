"""ml_backend.predictor with a real tiny model (64 px head on tf_efficientnet_lite0) and real
BCCD images. The trained workspace is built once per session (`trained_base`); each test gets
its own copy (`project`) so it may delete images or switch versions.

The fixtures here are shared with test_app.py (imported there).
"""
from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from tests.dev_data import BCCD as _DEV_DATA  # noqa: E402
from trainer.store.workspace import Workspace

BCCD = _DEV_DATA
CLASSES = ["Eosinophil", "Lymphocyte", "Neutrophil"]
PER_CLASS = 5
N_CACHED = 10          # the first 10 keys are in the prediction cache; the other 5 are not
LS_PROJECT_ID = 7

_BUILT: dict = {}      # one trained workspace per session, even when two modules ask for it


def _build(base: Path) -> dict:
    from trainer.models.inference import run_model
    from trainer.models.training import TrainConfig, save_version, train

    if not BCCD.is_dir():
        pytest.fail(f"dev data set missing at {BCCD}")
    images = base / "images"
    keys = []
    for c in CLASSES:
        (images / c).mkdir(parents=True)
        for src in sorted((BCCD / c).glob("*.jpg"))[:PER_CLASS]:
            shutil.copy(src, images / c / src.name)
            keys.append(f"{c}/{src.name}")
    labels = [k.split("/")[0] for k in keys]
    paths = [images / k for k in keys]
    cfg = TrainConfig(image_size=64, mode="head", device="cpu")
    res = train(paths, labels, CLASSES, cfg)
    ws = Workspace(base / "ws")
    ws.update_project(images_root=str(images), ls_project_id=LS_PROJECT_ID, classes=CLASSES)
    version = save_version(res, cfg, ws.registry, source="test")
    m = res.model.config
    inf = run_model(res.model.net, paths, m.image_size, m.mean, m.std, m.channels, device=None, num_workers=0)
    probs = inf.probs[np.argsort(inf.rows)]
    # the cache holds the first N_CACHED keys; ranks reversed so the test can tell them apart
    ws.save_predictions(version, keys[:N_CACHED], probs[:N_CACHED], CLASSES,
                        rank=np.arange(N_CACHED)[::-1].copy())
    return {"ws": ws.root, "images": images, "keys": keys, "probs": probs, "version": version}


@pytest.fixture(scope="session")
def trained_base(tmp_path_factory) -> dict:
    if not _BUILT:
        t0 = time.time()
        _BUILT.update(_build(tmp_path_factory.mktemp("trained")))
        _BUILT["seconds"] = time.time() - t0
    return _BUILT


@pytest.fixture
def project(trained_base, tmp_path) -> dict:
    """A fresh copy: <tmp>/home/projects/wbc (ls_project_id 7) with its own images folder."""
    home = tmp_path / "home"
    root = home / "projects" / "wbc"
    shutil.copytree(trained_base["ws"], root)
    images = tmp_path / "images"
    shutil.copytree(trained_base["images"], images)
    ws = Workspace(root)
    ws.update_project(images_root=str(images))
    return dict(trained_base, home=home, ws=ws, images=images)


def lite_config(classes=CLASSES, from_name="label", to_name="image") -> str:
    from label_config import build_config
    return build_config(list(classes), from_name=from_name, to_name=to_name)


def task(i: int, key: str | None, image: str | None = None, project: int = LS_PROJECT_ID) -> dict:
    """A task as LS 1.23.2 serializes it for /predict (TaskSimpleSerializer)."""
    data = {"image": image if image is not None else f"/data/local-files/?d=images/{key}"}
    if key is not None:
        data["key"] = key
    return {"id": i, "data": data, "meta": {}, "created_at": "2026-11-22T21:00:00.000000Z",
            "updated_at": "2026-11-22T21:00:00.000000Z", "is_labeled": False, "overlap": 1,
            "inner_id": i, "total_annotations": 0, "cancelled_annotations": 0,
            "total_predictions": 0, "comment_count": 0, "unresolved_comment_count": 0,
            "last_comment_updated_at": None, "project": project, "updated_by": None,
            "file_upload": None, "comment_authors": [], "annotations": [], "predictions": []}


def choice(item: dict) -> str:
    return item["result"][0]["value"]["choices"][0]


# ------------------------------------------------------------------------- tests

def test_cached_and_computed_predictions(project):
    from ml_backend.predictor import Predictor

    keys, probs = project["keys"], project["probs"]
    p = Predictor(project["ws"])
    tasks = [task(i, k) for i, k in enumerate(keys)]
    out = p.predict(tasks, lite_config())
    assert out.errors == []
    assert out.counts == {"cached": N_CACHED, "computed": len(keys) - N_CACHED, "empty": 0}
    assert len(out.results) == len(keys)
    for i, item in enumerate(out.results):
        k = int(np.argmax(probs[i]))
        assert choice(item) == CLASSES[k]
        assert item["result"][0]["score"] == pytest.approx(float(probs[i][k]), abs=2e-3)
        assert item["result"][0]["from_name"] == "label" and item["result"][0]["to_name"] == "image"
        assert item["result"][0]["type"] == "choices"
        assert item["model_version"] == "untrained"
        assert 0.0 <= item["score"] <= 1.0
    # cached rows: score = sampler priority rank / n (ranks were stored reversed)
    for i in range(N_CACHED):
        assert out.results[i]["score"] == pytest.approx((N_CACHED - 1 - i) / N_CACHED)
        assert "queue position" in out.results[i]["result"][0]["meta"]["text"][0]
    # computed rows (not ranked): score = confidence, least confident first
    for i in range(N_CACHED, len(keys)):
        assert out.results[i]["score"] == pytest.approx(out.results[i]["result"][0]["score"], abs=1e-4)


def test_computed_predictions_are_remembered(project, monkeypatch):
    import trainer.models.inference
    from ml_backend.predictor import Predictor

    calls = []
    real = trainer.models.inference.run_model
    monkeypatch.setattr(trainer.models.inference, "run_model", lambda *a, **k: calls.append(len(a[1])) or real(*a, **k))
    p = Predictor(project["ws"])
    tasks = [task(i, k) for i, k in enumerate(project["keys"][N_CACHED:])]
    first = p.predict(tasks, lite_config())
    second = p.predict(tasks, lite_config())
    assert calls == [len(tasks)]
    assert [choice(r) for r in first.results] == [choice(r) for r in second.results]


def test_model_reloaded_when_current_changes(project):
    from ml_backend.predictor import Predictor

    ws = project["ws"]
    p = Predictor(ws)
    uncached = [task(0, project["keys"][-1])]
    p.predict(uncached, lite_config())
    assert p._model[0] == "001"
    # publish a copy as 002 whose head always says "Neutrophil"
    import torch
    with ws.registry.staging() as tmp:
        shutil.copytree(ws.registry.path("001"), tmp, dirs_exist_ok=True)
        head = torch.load(tmp / "head.pt", weights_only=True)
        head["weight"].zero_()
        head["bias"].copy_(torch.tensor([0.0, 0.0, 5.0]))
        torch.save(head, tmp / "head.pt")
        assert ws.registry.publish(tmp) == "002"
    out = p.predict(uncached + [task(1, project["keys"][0])], lite_config())
    assert p._model[0] == "002"
    assert [choice(r) for r in out.results] == ["Neutrophil", "Neutrophil"]
    assert out.counts["computed"] == 2   # 002 has no prediction cache yet: both computed


def test_cold_start_gives_one_empty_result_per_task(tmp_path):
    from ml_backend.predictor import Predictor

    ws = Workspace(tmp_path / "ws")
    ws.update_project(images_root=str(tmp_path), ls_project_id=1)
    out = Predictor(ws).predict([task(1, "a.png"), task(2, "b.png")], lite_config())
    # no prediction at all (issue 22: an empty one showed as a tab "untrained · 100.00%"); Label
    # Studio's uncertainty sampling serves tasks without a current prediction after the pushed
    # cold-start order (LS 1.23 next_task._try_uncertainty_sampling), as score 1 did
    assert out.results == [[], []]
    assert out.errors == []


def test_bad_tasks_get_empty_results_others_still_predicted(project):
    from ml_backend.predictor import Predictor

    keys, images = project["keys"], project["images"]
    gone = keys[-1]
    (images / gone).unlink()                      # vanished from disk (not in the cache)
    (images / keys[-2]).write_bytes(b"not a jpeg")  # corrupt
    tasks = [
        task(1, keys[0]),
        task(2, gone),
        {"id": 3, "data": {"image": "https://example.org/x.jpg"}},  # no key, not local
        task(4, None, image=f"/data/local-files/?d=somewhere/images/{keys[N_CACHED]}"),  # derived key
        task(5, "../../etc/passwd"),
        {"id": 6},
        task(7, keys[-2]),
        task(8, keys[1]),
    ]
    out = Predictor(project["ws"]).predict(tasks, lite_config())
    assert len(out.results) == len(tasks)
    empty = [i for i, r in enumerate(out.results) if not r["result"]]
    assert empty == [1, 2, 4, 5, 6]
    assert all(out.results[i]["score"] == 1.0 for i in empty)
    assert choice(out.results[3]) == CLASSES[int(np.argmax(project["probs"][N_CACHED]))]
    text = " | ".join(out.errors)
    assert "file not found" in text and gone in text
    assert "task 3" in text and "task 6" in text
    assert keys[-2] in text


def test_label_config_mismatch_withholds_predictions(project):
    from ml_backend.predictor import Predictor

    p = Predictor(project["ws"])
    tasks = [task(1, project["keys"][0]), task(2, project["keys"][-1])]
    out = p.predict(tasks, lite_config(["Eosinophil", "Lymphocyte", "Monocyte"]))
    assert [r["result"] for r in out.results] == [[], []]
    assert "Neutrophil" in out.errors[0] and "withheld" in out.errors[0]
    bad = p.predict(tasks, "<View><Image name='image' value='$image'/></View>")
    assert [r["result"] for r in bad.results] == [[], []]
    assert "labeling config rejected" in bad.errors[0]
    # more choices than the model knows is fine; names come from the config
    ok = p.predict(tasks, lite_config(CLASSES + ["Monocyte"], from_name="cell", to_name="img"))
    assert ok.errors == [] and all(r["result"][0]["from_name"] == "cell" for r in ok.results)
    assert all(r["result"][0]["to_name"] == "img" for r in ok.results)


def test_model_version_follows_status(project):
    from ml_backend.predictor import Predictor, live_model_version

    ws = project["ws"]
    assert live_model_version(ws) == "untrained"
    ws.update_status(ls_model_version="wbc-001-20261122")
    out = Predictor(ws).predict([task(1, project["keys"][0])], lite_config())
    assert out.results[0]["model_version"] == "wbc-001-20261122" == out.model_version


def test_task_key_derivation(tmp_path):
    from ml_backend.predictor import task_key

    root = tmp_path / "imgs"
    (root / "A").mkdir(parents=True)
    (root / "A" / "x 1.png").write_bytes(b"x")
    d = lambda rel: {"data": {"image": "/data/local-files/?d=" + rel}}  # noqa: E731
    assert task_key({"data": {"key": "A/x 1.png"}}, root) == "A/x 1.png"
    assert task_key({"data": {"key": "/abs/path.png"}}, root) is None
    assert task_key({"data": {"key": "A/../../x.png"}}, root) is None
    # document root "/" (absolute path in d=), URL-encoded
    assert task_key(d(str(root / "A" / "x%201.png").lstrip("/")), root) == "A/x 1.png"
    # unknown document root: longest trailing part that exists under the images root
    assert task_key(d("mnt/data/imgs/A/x%201.png"), root) == "A/x 1.png"
    assert task_key(d("mnt/A/zzz.png"), root, known={"A/zzz.png"}) == "A/zzz.png"
    assert task_key(d("mnt/data/imgs/A/missing.png"), root) is None
    # explicit document root
    assert task_key(d("imgs/A/x%201.png"), root, document_root=tmp_path) == "A/x 1.png"
    assert task_key({"data": {"image": "s3://bucket/A/x.png"}}, root) is None
    assert task_key({"data": {"img": "/data/local-files/?d=imgs/A/x%201.png"}}, root,
                    value_key="img", document_root=tmp_path) == "A/x 1.png"
    assert task_key({"data": None}, root) is None and task_key("junk", root) is None


def test_fixture_build_is_fast_enough(trained_base):
    assert trained_base["seconds"] < 45


def test_priority_and_rank_from_cache(project):
    """`priority` (as pushed: rank / n, NaN = unranked) wins over `rank` (negative = unranked)."""
    from ml_backend.predictor import Predictor

    ws, keys, probs = project["ws"], project["keys"][:3], project["probs"][:3]
    ws.save_predictions("001", keys, probs, CLASSES, priority=np.array([0.5, np.nan, 0.0]),
                        rank=np.array([1, -1, 0]))
    out = Predictor(ws).predict([task(i, k) for i, k in enumerate(keys)], lite_config())
    conf1 = out.results[1]["result"][0]["score"]
    assert [r["score"] for r in out.results] == [0.5, pytest.approx(conf1, abs=1e-4), 0.0]
    texts = [r["result"][0]["meta"]["text"][0] for r in out.results]
    assert "queue position 2" in texts[0] and "queue position" not in texts[1] and "queue position 1" in texts[2]
    ws.save_predictions("001", keys, probs, CLASSES, rank=np.array([2, -1, 0]))
    out = Predictor(ws).predict([task(i, k) for i, k in enumerate(keys)], lite_config())
    assert out.results[0]["score"] == pytest.approx(2 / 3) and out.results[2]["score"] == 0.0


def test_awkward_file_names_are_decoded_once_and_predicted(project):
    """`%xx` in a name, spaces, `#`, `+`, non-Latin script and a non-UTF-8 name: each task gets
    a prediction, whether it names its image by `data.key` or only by the local-files URL."""
    import os

    from ml_backend.labelstudio.client import local_files_url
    from ml_backend.predictor import Predictor
    from trainer.io.folders import image_key

    images = project["images"]
    src = images / project["keys"][-1]
    names = ["serum 10%FBS A1.jpg", "x%20y.jpg", "a+b #1?.jpg", "細胞 1.jpg"]
    for n in names:
        shutil.copy(src, images / "Neutrophil" / n)
    raw = os.path.join(os.fsencode(images / "Neutrophil"), b"cell_\xe9.jpg")  # Latin-1 name
    shutil.copy(src, raw)
    odd_key = image_key(os.fsdecode(raw), images)
    assert odd_key == "Neutrophil/cell_\\xe9.jpg"
    p = Predictor(project["ws"])
    by_url = [task(i, None, image=local_files_url("images/Neutrophil/" + n)) for i, n in enumerate(names)]
    by_key = [task(10 + i, "Neutrophil/" + n) for i, n in enumerate(names)] + [task(20, odd_key)]
    out = p.predict(by_url + by_key, lite_config())
    assert out.errors == [] and out.counts["empty"] == 0
    assert all(choice(r) in CLASSES for r in out.results)
