"""A shared machine is safe (issue 23): what another local user can read and reach.

The second-user tests create an unprivileged local user (useradd) when they run as root and
remove it afterwards; elsewhere they are skipped. The probes of the issue, one test each:
state files unreadable, the backend refusing calls without its token, a symlink out of the image
folder not imported (tests/ml_backend/labelstudio/test_project_setup.py) nor read by /predict,
the Label Studio scopeloop starts keeping SSRF protection on, one log line per message.
"""
from __future__ import annotations

import base64
import io
import json
import logging
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import threading
import uuid
from pathlib import Path

import pytest

from scopeloop.settings import Settings

PY = "/usr/bin/python3"   # a Python every user may run (a venv's may live under root's home)


# ------------------------------------------------------------------ a second local user

@pytest.fixture
def other_user():
    """(name, uid) of a fresh unprivileged local user; removed after the test. Root only."""
    if os.geteuid() != 0 or not shutil.which("useradd") or not shutil.which("setpriv") or not os.access(PY, os.X_OK):
        pytest.skip(f"needs root, useradd, setpriv and {PY} to act as a second local user")
    name = f"slprobe{uuid.uuid4().hex[:6]}"
    subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
                   check=True, capture_output=True)
    try:
        import pwd

        yield name, pwd.getpwnam(name).pw_uid, pwd.getpwnam(name).pw_gid
    finally:
        subprocess.run(["userdel", name], capture_output=True)


def as_user(user, code: str) -> subprocess.CompletedProcess:
    """Run Python `code` as `user` (no supplementary groups), with the system Python."""
    _, uid, gid = user
    return subprocess.run(["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups", PY, "-c", code],
                          capture_output=True, text=True, timeout=60, cwd="/")


