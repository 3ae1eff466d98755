"""ml_backend.projects: Label Studio project id (every form LS 1.23 sends) -> work directory."""
from __future__ import annotations

import json
import os
import time

import pytest

from ml_backend.projects import ProjectIndex, find_workspace, parse_project_id, scan_projects


@pytest.mark.parametrize("value, expected", [
    ("12.1732300000", 12),          # /setup and /predict: "<id>.<created timestamp>"
    ("12", 12),
    (12, 12),
    ({"id": 12, "title": "wbc", "created_at": "2026-11-22T21:00:00Z"}, 12),   # webhooks
    ({"id": "12"}, 12),
    (12.0, 12),
    (" 3.99 ", 3),
    (None, None), ("", None), ("abc", None), ("1.2.3", None), ({}, None), ([12], None),
    (True, None), (-1, None), (1.5, None), ({"id": None}, None),
])
def test_parse_project_id(value, expected):
    assert parse_project_id(value) == expected


def _make(home, name, ls_id, **extra):
    d = home / "projects" / name
    d.mkdir(parents=True, exist_ok=True)
    (d / "project.json").write_text(json.dumps({"ls_project_id": ls_id, **extra}))
    return d


def test_scan_and_find(tmp_path):
    a = _make(tmp_path, "a", 1)
    b = _make(tmp_path, "b", "2")
    _make(tmp_path, "no-id", None)
    (tmp_path / "projects" / "broken").mkdir()
    (tmp_path / "projects" / "broken" / "project.json").write_text("{not json")
    (tmp_path / "projects" / "list").mkdir()
    (tmp_path / "projects" / "list" / "project.json").write_text("[1, 2]")
    assert scan_projects(tmp_path) == {1: a, 2: b}
    assert find_workspace(tmp_path, "2.1732300000").root == b
    assert find_workspace(tmp_path, {"id": 1}).root == a
    assert find_workspace(tmp_path, 3) is None
    assert find_workspace(tmp_path, None) is None
    assert scan_projects(tmp_path / "nowhere") == {}


def test_duplicate_claims_newest_wins(tmp_path, caplog):
    old = _make(tmp_path, "old", 5)
    new = _make(tmp_path, "new", 5)
    past = time.time() - 100
    os.utime(old / "project.json", (past, past))
    assert scan_projects(tmp_path)[5] == new
    assert "claimed by two work directories" in caplog.text


def test_index_follows_changes(tmp_path):
    idx = ProjectIndex(tmp_path)
    assert idx.find(1) is None                      # nothing yet: `init` not finished
    a = _make(tmp_path, "a", 1)
    assert idx.find("1.1732300000").root == a       # picked up without restart
    _make(tmp_path, "a", 9)                          # project re-pointed to another LS project
    assert idx.find(1) is None
    assert idx.find({"id": 9}).root == a
    b = _make(tmp_path, "b", 1)
    assert idx.find(1).root == b


def test_index_lookup_is_fast(tmp_path):
    for i in range(50):
        _make(tmp_path, f"p{i}", i)
    idx = ProjectIndex(tmp_path)
    idx.find(0)
    t0 = time.perf_counter()
    for i in range(50):
        assert idx.find(i) is not None
    assert (time.perf_counter() - t0) / 50 < 0.01


def test_ids_of_a_million_digits_are_no_project_and_no_error():
    """Issue 11, failure 9: int() of a 10^6-digit id raised ValueError (a 500 in the backend)."""
    for value in ("1" * 10**6, "1" * 10**6 + ".1732300000", "1" * 19, 10**30, {"id": "9" * 40}, 1e30):
        assert parse_project_id(value) is None
    assert parse_project_id("9" * 18 + ".1") == int("9" * 18)
