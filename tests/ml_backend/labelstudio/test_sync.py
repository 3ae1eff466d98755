"""Label sync against the real Label Studio: new, edited, skipped and deleted annotations."""
import time

import pytest

from label_config import build_config
from ml_backend.labelstudio.sync import annotation_count, labels_by_key, sync_labels
from trainer.store.workspace import Workspace

pytestmark = pytest.mark.labelstudio


@pytest.fixture
def synced(ls_client, project_title, tmp_path):
    pid = ls_client.create_project(project_title, build_config(["round", "long"]))
    ids = ls_client.import_tasks(pid, [{"image": f"/data/local-files/?d=x/{i}.png", "key": f"x/{i}.png"} for i in range(6)])
    ws = Workspace(tmp_path / "ws")
    ws.update_project(ls_project_id=pid, from_name="label")
    return pid, ids, ws


def test_incremental_sync_then_deletion_falls_back_to_full(ls_client, synced):
    pid, ids, ws = synced
    a0 = ls_client.create_annotation(ids[0], "round")
    ls_client.create_annotation(ids[1], "long")
    snap = sync_labels(ls_client, ws)
    assert labels_by_key(snap) == {"x/0.png": "round", "x/1.png": "long"} and snap["cursor"]
    # a new label and a skipped task: the incremental read sees both
    ls_client.create_annotation(ids[2], "round")
    ls_client.sdk.annotations.create(ids[3], result=[], was_cancelled=True)
    snap = sync_labels(ls_client, ws)
    assert labels_by_key(snap) == {"x/0.png": "round", "x/1.png": "long", "x/2.png": "round"}
    # counted as Label Studio counts (skips excluded): equal counts mean nothing was missed
    assert annotation_count(snap) == 3 == ls_client.get_project(pid)["total_annotations_number"]
    assert ws.labels == snap  # saved in the work directory
    # an annotator deletes a label: the count no longer matches, the sync reads everything again
    ls_client.sdk.annotations.delete(a0)
    snap = sync_labels(ls_client, ws)
    assert labels_by_key(snap) == {"x/1.png": "long", "x/2.png": "round"}


def test_disagreeing_annotators_are_flagged_last_edit_wins(ls_client, synced):
    pid, ids, ws = synced
    ls_client.create_annotation(ids[4], "round")
    ls_client.create_annotation(ids[4], "long")
    rec = sync_labels(ls_client, ws, full=True)["tasks"][str(ids[4])]
    assert rec["label"] == "long" and rec["disagreement"] and rec["n_annotations"] == 2


def test_edited_label_reaches_the_next_incremental_sync(ls_client, synced):
    """Issue 22.1: an annotator corrects a label (PATCH /api/annotations/{id}/, the
    ANNOTATION_UPDATED webhook). Counts and completion times are unchanged, so a sync reading only
    tasks completed after its cursor kept the old label; the edit bumps the task's updated_at."""
    from label_config import choice_result

    pid, ids, ws = synced
    a0 = ls_client.create_annotation(ids[0], "round")
    time.sleep(2.5)  # the edited annotation lies before the sync's 2 s overlap with its cursor
    ls_client.create_annotation(ids[1], "long")
    assert labels_by_key(sync_labels(ls_client, ws)) == {"x/0.png": "round", "x/1.png": "long"}
    ls_client.sdk.annotations.update(a0, result=[choice_result("label", "image", "long")])
    snap = sync_labels(ls_client, ws)
    assert labels_by_key(snap) == {"x/0.png": "long", "x/1.png": "long"}
    assert annotation_count(snap) == 2
