"""Issue 11, failure 11: the exported annotator field read " admin@scopeloop.local, 1"."""
from ml_backend.labelstudio.client import annotator_name, task_record


def test_annotator_is_the_users_name_only():
    ann = {"id": 1, "created_username": " admin@scopeloop.local, 1", "completed_by": 1,
           "result": [{"from_name": "label", "type": "choices", "value": {"choices": ["A"]}}]}
    assert task_record({"annotations": [ann], "data": {"key": "a.png"}}, "label")["annotations"][0]["annotator"] \
        == "admin@scopeloop.local"
    assert annotator_name({"created_username": "Jane Doe, 12"}) == "Jane Doe"
    assert annotator_name({"created_username": "", "completed_by": 7}) == "7"
