"""Thin client around label-studio-sdk 2.1.2 for what scopeloop needs from Label Studio.

Facts this module is built on (measured on LS 1.23.2, see docs/benchmarks.md):

* Ordering in Community Edition: with ``sampling="Uncertainty sampling"`` LS serves unlabeled
  tasks in ASCENDING prediction ``score``, counting only predictions whose ``model_version``
  equals the project's ``model_version``. So a pushed prediction's top-level ``score`` is the
  sampler's PRIORITY (``rank / n``: 0.0 = serve first), not the model's confidence. The
  confidence stays visible and exportable as the region score (``result[0]["score"]``, shown
  by the editor next to the predicted choice) and in ``result[0]["meta"]["text"]``.
* LS silently DROPS imported predictions it finds invalid (e.g. a score outside [0, 1]) and
  answers 201 with a smaller ``created``: every push checks the count.
* Version switch: new predictions are imported under a new model_version, then ONE project
  update points the project at it (the labeling stream and the predictions it shows follow
  ``project.model_version``), then the older versions are deleted so the Data Manager, which
  shows every prediction of a task, never shows two versions either. Deleting costs LS ~4.5 ms
  per prediction (a signal per row), so pruning is reported separately.
* ``tasks.list(only_annotated=True)`` is ignored by LS: annotated tasks are selected with a Data
  Manager filter on ``tasks:total_annotations``.
"""
from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable, Iterable, Iterator
from urllib.parse import quote

import httpx
from label_studio_sdk import LabelStudio
from label_studio_sdk.core.api_error import ApiError

from label_config import SUGGESTION_NAME, choice_result

ML_BACKEND_TITLE = "scopeloop"   # never used as a model_version (LS would then call the backend live)
IMPORT_CHUNK = 5000              # tasks per import request (LS limit: 250k, 200 MB)
# Predictions per request: as large as is safe, because LS 1.23.2 recounts the counters of
# EVERY task of the project after each predictions import request (~4 s per 10k tasks).
PREDICTION_CHUNK = 50000
TASK_ID_CHUNK = 500               # task ids per listing request with selectedItems (the query travels in the URL)


class LabelStudioError(RuntimeError):
    """A Label Studio call failed; the message names the call and what to do about it."""


@dataclass(frozen=True)
class PredictionRow:
    """One task's prediction as the worker computed it."""

    task_id: int
    label: str | None   # predicted class (one of the config's choices); None: order only
    confidence: float   # model probability of `label`, shown to annotators
    priority: int       # sampler rank: 0 = label this first
    reason: str = ""    # why the sampler picked it (shown with the suggestion); "" = its rank
    prediction_set: tuple = ()      # issue 25: class names of its prediction set at `coverage` (most probable first)
    coverage: float | None = None   # the prediction set's coverage (e.g. 0.9)
    novel: bool = False             # flagged as none of the trained types


@dataclass
class PushReport:
    model_version: str
    created: int
    import_s: float
    switch_s: float
    prune_s: float = 0.0
    pruned: int = 0


def suggestion_text(row: PredictionRow, n: int) -> str:
    """What the annotator reads under the image: the model's class, confidence and the reason."""
    why = row.reason or (f"queue position {row.priority + 1} of {n}: the sampler ranks it among the images "
                         "that teach the model most")
    if row.novel or (len(row.prediction_set) > 1 and row.coverage is not None):
        from label_config import suggestion_phrase

        what = suggestion_phrase(row.label, row.confidence, row.prediction_set, row.coverage, row.novel)
        return f"Model's suggestion: {what}. Why this image: {why}."
    return (f"Model's suggestion: {row.label} (confidence {row.confidence:.0%}, the model's probability). "
            f"Why this image: {why}.")


# what the suggestion field says before any model exists (issue 22: it was an empty heading)
COLD_START_TEXT = ("No model yet: it trains once two classes have labels, and its suggestion then shows here. "
                   "Images come in an order that covers the variety of the folder.")


def local_files_url(relative_path: str) -> str:
    """URL LS serves a file under LOCAL_FILES_DOCUMENT_ROOT from (local-files storage)."""
    return "/data/local-files/?d=" + quote(relative_path, safe="/")


