"""The ML backend app through Flask's test client, replaying the request bodies Label Studio
1.23.2 sends (shapes measured on LS 1.23.2 and read from its ml/api_connector.py,
webhooks/utils.py), with a real Redis (the tests' own server, db 15, a queue of its own; see
tests/conftest.py), real images and a real tiny model (fixtures from test_predictor.py)."""
from __future__ import annotations

import base64
import json
import socket
import statistics
import time
import uuid

import pytest
from redis import Redis
from rq import Queue

from ml_backend.queue import project_id
from scopeloop.settings import Settings
from tests.ml_backend.test_predictor import (  # noqa: F401
    CLASSES,
    LS_PROJECT_ID,
    N_CACHED,
    choice,
    lite_config,
    project,
    task,
    trained_base,
)
from trainer.store.workspace import Workspace

LS_TS = "1732300000"


# ------------------------------------------------------------------ LS request bodies

def setup_body(pid=LS_PROJECT_ID, schema=None) -> dict:
    return {"project": f"{pid}.{LS_TS}", "schema": schema if schema is not None else lite_config(),
            "hostname": "http://localhost:8080", "access_token": "d6f8a2b1c0e94f7a8b3c",
            "extra_params": None}


def predict_body(tasks, pid=LS_PROJECT_ID, label_config=None) -> dict:
    return {"tasks": tasks, "project": f"{pid}.{LS_TS}",
            "label_config": label_config if label_config is not None else lite_config(),
            "params": {"login": None, "password": None, "context": None}}


def ls_project(pid=LS_PROJECT_ID) -> dict:
    """ProjectWebhookSerializer output (abridged to the fields LS 1.23 always sends)."""
    return {"id": pid, "title": "wbc", "description": "", "label_config": lite_config(),
            "expert_instruction": "", "show_instruction": False, "show_skip_button": True,
            "enable_empty_annotation": True, "show_annotation_history": False, "organization": 1,
            "color": "#FFFFFF", "maximum_annotations": 1, "is_published": False,
            "model_version": "", "is_draft": False, "created_by": 1,
            "created_at": "2026-11-22T21:00:00.000000Z", "min_annotations_to_start_training": 0,
            "start_training_on_annotation_update": False, "show_collab_predictions": True,
            "num_tasks_with_annotations": 1, "task_number": 15, "useful_annotation_number": 1,
            "ground_truth_number": 0, "skipped_annotations_number": 0,
            "total_annotations_number": 1, "total_predictions_number": 0,
            "sampling": "Uncertainty sampling", "show_ground_truth_first": False,
            "show_overlap_first": False, "overlap_cohort_percentage": 100,
            "task_data_login": None, "task_data_password": None,
            "evaluate_predictions_automatically": False, "config_has_control_tags": True,
            "skip_queue": "REQUEUE_FOR_OTHERS", "reveal_preannotations_interactively": False,
            "pinned_at": None, "finished_task_number": 1, "queue_total": 14, "queue_done": 1}


def annotation_event(action="ANNOTATION_CREATED", ann_id=1, task_id=1, key="Neutrophil/x.jpg",
                     pid=LS_PROJECT_ID) -> dict:
    t = task(task_id, key, project=pid)
    for k in ("annotations", "predictions"):
        t.pop(k)
    return {
        "action": action,
        "annotation": {
            "id": ann_id, "result": [{"value": {"choices": ["Neutrophil"]}, "id": "k3Xb9", "from_name": "label",
                                      "to_name": "image", "type": "choices", "origin": "manual"}],
            "created_username": " admin@example.com, 1", "created_ago": "0\xa0minutes",
            "completed_by": 1, "was_cancelled": False, "ground_truth": False,
            "created_at": "2026-11-22T21:05:00.000000Z", "updated_at": "2026-11-22T21:05:00.000000Z",
            "draft_created_at": None, "lead_time": 3.2, "import_id": None, "last_action": None,
            "bulk_created": False, "task": task_id, "project": pid, "updated_by": 1,
            "parent_prediction": None, "parent_annotation": None, "last_created_by": None},
        "task": t,
        "project": ls_project(pid),
    }


