"""The work directory's shared readings: the home's projects and a project's model settings."""
import json

from trainer.store.workspace import DEFAULT_MODEL, model_settings, project_dirs


def test_project_dirs_lists_work_directories_with_a_project_json(tmp_path):
    for name in ("b", "a"):
        (tmp_path / "projects" / name).mkdir(parents=True)
        (tmp_path / "projects" / name / "project.json").write_text(json.dumps({"classes": ["x"]}))
    (tmp_path / "projects" / "half-made").mkdir()
    assert [d.name for d in project_dirs(tmp_path)] == ["a", "b"]
    assert project_dirs(tmp_path / "nowhere") == []


def test_model_settings_fill_defaults_and_keep_the_projects_choices():
    assert model_settings({}) == dict(DEFAULT_MODEL, features="multiscale")
    cfg = model_settings({"model": {"backbone": "resnet50", "image_size": 128, "features": "final"}})
    assert cfg["backbone"] == "resnet50" and cfg["image_size"] == 128 and cfg["features"] == "final"
    assert cfg["weights"] == "imagenet" and cfg["channels"] is None


def test_an_empty_status_and_a_truncated_prediction_cache_are_set_aside(tmp_path, caplog):
    """Issue 22: one bad state file never fails every reader; it is renamed and read as absent."""
    import numpy as np

    from trainer.store.workspace import Workspace

    ws = Workspace(tmp_path)
    (tmp_path / "status.json").write_text("")
    assert ws.status == {}
    assert list(tmp_path.glob("status.json.bad-*")) and "status.json" in caplog.text
    ws.update_status(last_quick={"labels": 3})
    assert ws.status == {"last_quick": {"labels": 3}}

    path = ws.save_predictions("001", ["a", "b"], np.eye(2), ["x", "y"])
    assert ws.load_predictions("001")["keys"].tolist() == ["a", "b"]
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])  # cut short
    assert ws.load_predictions("001") is None
    assert not path.exists() and list(path.parent.glob("001.npz.bad-*"))
    ws.save_predictions("001", ["a"], np.eye(2), ["x", "y"])  # 1 key, 2 rows: not a whole cache
    assert ws.load_predictions("001") is None


def test_prediction_caches_of_retired_versions_are_pruned_keeping_what_rollback_needs(tmp_path, monkeypatch):
    """Issue 22: one cache per version was kept forever (about 16 GB per 1,000 labels at 100,000
    images); now at most the current one and the last few served before it."""
    import numpy as np

    from trainer.store.workspace import Workspace

    ws = Workspace(tmp_path)
    for i in range(8):
        with ws.registry.staging() as tmp:
            (tmp / "head.pt").write_text("h")
            v = ws.registry.publish(tmp, make_current=i != 6)  # 007 is a held-back candidate
        ws.save_predictions(v, ["a"], np.ones((1, 2)), ["x", "y"])
    (ws.root / "predictions" / ".005.npz.123.abcdef.tmp.npz").write_bytes(b"half")  # a killed write
    assert ws.registry.current() == "008"
    assert ws.prune_predictions(keep_served=2, stale_tmp_s=0) == ["001", "002", "003", "004", "007"]
    assert sorted(p.name for p in (ws.root / "predictions").iterdir()) == ["005.npz", "006.npz", "008.npz"]
    ws.registry.rollback()  # 006: its cache is there to push
    assert ws.load_predictions("006") is not None
