"""Find a project's work directory from the Label Studio project id.

Each work directory under `<home>/projects/<name>/` has a `project.json` whose
`"ls_project_id"` names its Label Studio project. Label Studio 1.23 sends the project as:

* `/setup`, `/predict`: `"project": "<id>.<created-timestamp>"` (a string),
* webhooks: `"project": {"id": <id>, "title": ..., ...}` (the serialized project),
* older callers / hand-written requests: a bare int or a numeric string.

`parse_project_id` accepts all of them. `ProjectIndex` keeps id -> work dir in memory and
rescans the (few) `project.json` files only when an id is not known or its entry went stale,
so a webhook costs one small file read.
"""
from __future__ import annotations

import json
import logging
import re
import threading
from pathlib import Path
from typing import Any

from trainer.store.workspace import Workspace, project_dirs

log = logging.getLogger(__name__)

_ID_RE = re.compile(r"^\s*(\d{1,18})(?:\.\d{1,30})?\s*$")   # at most 18 digits: a 64-bit id


def parse_project_id(value: Any) -> int | None:
    """The Label Studio project id in any form LS sends it; None if there is none.

    >>> parse_project_id("12.1732300000"), parse_project_id({"id": 12}), parse_project_id(12)
    (12, 12, 12)
    """
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, dict):
        return parse_project_id(value.get("id"))
    if isinstance(value, int):
        return value if 0 <= value < 10 ** 18 else None
    if isinstance(value, float):
        return int(value) if 0 <= value < 1e18 and value.is_integer() else None
    if isinstance(value, str):
        m = _ID_RE.match(value)
        return int(m.group(1)) if m else None
    return None


def _read_ls_id(project_json: Path) -> int | None:
    try:
        data = json.loads(project_json.read_text())
    except (OSError, ValueError):
        return None
    return parse_project_id(data.get("ls_project_id")) if isinstance(data, dict) else None


def scan_projects(home) -> dict[int, Path]:
    """Label Studio project id -> work directory, for every `<home>/projects/*/project.json`.

    Two work directories claiming the same LS project: the one whose project.json was written
    last wins (a re-init into a new folder), and a warning names both.
    """
    found: dict[int, Path] = {}
    mtimes: dict[int, float] = {}
    for pj in (d / "project.json" for d in project_dirs(home)):
        pid = _read_ls_id(pj)
        if pid is None:
            continue
        try:
            mtime = pj.stat().st_mtime
        except OSError:
            continue
        if pid in found:
            log.warning("Label Studio project %s is claimed by two work directories: %s and %s; "
                        "using the newer one", pid, found[pid], pj.parent)
            if mtime < mtimes[pid]:
                continue
        found[pid], mtimes[pid] = pj.parent, mtime
    return found


class ProjectIndex:
    """Thread-safe, lazily refreshed map from Label Studio project id to `Workspace`."""

    def __init__(self, home):
        self.home = Path(home)
        self._map: dict[int, Path] = {}
        self._lock = threading.Lock()

    def find(self, project: Any) -> Workspace | None:
        """The workspace of a project given in any form LS sends it; None when unknown."""
        pid = parse_project_id(project)
        if pid is None:
            return None
        root = self._map.get(pid)
        if root is not None and _read_ls_id(root / "project.json") == pid:
            return Workspace(root)
        with self._lock:
            self._map = scan_projects(self.home)
            root = self._map.get(pid)
        return Workspace(root) if root is not None else None


def find_workspace(home, project: Any) -> Workspace | None:
    """One-off lookup (no cache): the workspace whose project.json has this `ls_project_id`."""
    pid = parse_project_id(project)
    if pid is None:
        return None
    root = scan_projects(home).get(pid)
    return Workspace(root) if root is not None else None
