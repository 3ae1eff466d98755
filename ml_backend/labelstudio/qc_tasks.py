"""Image quality verdicts (trainer.quality) made visible in Label Studio, as task data fields.

Every task scopeloop imports carries three data fields:

=========  ===============================================================================
field      content
=========  ===============================================================================
qc         the verdict: ok, blank, out_of_focus, saturated, too_dark, duplicate, unusual
           ("" when the image was not judged: unreadable for the quality pass)
qc_score   the score that decided it, with its value and threshold, e.g.
           "structure 0.0012 < 0.004" ("" for ok)
qc_note    the line the labeling view shows above the image (label_config.QC_NOTE_FIELD):
           "" for ok, else the verdict, its score and what to do
=========  ===============================================================================

The Data Manager shows each as a column (`qc`, `qc_score`, `qc_note`) that can be filtered, e.g.
"qc is not ok". New tasks get the fields inside the import (no extra request); a verdict that
changes later (new images arrive, embeddings judge near duplicates and unusual images) is written
with PATCH /api/tasks/{id}, which REPLACES the task's whole `data` (Label Studio 1.23.2, ~0.2 s
per task): the current data of those tasks only is read first (by task id, never a listing of the
whole project: minutes at 100,000 tasks) and only the three fields change. Only a change of
VERDICT is written: `qc_score` keeps the score that decided the verdict when it was set (scores
drift a little as the pool grows; re-writing every flagged task for that would cost 0.2 s each).
What was written (and what `init` imported, `record_imported`) is remembered in
`<workdir>/qc/published.json`, so a refresh whose verdicts did not change costs nothing. Tasks imported before this existed and judged ok are left without the fields (writing
every one of them would cost 0.2 s per task); every flagged one gets them.
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Callable

from label_config import QC_NOTE_FIELD, UNUSABLE
from trainer.store.atomic import write_json_atomic
from trainer.store.workspace import read_json

QC_FIELD = "qc"
QC_SCORE_FIELD = "qc_score"
FIELDS = (QC_FIELD, QC_SCORE_FIELD, QC_NOTE_FIELD)
PUBLISHED = "published.json"  # under <workdir>/qc/
# PATCHes per call: a refresh is never held up for long; the rest follow at the next refresh
MAX_UPDATES = int(os.environ.get("SCOPELOOP_QC_MAX_UPDATES", "300"))
READ_CHUNK = 200  # tasks read per request (by id) before their verdicts are written

_WORDS = {"blank": "no object in the field", "out_of_focus": "out of focus", "saturated": "saturated exposure",
          "too_dark": "too dark", "duplicate": "a duplicate", "unusual": "unlike the rest of the images"}


def task_fields(entry: dict | None) -> dict:
    """The task data fields for one image's verdict ({"verdict", "reason"}; None: not judged)."""
    if not entry or not entry.get("verdict"):
        return {QC_FIELD: "", QC_SCORE_FIELD: "", QC_NOTE_FIELD: ""}
    verdict, reason = str(entry["verdict"]), str(entry.get("reason") or "")
    if verdict == "ok":
        return {QC_FIELD: "ok", QC_SCORE_FIELD: "", QC_NOTE_FIELD: ""}
    note = (f"Image quality check: {_WORDS.get(verdict, verdict)} ({verdict}: {reason}). Kept out of the suggested "
            f"order. If no cell can be classified, answer '{UNUSABLE}' (key 0); a class you choose is used as usual.")
    return {QC_FIELD: verdict, QC_SCORE_FIELD: reason, QC_NOTE_FIELD: note}


def _same(data: dict, want: dict) -> bool:
    """Whether the task already shows this verdict (a task from before QC, without the fields,
    shows "ok": only flagged ones are written)."""
    if all(k not in data for k in FIELDS):
        return want[QC_FIELD] in ("ok", "")
    return data.get(QC_FIELD, "") == want[QC_FIELD]


def _record_path(workdir) -> Path:
    return Path(workdir) / "qc" / PUBLISHED


def _load_record(workdir, project_id: int) -> dict:
    try:
        rec = read_json(_record_path(workdir), {})
    except (OSError, ValueError):
        return {}
    return rec.get("fields", {}) if isinstance(rec, dict) and rec.get("project_id") == project_id else {}


