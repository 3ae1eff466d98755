"""Several annotators: the label the model trains on comes from all of a task's annotations
(issue 26), not from whichever came last; status reads the agreement with its interval."""
from ml_backend.labelstudio.sync import agreement_line, apply_consensus, labels_by_key

CLASSES = ["Lymphocyte", "Monocyte", "Neutrophil"]


def _ann(i, who, label, minute):
    return {"id": i, "label": label, "annotator": who, "created_at": f"2026-01-01T10:{minute:02d}:00",
            "updated_at": f"2026-01-01T10:{minute:02d}:00"}


def _snapshot():
    tasks = {}
    for t in range(1, 7):  # two agree, the third (last) disagrees: the probe of the issue
        truth = CLASSES[t % 3]
        other = CLASSES[(t + 1) % 3]
        tasks[str(t)] = {"key": f"img{t}.png", "label": other,
                         "annotations": [_ann(3 * t, "ann", truth, 1), _ann(3 * t + 1, "bob", truth, 2),
                                         _ann(3 * t + 2, "carol", other, 3)]}
    tasks["7"] = {"key": "img7.png", "label": "Monocyte", "annotations": [_ann(99, "ann", "Monocyte", 4)]}
    tasks["8"] = {"key": "img8.png", "label": "Neutrophil",  # a reviewer settles it against two others
                  "annotations": [_ann(100, "ann", "Lymphocyte", 5), _ann(101, "bob", "Lymphocyte", 6),
                                  _ann(102, "dr_path", "Neutrophil", 1)]}
    return {"cursor": None, "project_id": 1, "tasks": tasks}


def test_model_trains_on_the_majority_not_on_the_last_annotation():
    snap = apply_consensus(_snapshot(), CLASSES)
    labels = labels_by_key(snap)
    for t in range(1, 7):
        assert labels[f"img{t}.png"] == CLASSES[t % 3]
        assert snap["tasks"][str(t)]["last_label"] == CLASSES[(t + 1) % 3]
        assert snap["tasks"][str(t)]["consensus"]["disputed"]
    assert labels["img7.png"] == "Monocyte" and "consensus" not in snap["tasks"]["7"]


def test_a_reviewer_settles_a_conflict():
    snap = apply_consensus(_snapshot(), CLASSES, reviewers=["dr_path"])
    assert labels_by_key(snap)["img8.png"] == "Neutrophil"
    assert snap["tasks"]["8"]["consensus"]["confidence"] == 1.0
    assert labels_by_key(apply_consensus(_snapshot(), CLASSES))["img8.png"] == "Lymphocyte"


def test_status_line_gives_alpha_with_its_interval_and_n():
    line = agreement_line(_snapshot(), CLASSES)
    assert line.startswith("annotator agreement: Krippendorff's alpha") and "[" in line and "on 7 tasks" in line
