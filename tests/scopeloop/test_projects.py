"""Projects per image folder on a real Label Studio (issue 11, failures 1, 2 and 6).

Label Studio here is the session's (local-files root "/"); scopeloop's links live under
<SCOPELOOP_HOME>/files. The full demo path (its own Label Studio, restarts) is in
tests/test_demo_projects.py.
"""
from __future__ import annotations

import io
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import requests
from PIL import Image

from scopeloop import projects
from scopeloop.settings import Settings
from tests.dev_data import BCCD

pytestmark = [pytest.mark.labelstudio, pytest.mark.slow]
CLASSES = ["Eosinophil", "Lymphocyte", "Monocyte", "Neutrophil"]


def image_folder(root: Path, n: int = 3) -> Path:
    for cls in CLASSES:
        (root / cls).mkdir(parents=True)
        for p in sorted((BCCD / cls).iterdir())[:n]:
            shutil.copy(p, root / cls / p.name)
    return root


def every_image_loads(ls_url: str, token: str, project_id: int) -> int:
    """GET every task's image through Label Studio's own URL; returns how many decoded."""
    from ml_backend.labelstudio.client import LabelStudioClient

    client = LabelStudioClient(ls_url, token)
    n = 0
    for t in client.list_tasks(project_id, fields="task_only"):
        r = requests.get(ls_url + t["data"]["image"], headers={"Authorization": f"Token {token}"}, timeout=10)
        assert r.status_code == 200, (t["data"]["image"], r.status_code)
        Image.open(io.BytesIO(r.content)).load()
        n += 1
    return n


@pytest.fixture(scope="module")
def ls_client(label_studio):
    from ml_backend.labelstudio.client import LabelStudioClient

    return LabelStudioClient(label_studio.url, label_studio.token)


@pytest.fixture
def settings(label_studio, tmp_path, monkeypatch):
    monkeypatch.setenv("LOCAL_FILES_DOCUMENT_ROOT", "/")
    return Settings(home=tmp_path / "home", label_studio_url=label_studio.url,
                    label_studio_api_key=label_studio.token)


def test_two_folders_two_projects_all_images_load(settings, tmp_path, ls_client):
    a = image_folder(tmp_path / f"plate-{uuid.uuid4().hex[:6]}")
    b = image_folder(tmp_path / "other" / a.name, n=2)    # same folder name, another folder
    ws_a, rep_a = projects.init(settings, None, a, CLASSES)
    ws_b, rep_b = projects.init(settings, None, b, CLASSES)
    assert ws_a.root.name == a.name and ws_b.root.name == f"{a.name}-2"
    assert rep_a.project_id != rep_b.project_id and (rep_a.created, rep_b.created) == (12, 8)
    # the links, not the folders, are what Label Studio serves
    assert (settings.home / "files" / a.name / "images").resolve() == a.resolve()
    # resuming a folder finds its project, whatever order
    ws_a2, again = projects.init(settings, None, a, None)
    assert ws_a2.root == ws_a.root and (again.project_id, again.created, again.existing) == (rep_a.project_id, 0, 12)
    assert every_image_loads(settings.label_studio_url, settings.label_studio_api_key, rep_a.project_id) == 12
    assert every_image_loads(settings.label_studio_url, settings.label_studio_api_key, rep_b.project_id) == 8
    # a name already used by another folder is refused
    with pytest.raises(projects.ProjectError, match="already belongs"):
        projects.init(settings, ws_a.root.name, b, CLASSES)


def _ls_project_count(ls_client) -> int:
    return len(list(ls_client.sdk.projects.list()))


def test_a_failing_init_changes_nothing(settings, tmp_path, ls_client):
    images = image_folder(tmp_path / f"cells-{uuid.uuid4().hex[:6]}", n=1)
    before = _ls_project_count(ls_client)
    with pytest.raises(FileNotFoundError, match="labels file"):
        projects.init(settings, None, images, CLASSES, labels=tmp_path / "missing.csv")
    assert _ls_project_count(ls_client) == before
    assert not (settings.home / "projects" / images.name).exists()
    assert not (settings.home / "files" / images.name).exists()
    # no classes for a new project: refused before anything is made
    with pytest.raises(projects.ProjectError, match="--classes"):
        projects.init(settings, None, images, None)
    assert _ls_project_count(ls_client) == before and not (settings.home / "projects").exists() or \
        not any((settings.home / "projects").iterdir())


def test_init_outside_the_file_root_is_one_sentence_and_changes_nothing(label_studio, tmp_path, ls_client):
    images = image_folder(tmp_path / "cells", n=1)
    home = tmp_path / "home"
    env = {"SCOPELOOP_HOME": str(home), "LABEL_STUDIO_URL": label_studio.url,
           "LABEL_STUDIO_API_KEY": label_studio.token, "LOCAL_FILES_DOCUMENT_ROOT": str(tmp_path / "elsewhere"),
           "PATH": "/usr/bin:/bin"}
    before = _ls_project_count(ls_client)
    r = subprocess.run([sys.executable, "-m", "scopeloop.cli", "init", "--images", str(images), "--classes",
                        ",".join(CLASSES), "--no-backend"], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 2 and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "LOCAL_FILES_DOCUMENT_ROOT" in r.stderr and "{" not in r.stderr   # not Label Studio's raw JSON
    assert _ls_project_count(ls_client) == before and not (home / "projects").exists()


def test_commands_use_the_only_project_else_ask(settings, tmp_path):
    env = {"SCOPELOOP_HOME": str(settings.home), "PATH": "/usr/bin:/bin", "REDIS_URL": "redis://127.0.0.1:1/0"}

    def status():
        return subprocess.run([sys.executable, "-m", "scopeloop.cli", "status"], capture_output=True, text=True,
                              env=env, timeout=300)

    r = status()
    assert r.returncode == 2 and "no project yet" in r.stderr
    ws, _ = projects.init(settings, "demo", image_folder(tmp_path / "a", n=1), CLASSES)
    r = status()
    assert r.returncode == 0 and r.stdout.startswith("project demo"), r.stderr
    projects.init(settings, None, image_folder(tmp_path / "b", n=1), CLASSES)
    r = status()
    assert r.returncode == 2 and "choose one with --project" in r.stderr and "(b, demo)" in r.stderr
