"""Labels are read from Label Studio, the source of truth, before every training.

A webhook only says "something changed"; what changed is read here, so a webhook lost while
the backend was down (Label Studio never retries) loses no label. The snapshot is stored in
the project's work directory (labels.json):

  {"cursor": <ISO time of the newest annotation seen>, "project_id": int,
   "tasks": {"<task id>": {"key", "label", "annotations": [{"id", "label", "annotator",
             "created_at", "updated_at"}], "disagreement": bool}}}

Incremental reads ask only for tasks completed after the cursor; a full read (first sync,
deep refresh, after edits/deletions) rebuilds the snapshot, which also catches edited and
deleted annotations.
"""
from __future__ import annotations

from datetime import datetime, timedelta

from trainer.workspace import Workspace


def annotation_choice(annotation: dict, from_name: str) -> str | None:
    """The class an annotation chose (None for a skipped/cancelled or empty annotation)."""
    if annotation.get("was_cancelled"):
        return None
    for r in annotation.get("result") or []:
        if r.get("from_name") == from_name and r.get("type") == "choices":
            choices = (r.get("value") or {}).get("choices") or []
            if choices:
                return choices[0]
    return None


def task_record(task: dict, from_name: str) -> dict:
    """The snapshot entry of one task: its final label (last edited annotation wins; None when
    every annotation was skipped). `n_annotations` counts all, to compare with Label Studio."""
    anns = []
    for a in task.get("annotations") or []:
        label = annotation_choice(a, from_name)
        if label is None:
            continue
        anns.append({
            "id": a.get("id"),
            "label": label,
            "annotator": a.get("created_username") or str(a.get("completed_by") or ""),
            "created_at": a.get("created_at"),
            "updated_at": a.get("updated_at") or a.get("created_at"),
        })
    anns.sort(key=lambda a: (str(a["updated_at"] or ""), a["id"] or 0))
    return {
        "key": (task.get("data") or {}).get("key"),
        "label": anns[-1]["label"] if anns else None,
        "n_annotations": len(task.get("annotations") or []),
        "annotations": anns,
        "disagreement": len({a["label"] for a in anns}) > 1,
    }


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
    for t in client.list_tasks(pid, annotated=True, completed_since=since):
        rec = task_record(t, from_name)
        tasks[str(t["id"])] = rec
        done = _iso(t.get("completed_at")) or (rec["annotations"][-1]["updated_at"] if rec["annotations"] else None)
        if done and (newest is None or str(done) > newest):
            newest = str(done)
    snap = {"cursor": newest, "project_id": pid, "tasks": tasks}
    if cursor and annotation_count(snap) != int(client.get_project(pid).get("total_annotations_number") or 0):
        return sync_labels(client, ws, full=True)
    ws.save_labels(snap)
    return snap


def labels_by_key(snapshot: dict) -> dict[str, str]:
    return {t["key"]: t["label"] for t in snapshot.get("tasks", {}).values() if t.get("key") and t.get("label")}
