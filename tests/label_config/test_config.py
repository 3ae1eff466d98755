"""Labeling configs: built, loaded, validated, parsed back (through the SDK's LabelInterface)."""
from __future__ import annotations

import pytest
from label_studio_sdk.label_interface import LabelInterface

from label_config import HOTKEYS, QC_NOTE_FIELD, UNUSABLE, LabelConfigError, build_config, load_config, parse_config

TRICKY = ["Neutrophil", "band cell", "Éosinophile", "A & B", "x<y>z", 'say "hi"', "it's", "ümlaut ß"]


def test_build_round_trip_keeps_tricky_class_names():
    xml = build_config(TRICKY)
    parsed = parse_config(xml)
    assert parsed.classes == TRICKY
    assert (parsed.from_name, parsed.to_name, parsed.value_key) == ("label", "image", "image")
    # the SDK (= Label Studio's parser) sees the same labels, in order, then the reserved answer
    assert LabelInterface(xml).get_control("label").labels == TRICKY + [UNUSABLE]


def test_build_layout_and_hotkeys():
    xml = build_config([f"c{i}" for i in range(12)])
    li = LabelInterface(xml)
    ctrl = li.get_control("label")
    assert ctrl.attr["choice"] == "single" and ctrl.attr["showInLine"] == "true"
    assert li.get_object("image").attr["zoom"] == "true"
    keys = [ctrl.labels_attrs[f"c{i}"].attr["hotkey"] for i in range(12)]
    assert keys == [str(i) for i in range(1, 10)] + ["a", "b", "c"]
    assert len(set(HOTKEYS)) == len(HOTKEYS)


def test_custom_names():
    parsed = parse_config(build_config(["a", "b"], from_name="cell", to_name="img", value_key="preview"))
    assert (parsed.from_name, parsed.to_name, parsed.value_key) == ("cell", "img", "preview")


def test_load_from_file(tmp_path):
    f = tmp_path / "config.xml"
    f.write_text(build_config(["a & b", "c"]), encoding="utf-8")
    assert load_config(f).classes == ["a & b", "c"]
    with pytest.raises(LabelConfigError, match="cannot read"):
        load_config(tmp_path / "missing.xml")


@pytest.mark.parametrize("xml, message", [
    ('<View><Image name="image" value="$image"/><Choicez name="label" toName="image">'
     '<Choice value="a"/></Choicez></View>', "unknown tag.*Choicez"),
    ('<View><Image name="image" value="$image"/></View>', "no <Choices>"),
    ('<View><Image name="image" value="$image"/><Choices name="label" toName="image">'
     '<Choice value="a"/><Choice value="b"/><Choice value="a"/></Choices></View>', "duplicate.*'a'"),
    ('<View><Image name="image" value="$image"/><Choices name="label" toName="image">'
     '<Choice value="A & B"/></Choices></View>', "not well-formed XML"),
    ('<View><Image name="image" value="$image"', "not well-formed XML"),
    ('<View><Image name="image" value="$image"/><Choices name="label" toName="picture">'
     '<Choice value="a"/></Choices></View>', "rejects.*picture"),
    ('<View><Image name="image" value="$image"/><Choices name="label" toName="image" '
     'choice="multiple"><Choice value="a"/></Choices></View>', 'choice="single"'),
    ("", "empty"),
])
def test_bad_configs_give_one_clear_error(xml, message):
    with pytest.raises(LabelConfigError, match=message):
        parse_config(xml)


def test_bad_class_lists():
    with pytest.raises(LabelConfigError, match="duplicate"):
        build_config(["Neutrophil", "neutrophil"])
    with pytest.raises(LabelConfigError, match="no classes"):
        build_config([])
    with pytest.raises(LabelConfigError, match="empty"):
        build_config(["a", " "])
    with pytest.raises(LabelConfigError, match="hotkeys"):
        build_config([f"c{i}" for i in range(len(HOTKEYS) + 1)])


def test_unusable_answer_is_offered_but_never_a_class():
    xml = build_config(["round", "long"])
    parsed = parse_config(xml)
    assert parsed.classes == ["round", "long"] and parsed.unusable == UNUSABLE
    ctrl = LabelInterface(xml).get_control("label")
    assert ctrl.labels == ["round", "long", UNUSABLE] and ctrl.labels_attrs[UNUSABLE].attr["hotkey"] == "0"
    # the quality line above the image: a header showing the task's qc_note (no name: not required in tasks)
    assert f'<Header value="${QC_NOTE_FIELD}"' in xml and xml.index(QC_NOTE_FIELD) < xml.index("<Image")
    # configs without it (older projects, hand-written ones) still parse, without the answer
    plain = parse_config(build_config(["round", "long"], unusable=False, qc_note=False))
    assert plain.classes == ["round", "long"] and plain.unusable is None and QC_NOTE_FIELD not in plain.xml
    with pytest.raises(LabelConfigError, match="reserved"):
        build_config(["round", "unusable IMAGE"])
    with pytest.raises(LabelConfigError, match="exactly"):
        parse_config('<View><Image name="image" value="$image"/><Choices name="label" toName="image">'
                     '<Choice value="a"/><Choice value="unusable image"/></Choices></View>')
