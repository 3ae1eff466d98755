"""Labels are read from Label Studio, the source of truth, before every training.

A webhook only says "something changed"; what changed is read here, so a webhook lost while
the backend was down (Label Studio never retries) loses no label. The snapshot is stored in
the project's work directory (labels.json):

  {"cursor": <ISO time of the newest task change seen>, "project_id": int,
   "tasks": {"<task id>": {"key", "label", "annotations": [{"id", "label", "annotator",
             "created_at", "updated_at"}], "disagreement": bool}}}

Incremental reads ask only for annotated tasks UPDATED after the cursor (Label Studio bumps a
task's `updated_at` whenever one of its annotations is created, edited or deleted), so a label an
annotator corrects (ANNOTATION_UPDATED) reaches the next quick refresh; asking for tasks
completed after the cursor missed every edit of an older annotation. A full read (first sync,
deep refresh, a count mismatch after a deletion) rebuilds the snapshot.

A task whose final answer is the reserved choice `label_config.UNUSABLE` ("Unusable image")
keeps that answer as its `label` in the snapshot, but it is never a class: `labels_by_key`
leaves it out and `unusable_keys` lists it (the refresh takes those images out of the queue,
the export lists them as unusable). A class chosen later on the same task wins, as any edit.
"""
from __future__ import annotations

from datetime import datetime, timedelta

from label_config import UNUSABLE
from ml_backend.labelstudio.client import task_record
from trainer.store.workspace import Workspace


def _iso(value) -> str | None:
    if value is None:
        return None
    return value.isoformat() if isinstance(value, datetime) else str(value)


def annotation_count(snapshot: dict) -> int:
    return sum(t.get("n_annotations", 0) for t in snapshot.get("tasks", {}).values())


def sync_labels(client, ws: Workspace, full: bool = False) -> dict:
    """Bring ws.labels up to date with Label Studio; returns the snapshot (also saved).

    An incremental read is checked against Label Studio's annotation count; a mismatch (an
    annotation deleted, or edited before the cursor) falls back to a full read.
    """
    project = ws.project
    pid = project["ls_project_id"]
    from_name = project.get("from_name", "label")
    snap = ws.labels
    cursor = None if full or snap.get("project_id") != pid else snap.get("cursor")
    tasks = dict(snap.get("tasks", {})) if cursor else {}
    since = datetime.fromisoformat(cursor.replace("Z", "+00:00")) - timedelta(seconds=2) if cursor else None
    newest = cursor
    for t in client.list_tasks(pid, annotated=True, updated_since=since):
        rec = task_record(t, from_name)
        tasks[str(t["id"])] = rec
        for done in (_iso(t.get("updated_at")), _iso(t.get("completed_at")),
                     rec["annotations"][-1]["updated_at"] if rec["annotations"] else None):
            if done and (newest is None or str(done) > newest):
                newest = str(done)
    snap = {"cursor": newest, "project_id": pid, "tasks": tasks}
    if cursor and annotation_count(snap) != int(client.get_project(pid).get("total_annotations_number") or 0):
        return sync_labels(client, ws, full=True)
    ws.save_labels(snap)
    return snap


def labels_by_key(snapshot: dict) -> dict[str, str]:
    """Image key -> class of every labeled task (answers "unusable image" are not classes)."""
    return {t["key"]: t["label"] for t in snapshot.get("tasks", {}).values()
            if t.get("key") and t.get("label") and t["label"] != UNUSABLE}


def unusable_keys(snapshot: dict) -> set[str]:
    """Keys of the images whose final answer is "unusable image" (label_config.UNUSABLE)."""
    return {t["key"] for t in snapshot.get("tasks", {}).values() if t.get("key") and t.get("label") == UNUSABLE}
