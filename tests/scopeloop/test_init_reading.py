"""`scopeloop init` chooses the project's reading settings (issue 13) on a real Label Studio:
shown in the summary, stored in the project, computed once, each Z plane its own task, previews
read like the model and remade when the settings change."""
from __future__ import annotations

import io
import json
import uuid

import numpy as np
import pytest
import requests
import tifffile
from PIL import Image

from scopeloop.cli import main

pytestmark = [pytest.mark.labelstudio, pytest.mark.slow]


def _folder(root):
    root.mkdir(parents=True)
    for i in range(2):
        planes = np.stack([np.full((24, 24), 300 * (z + 1) + 50 * i, np.uint16) for z in range(3)])
        tifffile.imwrite(root / f"stack{i}.tif", planes, imagej=True, metadata={"axes": "ZYX"})
    tifffile.imwrite(root / "flat.tif", np.full((24, 24), 200, np.uint16))
    return root


def _png(label_studio, url):
    r = requests.get(label_studio.url + url, headers={"Authorization": f"Token {label_studio.token}"}, timeout=10)
    assert r.status_code == 200, url
    return np.asarray(Image.open(io.BytesIO(r.content)))


def test_init_reading_settings_planes_and_per_dataset(label_studio, tmp_path, monkeypatch, capsys):
    from ml_backend.labelstudio.client import LabelStudioClient

    monkeypatch.setenv("LOCAL_FILES_DOCUMENT_ROOT", "/")
    monkeypatch.setenv("SCOPELOOP_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("LABEL_STUDIO_URL", label_studio.url)
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", label_studio.token)
    images = _folder(tmp_path / f"zstacks-{uuid.uuid4().hex[:6]}")
    args = ["init", "--images", str(images), "--classes", "a,b", "--no-backend"]
    assert main(args + ["--stack", "planes", "--normalisation", "per-dataset"]) == 0
    out = capsys.readouterr().out
    assert "7 task(s) created" in out and "reading: each Z plane its own image" in out and "fixed per-dataset range" in out
    pj = tmp_path / "home" / "projects" / images.name / "project.json"
    prep = json.loads(pj.read_text())["model"]["preprocessing"]
    assert prep["stack"] == "planes" and prep["normalisation"] == "per-dataset" and len(prep["ranges"]) == 1

    client = LabelStudioClient(label_studio.url, label_studio.token)
    pid = json.loads(pj.read_text())["ls_project_id"]
    tasks = {t["data"]["key"]: t["data"] for t in client.list_tasks(pid, fields="task_only")}
    assert sorted(tasks) == ["flat.tif"] + [f"stack{i}.tif#z{z}" for i in range(2) for z in range(3)]
    lo, hi = prep["ranges"][0]
    # the preview of a plane task is that plane under the project's fixed range
    z0, z2 = _png(label_studio, tasks["stack0.tif#z0"]["image"]), _png(label_studio, tasks["stack0.tif#z2"]["image"])
    assert abs(int(z0[5, 5, 0]) - round((300 - lo) / (hi - lo) * 255)) <= 1
    assert abs(int(z2[5, 5, 0]) - round(min(1.0, (900 - lo) / (hi - lo)) * 255)) <= 1

    # re-running without choices on a grown folder: same settings, ranges not recomputed
    tifffile.imwrite(images / "bright.tif", np.full((24, 24), 60000, np.uint16))
    assert main(args) == 0
    assert "1 task(s) created" in capsys.readouterr().out
    assert json.loads(pj.read_text())["model"]["preprocessing"] == prep
    # a new choice: previews are remade in place (same URLs) as the model now reads
    assert main(args + ["--normalisation", "per-image"]) == 0
    assert "per-image percentile stretch" in capsys.readouterr().out
    assert json.loads(pj.read_text())["model"]["preprocessing"]["normalisation"] == "per-image"
    again = _png(label_studio, tasks["stack0.tif#z0"]["image"])
    assert not np.array_equal(again, z0)  # a flat plane stretched per image: no longer the fixed-range grey


def test_init_on_a_folder_where_no_image_is_readable_fails_and_leaves_nothing(label_studio, tmp_path, monkeypatch,
                                                                              capsys):
    """Issue 22: it "succeeded" and left an empty project."""
    from ml_backend.labelstudio.client import LabelStudioClient

    monkeypatch.setenv("LOCAL_FILES_DOCUMENT_ROOT", "/")
    monkeypatch.setenv("SCOPELOOP_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("LABEL_STUDIO_URL", label_studio.url)
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", label_studio.token)
    images = tmp_path / f"broken-{uuid.uuid4().hex[:6]}"
    images.mkdir()
    for name in ("a.png", "b.jpg", "c.tif"):
        (images / name).write_bytes(b"not an image at all")
    client = LabelStudioClient(label_studio.url, label_studio.token)
    before = {p.id for p in client.sdk.projects.list()}
    assert main(["init", "--images", str(images), "--classes", "a,b", "--no-backend"]) == 2
    err = capsys.readouterr().err
    assert "none of the 3 image(s)" in err and "could be read" in err
    assert not (tmp_path / "home" / "projects" / images.name).exists()
    assert {p.id for p in client.sdk.projects.list()} == before  # the Label Studio project was removed