# ------------------------------------------------------------------ fixtures

@pytest.fixture
def redis_url(redis_db_url) -> str:
    """Database 15 of the tests' Redis (embedded, or SCOPELOOP_TEST_REDIS_URL), clean per test."""
    return redis_db_url(15)


@pytest.fixture
def redis_db(redis_url):
    r = Redis.from_url(redis_url)
    r.ping()
    return r


@pytest.fixture
def make_app(project, redis_db, redis_url, monkeypatch):
    """create_app for the test project on Redis db 15 with a queue of its own; cleans up.
    Auth is off here (SCOPELOOP_BACKEND_AUTH=off); the auth tests delete that setting."""
    monkeypatch.setenv("SCOPELOOP_BACKEND_AUTH", "off")
    queues = []

    default_url = redis_url

    def make(redis_url=None, **settings_kw):
        redis_url = redis_url or default_url
        qname = f"test-app-{uuid.uuid4().hex[:8]}"
        queues.append(qname)
        from ml_backend.app import create_app
        app = create_app(Settings(home=project["home"], redis_url=redis_url, **settings_kw), queue_name=qname)
        app.testing = True
        return app

    yield make
    root = str(project["ws"].root)
    for k in redis_db.scan_iter(f"scopeloop:p:{project_id(root)}:*"):
        redis_db.delete(k)
    redis_db.srem("scopeloop:projects", root)
    for q in queues:
        Queue(q, connection=redis_db).delete(delete_jobs=True)


@pytest.fixture
def client(make_app):
    return make_app().test_client()


def queued_jobs(app, root) -> list[str]:
    b = app.extensions["scopeloop"]
    names = (b.queue_name, f"{b.queue_name}-gpu")  # quick refreshes, and deep ones (the GPU queue)
    return [j for n in names for j in Queue(n, connection=Redis.from_url(b.redis_url)).get_job_ids()
            if project_id(str(root)) in j]


# ------------------------------------------------------------------ health / setup

def test_health_is_fast_and_open(make_app, monkeypatch):
    monkeypatch.delenv("SCOPELOOP_BACKEND_AUTH")
    monkeypatch.setenv("SCOPELOOP_BACKEND_TOKEN", "s3cret")
    c = make_app().test_client()
    t0 = time.perf_counter()
    r = c.get("/health")
    assert time.perf_counter() - t0 < 0.5
    assert r.status_code == 200 and r.get_json() == {"status": "UP", "model_class": "scopeloop"}


def test_setup_answers_live_model_version(client, project):
    r = client.post("/setup", json=setup_body())
    assert r.status_code == 200 and r.get_json() == {"model_version": "untrained"}
    project["ws"].update_status(ls_model_version="wbc-001-20261122")
    r = client.post("/setup", json=setup_body())
    assert r.get_json() == {"model_version": "wbc-001-20261122"}
    # the predictions carry exactly the same version (LS re-predicts otherwise)
    p = client.post("/predict", json=predict_body([task(1, project["keys"][0])])).get_json()
    assert p["results"][0]["model_version"] == "wbc-001-20261122"


def test_setup_unknown_project_still_connects(client):
    r = client.post("/setup", json=setup_body(pid=999))
    assert r.status_code == 200
    body = r.get_json()
    assert body["model_version"] == "untrained" and "999" in body["warning"] and "init" in body["warning"]


def test_setup_with_mismatched_config_warns(client):
    r = client.post("/setup", json=setup_body(schema=lite_config(["Eosinophil", "Basophil"])))
    assert r.status_code == 200
    body = r.get_json()
    assert body["model_version"] == "untrained"
    assert "Neutrophil" in body["warning"] and "Lymphocyte" in body["warning"]


# ------------------------------------------------------------------ predict

