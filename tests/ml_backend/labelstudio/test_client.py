"""The Label Studio client against a real Label Studio 1.23.2."""
from __future__ import annotations

import random

import pytest

from label_config import build_config
from ml_backend.labelstudio.client import COLD_START_TEXT, LabelStudioClient, LabelStudioError, PredictionRow

pytestmark = [pytest.mark.labelstudio, pytest.mark.slow]
CLASSES = ["round", "long", "two nuclei"]


@pytest.fixture
def project(ls_client, project_title):
    pid = ls_client.create_project(project_title, build_config(CLASSES))
    ids = ls_client.import_tasks(pid, [{"image": f"/data/local-files/?d=x/{i}.png",
                                        "key": f"x/{i}.png"} for i in range(60)])
    return pid, ids


def test_clear_errors_for_bad_token_and_unreachable_server(label_studio):
    with pytest.raises(LabelStudioError, match="rejected the API token"):
        LabelStudioClient(label_studio.url, "not-the-token").check()
    with pytest.raises(LabelStudioError, match="unreachable at http://127.0.0.1:9"):
        LabelStudioClient("http://127.0.0.1:9", "x" * 10).check()


def test_find_and_keys(ls_client, project, project_title):
    pid, ids = project
    assert ls_client.find_project(project_title) == pid
    assert ls_client.task_keys(pid) == {f"x/{i}.png": t for i, t in enumerate(ids)}


def test_read_labels_last_wins_and_skips_cancelled(ls_client, project):
    pid, ids = project
    ls_client.create_annotation(ids[0], "round")
    ls_client.create_annotation(ids[0], "two nuclei")   # later annotation wins
    ls_client.create_annotation(ids[1], "long")
    ls_client.sdk.annotations.create(ids[2], result=[], was_cancelled=True)   # skipped task
    assert ls_client.read_labels(pid) == {"x/0.png": "two nuclei", "x/1.png": "long"}
    annotated = {t["id"] for t in ls_client.list_tasks(pid, annotated=True)}
    assert annotated == {ids[0], ids[1]}    # only_annotated would be ignored by LS


def test_push_switch_and_next_task_follows_sampler_rank(ls_client, project):
    pid, ids = project
    rng = random.Random(0)

    def push(version):
        order = ids[:]
        rng.shuffle(order)
        rows = [PredictionRow(t, rng.choice(CLASSES), rng.random(), prio) for prio, t in enumerate(order)]
        return order, rows, ls_client.push_predictions(pid, rows, version)

    order1, _, rep1 = push("001")
    assert rep1.created == len(ids) and rep1.pruned == 0
    assert ls_client.next_task(pid)["id"] == order1[0]
    # /next locks the task for this user (LS serves it again until it is submitted or
    # skipped), so submit it before checking that version 002's order takes over
    ls_client.create_annotation(order1[0], "round")

    order2, rows2, rep2 = push("002")
    assert rep2.pruned == len(ids)          # version 001 is gone
    assert ls_client.get_project(pid)["model_version"] == "002"
    assert ls_client.model_versions(pid) == {"002": len(ids)}
    nxt = ls_client.next_task(pid)
    rank = 1 if order2[0] == order1[0] else 0   # order1[0] is labeled now
    assert nxt["id"] == order2[rank]
    (pred,) = nxt["predictions"]
    top = rows2[rank]
    assert pred["model_version"] == "002" and pred["score"] == rank / len(ids)
    region = pred["result"][0]
    assert region["value"]["choices"] == [top.label]
    assert region["score"] == pytest.approx(top.confidence, abs=1e-4)   # confidence visible

    # once the top pick is labeled, the next pick comes next
    ls_client.create_annotation(order2[rank], "round")
    expected = [t for t in order2 if t not in (order1[0], order2[rank])][0]
    assert ls_client.next_task(pid)["id"] == expected

    with pytest.raises(LabelStudioError, match="already live"):
        ls_client.push_predictions(pid, rows2, "002")


def test_cold_start_push_orders_without_labels(ls_client, project):
    pid, ids = project
    order = ids[::-1]
    rep = ls_client.push_predictions(pid, [PredictionRow(t, None, 0.0, i) for i, t in enumerate(order)], "cold")
    assert rep.created == len(ids)
    nxt = ls_client.next_task(pid)
    # no class chosen; the suggestion field says why there is none (issue 22: an empty heading)
    assert nxt["id"] == order[0] and [r["type"] for r in nxt["predictions"][0]["result"]] == ["textarea"]
    assert nxt["predictions"][0]["result"][0]["value"]["text"] == [COLD_START_TEXT]


def test_push_refuses_silently_dropped_predictions(ls_client, project):
    pid, ids = project
    rows = [PredictionRow(ids[0], "round", 0.9, 0), PredictionRow(10**9, "round", 0.9, 1)]
    with pytest.raises(LabelStudioError):
        ls_client.push_predictions(pid, rows, "bad")
    assert ls_client.get_project(pid)["model_version"] in (None, "")


def test_connect_ml_backend_creates_the_webhook(ls_client, project):
    """LS calls the backend's /health + /setup and adds a webhook: SSRF protection on, the backend's
    address let through (tests/conftest.py). With a token (issue 23) LS calls /setup with basic
    auth (user "scopeloop", the token) and its ML webhook carries `Authorization: Token`."""
    import json
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    seen, auths = [], []

    class Stub(BaseHTTPRequestHandler):
        def _send(self, body):
            data = json.dumps(body).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            seen.append(self.path)
            self._send({"status": "UP", "model_class": "stub"})

        def do_POST(self):
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            seen.append(self.path)
            auths.append((self.path, self.headers.get("Authorization")))
            self._send({"model_version": "000"} if self.path == "/setup" else {})

        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Stub)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        pid, _ = project
        url = f"http://127.0.0.1:{httpd.server_address[1]}"
        backend_id = ls_client.connect_ml_backend(pid, url)
        assert ls_client.connect_ml_backend(pid, url) == backend_id   # idempotent
        assert "/setup" in seen
        hooks = ls_client.sdk.webhooks.list(project=str(pid))
        assert any(h.url.startswith(url) for h in hooks), hooks
        # the same backend again, now with a token: LS's backend setting and the webhook get it
        import base64

        auths.clear()
        assert ls_client.connect_ml_backend(pid, url, token="tok-abc123") == backend_id
        basic = "Basic " + base64.b64encode(b"scopeloop:tok-abc123").decode()
        assert ("/setup", basic) in auths, auths
        hook = [h for h in ls_client._http("GET", "/api/webhooks/", "list") if h["url"] == url + "/webhook"]
        assert hook and hook[0]["headers"]["Authorization"] == "Token tok-abc123"
    finally:
        httpd.shutdown()
