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
