"""Issue 7, browser check: what an annotator sees in the real Label Studio labeling page.

A project on a few BCCD images (local-files storage) gets predictions pushed the way the
worker pushes them (`push_predictions`, under the project's model_version). Headless Chromium
logs in with the admin's username and password, opens the project's Data Manager and clicks
"Label All Tasks". The test checks that

* the task served first is the one the sampler put first (priority 0),
* the editor shows that task's image (the <img> in the labeling area has loaded and has the
  file's pixel size),
* the model's predicted class is pre-selected in the Choices control (and only that one),
* the model's suggestion is shown as text, marked as the model's: the suggested class, its
  confidence and the reason the sampler picked the image, rendered and visible on the page
  (issue 11, failure 5),
* after Submit (accepting the pre-annotation) the predicted class is saved as the label and
  the next task served is the sampler's second pick, with the same checks,

and keeps a screenshot + the page HTML of the first task under test-artifacts/browser/
(labeling_stream.png/.html), and of the failing state on failure (labeling_stream-FAILED.*,
with the error and the browser's console errors in the .txt).

Why the button and not the URL: LS 1.23.2 serves "Label All Tasks" (button) through
POST /api/dm/actions?id=next_task with body {"project": id}, which follows the project's
sampling (ascending prediction score). Opening /projects/{id}/data?labeling=1 directly sends
the tab's (empty) filters, ordering and selectedItems instead, which LS treats as a
"Data manager queue" and serves the lowest task id, ignoring the sampler's order.
"""
from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import pytest
from PIL import Image

from label_config import QC_NOTE_FIELD, UNUSABLE, build_config
from ml_backend.labelstudio.client import LabelStudioClient, PredictionRow, local_files_url
from tests.browser import artifacts, chromium_page, login, save_artifacts, skip_module_without_browser

pytestmark = [pytest.mark.slow, pytest.mark.labelstudio]
skip_module_without_browser()   # no Playwright / Chromium: skip before Label Studio starts

from tests.dev_data import BCCD as _DEV_DATA  # noqa: E402

BCCD = _DEV_DATA
DOCUMENT_ROOT = Path("/")   # the fixture's LOCAL_FILES_DOCUMENT_ROOT
CLASSES = ["Eosinophil", "Lymphocyte", "Monocyte", "Neutrophil"]
# (image class, predicted class, priority): the priority-0 task is neither the first nor the
# last imported, and its predicted class is predicted for no other task, so serving the lowest
# id, or showing another task's prediction, fails the test.
PLAN = [("Eosinophil", "Eosinophil", 2), ("Lymphocyte", "Neutrophil", 3),
        ("Monocyte", "Monocyte", 0), ("Neutrophil", "Lymphocyte", 1)]
UI_TIMEOUT_MS = 60_000   # 2 shared cores: the Data Manager + editor bundle loads slowly
# the image quality line above the image (issue 14): the priority-0 task is flagged, the others ok
QC_NOTE = "Image quality check: out of focus (out_of_focus: defocus_px 3.1 >= 2)."


@pytest.fixture
def project(label_studio):
    """A fresh project with 4 BCCD tasks and pushed predictions; deleted afterwards."""
    if not BCCD.is_dir():
        pytest.skip(f"BCCD dev images not found at {BCCD}")
    client = LabelStudioClient(label_studio.url, label_studio.token)
    pid = client.create_project(f"browser-{uuid.uuid4().hex[:8]}", build_config(CLASSES))
    try:
        client.ensure_local_storage(pid, str(BCCD))
        images = [sorted((BCCD / cls).glob("*.jpg"))[0] for cls, _, _ in PLAN]
        ids = client.import_tasks(pid, [{
            "image": local_files_url(p.relative_to(DOCUMENT_ROOT).as_posix()),
            "key": p.relative_to(BCCD).as_posix(), "path": str(p), "qc": "out_of_focus" if prio == 0 else "ok",
            QC_NOTE_FIELD: QC_NOTE if prio == 0 else ""} for p, (_, _, prio) in zip(images, PLAN)])
        version = f"browser-test-{uuid.uuid4().hex[:6]}"
        report = client.push_predictions(pid, [
            PredictionRow(task_id=t, label=pred, confidence=0.9 - 0.1 * prio, priority=prio,
                          reason=f"uncertain and unlike the labeled images (pick {prio + 1})")
            for t, (_, pred, prio) in zip(ids, PLAN)], version)
        assert report.created == len(PLAN)
        assert client.get_project(pid)["model_version"] == version
        tasks = {t: {"image": img, "label": pred, "priority": prio}
                 for t, img, (_, pred, prio) in zip(ids, images, PLAN)}
        yield client, pid, tasks
    finally:
        try:
            client.sdk.projects.delete(pid)
        except Exception:  # cleanup only: never hide the test's own result
            pass