def _ls_datetime(dt: datetime) -> str:
    """The one format the Data Manager's Datetime filter parses (UTC, trailing Z)."""
    if dt.tzinfo is not None:
        dt = dt.astimezone(timezone.utc).replace(tzinfo=None)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


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


def annotator_name(annotation: dict) -> str:
    """Who made an annotation: LS 1.23 sends `created_username` as " <email>, <user id>".

    >>> annotator_name({"created_username": " admin@scopeloop.local, 1"})
    'admin@scopeloop.local'
    """
    name = str(annotation.get("created_username") or "").strip()
    m = re.fullmatch(r"(.*?),\s*\d+", name)
    name = (m.group(1) if m else name).strip()
    return name or str(annotation.get("completed_by") or "")


def task_record(task: dict, from_name: str) -> dict:
    """The snapshot entry of one task: its final label (last edited annotation wins; None when
    every annotation was skipped). `n_annotations` is compared with Label Studio's count."""
    anns = []
    for a in task.get("annotations") or []:
        label = annotation_choice(a, from_name)
        if label is None:
            continue
        anns.append({
            "id": a.get("id"),
            "label": label,
            "annotator": annotator_name(a),
            "created_at": a.get("created_at"),
            "updated_at": a.get("updated_at") or a.get("created_at"),
        })
    anns.sort(key=lambda a: (str(a["updated_at"] or ""), a["id"] or 0))
    return {
        "key": (task.get("data") or {}).get("key"),
        "label": anns[-1]["label"] if anns else None,
        # counted like Label Studio's total_annotations_number: skipped ones are not
        "n_annotations": sum(not a.get("was_cancelled") for a in task.get("annotations") or []),
        "annotations": anns,
        "disagreement": len({a["label"] for a in anns}) > 1,
    }


