"""Issue 12's replay against the real services: the demo sample, its starter labels, then 20
correct labels through Label Studio one by one (real backend, real worker). The served model
keeps up (at least 18 of the 20 refreshes promote) and no status line claims a score from fewer
images than the estimator's minimum."""
from __future__ import annotations

import shutil
import signal
import uuid

import pytest
from redis import Redis

from ml_backend.labelstudio.client import LabelStudioClient
from ml_backend.labelstudio.server import free_port
from ml_backend.queue import RefreshQueue
from scopeloop import projects
from scopeloop.demo import SAMPLE, _starter_labels
from scopeloop.services import start_backend, start_worker
from scopeloop.settings import Settings
from tests.test_end_to_end import FAST, label_next, settled, wait_for
from trainer.stats.estimate import from_metrics, headline

pytestmark = [pytest.mark.slow, pytest.mark.labelstudio]


def test_twenty_correct_labels_through_label_studio_keep_promoting(label_studio, redis_db_url, tmp_path, monkeypatch):
    images = tmp_path / "images"
    shutil.copytree(SAMPLE, images)
    for k, v in FAST.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("LOCAL_FILES_DOCUMENT_ROOT", "/")
    port = free_port()
    settings = Settings(home=tmp_path / "home", redis_url=redis_db_url(13), label_studio_url=label_studio.url,
                        label_studio_api_key=label_studio.token, backend_url=f"http://127.0.0.1:{port}")
    children = [start_backend(settings, port, tmp_path / "logs")]
    try:
        classes = sorted(d.name for d in images.iterdir() if d.is_dir())
        ws, _ = projects.init(settings, f"replay-{uuid.uuid4().hex[:8]}", images, classes,
                              labels=_starter_labels(images, settings.home), backend_url=settings.backend_url)
        client = LabelStudioClient(settings.label_studio_url, settings.label_studio_api_key)
        q = RefreshQueue(Redis.from_url(settings.redis_url))
        children.append(start_worker(settings, tmp_path / "logs", **FAST))
        q.request(str(ws.root), "quick", "test start")
        wait_for(lambda: ws.registry.current() and settled(q, ws), 600, "the first model on the starter labels")
        start = ws.status["last_quick"]["labels"]
        status = [headline(from_metrics(ws.registry.read_json(ws.registry.current(), "metrics.json")))]
        for i in range(1, 21):
            label_next(client, ws)
            wait_for(lambda: ws.status.get("last_quick", {}).get("labels") == start + i and settled(q, ws), 300,
                     f"the refresh covering label {i}")
            status.append(headline(from_metrics(ws.registry.read_json(ws.registry.current(), "metrics.json"))))
        log = [r for r in ws.registry.version_log() if r["labels"] > start]
        by_labels = {}
        for r in log:  # a coalesced follow-up refresh on the same labels counts once, as its last
            by_labels[r["labels"]] = r["promoted"]
        promoted = sum(by_labels.values())
        print(f"\nreplay: {promoted}/{len(by_labels)} refreshes promoted; status before: {status[0]}\nafter: {status[-1]}")
        assert len(by_labels) == 20 and promoted >= 18, [r["reason"] for r in log]
        for line in status:
            assert "95% interval" in line or line.startswith("not enough labels yet to estimate (n = ")
        assert len(ws.registry.versions()) <= len({h["version"] for h in ws.registry.history()}) + 3
    finally:
        for c in children:
            c.stop(signal.SIGKILL)