def test_predict_one_result_per_task_in_order(client, project):
    keys, probs = project["keys"], project["probs"]
    (project["images"] / keys[-1]).unlink()
    tasks = [task(100 + i, k) for i, k in enumerate(keys)] + [
        {"id": 999, "data": {"image": "https://example.org/nope.jpg"}, "project": LS_PROJECT_ID}]
    r = client.post("/predict", json=predict_body(tasks))
    assert r.status_code == 200
    body = r.get_json()
    res = body["results"]
    assert len(res) == len(tasks)
    for i in range(len(keys) - 1):
        assert choice(res[i]) == CLASSES[int(probs[i].argmax())]
        assert set(res[i]) == {"result", "score", "model_version"}
        assert set(res[i]["result"][0]) >= {"from_name", "to_name", "type", "value", "score"}
    assert res[-2] == {"result": [], "score": 1.0, "model_version": "untrained"}   # vanished image
    assert res[-1]["result"] == []                                                  # no key
    assert body["counts"] == {"cached": N_CACHED, "computed": len(keys) - N_CACHED - 1, "empty": 2}
    assert any(keys[-1] in e for e in body["errors"])
    # the service keeps going
    assert client.get("/health").status_code == 200
    assert client.post("/predict", json=predict_body(tasks[:2])).status_code == 200


def test_input_limits_give_4xx_never_500(make_app, project, caplog, monkeypatch):
    """Issue 11, failure 9: huge bodies, deep JSON, 10^6-digit ids, 10^6-character keys."""
    monkeypatch.setenv("SCOPELOOP_BACKEND_MAX_BODY_MB", "1")
    c = make_app().test_client()
    keys = project["keys"]
    # a body over the limit: 413 naming the limit
    r = c.post("/predict", data=b"{" + b" " * (1024 * 1024 + 10) + b"}", content_type="application/json")
    assert r.status_code == 413 and "1 MB" in r.get_json()["error"]
    # JSON nested 100,000 deep (and 100 deep): 400
    for depth in (100_000, 100):
        r = c.post("/predict", data="[" * depth + "]" * depth, content_type="application/json")
        assert r.status_code == 400, (depth, r.get_data(as_text=True)[:200])
        r = c.post("/webhook", data='{"action": "ANNOTATION_CREATED", "x": ' + "[" * depth + "]" * depth + "}",
                   content_type="application/json")
        assert r.status_code == 400 and "nested" in r.get_json()["error"]
    # a project id of 10^6 digits, in every form LS sends one
    for project_value in ("1" * 10**6 + ".1732300000", "1" * 10**6, {"id": "9" * 40}):
        for path in ("/setup", "/predict", "/webhook"):
            body = {"project": project_value, "tasks": [], "action": "ANNOTATION_CREATED", "schema": lite_config()}
            r = c.post(path, json=body)
            assert r.status_code == 400, (path, r.status_code)
            assert "at most 18 digits" in r.get_json()["error"] and len(r.get_data()) < 1000
    # one task key of 10^6 characters: its own error, the others predicted, nothing echoed in bulk
    monkeypatch.delenv("SCOPELOOP_BACKEND_MAX_BODY_MB")
    c = make_app().test_client()
    caplog.clear()
    long_key = "Neutrophil/" + "x" * 10**6 + ".jpg"
    tasks = [task(1, keys[0]), task(2, long_key), task(3, keys[1]), task(4, None, image="/data/local-files/?d=" + "y" * 5000)]
    r = c.post("/predict", json=predict_body(tasks))
    assert r.status_code == 200
    body = r.get_json()
    assert [bool(x["result"]) for x in body["results"]] == [True, False, True, False]
    assert len(r.get_data()) < 20_000 and len(caplog.text) < 20_000
    assert sum("longer than a file name may be" in e for e in body["errors"]) == 2


def test_predict_cold_start(make_app, project, tmp_path):
    cold = Workspace(project["home"] / "projects" / "cold")
    cold.update_project(images_root=str(project["images"]), ls_project_id=8)
    c = make_app().test_client()
    r = c.post("/predict", json=predict_body([task(1, project["keys"][0], project=8),
                                              task(2, project["keys"][1], project=8)], pid=8))
    assert r.status_code == 200
    assert r.get_json()["results"] == [[], []]   # no prediction for Label Studio to show (issue 22)
    assert c.post("/setup", json=setup_body(pid=8)).get_json() == {"model_version": "untrained"}