def _wait(page, js: str, arg, ok, timeout_ms: int, every_s: float = 0.25):
    """Poll `js(arg)` in the page until `ok(value)`; return the last value either way."""
    deadline = time.monotonic() + timeout_ms / 1000
    value = None
    while True:
        try:
            value = page.evaluate(js, arg)
        except Exception as e:  # page navigating / editor re-rendering: try again
            value = {"evaluate_error": str(e)[:300]}
        if ok(value) or time.monotonic() > deadline:
            return value
        time.sleep(every_s)


# The labeling area's <img> (LS draws it on a canvas; the <img> holds the decoded blob).
IMAGE_STATE = """() => {
  const imgs = [...document.querySelectorAll('.lsf-main-view .lsf-image img, .lsf-main-view img[alt="image"]')];
  return imgs.map(i => ({complete: i.complete, naturalWidth: i.naturalWidth,
                         naturalHeight: i.naturalHeight, src: i.currentSrc.slice(0, 80)}));
}"""
CHOICES_STATE = """() => {
  const inputs = [...document.querySelectorAll('.lsf-main-view .lsf-choices input, .lsf-main-view .lsf-choice input')];
  return {names: inputs.map(i => i.name), checked: inputs.filter(i => i.checked).map(i => i.name),
          highlighted: [...document.querySelectorAll('.lsf-main-view .ant-checkbox-wrapper-checked, .lsf-main-view .ant-radio-wrapper-checked')]
                         .map(e => e.textContent.replace(/\\[\\w+\\]$/, '').trim())};
}"""
# Rendered text of the labeling area that mentions the model's suggestion, with its box on screen.
SUGGESTION_SHOWN = """() => {
  const main = document.querySelector('.lsf-main-view') || document.body;
  const hits = [...main.querySelectorAll('*')].filter(e => e.children.length === 0
      && (e.innerText || e.value || '').includes("Model's suggestion:"));
  return hits.map(e => { const r = e.getBoundingClientRect();
    return {text: (e.innerText || e.value || '').trim(), w: r.width, h: r.height, top: r.top,
            visible: r.width > 0 && r.height > 0 && r.top >= 0 && r.bottom <= window.innerHeight
                     && getComputedStyle(e).visibility !== 'hidden'}; });
}"""
TASK_ID_SHOWN = """() => {
  const el = document.querySelector('.lsf-current-task__task-id');
  return el && el.firstChild ? el.firstChild.textContent.replace('#', '').trim() : null;
}"""


