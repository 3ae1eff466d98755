"""Issue 22: `scopeloop versions` lists versions with their quality; `scopeloop rollback [VERSION]`
switches `current` atomically and pushes that version's suggestions to Label Studio."""
import json

import numpy as np
import pytest

from scopeloop.rollback import rollback, version_rows
from tests.ml_backend.conftest import ls_client, project_title  # noqa: F401
from trainer.store.workspace import Workspace

CLASSES = ["round", "long"]
KEYS = [f"x/{i}.png" for i in range(6)]


def _version(ws: Workspace, favourite: int, labels: int) -> str:
    """A version whose cached predictions all say CLASSES[favourite]."""
    with ws.registry.staging() as tmp:
        (tmp / "head.pt").write_text("head")
        (tmp / "config.json").write_text(json.dumps({"classes": CLASSES}))
        (tmp / "metrics.json").write_text(json.dumps({}))
        v = ws.registry.publish(tmp, record={"labels": labels})
    probs = np.full((len(KEYS), 2), 0.2, np.float32)
    probs[:, favourite] = 0.8
    ws.save_predictions(v, KEYS, probs, CLASSES, rank=np.arange(len(KEYS)))
    return v


@pytest.fixture
def ws(tmp_path):
    home = tmp_path / "home"
    w = Workspace(home / "projects" / "cells")
    w.update_project(classes=CLASSES, from_name="label", to_name="image")
    _version(w, 0, 10)
    _version(w, 1, 20)
    return w


def test_versions_lists_each_version_with_its_quality(ws, tmp_path, monkeypatch, capsys):
    from scopeloop.cli import main

    rows = version_rows(ws)
    assert [(r["version"], r["current"], r["labels"]) for r in rows] == [("002", True, 20), ("001", False, 10)]
    monkeypatch.setenv("SCOPELOOP_HOME", str(tmp_path / "home"))
    assert main(["versions"]) == 0
    out = capsys.readouterr().out
    assert "* 002" in out and "  001" in out and "20 labels" in out and "no estimate yet" in out


def test_rollback_offline_switches_current(ws, tmp_path, monkeypatch, capsys):
    from scopeloop.cli import main

    monkeypatch.setenv("SCOPELOOP_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:1/0")  # nothing there: no lock to take
    assert main(["rollback", "--offline"]) == 0
    assert ws.registry.current() == "001"
    assert main(["rollback", "7", "--offline"]) == 2
    assert "does not exist" in capsys.readouterr().err


@pytest.mark.labelstudio
def test_rollback_tells_label_studio(ws, ls_client, project_title):
    from label_config import build_config
    from scopeloop.rollback import push_version

    pid = ls_client.create_project(project_title, build_config(CLASSES))
    ls_client.import_tasks(pid, [{"image": f"/data/local-files/?d={k}", "key": k} for k in KEYS])
    ws.update_project(ls_project_id=pid)
    push_version(ws, ls_client, "002")  # what the refresh that made 002 pushed
    out = rollback(ws, ls_client)
    assert out["to"] == "001" and ws.registry.current() == "001"
    live = ls_client.get_project(pid)["model_version"]
    assert live == out["pushed"]["ls_model_version"] == ws.status["ls_model_version"] and "v001" in live
    shown = {p["result"][0]["value"]["choices"][0] for t in ls_client.list_tasks(pid)
             for p in t["predictions"] if p["model_version"] == live}
    assert shown == {"round"}  # 001's suggestions, not 002's