class LabelStudioClient:
    """One Label Studio server, one API token (legacy token or personal access token)."""

    def __init__(self, url: str, token: str, timeout: float = 300.0):
        self.url = url.rstrip("/")
        self.token = token
        self.sdk = LabelStudio(base_url=self.url, api_key=token, timeout=timeout)
        self._httpx = httpx.Client(base_url=self.url, timeout=timeout,
                                   headers={"Authorization": f"Token {token}"})

    # ------------------------------------------------------------------ errors
    def _call(self, what: str, fn: Callable, *args, **kwargs):
        """Run an SDK call; turn transport and HTTP failures into one actionable message."""
        try:
            return fn(*args, **kwargs)
        except (httpx.TransportError, ApiError) as e:
            raise self._translate(what, e) from e

    def _translate(self, what: str, e: Exception) -> LabelStudioError:
        if isinstance(e, ApiError):
            return LabelStudioError(self._explain(what, e.status_code, e.body))
        return LabelStudioError(
            f"{what}: Label Studio is unreachable at {self.url} ({e.__class__.__name__}); "
            "start it (`label-studio start`) or fix the URL setting")

    def _explain(self, what: str, status: int | None, body: Any) -> str:
        detail = json.dumps(body)[:500] if not isinstance(body, str) else body[:500]
        if status == 401:
            return (f"{what}: Label Studio rejected the API token (401). Copy the token from "
                    "Account & Settings in the LS UI; a legacy token needs "
                    "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN=true when LS is first set up")
        if status == 403:
            return f"{what}: forbidden (403) - the token's user has no access: {detail}"
        if status == 404:
            return f"{what}: not found (404) - wrong project / task id? {detail}"
        return f"{what}: Label Studio answered {status}: {detail}"

    def _http(self, method: str, path: str, what: str, **kwargs) -> Any:
        """Plain HTTP where the SDK lacks the endpoint or is too slow (said at each call site)."""
        try:
            r = self._httpx.request(method, path, **kwargs)
        except httpx.TransportError as e:
            raise self._translate(what, e) from e
        if r.status_code >= 400:
            try:
                body = r.json()
            except ValueError:
                body = r.text
            raise LabelStudioError(self._explain(what, r.status_code, body))
        return r.json() if r.content else None

    def check(self) -> str:
        """Fail early with a clear message if LS is down or the token is wrong; returns the user."""
        me = self._call("check connection", self.sdk.users.whoami)
        return me.email or me.username

    # ---------------------------------------------------------------- projects
    def find_project(self, title: str) -> int | None:
        for p in self._call("list projects", self.sdk.projects.list, title=title):
            if p.title == title:
                return p.id
        return None

    def create_project(self, title: str, label_config: str, description: str = "") -> int:
        p = self._call(f"create project {title!r}", self.sdk.projects.create, title=title,
                       description=description, label_config=label_config,
                       sampling="Uncertainty sampling", show_collab_predictions=True,
                       maximum_annotations=1)
        self.setup_ordering(p.id)
        return p.id

    def get_project(self, project_id: int) -> dict:
        return self._call(f"get project {project_id}", self.sdk.projects.get, project_id).model_dump()

    def setup_ordering(self, project_id: int) -> None:
        """"Label All Tasks" = ascending score of current-version predictions (see module doc).

        What Label Studio 1.23.2 does with these two settings (read in its source, checked by
        tests/ml_backend/test_bounded_push.py):

        * `show_collab_predictions=True`: opening a task that has NO prediction (GET
          /api/tasks/{id}: the Data Manager's task view, a task link) makes LS call the
          connected ML backend's /predict for it (`tasks.api.TaskAPI.get`) and store the answer.
          That is how a task outside the pushed head gets its pre-annotation on demand.
        * `evaluate_predictions_automatically` stays off: with it on, LS calls /predict for every
          task of every Data Manager page it lists without a prediction, and for every task of an
          unpaginated listing; listing 100,000 tasks would write 100,000 predictions.
        * The labeling stream (/next) shows only predictions of the project's model_version; it
          asks the backend only when that version equals the backend's title, and with that
          setting every pruned version resets the project's model_version (Project.
          delete_predictions), losing the order. So the head is pushed, sized to last until the
          next push (scopeloop.refresh.head_size), and a task served beyond it has no suggestion.
        """
        self._call(f"set ordering of project {project_id}", self.sdk.projects.update, project_id,
                   sampling="Uncertainty sampling", show_collab_predictions=True,
                   evaluate_predictions_automatically=False)

    def ensure_local_storage(self, project_id: int, path: str, title: str = "images") -> int:
        """Local-files storage covering `path`: LS serves /data/local-files/ only under one.

        Not synced: scopeloop imports tasks itself (with keys and preview URLs).
        """
        existing = self._call("list local storages", self.sdk.import_storage.local.list,
                              project=project_id)
        for s in existing:
            if s.path == str(path):
                return s.id
        s = self._call(f"create local-files storage for {path}", self.sdk.import_storage.local.create,
                       project=project_id, path=str(path), title=title, use_blob_urls=False)
        return s.id

    def connect_ml_backend(self, project_id: int, url: str, title: str = ML_BACKEND_TITLE, token: str = "") -> int:
        """Connect the backend (LS then calls its /health + /setup and creates the webhook).

        `token`: the backend's token (ml_backend.security). LS 1.23 calls an ML backend with
        "Basic Auth" (user "scopeloop", the token as password) and its ML webhook gets an
        `Authorization: Token` header; a backend connected before gets both updated."""
        from ml_backend.security import BASIC_USER

        auth = dict(auth_method="BASIC_AUTH", basic_auth_user=BASIC_USER, basic_auth_pass=token) if token else {}
        why = (f"connect ML backend {url} (is it running? Label Studio calls its /health and /setup"
               + ("; a 401 there: the backend's token differs from this one (SCOPELOOP_BACKEND_TOKEN, "
                  "<SCOPELOOP_HOME>/backend_token)" if token else "; a backend with auth on answers 401 without its token")
               + "; 'reserved network address': Label Studio's SSRF settings do not allow the backend's address, "
               "see docs/security.md)")
        found = None
        for b in self._call("list ML backends", self.sdk.ml.list, project=project_id):
            if b.url.rstrip("/") == url.rstrip("/"):
                found = b.id
                if token:
                    self._call(why, self.sdk.ml.update, b.id, url=b.url, project=project_id, **auth)
                break
        if found is None:
            found = self._call(why, self.sdk.ml.create, project=project_id, url=url, title=title,
                               is_interactive=False, **auth).id
        if token:
            self._webhook_auth(project_id, url.rstrip("/") + "/webhook", token)
        return found

    def _webhook_auth(self, project_id: int, webhook_url: str, token: str) -> None:
        """Give the ML webhook LS made for the backend the token header (LS 1.23 sets none).
        Plain HTTP: the SDK's webhook list takes no project filter in this version."""
        hooks = self._http("GET", f"/api/webhooks/?project={int(project_id)}", "list webhooks") or []
        mine = [h for h in hooks if h.get("url") == webhook_url and h.get("project") == project_id]
        if not mine:
            raise LabelStudioError(
                f"connect ML backend: Label Studio made no webhook {webhook_url}, so labels would not reach "
                "the backend (its SSRF settings refuse the address? see docs/security.md)")
        for h in mine:
            headers = dict(h.get("headers") or {})
            if headers.get("Authorization") != f"Token {token}":
                headers["Authorization"] = f"Token {token}"
                self._http("PATCH", f"/api/webhooks/{int(h['id'])}/", "set the ML webhook's token",
                           json={"headers": headers})

    # ------------------------------------------------------------------- tasks
    def import_tasks(self, project_id: int, tasks: list[dict], progress: bool | None = None) -> list[int]:
        """Bulk import (each dict is the task `data`) in requests of IMPORT_CHUNK tasks; returns
        task ids in input order. `progress`: a progress bar on stderr (None: when more than one
        request is needed and stderr is a terminal; 100,000 tasks take ~25 s on PostgreSQL)."""
        from tqdm.auto import tqdm

        ids: list[int] = []
        off = (None if len(tasks) > IMPORT_CHUNK else True) if progress is None else not progress
        with tqdm(total=len(tasks), desc="importing tasks", unit="task", disable=off) as bar:
            for i in range(0, len(tasks), IMPORT_CHUNK):
                chunk = tasks[i:i + IMPORT_CHUNK]
                r = self._call(f"import {len(chunk)} tasks", self.sdk.projects.import_tasks, project_id,
                               request=chunk, return_task_ids=True)
                if r.task_ids is None or len(r.task_ids) != len(chunk):
                    raise LabelStudioError(f"import tasks: sent {len(chunk)}, LS reports "
                                           f"{r.task_count} created; check the task data fields")
                ids.extend(r.task_ids)
                bar.update(len(chunk))
        return ids

    def list_tasks(self, project_id: int, *, annotated: bool | None = None,
                   completed_since: datetime | None = None, fields: str = "all",
                   include: str | None = None, page_size: int = 1000,
                   task_ids: Iterable[int] | None = None,
                   updated_since: datetime | None = None) -> Iterator[dict]:
        """Tasks as dicts (`fields="all"` includes annotations and predictions).

        `annotated=True` keeps tasks with at least one submitted annotation (LS ignores
        `only_annotated`, hence the Data Manager filter). `completed_since` keeps tasks whose
        latest annotation was created after it (incremental sync; edits of older annotations
        are only seen by a full read). `updated_since` keeps tasks changed after it: Label Studio
        1.23.2 bumps a task's `updated_at` on every save or deletion of one of its annotations
        (`Annotation.update_task`), so an edited label is seen too (the incremental sync's filter).
        `include="id,data"` is ~10x faster for big projects
        (but turns annotations into id-only stubs). `task_ids`: only these tasks (the Data
        Manager's selectedItems; sent in chunks of TASK_ID_CHUNK, so a few reads stay a few
        requests however large the project is).
        """
        if task_ids is not None:
            ids = [int(i) for i in task_ids]
            for i in range(0, len(ids), TASK_ID_CHUNK):
                yield from self._list_tasks(project_id, annotated, completed_since, fields, include, page_size,
                                            {"all": False, "included": ids[i:i + TASK_ID_CHUNK]}, updated_since)
            return
        yield from self._list_tasks(project_id, annotated, completed_since, fields, include, page_size, None,
                                    updated_since)

    def _list_tasks(self, project_id, annotated, completed_since, fields, include, page_size, selected,
                    updated_since=None):
        items = []
        if annotated is not None:
            items.append({"filter": "filter:tasks:total_annotations", "operator":
                          "greater" if annotated else "equal", "type": "Number", "value": 0})
        if completed_since is not None:
            items.append({"filter": "filter:tasks:completed_at", "operator": "greater",
                          "type": "Datetime", "value": _ls_datetime(completed_since)})
        if updated_since is not None:
            items.append({"filter": "filter:tasks:updated_at", "operator": "greater",
                          "type": "Datetime", "value": _ls_datetime(updated_since)})
        query = {"filters": {"conjunction": "and", "items": items}, "ordering": ["tasks:id"]}
        if selected is not None:
            query["selectedItems"] = selected
        pager = self._call(f"list tasks of project {project_id}", self.sdk.tasks.list,
                           project=project_id, fields=fields, include=include,
                           page_size=page_size, query=json.dumps(query))
        try:
            for t in pager:
                yield t.model_dump() if hasattr(t, "model_dump") else dict(t)
        except (httpx.TransportError, ApiError) as e:  # later pages are fetched lazily
            raise self._translate(f"list tasks of project {project_id}", e) from e

    def update_task_data(self, task_id: int, data: dict) -> None:
        """PATCH /api/tasks/{id} with the task's complete new `data` (Label Studio replaces the
        whole dict: read the task first and change only what you mean to)."""
        self._http("PATCH", f"/api/tasks/{int(task_id)}", f"update the data of task {task_id}", json={"data": data})

    def task_keys(self, project_id: int) -> dict[str, int]:
        """Image key -> task id for every task (re-init matches images by key)."""
        return {t["data"]["key"]: t["id"]
                for t in self.list_tasks(project_id, fields="task_only", include="id,data",
                                              page_size=5000)
                if "key" in (t.get("data") or {})}

    def read_labels(self, project_id: int, from_name: str = "label",
                    completed_since: datetime | None = None) -> dict[str, str]:
        """Image key -> class from submitted annotations: last updated wins, skips ignored."""
        labels: dict[str, str] = {}
        for t in self.list_tasks(project_id, annotated=True, completed_since=completed_since):
            rec = task_record(t, from_name)
            if rec["label"] is not None:
                labels[t["data"]["key"]] = rec["label"]
        return labels

    def create_annotation(self, task_id: int, label: str, from_name: str = "label",
                          to_name: str = "image") -> int:
        """One annotation (used to import existing labels; LS CE has no bulk annotation API)."""
        a = self._call(f"annotate task {task_id}", self.sdk.annotations.create, task_id,
                       result=[choice_result(from_name, to_name, label)], was_cancelled=False)
        return a.id

    def next_task(self, project_id: int) -> dict | None:
        """What "Label All Tasks" would serve to this token's user now (None: queue empty).

        LS locks the served task for the user: until it is submitted or skipped, every call
        (and the user's labeling stream) returns that same task, whatever the new order.

        Plain HTTP: the SDK has no call for GET /api/projects/{id}/next.
        """
        try:
            return self._http("GET", f"/api/projects/{project_id}/next", "next task")
        except LabelStudioError as e:
            if "(404)" in str(e):
                return None
            raise

    # ------------------------------------------------------------- predictions
    def model_versions(self, project_id: int) -> dict[str, int]:
        """model_version -> number of predictions. Plain HTTP: not in the SDK."""
        return self._http("GET", f"/api/projects/{project_id}/model-versions", "list model versions")

    def delete_model_version(self, project_id: int, model_version: str) -> int:
        """Delete every prediction of one version. Plain HTTP: not in the SDK."""
        r = self._http("DELETE", f"/api/projects/{project_id}/model-versions",
                       f"delete predictions of {model_version}", json={"model_version": model_version})
        return int(r.get("deleted_predictions", 0))

    def push_predictions(self, project_id: int, rows: Iterable[PredictionRow], model_version: str,
                         *, from_name: str = "label", to_name: str = "image",
                         prune: bool = True, score_scale: int | None = None,
                         queue_length: int | None = None) -> PushReport:
        """Import predictions for many tasks, switch the project to `model_version`, prune.

        Each prediction's top-level score is `priority / score_scale` (default: the number of
        rows): a refresh that pushes only the head of its order passes the number of images, so
        the head and the predictions the backend's /predict makes for tasks opened outside it
        (rank / number of images) sort on one scale. `queue_length` (default: the number of
        rows) is the queue size the suggestion text names ("queue position 3 of 2,000").

        Order makes the switch atomic for annotators: while importing, the project still
        points at the old version (LS filters by it), one update flips it, then old versions
        go. If the import fails half-way the project still shows the old version only, and the
        stray predictions are pruned by the next push.
        """
        rows = list(rows)
        if model_version == ML_BACKEND_TITLE:
            raise LabelStudioError(f"model_version {model_version!r} is reserved for the ML "
                                   "backend title (LS would call the backend live)")
        project = self.get_project(project_id)
        current = project.get("model_version")
        # projects made by scopeloop show the suggestion as text too (label_config SUGGESTION_NAME)
        shows_text = f'name="{SUGGESTION_NAME}"' in (project.get("label_config") or "")
        if model_version in self.model_versions(project_id) and model_version != current:
            self.delete_model_version(project_id, model_version)  # leftovers of a failed push
        elif model_version == current:
            raise LabelStudioError(f"model_version {model_version!r} is already live in project "
                                   f"{project_id}; push under a new version name")
        n = max(len(rows), 1)
        scale = max(int(score_scale or n), n)
        queue = int(queue_length or n)
        payload = [{
            "task": r.task_id, "model_version": model_version,
            "score": min(r.priority / scale, 1.0),  # LS serves ascending score: the sampler's order
            # label None (cold start, no model yet): no class, only the order (and, shown, the reason)
            "result": ([{"from_name": SUGGESTION_NAME, "to_name": to_name, "type": "textarea",
                         "value": {"text": [COLD_START_TEXT]}}] if shows_text else []) if r.label is None else [
                choice_result(from_name, to_name, r.label, r.confidence, r.priority + 1, r.prediction_set or None,
                              r.coverage, r.novel)] + ([{
                "from_name": SUGGESTION_NAME, "to_name": to_name, "type": "textarea",
                "value": {"text": [suggestion_text(r, queue)]}}] if shows_text else []),
        } for r in rows]
        t0 = time.perf_counter()
        created = 0
        for i in range(0, len(payload), PREDICTION_CHUNK):
            chunk = payload[i:i + PREDICTION_CHUNK]
            # Plain HTTP although the SDK has projects.import_predictions: its client-side
            # pydantic encoding of 10k predictions costs ~8 s here, doubling the push time.
            created_now = self._http("POST", f"/api/projects/{project_id}/import/predictions",
                                     f"import {len(chunk)} predictions", json=chunk)["created"]
            if created_now != len(chunk):
                raise LabelStudioError(
                    f"import predictions: sent {len(chunk)}, LS created {created_now} (it drops "
                    "invalid ones silently: unknown task id, or a label not in the config "
                    f"choices?); project {project_id} still shows model version {current!r}")
            created += created_now
        t1 = time.perf_counter()
        self._call(f"switch project {project_id} to model version {model_version}",
                   self.sdk.projects.update, project_id, model_version=model_version)
        report = PushReport(model_version, created, t1 - t0, time.perf_counter() - t1)
        if prune:
            t2 = time.perf_counter()
            report.pruned = self.prune_predictions(project_id, keep=model_version)
            report.prune_s = time.perf_counter() - t2
        return report

    def prune_predictions(self, project_id: int, keep: str) -> int:
        """Delete predictions of every version except `keep` (~4.5 ms per prediction in LS)."""
        return sum(self.delete_model_version(project_id, v)
                   for v in self.model_versions(project_id) if v != keep)