def test_predict_wrong_label_config(client, project):
    tasks = [task(1, project["keys"][0]), task(2, project["keys"][1])]
    r = client.post("/predict", json=predict_body(tasks, label_config=lite_config(["A", "B"])))
    assert r.status_code == 200
    body = r.get_json()
    assert [x["result"] for x in body["results"]] == [[], []]
    assert "withheld" in body["errors"][0]


def test_predict_unknown_project_and_bad_bodies(client, project):
    r = client.post("/predict", json=predict_body([task(1, "a.jpg")], pid=404))
    assert r.status_code == 404 and "unknown project" in r.get_json()["error"]
    for path in ("/setup", "/predict", "/webhook"):
        r = client.post(path, data='{"tasks": [', content_type="application/json")
        assert r.status_code == 400 and "malformed JSON" in r.get_json()["error"]
        r = client.post(path, data="", content_type="application/json")
        assert r.status_code == 400 and "empty" in r.get_json()["error"]
        r = client.post(path, data="[1, 2]", content_type="application/json")
        assert r.status_code == 400
    r = client.post("/predict", json={"tasks": "nope", "project": f"{LS_PROJECT_ID}.{LS_TS}"})
    assert r.status_code == 400 and "tasks" in r.get_json()["error"]
    assert client.get("/nothing").status_code == 404 and "error" in client.get("/nothing").get_json()
    assert client.get("/health").status_code == 200


# ------------------------------------------------------------------ webhook

def test_webhook_burst_coalesces_to_one_job(make_app, project, redis_db):
    app = make_app()
    c = app.test_client()
    times = []
    for i in range(200):
        t0 = time.perf_counter()
        r = c.post("/webhook", json=annotation_event(ann_id=i + 1, task_id=i + 1))
        times.append(time.perf_counter() - t0)
        assert r.status_code == 200, r.get_data(as_text=True)
    first = c.post("/webhook", json=annotation_event()).get_json()
    assert first["queued"] is True and first["coalesced"] is True
    jobs = queued_jobs(app, project["ws"].root)
    assert len(jobs) == 1 and jobs[0].startswith("refresh-quick-")
    p95 = statistics.quantiles(times, n=20)[-1]
    assert p95 < 0.2, f"webhook p95 {p95 * 1000:.1f} ms"
    r = redis_db
    assert int(r.get(f"scopeloop:p:{project_id(str(project['ws'].root))}:gen")) == 201


def test_webhook_events(make_app, project):
    app = make_app()
    c = app.test_client()
    proj = ls_project()
    r = c.post("/webhook", json={"action": "ANNOTATIONS_DELETED", "annotations": [{"id": 1}, {"id": 2}],
                                 "project": proj})
    assert r.status_code == 200 and r.get_json()["refresh"] == "quick" and r.get_json()["job_id"]
    r = c.post("/webhook", json={"action": "TASKS_CREATED", "tasks": [task(50, "Neutrophil/new.jpg")],
                                 "project": proj})
    assert r.get_json()["coalesced"] is True          # a quick refresh is already pending
    r = c.post("/webhook", json={"action": "START_TRAINING", "project": proj})
    assert r.status_code == 200 and r.get_json()["refresh"] == "deep"
    r = c.post("/webhook", json=annotation_event("ANNOTATION_UPDATED"))
    assert r.status_code == 200 and r.get_json()["queued"] is True
    jobs = sorted(j.split("-")[1] for j in queued_jobs(app, project["ws"].root))
    assert jobs == ["deep", "quick"]
    # project as a bare int, or only inside the task
    assert c.post("/webhook", json={"action": "START_TRAINING", "project": LS_PROJECT_ID}).status_code == 200
    ev = annotation_event()
    del ev["project"]
    assert c.post("/webhook", json=ev).status_code == 200
    # other actions are acknowledged and ignored; unknown projects are a clear 404
    r = c.post("/webhook", json={"action": "PROJECT_UPDATED", "project": proj})
    assert r.status_code == 200 and r.get_json()["status"] == "ignored"
    r = c.post("/webhook", json=annotation_event(pid=12345))
    assert r.status_code == 404 and "unknown project" in r.get_json()["error"]
    assert c.post("/webhook", json={"project": proj}).status_code == 400


