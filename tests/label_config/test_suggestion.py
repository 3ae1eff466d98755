"""The suggestion's words (issue 25): prediction sets and the unseen-type flag."""
from label_config import UNSEEN_TEXT, choice_result, suggestion_phrase


def test_phrase_for_a_set_an_unseen_type_and_a_single_class():
    assert suggestion_phrase("Neutrophil", 0.6, ["Neutrophil", "Eosinophil"], 0.9) == "Neutrophil or Eosinophil (90%)"
    assert suggestion_phrase("Neutrophil", 0.98, ["Neutrophil"], 0.9, novel=True).startswith(UNSEEN_TEXT)
    assert UNSEEN_TEXT == "looks like none of the trained types"
    assert suggestion_phrase("Neutrophil", 0.93, ["Neutrophil"], 0.9) == "Neutrophil (confidence 93%)"


def test_choice_result_keeps_its_shape_and_adds_the_phrase():
    plain = choice_result("label", "image", "Neutrophil", 0.93, 3)
    assert plain["meta"]["text"] == ["confidence 0.93, queue position 3"]
    both = choice_result("label", "image", "Neutrophil", 0.6, 3, ["Neutrophil", "Eosinophil"], 0.9)
    assert both["value"] == {"choices": ["Neutrophil"]}  # LS offers only the config's choices
    assert both["meta"]["text"][0].startswith("Neutrophil or Eosinophil (90%); confidence 0.60")
    novel = choice_result("label", "image", "Lymphocyte", 0.98, None, ["Lymphocyte"], 0.9, novel=True)
    assert novel["meta"]["text"][0].startswith("looks like none of the trained types")
