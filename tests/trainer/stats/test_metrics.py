import json

from PIL import Image

from trainer.models.training_qc import qc_summary, write_qc
from trainer.stats.metrics import classification_metrics


def test_metrics_on_a_known_confusion():
    y_true = [0, 0, 0, 0, 1, 1, 2, 2]
    y_pred = [0, 0, 0, 1, 1, 1, 2, 0]
    m = classification_metrics(y_true, y_pred, ["a", "b", "c"])
    assert m["accuracy"] == 6 / 8
    assert abs(m["balanced_accuracy"] - (0.75 + 1 + 0.5) / 3) < 1e-9
    assert m["per_class"]["b"]["precision"] == 2 / 3 and m["per_class"]["c"]["recall"] == 0.5
    assert m["confusion_matrix"][0] == [3, 1, 0]


def test_qc_files_are_written_and_readable(tmp_path):
    m = classification_metrics([0, 0, 1, 1], [0, 0, 1, 0], ["Neutrophil", "Basophil"])
    hist = [{"epoch": 1, "train_loss": 1.0, "val_loss": 1.2}, {"epoch": 2, "train_loss": 0.5, "val_loss": 0.9}]
    write_qc(tmp_path, {"validation": m}, hist, best_epoch=2)
    assert json.loads((tmp_path / "metrics.json").read_text())["validation"]["n"] == 4
    for png in ("loss_curves.png", "confusion_matrix.png"):
        assert Image.open(tmp_path / png).size[0] > 300
    text = qc_summary({"validation": m})  # 4 images: a state, not a score
    assert "not enough labels yet to estimate (n = 4)" in text and "1.00" not in text and "F1" not in text
    y = [0] * 40 + [1] * 40
    m = classification_metrics(y, [0] * 40 + [1] * 30 + [0] * 10, ["Neutrophil", "Basophil"])
    text = qc_summary({"validation": m})
    assert "n = 80 images" in text and "95% interval" in text
    assert text.index("Basophil") < text.index("Neutrophil")  # weakest first


def test_qc_summary_says_when_a_class_has_no_evaluated_images():
    from trainer.stats.estimate import estimate

    est = estimate([0] * 30 + [1] * 30, [0] * 30 + [1] * 30, ["a", "b", "c"], labeled_counts={"a": 30, "b": 30, "c": 4})
    text = qc_summary({"estimate": est})
    assert "c" in text and "no evaluated images  (labeled 4, evaluated 0)" in text and "0.00" not in text
