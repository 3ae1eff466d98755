"""Issue 24, browser check: a cell task shows the cell in its neighbourhood in Label Studio's
labeling view. `scopeloop init --cells auto` on three bundled fields of view; headless Chromium
logs in, opens one cell's task and checks that the labeling area's image is the task's context
view (its pixel size, larger than the cell's crop, the outline drawn in it), not the bare crop;
keeps a screenshot under test-artifacts/browser/cell_in_context.png (-FAILED.* on failure).
Skipped without Playwright + Chromium (tests/browser.py), as every browser test."""
from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path

import pytest
from PIL import Image

from tests.browser import artifacts, chromium_page, login, save_artifacts, skip_module_without_browser

pytestmark = [pytest.mark.slow, pytest.mark.labelstudio]
skip_module_without_browser()   # no Playwright / Chromium: skip before Label Studio starts

from scopeloop.cli import main

FOV = Path(__file__).resolve().parents[1] / "scopeloop" / "sample_data" / "fov"
FIELDS = ["BloodImage_00000.jpg", "BloodImage_00009.jpg", "BloodImage_00020.jpg"]
UI_TIMEOUT_MS = 60_000
IMAGE_STATE = """() => {
  const imgs = [...document.querySelectorAll('.lsf-main-view .lsf-image img, .lsf-main-view img[alt="image"]')];
  return imgs.map(i => ({naturalWidth: i.naturalWidth, naturalHeight: i.naturalHeight, src: i.currentSrc.slice(-120)}));
}"""


def test_cell_task_shows_the_cell_in_context(label_studio, tmp_path, monkeypatch):
    from ml_backend.labelstudio.client import LabelStudioClient

    monkeypatch.setenv("LOCAL_FILES_DOCUMENT_ROOT", "/")
    monkeypatch.setenv("SCOPELOOP_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("LABEL_STUDIO_URL", label_studio.url)
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", label_studio.token)
    fields = tmp_path / f"smears-{uuid.uuid4().hex[:6]}"
    fields.mkdir()
    for f in FIELDS:
        shutil.copy(FOV / f, fields / f)
    assert main(["init", "--images", str(fields), "--classes", "White cell,Red cell", "--no-backend",
                 "--cells", "auto"]) == 0
    work = tmp_path / "home" / "projects" / fields.name
    pid = json.loads((work / "project.json").read_text())["ls_project_id"]
    client = LabelStudioClient(label_studio.url, label_studio.token)
    task = min(client.list_tasks(pid, fields="all"), key=lambda t: t["id"])
    key = task["data"]["key"]
    with Image.open(work / "previews" / (key + ".png")) as im:
        view_size = im.size
    with Image.open(work / "cells" / "crops" / key) as im:
        crop_size = im.size
    assert view_size != crop_size

    with chromium_page() as page, artifacts(page, "cell_in_context"):
        login(page, label_studio.url, label_studio.username, label_studio.password)
        page.goto(f"{label_studio.url}/projects/{pid}/data?task={task['id']}")
        deadline = UI_TIMEOUT_MS
        state = []
        while deadline > 0:
            state = page.evaluate(IMAGE_STATE)
            if any((i["naturalWidth"], i["naturalHeight"]) == view_size for i in state):
                break
            page.wait_for_timeout(500)
            deadline -= 500
        assert any((i["naturalWidth"], i["naturalHeight"]) == view_size for i in state), (
            f"the labeling area shows {state}; expected the cell's context view of size {view_size} "
            f"(the bare crop is {crop_size})")
        save_artifacts(page, "cell_in_context")
