"""The whole path a lab takes after the demo, on a real Label Studio (issue 11, failures 1 and 6).

`scopeloop demo` on the bundled sample; while it runs, the closing lines' `status` command works
as printed and `scopeloop init` makes a second project from another folder; the demo stops and
restarts as `scopeloop demo --images <third folder>`. Then every task image of all three
projects is fetched through Label Studio's own URL with the project's token: 200 and a decodable
image each (on the old main the second and third projects' images were 404).
"""
from __future__ import annotations

import io
import shutil
import subprocess

import pytest
import requests
from PIL import Image

from ml_backend.labelstudio.client import LabelStudioClient
from ml_backend.labelstudio.server import free_port
from scopeloop.demo import run_demo
from scopeloop.settings import Settings
from tests.dev_data import BCCD

pytestmark = [pytest.mark.slow, pytest.mark.labelstudio]
CLASSES = ["Eosinophil", "Lymphocyte", "Monocyte", "Neutrophil"]


def folder(root, start: int, n: int = 2):
    for cls in CLASSES:
        (root / cls).mkdir(parents=True)
        for p in sorted((BCCD / cls).iterdir())[start:start + n]:
            shutil.copy(p, root / cls / p.name)
    return root


def all_images_load(url: str, token: str) -> dict[str, int]:
    """project title -> number of task images that load (asserts every one does)."""
    client = LabelStudioClient(url, token)
    out = {}
    for proj in client.sdk.projects.list():
        n = 0
        for t in client.list_tasks(proj.id, fields="task_only"):
            r = requests.get(url + t["data"]["image"], headers={"Authorization": f"Token {token}"}, timeout=20)
            assert r.status_code == 200, f"project {proj.title}: {t['data']['image']} -> {r.status_code}"
            Image.open(io.BytesIO(r.content)).load()
            n += 1
        out[proj.title] = n
    return out


def test_demo_then_own_folders_then_restart_every_image_loads(tmp_path, monkeypatch):
    for k in ("REDIS_URL", "LABEL_STUDIO_URL", "LABEL_STUDIO_API_KEY", "SCOPELOOP_BACKEND_URL",
              "LOCAL_FILES_DOCUMENT_ROOT"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("SCOPELOOP_HOME", str(tmp_path / "home"))
    home = tmp_path / "home"
    second, third = folder(tmp_path / "plate2", 10), folder(tmp_path / "lab" / "plate3", 14)
    port = free_port()
    lines: list[str] = []
    info = run_demo(Settings(home=home), port=port, backend_port=free_port(), wait=False, log=lines.append)
    try:
        assert info["project"] == "demo"
        # the closing lines' commands work as printed (from another folder)
        r = subprocess.run(info["commands"]["status"], shell=True, capture_output=True, text=True, cwd=tmp_path,
                           timeout=300)
        assert r.returncode == 0 and r.stdout.startswith("project demo"), r.stdout + r.stderr
        init = info["commands"]["init"].replace("<folder>", str(second)).replace('"A,B,C"', ",".join(CLASSES))
        r = subprocess.run(init, shell=True, capture_output=True, text=True, cwd=tmp_path, timeout=600)
        assert r.returncode == 0 and "8 task(s) created" in r.stdout, r.stdout + r.stderr
        # with two projects, commands ask which one
        r = subprocess.run(info["commands"]["status"].replace(" --project demo", ""), shell=True,
                           capture_output=True, text=True, cwd=tmp_path, timeout=300)
        assert r.returncode == 2 and "choose one with --project" in r.stderr
    finally:
        info["stop"]()
    # restart on a third folder: its own project, the others untouched
    info = run_demo(Settings(home=home), images=third, port=port, backend_port=free_port(), wait=False,
                    log=lines.append)
    try:
        assert info["project"] == "plate3"
        loaded = all_images_load(f"http://127.0.0.1:{port}", info["token"])
        assert loaded == {"demo": 51, "plate2": 8, "plate3": 8}, loaded
    finally:
        info["stop"]()
    assert sum("first start" in line for line in lines) == 1   # said once, not on every start
