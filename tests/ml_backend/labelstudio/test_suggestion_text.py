"""ml_backend.labelstudio.client.suggestion_text with prediction sets and unseen types (issue 25)."""
from ml_backend.labelstudio.client import PredictionRow, suggestion_text


def test_suggestion_text_names_the_set_or_the_unseen_type():
    plain = suggestion_text(PredictionRow(1, "Neutrophil", 0.93, 0, "why"), 10)
    assert plain.startswith("Model's suggestion: Neutrophil (confidence 93%")
    two = suggestion_text(PredictionRow(1, "Neutrophil", 0.6, 0, "why", ("Neutrophil", "Eosinophil"), 0.9), 10)
    assert "Neutrophil or Eosinophil (90%)" in two
    novel = suggestion_text(PredictionRow(1, "Lymphocyte", 0.98, 0, "why", ("Lymphocyte",), 0.9, True), 10)
    assert "looks like none of the trained types" in novel