@pytest.fixture
def shared_dir():
    """A folder other users may enter (0755), as /home or a lab share is; removed afterwards."""
    d = Path(tempfile.mkdtemp(prefix="scopeloop-shared-"))
    d.chmod(0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def umask_restored():
    old = os.umask(0o022)
    os.umask(old)
    yield
    os.umask(old)


def _old_home(home: Path) -> None:
    """A home as scopeloop left it before issue 23: 0755 folders, 0644 files, the LS database."""
    for d in ("label-studio", "projects/cells/registry", "projects/cells/qc", "logs"):
        (home / d).mkdir(parents=True, exist_ok=True)
    files = {"demo.json": '{"token": "t0ps3cret"}', "settings.env": "LABEL_STUDIO_API_KEY=t0ps3cret\n",
             "label-studio/label_studio.sqlite3": "SQLite format 3\x00 token t0ps3cret",
             "projects/cells/project.json": "{}", "projects/cells/labels.json": '{"a.png": "round"}',
             "projects/cells/qc/verdicts.json": "{}", "logs/ml-backend.log": "x"}
    for rel, text in files.items():
        (home / rel).write_text(text)
    for p in [home, *home.rglob("*")]:
        p.chmod(0o755 if p.is_dir() else 0o644)


def test_second_user_reads_nothing_of_the_home(other_user, shared_dir, monkeypatch, umask_restored, capsys):
    """Probe 1: the demo's home 0755 and its LS database 0644 (the admin token in it). A command
    tightens an old home with one line; doctor then finds nothing; the other user reads nothing."""
    from scopeloop.cli import main

    home = shared_dir / "home"
    _old_home(home)
    monkeypatch.setenv("SCOPELOOP_HOME", str(home))
    monkeypatch.delenv("SCOPELOOP_UMASK", raising=False)
    paths = [str(p) for p in sorted(home.rglob("*")) if p.is_file()]
    probe = ("import json, sys\nok = []\nfor p in json.loads(sys.argv[1] if len(sys.argv) > 1 else '[]'):\n"
             "    try:\n        open(p).read(1); ok.append(p)\n    except OSError:\n        pass\nprint(json.dumps(ok))")
    code = f"import sys; sys.argv = ['x', {json.dumps(json.dumps(paths))}]\n" + probe
    before = as_user(other_user, code)
    assert before.returncode == 0, before.stderr
    assert len(json.loads(before.stdout)) == len(paths)   # the old home: everything readable

    assert main(["doctor"]) == 0           # tightens first (the note), then finds nothing
    err = capsys.readouterr()
    assert err.err.count("made private") == 1 and "ok:" in err.out
    after = as_user(other_user, code)
    assert json.loads(after.stdout) == [], after.stdout
    for p in [home, *home.rglob("*")]:
        assert stat.S_IMODE(p.stat().st_mode) & 0o077 == 0, p
    # what scopeloop writes from now on is owner-only (the umask the CLI set)
    from ml_backend.security import backend_token

    backend_token(home)
    assert stat.S_IMODE((home / "backend_token").stat().st_mode) == 0o600
    assert not as_user(other_user, f"open({str(home / 'backend_token')!r}).read()").returncode == 0


def test_doctor_warns_about_readable_project_folder_and_ls_database(shared_dir, monkeypatch, umask_restored, capsys):
    from scopeloop.security import exposures

    home = shared_dir / "home"
    _old_home(home)
    lines = exposures(home)
    assert any("project folder" in x and "cells" in x for x in lines), lines
    assert any("Label Studio database" in x for x in lines), lines
    home.chmod(0o700)   # nothing below a private home is reachable
    assert exposures(home) == []


def test_label_studio_data_dir_and_files_owner_only(tmp_path, monkeypatch):
    """The Label Studio scopeloop starts makes its data folder 0700 and runs with umask 077."""
    from ml_backend.labelstudio.server import LabelStudioServer, LabelStudioServerError, free_port

    server = LabelStudioServer(data_dir=tmp_path / "ls", document_root=tmp_path, port=free_port(), start_timeout=20)
    marker = tmp_path / "ls" / "label_studio.sqlite3"
    monkeypatch.setattr(server, "command", lambda: [sys.executable, "-c",
                                                    f"open({str(marker)!r}, 'w').write('db'); raise SystemExit(3)"])
    with pytest.raises(LabelStudioServerError):
        server.start()
    assert stat.S_IMODE((tmp_path / "ls").stat().st_mode) == 0o700
    assert stat.S_IMODE(marker.stat().st_mode) == 0o600


# ------------------------------------------------------------------ the backend's token

def _predict_body():
    return {"tasks": [{"id": 1, "data": {"image": "/data/local-files/?d=x.png"}}], "project": "7.1732300000"}


def test_backend_requires_a_token_by_default(tmp_path, monkeypatch):
    """Probe 2: /predict and /webhook answered anyone. Now a token is generated once (0600) and
    required on every route but /health, also by the WSGI entry the demo starts."""
    from ml_backend.app import create_app
    from ml_backend.security import BASIC_USER

    for k in ("SCOPELOOP_BACKEND_AUTH", "SCOPELOOP_BACKEND_TOKEN", "SCOPELOOP_BACKEND_WEBHOOK_AUTH",
              "SCOPELOOP_BACKEND_USER", "SCOPELOOP_BACKEND_PASSWORD"):
        monkeypatch.delenv(k, raising=False)
    app = create_app(Settings(home=tmp_path, redis_url="redis://127.0.0.1:1/0"))
    c = app.test_client()
    token_file = tmp_path / "backend_token"
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    token = token_file.read_text().strip()
    assert len(token) >= 32
    assert c.get("/health").status_code == 200
    for path, body in (("/predict", _predict_body()), ("/webhook", {"action": "START_TRAINING", "project": 7}),
                       ("/setup", {"project": "7.1"}), ("/versions", None)):
        r = c.post(path, json=body) if body is not None else c.get(path)
        assert r.status_code == 401, path
        ok = {"Authorization": "Basic " + base64.b64encode(f"{BASIC_USER}:{token}".encode()).decode()}
        r = c.post(path, json=body, headers=ok) if body is not None else c.get(path, headers=ok)
        assert r.status_code in (200, 404), (path, r.status_code)   # 404: no such project here
    # the same token next time (generated once)
    assert create_app(Settings(home=tmp_path)).extensions["scopeloop"].auth.token == token


def test_auth_off_is_explicit_and_warned(tmp_path, monkeypatch, caplog):
    from ml_backend.app import create_app

    monkeypatch.setenv("SCOPELOOP_BACKEND_AUTH", "off")
    with caplog.at_level(logging.WARNING):
        app = create_app(Settings(home=tmp_path))
    assert "WITHOUT authentication" in caplog.text
    assert app.test_client().post("/setup", json={"project": "7.1"}).status_code == 200
    assert not (tmp_path / "backend_token").exists()


def test_second_user_cannot_call_the_backend(other_user, shared_dir, monkeypatch, umask_restored):
    """Probe 2 as the other user: no token readable, /predict and /webhook refused; with the
    token (what Label Studio is given) served."""
    from werkzeug.serving import make_server

    from ml_backend.app import create_app
    from scopeloop.security import apply_umask

    for k in ("SCOPELOOP_BACKEND_AUTH", "SCOPELOOP_BACKEND_TOKEN", "SCOPELOOP_BACKEND_WEBHOOK_AUTH"):
        monkeypatch.delenv(k, raising=False)
    apply_umask()
    home = shared_dir / "home"
    home.mkdir(mode=0o700)
    app = create_app(Settings(home=home, redis_url="redis://127.0.0.1:1/0"))
    token = (home / "backend_token").read_text().strip()
    server = make_server("127.0.0.1", 0, app, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}"
    code = f"""
import json, urllib.request, urllib.error
def call(path, body, token=None):
    req = urllib.request.Request({url!r} + path, data=json.dumps(body).encode(), method="POST",
                                 headers={{"Content-Type": "application/json"}})
    if token:
        req.add_header("Authorization", "Token " + token)
    try:
        return urllib.request.urlopen(req, timeout=10).status
    except urllib.error.HTTPError as e:
        return e.code
try:
    open({str(home / 'backend_token')!r}).read(); readable = True
except OSError:
    readable = False
print(json.dumps([readable, call("/predict", {json.dumps(_predict_body())}),
                  call("/webhook", {{"action": "START_TRAINING", "project": 7}}),
                  call("/webhook", {{"action": "START_TRAINING", "project": 7}}, {token!r})]))
"""
    try:
        r = as_user(other_user, code)
    finally:
        server.shutdown()
    assert r.returncode == 0, r.stderr
    readable, predict, webhook, with_token = json.loads(r.stdout)
    assert (readable, predict, webhook) == (False, 401, 401)
    assert with_token == 404   # authenticated: "unknown project" (nothing queued for an unknown id)


# ------------------------------------------------------------------ logs and body checks

def test_forged_newline_in_a_task_id_stays_on_one_log_line(tmp_path, monkeypatch):
    """Probe 5: a task id with a newline wrote forged lines; a 10^6-character id a 10^6-character line."""
    from ml_backend.app import create_app
    from trainer.store.workspace import Workspace

    monkeypatch.setenv("SCOPELOOP_BACKEND_AUTH", "off")
    ws = Workspace(tmp_path / "projects" / "p")
    ws.update_project(ls_project_id=7, images_root=str(tmp_path), classes=["a", "b"])
    (ws.root / "registry" / "versions" / "001").mkdir(parents=True)
    (ws.root / "registry" / "current").write_text("001")
    (ws.root / "registry" / "versions" / "001" / "label_map.json").write_text('{"classes": ["a", "b"]}')
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    root = logging.getLogger()
    root.addHandler(handler)
    old_level = root.level
    root.setLevel(logging.INFO)
    try:
        app = create_app(Settings(home=tmp_path, redis_url="redis://127.0.0.1:1/0"))
        c = app.test_client()
        tasks = [{"id": "42\n2026-01-01 INFO forged: admin logged in", "data": {}},
                 {"id": "9" * 10**6, "data": {}}]
        assert c.post("/predict", json={"tasks": tasks, "project": "7.1"}).status_code == 200
        logging.getLogger("ml_backend.somewhere").warning("raw %s", "line1\nline2\x1b[31m")
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
    lines = stream.getvalue().splitlines()
    assert not any(line.startswith("2026-01-01 INFO forged") for line in lines), lines
    assert all(len(line) <= 2100 for line in lines), max(map(len, lines))
    assert any("line1\\nline2\\x1b[31m" in line for line in lines), lines


def test_versions_applies_the_body_checks(tmp_path, monkeypatch):
    """Probe 5: /versions answered 500 to JSON nested 100,000 deep (it skipped the body checks)."""
    from ml_backend.app import create_app

    monkeypatch.setenv("SCOPELOOP_BACKEND_AUTH", "off")
    c = create_app(Settings(home=tmp_path)).test_client()
    deep = "[" * 100_000 + "]" * 100_000
    r = c.post("/versions", data=deep, content_type="application/json")
    assert r.status_code == 400, r.status_code
    assert c.post("/versions", data="{nope", content_type="application/json").status_code == 400
    assert c.post("/versions", json={"project": "1" * 40}).status_code == 400
    assert c.get("/versions").get_json() == {"versions": ["untrained"]}   # what LS 1.23 sends: no body


# ------------------------------------------------------------------ image paths

def test_predictor_never_reads_a_link_out_of_the_image_folder(tmp_path):
    """Probe 3 (backend side): /predict computed on a link to a file outside the folder."""
    from ml_backend.predictor import Predictor, PredictOutcome
    from trainer.store.workspace import Workspace

    images = tmp_path / "images"
    images.mkdir()
    secret = tmp_path / "secret.png"
    secret.write_bytes(b"not for annotators")
    (images / "leak.png").symlink_to(secret)
    ws = Workspace(tmp_path / "projects" / "p")
    ws.update_project(images_root=str(images), classes=["a", "b"])
    p = Predictor(ws)
    out = PredictOutcome([], "v")
    rows = [(None, None, None, None)]
    p._load_model = lambda version: pytest.fail("the model must not run on a link out of the folder")
    p._compute("001", {"leak.png": [0]}, rows, images, out)
    assert rows == [(None, None, None, None)]
    assert any("outside the image folder" in e for e in out.errors), out.errors


# ------------------------------------------------------------------ SSRF

def test_demo_starts_label_studio_with_ssrf_protection_on(tmp_path, redis_db_url, monkeypatch):
    """Probe 4: the demo switched SSRF protection off. Its Label Studio now keeps it on and lets
    through the backend's own loopback address only."""
    import ipaddress

    from ml_backend.labelstudio import server as ls_server
    from scopeloop.demo import run_demo
    from scopeloop.services import ServiceError

    seen = {}

    def fake_start(self):
        seen["env"], seen["server"] = self.env(), self
        raise ls_server.LabelStudioServerError("stopped here by the test")

    monkeypatch.setattr(ls_server.LabelStudioServer, "start", fake_start)
    settings = Settings(home=tmp_path / "home", redis_url=redis_db_url(12))
    with pytest.raises(ServiceError, match="stopped here"):
        run_demo(settings, port=ls_server.free_port(), backend_port=ls_server.free_port(), wait=False,
                 log=lambda *_: None)
    env = seen["env"]
    assert env["SSRF_PROTECTION_ENABLED"] == "true" and env["ML_BLOCK_LOCAL_IP"] == "true"
    banned = [ipaddress.ip_network(n) for n in env["USER_ADDITIONAL_BANNED_SUBNETS"].split(",")]
    allowed = seen["server"].allow_hosts
    assert len(allowed) == 1
    for ip in ("127.0.0.1", "10.1.2.3", "192.168.1.1", "169.254.169.254", "::1"):
        if ip != allowed[0]:
            assert any(ipaddress.ip_address(ip) in n for n in banned), ip
    assert not any(ipaddress.ip_address(allowed[0]) in n for n in banned)
    assert stat.S_IMODE(settings.home.stat().st_mode) == 0o700


def test_default_banned_subnets_are_label_studios(tmp_path):
    """Our copy of LS 1.23.2's banned list (the exemption is cut out of it) matches its source."""
    import re

    import label_studio

    from ml_backend.labelstudio.server import DEFAULT_BANNED_SUBNETS

    src = (Path(label_studio.__file__).parent / "core" / "utils" / "io.py").read_text()
    block = src.split("default_banned_subnets = [", 1)[1].split("]", 1)[0]
    assert tuple(re.findall(r"'([^']+)'", block)) == DEFAULT_BANNED_SUBNETS


@pytest.mark.labelstudio
@pytest.mark.slow
def test_label_studio_refuses_loopback_urls(label_studio):
    """Probe 4: Label Studio fetched a loopback URL on import and stored the answer as task data.
    With protection on it refuses an import URL and a webhook on a loopback address other than
    the backend's."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    import requests

    hits = []

    class Stub(BaseHTTPRequestHandler):
        def do_GET(self):
            hits.append(self.path)
            data = json.dumps([{"image": "secret-from-a-loopback-service"}]).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.3", 0), Stub)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    auth = {"Authorization": f"Token {label_studio.token}"}
    try:
        pid = requests.post(f"{label_studio.url}/api/projects", headers=auth, timeout=30,
                            json={"title": f"ssrf-{uuid.uuid4().hex[:8]}"}).json()["id"]
        stub = f"http://127.0.0.3:{httpd.server_address[1]}/tasks.json"
        r = requests.post(f"{label_studio.url}/api/projects/{pid}/import", headers=auth, timeout=30,
                          data={"url": stub})
        assert r.status_code >= 400, r.text
        tasks = requests.get(f"{label_studio.url}/api/tasks?project={pid}", headers=auth, timeout=30).json()
        assert not (tasks.get("tasks") if isinstance(tasks, dict) else tasks), tasks
        assert hits == []
        r = requests.post(f"{label_studio.url}/api/webhooks/", headers=auth, timeout=30,
                          json={"project": pid, "url": stub})
        assert r.status_code in (400, 403) and "reserved network address" in r.text, r.text
    finally:
        httpd.shutdown()
