"""Issue 22: a corrupt state file of a project is set aside and healed while /setup and /predict
keep answering (never a 500): junk in registry/current, a truncated prediction cache, an empty
status.json, a 0-byte head.pt in the current version. Fixtures from test_app.py / test_predictor.py."""
from __future__ import annotations

import shutil

from tests.ml_backend.test_app import make_app, predict_body, redis_db, redis_url, setup_body  # noqa: F401
from tests.ml_backend.test_predictor import project, task, trained_base  # noqa: F401


def test_corrupt_current_cache_and_status_healed_while_predict_answers(make_app, project):
    ws, keys = project["ws"], project["keys"]
    (ws.registry.root / "current").write_text("j\x00nk")
    cache = ws.predictions_path("001")
    cache.write_bytes(cache.read_bytes()[:200])
    (ws.root / "status.json").write_text("")
    c = make_app().test_client()
    r = c.post("/setup", json=setup_body())
    assert r.status_code == 200 and r.get_json()["model_version"] == "untrained"
    r = c.post("/predict", json=predict_body([task(i, k) for i, k in enumerate(keys)]))
    assert r.status_code == 200
    body = r.get_json()
    assert body["counts"] == {"cached": 0, "computed": len(keys), "empty": 0}  # the cache was set aside
    assert ws.registry.current() == "001"
    assert list(ws.registry.root.glob("current.bad-*")) and list(cache.parent.glob("001.npz.bad-*"))
    assert list(ws.root.glob("status.json.bad-*"))


def test_empty_head_of_the_current_version_falls_back_to_the_served_one(make_app, project):
    ws, keys = project["ws"], project["keys"]
    with ws.registry.staging() as tmp:
        shutil.copytree(ws.registry.path("001"), tmp, dirs_exist_ok=True)
        assert ws.registry.publish(tmp) == "002"
    (ws.registry.path("002") / "head.pt").write_bytes(b"")  # what a full disk or kill -9 left behind
    c = make_app().test_client()
    r = c.post("/predict", json=predict_body([task(1, keys[0])]))
    assert r.status_code == 200 and r.get_json()["counts"]["cached"] == 1  # 001's cache serves
    assert r.get_json()["results"][0]["result"][0]["value"]["choices"]
    assert ws.registry.current() == "001"