def test_webhook_when_redis_is_down(make_app, caplog):
    c = make_app(redis_url="redis://127.0.0.1:1/0").test_client()   # connection refused
    for _ in range(3):
        t0 = time.perf_counter()
        r = c.post("/webhook", json=annotation_event())
        assert time.perf_counter() - t0 < 0.5
        assert r.status_code == 200
        body = r.get_json()
        assert body["queued"] is False and "Label Studio" in body["note"]
    assert "cannot queue a refresh" in caplog.text


def test_webhook_when_redis_hangs(make_app):
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)             # accepts connections into the backlog, never answers
    try:
        c = make_app(redis_url=f"redis://127.0.0.1:{srv.getsockname()[1]}/0").test_client()
        t0 = time.perf_counter()
        r = c.post("/webhook", json=annotation_event())
        assert time.perf_counter() - t0 < 0.9     # LS gives the webhook 1.0 s
        assert r.status_code == 200 and r.get_json()["queued"] is False
        t0 = time.perf_counter()
        assert c.post("/webhook", json=annotation_event()).status_code == 200
        assert time.perf_counter() - t0 < 0.1     # backs off instead of waiting again
    finally:
        srv.close()


# ------------------------------------------------------------------ auth

def _basic(user, pw) -> dict:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{pw}".encode()).decode()}


def test_auth(make_app, monkeypatch, project):
    monkeypatch.delenv("SCOPELOOP_BACKEND_AUTH")
    monkeypatch.setenv("SCOPELOOP_BACKEND_USER", "ls")
    monkeypatch.setenv("SCOPELOOP_BACKEND_PASSWORD", "pw:with:colons")
    monkeypatch.setenv("SCOPELOOP_BACKEND_TOKEN", "tok123")
    c = make_app().test_client()
    body = setup_body()
    assert c.get("/health").status_code == 200
    r = c.post("/setup", json=body)
    assert r.status_code == 401 and r.headers["WWW-Authenticate"].startswith("Basic")
    assert c.post("/setup", json=body, headers=_basic("ls", "pw:with:colons")).status_code == 200
    assert c.post("/setup", json=body, headers=_basic("ls", "wrong")).status_code == 401
    assert c.post("/setup", json=body, headers={"Authorization": "Token tok123"}).status_code == 200
    assert c.post("/setup", json=body, headers={"Authorization": "Bearer tok123"}).status_code == 200
    assert c.post("/setup", json=body, headers={"Authorization": "Token nope"}).status_code == 401
    assert c.post("/setup", json=body, headers={"Authorization": "Basic %%%"}).status_code == 401
    tasks = predict_body([task(1, project["keys"][0])])
    assert c.post("/predict", json=tasks).status_code == 401
    assert c.post("/predict", json=tasks, headers=_basic("ls", "pw:with:colons")).status_code == 200
    assert c.post("/predict", json=tasks, headers=_basic("scopeloop", "tok123")).status_code == 200
    assert c.post("/predict", json=tasks, headers=_basic("scopeloop", "pw:with:colons")).status_code == 401
    # /webhook needs it too (scopeloop gives LS's ML webhook the header), unless explicitly opened
    assert c.post("/webhook", json={"action": "PROJECT_UPDATED"}).status_code == 401
    assert c.post("/webhook", json={"action": "PROJECT_UPDATED"},
                  headers={"Authorization": "Token tok123"}).status_code == 200
    assert c.get("/versions").status_code == 401
    monkeypatch.setenv("SCOPELOOP_BACKEND_WEBHOOK_AUTH", "0")
    c2 = make_app().test_client()
    assert c2.post("/webhook", json={"action": "PROJECT_UPDATED"}).status_code == 200