def _save_record(workdir, project_id: int, fields: dict) -> None:
    write_json_atomic(_record_path(workdir), {"project_id": project_id, "fields": fields})


def publish_verdicts(client, project_id: int, workdir, task_ids: dict | None = None, verdicts: dict | None = None,
                     log: Callable[[str], None] = print, max_updates: int | None = None) -> dict:
    """Write changed verdicts into the tasks' data; returns {"changed", "updated", "seconds"}.

    task_ids: image key -> task id (every task of the project; None: read from Label Studio,
    only when some verdict changed); verdicts: key -> {"verdict", "reason"} (default: the
    project's last quality pass, trainer.quality.project.load_verdicts).
    At most `max_updates` tasks are written per call (default MAX_UPDATES); the rest are written
    by the next call. A Label Studio error is logged, never raised: QC is advisory.

    Label Studio work is bounded by what changed, not by the pool: only the tasks whose verdict
    differs from the record are read (by id, a few per request) and written. A task with no
    record and an "ok" verdict is recorded without reading it: it shows "ok" either way (imported
    with the fields, or from before QC and so without them); every task `init` imports is
    recorded by `record_imported`.
    """
    from trainer.quality.project import load_verdicts

    t0 = time.perf_counter()
    out = {"changed": 0, "updated": 0, "seconds": 0.0}
    if client is None:
        return out
    verdicts = load_verdicts(workdir) if verdicts is None else verdicts
    if not verdicts:
        return out
    limit = MAX_UPDATES if max_updates is None else max_updates
    record = _load_record(workdir, project_id)
    before = dict(record)
    want, todo = {}, []
    for k, v in verdicts.items():
        if task_ids is not None and k not in task_ids:
            continue
        f = task_fields(v)
        if record.get(k) == f[QC_FIELD]:
            continue
        if k not in record and f[QC_FIELD] in ("ok", ""):
            record[k] = f[QC_FIELD]  # shows ok: with the fields, or without them (from before QC)
            continue
        want[k] = f
        todo.append(k)
    out["changed"] = len(todo)
    if not todo:
        if record != before:
            _save_record(workdir, project_id, record)
        return out
    try:
        if task_ids is None:
            task_ids = client.task_keys(project_id)  # one listing, only when there is something to write
        todo = [k for k in todo if k in task_ids]
        for i in range(0, len(todo), READ_CHUNK):
            if out["updated"] >= limit:
                break  # not recorded: written next time
            chunk = todo[i:i + READ_CHUNK]
            data_of = {t["id"]: t.get("data") or {} for t in
                       client.list_tasks(project_id, fields="task_only", include="id,data",
                                         task_ids=[task_ids[k] for k in chunk], page_size=READ_CHUNK)}
            for k in chunk:
                tid, f = task_ids[k], want[k]
                data = data_of.get(tid)
                if data is None:
                    continue  # deleted meanwhile
                if not _same(data, f):
                    if out["updated"] >= limit:
                        continue  # not recorded: written next time
                    client.update_task_data(tid, dict(data, **f))
                    out["updated"] += 1
                record[k] = f[QC_FIELD]
    except Exception as exc:  # noqa: BLE001 - never block a refresh or an init on this
        log(f"image quality verdicts not written to Label Studio this time: {type(exc).__name__}: {exc}")
    if record != before:
        _save_record(workdir, project_id, record)
    out["seconds"] = round(time.perf_counter() - t0, 2)
    if out["updated"]:
        left = sum(1 for k in todo if record.get(k) != want[k][QC_FIELD])
        log(f"image quality: verdicts of {out['updated']} task(s) written to Label Studio in {out['seconds']} s"
            + (f"; {left} more at the next refresh" if left else ""))
    return out


def record_imported(workdir, project_id: int, fields_of: dict) -> None:
    """Remember the verdicts that new tasks carried in their import ({key: task_fields(...)}),
    so the next publish_verdicts neither reads nor writes them."""
    if not fields_of:
        return
    record = _load_record(workdir, project_id)
    record.update({k: f.get(QC_FIELD, "") for k, f in fields_of.items()})
    _save_record(workdir, project_id, record)
