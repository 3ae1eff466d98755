"""Verdicts written into Label Studio task data only when they change (the real server: tests/scopeloop/test_qc_loop.py)."""
from ml_backend.qc_tasks import publish_verdicts, task_fields


class FakeLS:
    """list_tasks + update_task_data, as LabelStudioClient answers them (PATCH replaces data)."""

    def __init__(self, tasks: dict):
        self.tasks, self.patches, self.fail = tasks, [], False

    def list_tasks(self, pid, **kw):
        if self.fail:
            raise RuntimeError("Label Studio is unreachable")
        return [{"id": i, "data": dict(d)} for i, d in self.tasks.items()]

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
