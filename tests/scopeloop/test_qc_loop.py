"""Image quality control in the loop, on a real Label Studio (issue 14).

The generated QC set (tests/data/qc: 16 ok fields, one blank, one out of focus, one saturated,
one too dark, one exact duplicate) becomes a project with `scopeloop init`; a refresh then runs
against the same Label Studio with the real client.
"""
from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path

import pytest

from label_config import QC_NOTE_FIELD, UNUSABLE
from scopeloop import projects
from scopeloop.settings import Settings

pytestmark = [pytest.mark.labelstudio, pytest.mark.slow]
QC = Path(__file__).resolve().parents[1] / "data" / "qc"
FLAGGED = {"blank_01.png": "blank", "out_of_focus_01.png": "out_of_focus", "saturated_01.png": "saturated",
           "too_dark_01.png": "too_dark", "zz_duplicate_of_ok_03.tif": "duplicate"}


@pytest.fixture
def settings(label_studio, tmp_path, monkeypatch):
    monkeypatch.setenv("LOCAL_FILES_DOCUMENT_ROOT", "/")
    return Settings(home=tmp_path / "home", label_studio_url=label_studio.url, label_studio_api_key=label_studio.token)


@pytest.fixture
def qc_project(settings, tmp_path):
    from ml_backend.labelstudio.client import LabelStudioClient

    images = tmp_path / f"qc-{uuid.uuid4().hex[:8]}"
    shutil.copytree(QC, images, ignore=shutil.ignore_patterns("*.py"))
    ws, report = projects.init(settings, None, images, ["round", "long"], model={"image_size": 64})
    return ws, report, LabelStudioClient(settings.label_studio_url, settings.label_studio_api_key), settings


def _tasks(client, pid) -> dict:
    return {t["data"]["key"]: t for t in client.list_tasks(pid, fields="all")}


def _live_order(client, pid) -> list[str]:
    """Keys in the order "Label All Tasks" serves them: ascending score of live-version predictions."""
    live = client.get_project(pid)["model_version"]
    scored = []
    for key, t in _tasks(client, pid).items():
        for p in t.get("predictions") or []:
            if p.get("model_version") == live:
                scored.append((p["score"], key))
    return [k for _, k in sorted(scored)]


def test_flagged_out_of_the_order_verdict_in_task_data_unusable_leaves_the_queue(qc_project):
    from scopeloop.refresh import Refresher

    ws, report, client, settings = qc_project
    pid = report.project_id
    # ---- init judged every image; the verdict is in each task's data from the import on
    assert report.created == 21 and report.qc["counts"] == {"ok": 16, **{v: 1 for v in FLAGGED.values()}}
    assert "5 of 21 image(s) flagged" in report.summary()
    tasks = _tasks(client, pid)
    for key, t in tasks.items():
        d = t["data"]
        assert d["qc"] == FLAGGED.get(key, "ok"), (key, d)
        if key in FLAGGED:  # the labeling view's line: verdict, the deciding score, what to do
            assert d["qc_score"] and d["qc_score"] in d[QC_NOTE_FIELD] and UNUSABLE in d[QC_NOTE_FIELD]
        else:
            assert d[QC_NOTE_FIELD] == "" and d["qc_score"] == ""
    assert tasks["blank_01.png"]["data"]["qc_score"].startswith("structure ")
    # the Data Manager filters on the column
    query = {"filters": {"conjunction": "and", "items": [
        {"filter": "filter:tasks:data.qc", "operator": "equal", "type": "String", "value": "blank"}]}}
    hits = list(client.sdk.tasks.list(project=pid, fields="task_only", query=json.dumps(query)))
    assert [h.data["key"] for h in hits] == ["blank_01.png"]
    # the project's labeling view shows the line and offers the "unusable" answer
    config = client.get_project(pid)["label_config"]
    assert f'value="${QC_NOTE_FIELD}"' in config and f'value="{UNUSABLE}"' in config
    assert ws.project["classes"] == ["round", "long"]

    # ---- the refresh's task map and the record of what each task shows come from the import
    # itself: neither init nor the first refresh lists the project's tasks (minutes at 100,000)
    cached = json.loads((ws.root / "tasks.json").read_text())
    assert cached == {"count": 21, "tasks": {k: t["id"] for k, t in tasks.items()}}
    published = json.loads((ws.root / "qc" / "published.json").read_text())
    assert published == {"project_id": pid, "fields": {k: FLAGGED.get(k, "ok") for k in tasks}}

    # ---- the first refresh (cold start): flagged images come after every ok image
    r = Refresher(ws, client, log=lambda *_: None)
    listed = []
    client.task_keys = lambda project_id: listed.append(project_id) or type(client).task_keys(client, project_id)
    out = r.run("quick")
    del client.task_keys
    assert listed == []
    order = _live_order(client, pid)
    assert len(order) == 21 and set(order[-5:]) == set(FLAGGED), order
    assert out["unusable"] == 0

    # ---- an annotator answers "unusable" for the blank field, and labels two images anyway,
    # one of them flagged (out of focus): that one is used as labeled
    client.create_annotation(tasks["blank_01.png"]["id"], UNUSABLE)
    client.create_annotation(tasks["out_of_focus_01.png"]["id"], "round")
    client.create_annotation(tasks["ok_05.png"]["id"], "long")
    out = r.run("quick")
    assert out["labels"] == 2 and out["unusable"] == 1 and out.get("promoted")
    current = ws.registry.current()
    trained_on = ws.registry.read_json(current, "training_labels.json")
    assert trained_on == {"out_of_focus_01.png": "round", "ok_05.png": "long"}
    assert json.loads((ws.registry.path(current) / "label_map.json").read_text()) == {"0": "round", "1": "long"}
    order = _live_order(client, pid)
    # out of the queue: no prediction in the live version, never a class
    assert "blank_01.png" not in order and len(order) == 21 - 3
    assert set(order[-3:]) == set(FLAGGED) - {"blank_01.png", "out_of_focus_01.png"}
    assert ws.project["classes"] == ["round", "long"]
    nxt = client.next_task(pid)
    assert nxt is not None and nxt["data"]["key"] not in FLAGGED

    # ---- a new image arrives (init again on the folder, as a lab adds images): judged before its
    # import, the worker's verdicts (judged with embeddings) are not overwritten by init's
    from trainer.quality.project import QC_DIR

    images = Path(ws.project["images_root"])
    shutil.copy(images / "blank_01.png", images / "zz_new_blank.png")
    before = json.loads((ws.root / QC_DIR / "verdicts.json").read_text())
    assert before["embeddings"] is True
    _, again = projects.init(settings, None, images, None)
    assert again.created == 1 and _tasks(client, pid)["zz_new_blank.png"]["data"]["qc"] == "blank"
    assert json.loads((ws.root / QC_DIR / "verdicts.json").read_text())["signature"] == before["signature"]
    out = r.run("quick")  # what TASKS_CREATED starts
    assert "zz_new_blank.png" in _live_order(client, pid)[-3:]