def test_token_from_settings(make_app, monkeypatch):
    monkeypatch.delenv("SCOPELOOP_BACKEND_AUTH")
    monkeypatch.delenv("SCOPELOOP_BACKEND_TOKEN", raising=False)
    c = make_app(backend_token="fromsettings").test_client()
    assert c.post("/setup", json=setup_body()).status_code == 401
    assert c.post("/setup", json=setup_body(), headers={"Authorization": "Token fromsettings"}).status_code == 200


def test_wsgi_module_builds_app(monkeypatch, tmp_path):
    import importlib
    import sys

    import os

    monkeypatch.setenv("SCOPELOOP_HOME", str(tmp_path))
    monkeypatch.delenv("SCOPELOOP_BACKEND_AUTH", raising=False)
    monkeypatch.delenv("SCOPELOOP_BACKEND_TOKEN", raising=False)
    sys.modules.pop("scopeloop.wsgi", None)
    old_umask = os.umask(0o022)
    try:
        wsgi = importlib.import_module("scopeloop.wsgi")
        assert os.umask(0o077) == 0o077            # the backend's process: owner-only files
    finally:
        os.umask(old_umask)
    c = wsgi.app.test_client()
    assert c.get("/health").get_json()["status"] == "UP"
    assert c.post("/setup", json=setup_body()).status_code == 401   # auth on by default
    token = {"Authorization": "Token " + (tmp_path / "backend_token").read_text().strip()}
    assert json.loads(c.post("/setup", json=setup_body(), headers=token).data)["model_version"] == "untrained"


# ------------------------------------------------------------------ real Label Studio

@pytest.mark.labelstudio
@pytest.mark.slow
def test_with_real_label_studio(ls_client, project, make_app, project_title, redis_db, monkeypatch):
    """LS 1.23.2 connects (health + setup), pulls predictions, and sends the webhook."""
    import threading

    from werkzeug.serving import make_server

    from ml_backend.labelstudio.client import local_files_url

    from ml_backend.security import backend_token

    monkeypatch.delenv("SCOPELOOP_BACKEND_AUTH")   # auth on, as in production: LS gets the token
    monkeypatch.delenv("SCOPELOOP_BACKEND_TOKEN", raising=False)
    app = make_app()
    server = make_server("127.0.0.1", 0, app, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        ws, keys, probs = project["ws"], project["keys"], project["probs"]
        pid = ls_client.create_project(project_title, lite_config())
        ws.update_project(ls_project_id=pid)
        ws.update_status(ls_model_version="wbc-test-001")
        picks = [0, 1, N_CACHED, N_CACHED + 1]          # two cached, two computed live
        ids = ls_client.import_tasks(pid, [{"image": local_files_url(str(project["images"] / keys[i]).lstrip("/")),
                                            "key": keys[i]} for i in picks])
        ls_client.connect_ml_backend(pid, f"http://127.0.0.1:{server.server_port}", token=backend_token(project["home"]))
        ls_client._http("POST", f"/api/dm/actions?id=retrieve_tasks_predictions&project={pid}",
                        "retrieve predictions", json={"selectedItems": {"all": True, "excluded": []}})
        by_id = {t["id"]: t for t in ls_client.list_tasks(pid)}
        for tid, i in zip(ids, picks):
            preds = by_id[tid]["predictions"]
            assert len(preds) == 1, preds
            assert preds[0]["model_version"] == "wbc-test-001"
            assert preds[0]["result"][0]["value"]["choices"] == [CLASSES[int(probs[i].argmax())]]
        # annotating sends ANNOTATION_CREATED to /webhook (inside the save request)
        ls_client.create_annotation(ids[0], CLASSES[0])
        gen_key = f"scopeloop:p:{project_id(str(ws.root))}:gen"
        deadline = time.time() + 10
        while time.time() < deadline and not redis_db.get(gen_key):
            time.sleep(0.1)
        assert int(redis_db.get(gen_key) or 0) >= 1
        assert len(queued_jobs(app, ws.root)) == 1
    finally:
        server.shutdown()
