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
    apply_consensus(snap, project.get("classes") or [], project.get("reviewers") or [])
    ws.save_labels(snap)
    return snap


def apply_consensus(snapshot: dict, classes: list[str], reviewers=()) -> dict:
    """Each task annotated by several people gets the label the model trains on from ALL its
    annotations (trainer.stats.consensus: a reviewer's answer settles it, agreeing annotators keep
    theirs, otherwise Dawid & Skene weighting by each annotator's measured reliability), instead
    of whichever annotation came last. Adds to such tasks ``consensus: {confidence, rule,
    disputed}`` and ``last_label`` (what the last annotation said). A task whose answers include
    "unusable image", or with one annotator, keeps its last answer. In place; returns the snapshot."""
    from trainer.stats.consensus import consensus, votes_from_snapshot

    if not classes:
        return snapshot
    shared = {tid for tid, t in snapshot.get("tasks", {}).items()
              if len({a.get("annotator") or a.get("id") for a in t.get("annotations") or []}) > 1
              and all(a.get("label") in classes for a in t.get("annotations") or [])}
    if not shared:
        return snapshot
    cons = consensus(votes_from_snapshot(snapshot), classes=classes, reviewers=set(reviewers))
    for tid in shared:
        task, c = snapshot["tasks"][tid], cons.tasks.get(tid)
        if c is None:
            continue
        task["last_label"] = task.get("label")
        task["label"] = c.label
        task["consensus"] = {"confidence": round(float(c.confidence), 4), "rule": c.rule, "disputed": c.disputed}
    return snapshot


def agreement_line(snapshot: dict, classes: list[str], reviewers=()) -> str:
    """One line for `scopeloop status`: Krippendorff's alpha with its 95% interval and n
    (trainer.stats.agreement), or why it is not measured yet."""
    from trainer.stats.agreement import agreement
    from trainer.stats.consensus import votes_from_snapshot

    votes = votes_from_snapshot(snapshot)
    if not classes or not votes:
        return "annotator agreement: not measured yet (no task with 2+ annotators)"
    return agreement(votes, classes, set(reviewers), n_boot=500).status_line()


def labels_by_key(snapshot: dict) -> dict[str, str]:
    """Image key -> class of every labeled task (answers "unusable image" are not classes)."""
    return {t["key"]: t["label"] for t in snapshot.get("tasks", {}).values()
            if t.get("key") and t.get("label") and t["label"] != UNUSABLE}


def unusable_keys(snapshot: dict) -> set[str]:
    """Keys of the images whose final answer is "unusable image" (label_config.UNUSABLE)."""
    return {t["key"] for t in snapshot.get("tasks", {}).values() if t.get("key") and t.get("label") == UNUSABLE}
