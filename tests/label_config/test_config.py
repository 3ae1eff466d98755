"""Labeling configs: built, loaded, validated, parsed back (through the SDK's LabelInterface)."""
from __future__ import annotations

import pytest
from label_studio_sdk.label_interface import LabelInterface

from label_config import HOTKEYS, LabelConfigError, build_config, load_config, parse_config

TRICKY = ["Neutrophil", "band cell", "Éosinophile", "A & B", "x<y>z", 'say "hi"', "it's", "ümlaut ß"]


def test_build_round_trip_keeps_tricky_class_names():
    xml = build_config(TRICKY)
    parsed = parse_config(xml)
    assert parsed.classes == TRICKY
    assert (parsed.from_name, parsed.to_name, parsed.value_key) == ("label", "image", "image")
    # the SDK (= Label Studio's parser) sees the same labels, in order
    assert LabelInterface(xml).get_control("label").labels == TRICKY


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
