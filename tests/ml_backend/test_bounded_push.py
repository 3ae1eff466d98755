"""Label Studio work per refresh is bounded by the head of the queue, not by the pool (issue 16).

A real Label Studio 1.23.2 (tests/conftest.py), a real ML backend (Flask app on a thread) and
the real refresh pipeline, on a pool of 2,000 generated tiny images whose embeddings are
precomputed (the network's own embedding is tested elsewhere; here only the Label Studio side
matters). Five refreshes, quick and deep (the nightly refresh is a deep one; its backbone
fine-tune is replaced by a no-op: GPU work, tested in tests/trainer): each pushes the head
only (300 tasks), the prune leaves at most that head in Label Studio, `/next` serves the
sampler's first pick after every refresh, and a task outside the head opened directly gets its
pre-annotation from the backend's /predict.
"""
from __future__ import annotations

import threading
import time
import uuid

import numpy as np
import pytest
from PIL import Image

pytestmark = [pytest.mark.slow, pytest.mark.labelstudio]

N, HEAD, DIM = 2000, 300, 16
CLASSES = ["Alpha", "Beta", "Gamma"]


@pytest.fixture
def pool(tmp_path):
    """2,000 tiny textured PNGs in three class folders, and their (clustered) embeddings."""
    rng = np.random.default_rng(0)
    images = tmp_path / "images"
    keys, truth = [], {}
    for i in range(N):
        c = CLASSES[i % 3]
        key = f"{c}/img_{i:05d}.png"
        (images / c).mkdir(parents=True, exist_ok=True)
        px = (rng.random((12, 12, 3)) * 200 + 30 * (i % 3)).astype(np.uint8)
        Image.fromarray(px).save(images / key)
        keys.append(key)
        truth[key] = c
    centers = rng.normal(0, 1, (3, DIM))
    emb = np.stack([centers[CLASSES.index(truth[k])] * 1.2 + rng.normal(0, 1, DIM) for k in keys]).astype(np.float32)
    return images, keys, emb, truth


@pytest.fixture
def backend(tmp_path, redis_db_url):
    """The scopeloop ML backend on a free port (Redis: the tests' own, database 11)."""
    from redis import Redis
    from rq import Queue
    from werkzeug.serving import make_server

    from ml_backend.app import create_app
    from scopeloop.settings import Settings

    home = tmp_path / "home"
    url = redis_db_url(11)
    qname = f"test-bounded-{uuid.uuid4().hex[:8]}"
    app = create_app(Settings(home=home, redis_url=url), queue_name=qname)
    server = make_server("127.0.0.1", 0, app, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield home, f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    Queue(qname, connection=Redis.from_url(url)).delete(delete_jobs=True)


def _total_predictions(client, pid) -> int:
    return sum(client.model_versions(pid).values())


def test_refreshes_push_and_prune_the_head_only(ls_client, project_title, pool, backend, monkeypatch):
    from label_config import build_config
    from ml_backend.labelstudio.client import local_files_url
    from scopeloop.loop import push_sizing
    from scopeloop.refresh import Refresher
    from trainer.store.workspace import Workspace

    images, keys, emb, truth = pool
    home, backend_url = backend
    monkeypatch.setattr(push_sizing, "PUSH_FLOOR", HEAD)
    monkeypatch.setattr(push_sizing, "PUSH_CAP", 1000)
    monkeypatch.setattr(Refresher, "deep_finetune", lambda self, labels, pool_keys=None: None)
    # image-quality verdicts of generated noise are not what this test is about: none are written
    # to the tasks (each write is a ~0.2 s task update in Label Studio)
    monkeypatch.setattr("ml_backend.labelstudio.qc_tasks.MAX_UPDATES", 0)

    pid = ls_client.create_project(project_title, build_config(CLASSES))
    ids = ls_client.import_tasks(pid, [{"image": local_files_url(str(images / k).lstrip("/")), "key": k}
                                       for k in keys])
    task_of = dict(zip(keys, ids))
    ws = Workspace(home / "projects" / project_title)
    ws.update_project(images_root=str(images), classes=CLASSES, ls_project_id=pid, from_name="label", to_name="image",
                      model={"backbone": "tf_efficientnet_lite0", "weights": "imagenet", "image_size": 32,
                             "channels": None})
    r = Refresher(ws, ls_client, log=lambda *_: None)
    ws.embeddings(r.space()[0])._save(keys, emb)  # precomputed: nothing to embed
    from ml_backend.security import backend_token

    ls_client.connect_ml_backend(pid, backend_url, token=backend_token(home))  # the backend's auth is on
    ls_client.setup_ordering(pid)

    for c in CLASSES:  # starter labels: two per class
        for k in [k for k in keys if truth[k] == c][:2]:
            ls_client.create_annotation(task_of[k], c)

    kinds = ["quick", "deep", "quick", "deep", "quick"]
    opened, heads = 0, []
    for step, kind in enumerate(kinds):
        t0 = time.perf_counter()
        out = r.run(kind)
        print(f"{kind}: {out['seconds']}, push {out.get('push_seconds')} s, wall {time.perf_counter() - t0:.1f} s")
        assert out["pushed"] == HEAD, (kind, out.get("push"))
        heads.append(out.get("push", {}).get("head"))
        # at most the new head and the previous one (plus tasks opened on demand) until the prune
        assert _total_predictions(ls_client, pid) <= 2 * HEAD + opened
        r.prune()
        versions = ls_client.model_versions(pid)
        live = ws.status["ls_model_version"]
        assert set(versions) == {live}, versions
        assert versions[live] <= HEAD + opened
        # the sampler's order, as saved with the full prediction table, is what Label Studio serves
        cache = ws.load_predictions(ws.status["serving_version"])
        rank = dict(zip((str(k) for k in cache["keys"]), cache["rank"].tolist()))
        assert len(rank) == N  # every image is predicted, in the work directory
        top = min((k for k in rank if rank[k] >= 0), key=rank.get)
        nxt = ls_client.next_task(pid)
        assert nxt["id"] == task_of[top], (step, kind, nxt["data"]["key"], top)
        if step == 2:
            # a task far outside the head, opened directly: Label Studio asks the backend's /predict
            outside = next(k for k in keys if rank[k] >= HEAD + 500)
            before = _total_predictions(ls_client, pid)  # the head only: this task has none
            task = ls_client._http("GET", f"/api/tasks/{task_of[outside]}?project={pid}", "open task")
            assert _total_predictions(ls_client, pid) == before + 1
            preds = task["predictions"]
            assert len(preds) == 1, preds
            probs = cache["probs"][list(map(str, cache["keys"])).index(outside)]
            assert preds[0]["model_version"] == live
            assert preds[0]["result"][0]["value"]["choices"] == [CLASSES[int(np.argmax(probs))]]
            # on the pushed head's scale: it sorts after every pushed task
            assert preds[0]["score"] == pytest.approx(rank[outside] / N, abs=1e-5)
            opened += 1
        ls_client.create_annotation(nxt["id"], truth[nxt["data"]["key"]])
    assert _total_predictions(ls_client, pid) <= HEAD + opened
    assert heads == [HEAD] * len(kinds)  # rate x interval x margin stays under the floor here