def _served_by(page, action, what: str) -> dict:
    """Run `action` (a click) and return the task LS serves in answer (next_task response)."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout  # installed: page exists
    try:
        with page.expect_response(lambda r: "/api/dm/actions" in r.url and "id=next_task" in r.url,
                                  timeout=UI_TIMEOUT_MS) as served:
            action()
        response = served.value
    except PlaywrightTimeout as e:
        raise AssertionError(f"{what} sent no next_task request (POST /api/dm/actions?id=next_task) "
                             f"within {UI_TIMEOUT_MS // 1000} s") from e
    assert response.ok, f"{what}: next_task answered {response.status}: {response.text()[:500]}"
    return response.json()


def _check_served(page, client, pid, tasks, task: dict, priority: int, what: str) -> None:
    """The served task is the sampler's pick at `priority`, and the editor shows it properly."""
    order = sorted(tasks, key=lambda t: tasks[t]["priority"])
    want = order[priority]
    label = tasks[want]["label"]
    with Image.open(tasks[want]["image"]) as im:
        size = im.size

    # 1. the sampler's order is followed, with the live model version's prediction
    assert task.get("id") == want, (
        f"{what} served task {task.get('id')} ({task.get('data', {}).get('key')}); expected task "
        f"{want} (priority {priority}). Sampler order: {order}; predictions of the served task: "
        f"{json.dumps(task.get('predictions'))[:600]}")
    live = client.get_project(pid)["model_version"]
    assert [p["model_version"] for p in task.get("predictions", [])] == [live], (
        f"the served task should carry exactly one prediction, of the live version {live!r}: "
        f"{json.dumps(task.get('predictions'))[:600]}")

    # 2. the editor shows this task (bottom bar) and its image: the <img> decoded the file
    shown = _wait(page, TASK_ID_SHOWN, None, timeout_ms=UI_TIMEOUT_MS, ok=lambda v: v == str(want))
    assert shown == str(want), f"the editor's bottom bar shows task {shown!r}, expected {want}"
    images = _wait(page, IMAGE_STATE, None, timeout_ms=UI_TIMEOUT_MS,
                   ok=lambda v: isinstance(v, list) and any(
                       (i["naturalWidth"], i["naturalHeight"]) == size for i in v))
    loaded = [i for i in images if i.get("naturalWidth", 0) > 0] if isinstance(images, list) else []
    assert loaded, (f"no loaded <img> in the labeling area after {UI_TIMEOUT_MS // 1000} s "
                    f"(found: {images}); is local-files serving on and the storage path right?")
    sizes = {(i["naturalWidth"], i["naturalHeight"]) for i in loaded}
    assert size in sizes, (f"the labeling area shows an image of size {sizes}, expected {size} "
                           f"({tasks[want]['image'].name}): another task's image?")

    # 3. the model's pre-annotation: the predicted class, and only it, is checked and highlighted
    choices = _wait(page, CHOICES_STATE, None, timeout_ms=UI_TIMEOUT_MS,
                    ok=lambda v: isinstance(v, dict) and v.get("checked") == [label]
                    and v.get("highlighted") == [label])
    assert isinstance(choices, dict) and choices.get("names"), (
        f"no Choices control found in the editor: {choices}")
    # the classes, then the reserved answer "unusable image" (never a class)
    assert sorted(choices["names"]) == sorted(CLASSES + [UNUSABLE]), f"unexpected choices: {choices['names']}"
    assert choices["checked"] == [label], (
        f"the predicted class {label!r} should be the one pre-selected choice of task {want}; "
        f"checked: {choices['checked']}")
    assert choices["highlighted"] == [label], (
        f"the checked choice should be highlighted as {label!r}: {choices['highlighted']}")

    # 4. the suggestion as the annotator reads it: class, confidence, reason, marked as the model's
    prio = tasks[want]["priority"]
    expect = [f"Model's suggestion: {label}", f"confidence {0.9 - 0.1 * prio:.0%}",
              f"Why this image: uncertain and unlike the labeled images (pick {prio + 1})"]
    shown = _wait(page, SUGGESTION_SHOWN, None, timeout_ms=UI_TIMEOUT_MS,
                  ok=lambda v: isinstance(v, list) and any(h["visible"] and all(x in h["text"] for x in expect)
                                                           for h in v))
    assert isinstance(shown, list) and any(h["visible"] and all(x in h["text"] for x in expect) for h in shown), (
        f"the labeling view should show the model's suggestion {expect} as text on screen (no scrolling); "
        f"found: {shown}")
    header = page.get_by_text("Model's suggestion (its class is pre-selected below")
    assert header.is_visible(), "the suggestion should be marked as the model's (its header is not visible)"

    # 5. the image quality line: shown for the flagged image only
    note = page.get_by_text(QC_NOTE)
    if prio == 0:
        assert note.is_visible(), f"the flagged task {want} should show its quality line {QC_NOTE!r} above the image"
    else:
        assert page.get_by_text("Image quality check").count() == 0, f"task {want} is ok: no quality line expected"


def test_label_all_tasks_shows_top_task_with_prediction_and_image(label_studio, project):
    client, pid, tasks = project
    with chromium_page() as page, artifacts(page, "labeling_stream"):
        login(page, label_studio.url, label_studio.username, label_studio.password)
        page.goto(f"{label_studio.url}/projects/{pid}/data")
        button = page.get_by_role("button", name="Label All Tasks")
        button.wait_for(state="visible", timeout=UI_TIMEOUT_MS)

        task = _served_by(page, button.click, "'Label All Tasks'")
        _check_served(page, client, pid, tasks, task, 0, "'Label All Tasks'")
        save_artifacts(page, "labeling_stream")   # the artifact: first task, prediction selected

        # accept the pre-annotation: the stream goes on in the sampler's order
        first = task["id"]
        submit = page.get_by_test_id("bottombar-submit-button")
        task = _served_by(page, submit.click, "Submit")
        _check_served(page, client, pid, tasks, task, 1, "the task after Submit")
        saved = client.read_labels(pid)
        assert saved == {tasks[first]["image"].relative_to(BCCD).as_posix(): tasks[first]["label"]}, (
            f"submitting the pre-annotation should save the predicted class for task {first}: {saved}")


