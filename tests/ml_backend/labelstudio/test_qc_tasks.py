"""Verdicts written into Label Studio task data only when they change (the real server: tests/scopeloop/test_qc_loop.py)."""
from ml_backend.labelstudio.qc_tasks import publish_verdicts, task_fields


class FakeLS:
    """list_tasks + update_task_data, as LabelStudioClient answers them (PATCH replaces data)."""

    def __init__(self, tasks: dict):
        self.tasks, self.patches, self.fail, self.read = tasks, [], False, []

    def list_tasks(self, pid, task_ids=None, **kw):
        if self.fail:
            raise RuntimeError("Label Studio is unreachable")
        ids = list(self.tasks) if task_ids is None else [i for i in task_ids if i in self.tasks]
        self.read.extend(ids)
        return [{"id": i, "data": dict(self.tasks[i])} for i in ids]

    def task_keys(self, pid):  # a listing of every task (keys and ids)
        self.read.extend(self.tasks)
        return {d["key"]: i for i, d in self.tasks.items()}

    def update_task_data(self, tid, data):
        self.tasks[tid] = data
        self.patches.append(tid)


def test_only_changed_verdicts_are_written(tmp_path):
    ls = FakeLS({1: {"image": "u1", "key": "a.png", **task_fields({"verdict": "ok"})},
                 2: {"image": "u2", "key": "b.png", **task_fields({"verdict": "ok"})},
                 3: {"image": "u3", "key": "old.png"}, 4: {"image": "u4", "key": "old_blank.png"}})
    ids = {"a.png": 1, "b.png": 2, "old.png": 3, "old_blank.png": 4}
    v = {"a.png": {"verdict": "ok", "reason": ""}, "b.png": {"verdict": "duplicate", "reason": "pixel_match with a.png"},
         "old.png": {"verdict": "ok", "reason": ""}, "old_blank.png": {"verdict": "blank", "reason": "structure 0 < 0.004"}}
    out = publish_verdicts(ls, 7, tmp_path, ids, v, log=lambda *_: None)
    # b changed; a task from before QC gets fields only when flagged; the rest of the data is kept
    assert sorted(ls.patches) == [2, 4] and out["updated"] == 2
    assert ls.tasks[2] == {"image": "u2", "key": "b.png", "qc": "duplicate", "qc_score": "pixel_match with a.png",
                           "qc_note": ls.tasks[2]["qc_note"]} and "duplicate" in ls.tasks[2]["qc_note"]
    assert "qc" not in ls.tasks[3]
    # the same verdicts again: nothing listed, nothing written
    ls.fail = True
    assert publish_verdicts(ls, 7, tmp_path, ids, v, log=lambda *_: None) == {"changed": 0, "updated": 0, "seconds": 0.0}
    ls.fail = False
    # a score that drifts with the same verdict is not worth a PATCH
    v["old_blank.png"] = {"verdict": "blank", "reason": "structure 0.001 < 0.004"}
    assert publish_verdicts(ls, 7, tmp_path, ids, v, log=lambda *_: None)["updated"] == 0
    # at most max_updates per call, the rest next time; a failure is logged, never raised
    v["a.png"] = v["old.png"] = {"verdict": "unusual", "reason": "unusual_z 7 >= 6"}
    logs = []
    assert publish_verdicts(ls, 7, tmp_path, ids, v, log=logs.append, max_updates=1)["updated"] == 1
    assert "1 more at the next refresh" in logs[-1]
    assert publish_verdicts(ls, 7, tmp_path, ids, v, log=logs.append)["updated"] == 1
    assert ls.tasks[1]["qc"] == ls.tasks[3]["qc"] == "unusual"
    v["a.png"] = {"verdict": "ok", "reason": ""}
    ls.fail = True
    assert publish_verdicts(ls, 7, tmp_path, ids, v, log=logs.append)["updated"] == 0
    assert "not written to Label Studio this time: RuntimeError" in logs[-1]


def test_label_studio_work_is_bounded_by_what_changed_not_by_the_pool(tmp_path):
    """10,000 tasks, 3 verdicts change: 3 tasks are read (by id) and written, never the whole
    project; tasks imported with their verdict (record_imported) are neither read nor written."""
    from ml_backend.labelstudio.qc_tasks import record_imported

    n = 10_000
    keys = [f"img_{i:05d}.png" for i in range(n)]
    v = {k: {"verdict": "ok", "reason": ""} for k in keys}
    v[keys[5]] = {"verdict": "blank", "reason": "structure 0 < 0.004"}
    ls = FakeLS({i: {"image": f"u{i}", "key": k, **task_fields(v[k])} for i, k in enumerate(keys)})
    record_imported(tmp_path, 7, {k: task_fields(v[k]) for k in keys})  # what init imported
    ids = {k: i for i, k in enumerate(keys)}
    assert publish_verdicts(ls, 7, tmp_path, ids, v, log=lambda *_: None)["changed"] == 0 and ls.read == []
    for i in (10, 20, 30):  # the first refresh with embeddings: three near duplicates
        v[keys[i]] = {"verdict": "duplicate", "reason": f"pixel_match with {keys[i - 1]}"}
    out = publish_verdicts(ls, 7, tmp_path, ids, v, log=lambda *_: None)
    assert out["updated"] == 3 and sorted(ls.patches) == [10, 20, 30] and sorted(ls.read) == [10, 20, 30]
    # without a task map (init of an existing project): one key listing, still only 3 read by id
    ls.read.clear()
    v[keys[40]] = {"verdict": "unusual", "reason": "unusual_z 7 >= 6"}
    assert publish_verdicts(ls, 7, tmp_path, None, v, log=lambda *_: None)["updated"] == 1
    assert len(ls.read) == n + 1 and ls.read[-1] == 40
