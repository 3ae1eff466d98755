"""`init` at 100,000 images: tasks go to Label Studio in batches, with a progress bar."""
from types import SimpleNamespace

import ml_backend.labelstudio.client as lsmod
from ml_backend.labelstudio.client import LabelStudioClient


class FakeProjects:
    def __init__(self):
        self.batches, self.next_id = [], 1

    def import_tasks(self, project_id, request, return_task_ids):
        self.batches.append(len(request))
        ids = list(range(self.next_id, self.next_id + len(request)))
        self.next_id += len(request)
        return SimpleNamespace(task_ids=ids, task_count=len(ids))


def test_import_in_batches_with_a_progress_bar(monkeypatch, capsys):
    monkeypatch.setattr(lsmod, "IMPORT_CHUNK", 3)
    client = LabelStudioClient("http://127.0.0.1:1", "token")
    client.sdk = SimpleNamespace(projects=FakeProjects())
    ids = client.import_tasks(1, [{"image": f"/x/{i}.png"} for i in range(7)], progress=True)
    assert ids == list(range(1, 8)) and client.sdk.projects.batches == [3, 3, 1]
    err = capsys.readouterr().err
    assert "importing tasks" in err and "7/7" in err
    client.import_tasks(1, [{"image": "/y.png"}])  # one batch, not a terminal: no bar
    assert "importing tasks" not in capsys.readouterr().err