# Issue 25: an image the novelty flag marks, and one whose prediction set holds two classes.
UNSEEN_PLAN = [("Eosinophil", "Lymphocyte", 0, True, ("Lymphocyte",)),
               ("Neutrophil", "Neutrophil", 1, False, ("Neutrophil", "Eosinophil"))]


@pytest.fixture
def unseen_project(label_studio):
    """One project, 2 BCCD tasks: the first pick flagged "none of the trained types", the second
    with a two-class prediction set at 90% coverage; deleted afterwards."""
    if not BCCD.is_dir():
        pytest.skip(f"BCCD dev images not found at {BCCD}")
    client = LabelStudioClient(label_studio.url, label_studio.token)
    pid = client.create_project(f"browser-unseen-{uuid.uuid4().hex[:8]}", build_config(CLASSES))
    try:
        client.ensure_local_storage(pid, str(BCCD))
        images = [sorted((BCCD / cls).glob("*.jpg"))[1] for cls, *_ in UNSEEN_PLAN]
        ids = client.import_tasks(pid, [{
            "image": local_files_url(p.relative_to(DOCUMENT_ROOT).as_posix()), "key": p.relative_to(BCCD).as_posix(),
            "path": str(p)} for p in images])
        report = client.push_predictions(pid, [
            PredictionRow(task_id=t, label=pred, confidence=0.62 if novel else 0.55, priority=prio,
                          reason=f"pick {prio + 1}", prediction_set=pset, coverage=0.9, novel=novel)
            for t, (_, pred, prio, novel, pset) in zip(ids, UNSEEN_PLAN)], f"browser-unseen-{uuid.uuid4().hex[:6]}")
        assert report.created == len(UNSEEN_PLAN)
        yield client, pid, ids
    finally:
        try:
            client.sdk.projects.delete(pid)
        except Exception:  # cleanup only
            pass


def test_labeling_view_shows_unseen_type_and_prediction_set_suggestions(label_studio, unseen_project):
    """Issue 25: the annotator reads "looks like none of the trained types" for a flagged image,
    and "Neutrophil or Eosinophil (90%)" for one the model hesitates on."""
    from label_config.config import UNSEEN_TEXT

    _, pid, ids = unseen_project
    expect = {ids[0]: [f"Model's suggestion: {UNSEEN_TEXT} (closest: Lymphocyte, confidence 62%)", "pick 1"],
              ids[1]: ["Model's suggestion: Neutrophil or Eosinophil (90%)", "pick 2"]}

    def check(task: dict, want: int) -> None:
        assert task.get("id") == want, f"served task {task.get('id')}, expected {want}"
        shown = _wait(page, TASK_ID_SHOWN, None, timeout_ms=UI_TIMEOUT_MS, ok=lambda v: v == str(want))
        assert shown == str(want), f"the editor's bottom bar shows task {shown!r}, expected {want}"
        hits = _wait(page, SUGGESTION_SHOWN, None, timeout_ms=UI_TIMEOUT_MS,
                     ok=lambda v: isinstance(v, list) and any(h["visible"] and all(x in h["text"] for x in expect[want])
                                                              for h in v))
        assert isinstance(hits, list) and any(h["visible"] and all(x in h["text"] for x in expect[want]) for h in hits), (
            f"task {want}: the labeling view should show {expect[want]} on screen; found: {hits}")

    with chromium_page() as page, artifacts(page, "labeling_unseen"):
        login(page, label_studio.url, label_studio.username, label_studio.password)
        page.goto(f"{label_studio.url}/projects/{pid}/data")
        button = page.get_by_role("button", name="Label All Tasks")
        button.wait_for(state="visible", timeout=UI_TIMEOUT_MS)
        check(_served_by(page, button.click, "'Label All Tasks'"), ids[0])
        save_artifacts(page, "labeling_unseen")
        check(_served_by(page, page.get_by_test_id("bottombar-submit-button").click, "Submit"), ids[1])
