"""Label Studio labeling configs for single-choice image classification.

The XML is built with ElementTree (never by string formatting) so class names with spaces,
accents and XML-special characters (& < > " ') are escaped correctly. Every config, built or
loaded, goes through `parse_config`, which runs label-studio-sdk's `LabelInterface` (the
same parser Label Studio uses) plus the checks it does not do itself (unknown tags, duplicate
class names, a missing Choices tag), and turns any failure into ONE `LabelConfigError`.
"""
from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

from label_studio_sdk.label_interface import LabelInterface, control_tags, label_tags, object_tags

# Keys 1..9, then letters. LS's editor binds a few single letters itself (h: hide region,
# u: unselect), so those are skipped to avoid two meanings for one key.
HOTKEYS = [str(i) for i in range(1, 10)] + [c for c in "abcdefgijklmnopqrstvwxyz"]

# Layout / visual tags LS accepts besides the object, control and label tags the SDK knows.
_LAYOUT_TAGS = {"view", "header", "style", "filter", "collapse", "panel", "hypertext",
                "text", "markdown", "shortcut", "relations", "relation", "choice", "label"}
_KNOWN_TAGS = (_LAYOUT_TAGS | set(control_tags._TAG_TO_CLASS) | set(object_tags._TAG_TO_CLASS)
               | {t.lower() for t in label_tags._LABEL_TAGS})


SUGGESTION_NAME = "suggestion"   # the read-only TextArea holding the model's suggestion

# The reserved answer "no annotator should label this image" (issue 14). It is a <Choice> of the
# one <Choices> tag, so an annotator gives exactly one answer per image: a class, or this. It is
# never a class: `ParsedConfig.classes` leaves it out (models never learn it), the refresh takes
# images answered so out of the suggested order, and the export lists them as unusable.
UNUSABLE = "Unusable image"
UNUSABLE_HOTKEY = "0"            # not in HOTKEYS: classes keep 1..9, a..z
# Task data field shown above the image: the image quality verdict when it is not ok ("" when ok),
# written by scopeloop at import and when a verdict changes (ml_backend.qc_tasks).
QC_NOTE_FIELD = "qc_note"


class LabelConfigError(ValueError):
    """The labeling config is unusable; the message says what is wrong and how to fix it."""


@dataclass(frozen=True)
class ParsedConfig:
    """What the ML backend needs from a config to read and write `choices` results."""

    classes: list[str]   # in config order: index = class id
    from_name: str       # the Choices tag name (e.g. "label")
    to_name: str         # the Image tag name (e.g. "image")
    value_key: str       # task data field holding the image URL (e.g. "image" for "$image")
    xml: str
    unusable: str | None = None  # the reserved "unusable image" choice when the config has it


def build_config(classes: list[str], *, from_name: str = "label", to_name: str = "image",
                 value_key: str = "image", title: str | None = None, suggestion: bool = True,
                 unusable: bool = True, qc_note: bool = True) -> str:
    """Single-choice image classification config; one hotkey per class (1..9 then letters).

    With `suggestion` (default) a read-only text area named SUGGESTION_NAME below the choices
    shows the model's suggestion: class, confidence and why the sampler picked this image.
    With `unusable` (default) the choices end with the reserved UNUSABLE answer (hotkey 0), which
    is never a class. With `qc_note` (default) a header above the image shows the task's
    QC_NOTE_FIELD: the image quality verdict of a flagged image, nothing for an ok one.
    Raises LabelConfigError (empty, duplicate or reserved class names, too many classes).
    """
    classes = [str(c).strip() for c in classes]
    _check_classes(classes)
    reserved = [c for c in classes if c.casefold() == UNUSABLE.casefold()]
    if reserved:
        raise LabelConfigError(f"class name {reserved[0]!r} is reserved for the answer 'this image cannot be "
                               "labeled' (never a class); rename that class")
    if len(classes) > len(HOTKEYS):
        raise LabelConfigError(f"{len(classes)} classes but only {len(HOTKEYS)} hotkeys; "
                               "merge classes or edit the config by hand (hotkeys are optional)")
    view = ET.Element("View")
    if title:
        ET.SubElement(view, "Header", value=title)
    if suggestion:
        # the model's suggestion as text the annotator reads first, marked as the model's; the
        # worker's prediction fills it (ml_backend.labelstudio.client.push_predictions); read-only
        ET.SubElement(view, "Header", value="Model's suggestion (its class is pre-selected below; check it before you "
                      "submit; none before two classes have labels):",
                      size="6")
        ET.SubElement(view, "TextArea", name=SUGGESTION_NAME, toName=to_name, editable="false", readonly="true",
                      rows="2", maxSubmissions="0", placeholder="none yet: the model trains once two classes have labels")
    if qc_note:
        # no `name`: Label Studio then does not require the field in every imported task
        ET.SubElement(view, "Header", value=f"${QC_NOTE_FIELD}", size="5", style="color: #b54708")
    ET.SubElement(view, "Image", name=to_name, value=f"${value_key}", zoom="true",
                  zoomControl="true", rotateControl="false", maxHeight="55vh")  # choices stay on screen
    choices = ET.SubElement(view, "Choices", name=from_name, toName=to_name, choice="single",
                            showInLine="true", required="true")
    for cls, key in zip(classes, HOTKEYS):
        ET.SubElement(choices, "Choice", value=cls, hotkey=key)
    if unusable:
        ET.SubElement(choices, "Choice", value=UNUSABLE, hotkey=UNUSABLE_HOTKEY,
                      hint="no cell can be classified here (blank, out of focus, saturated, ...): "
                           "the image leaves the queue and never becomes training data")
    ET.indent(view)
    xml = ET.tostring(view, encoding="unicode")
    parse_config(xml)  # round trip through LabelInterface: fail here, not in Label Studio
    return xml


UNSEEN_TEXT = "looks like none of the trained types"


def suggestion_phrase(label: str, confidence: float, prediction_set=None, coverage: float | None = None,
                      novel: bool = False) -> str:
    """How a suggestion reads (issue 25): "looks like none of the trained types" for an image the
    novelty flag marks; "Neutrophil or Eosinophil (90%)" when the prediction set at `coverage`
    holds more than one class; else "Neutrophil (confidence 93%)"."""
    if novel:
        return f"{UNSEEN_TEXT} (closest: {label}, confidence {confidence:.0%})"
    names = [str(c) for c in (prediction_set or [])]
    if len(names) > 1 and coverage is not None:
        return f"{', '.join(names[:-1])} or {names[-1]} ({coverage:.0%})"
    return f"{label} (confidence {confidence:.0%})"


def choice_result(from_name: str, to_name: str, label: str, confidence: float | None = None,
                  position: int | None = None, prediction_set=None, coverage: float | None = None,
                  novel: bool = False) -> dict:
    """One Label Studio `choices` result: an annotation's (no `confidence`), or the model's
    suggestion with its confidence (0..1, shown to 2 decimals) and its 1-based queue `position`.
    The one shape both the backend's /predict answers and the worker's pushed predictions use.
    With a `prediction_set` of several classes (at `coverage`) or `novel` (flagged as none of the
    trained types) the text starts with `suggestion_phrase`; the chosen label stays the top class
    (Label Studio offers only the config's choices)."""
    out = {"from_name": from_name, "to_name": to_name, "type": "choices", "value": {"choices": [label]}}
    if confidence is not None:
        out["score"] = round(float(confidence), 4)
        text = f"confidence {confidence:.2f}" + (f", queue position {position}" if position else "")
        if novel or (prediction_set is not None and len(prediction_set) > 1 and coverage is not None):
            text = f"{suggestion_phrase(label, confidence, prediction_set, coverage, novel)}; {text}"
        out["meta"] = {"text": [text]}
    return out


def load_config(path: str | Path) -> ParsedConfig:
    """Read a config XML file and validate it."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise LabelConfigError(f"cannot read labeling config {path}: {e.strerror}") from e
    try:
        return parse_config(text)
    except LabelConfigError as e:
        raise LabelConfigError(f"{path}: {e}") from e


def parse_config(xml: str) -> ParsedConfig:
    """Validate a config and return its classes and tag names, or raise `LabelConfigError`."""
    if not xml or not xml.strip():
        raise LabelConfigError("labeling config is empty")
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as e:
        raise LabelConfigError(f"labeling config is not well-formed XML ({e}); check for an "
                               "unescaped & or < in a class name, or an unclosed tag") from e
    unknown = sorted({el.tag for el in root.iter() if el.tag.lower() not in _KNOWN_TAGS})
    if unknown:
        raise LabelConfigError(f"unknown tag(s) {', '.join('<%s>' % t for t in unknown)}: "
                               "Label Studio would reject them; check the spelling (tags are "
                               "e.g. <View>, <Image>, <Choices>, <Choice>)")
    try:
        li = LabelInterface(xml)
        li.validate()
    except Exception as e:  # the SDK raises plain Exception subclasses with a usable message
        raise LabelConfigError(f"Label Studio rejects the labeling config: {e}") from e

    choices = [c for c in li.controls if c.tag.lower() == "choices"]
    if len(choices) != 1:
        found = "no <Choices> tag" if not choices else f"{len(choices)} <Choices> tags"
        raise LabelConfigError(f"labeling config has {found}; scopeloop needs exactly one "
                               "<Choices choice=\"single\" toName=...> with one <Choice> per class")
    ctrl = choices[0]
    if ctrl.attr.get("choice", "single") != "single":
        raise LabelConfigError(f'<Choices name="{ctrl.name}"> must have choice="single" '
                               "(one class per image)")
    images = [o for o in ctrl.objects if o.tag.lower() == "image"]
    if not images:
        raise LabelConfigError(f'<Choices name="{ctrl.name}"> must point (toName) to an <Image>')
    # LabelInterface silently de-duplicates labels: count them on the raw XML.
    el = next(e for e in root.iter() if e.tag.lower() == "choices" and e.get("name") == ctrl.name)
    values = [c.get("value", c.get("alias", "")) for c in el if c.tag.lower() == "choice"]
    # the reserved answer (compared exactly: a class spelled differently stays a class)
    classes = [v for v in values if v != UNUSABLE]
    _check_classes(classes)
    if len(values) - len(classes) > 1:
        raise LabelConfigError(f"duplicate class name(s) ['{UNUSABLE}'] (compared case-insensitively): "
                               "each class must appear once")
    if any(c.casefold() == UNUSABLE.casefold() for c in classes):
        raise LabelConfigError(f"a <Choice> spelled like the reserved answer '{UNUSABLE}' but not exactly: "
                               f"write it exactly '{UNUSABLE}' (the answer 'cannot be labeled') or rename the class")
    value = images[0].value or ""
    return ParsedConfig(classes=classes, from_name=ctrl.name, to_name=images[0].name,
                        value_key=value.lstrip("$"), xml=xml,
                        unusable=UNUSABLE if len(values) > len(classes) else None)


def _check_classes(classes: list[str]) -> None:
    if not classes:
        raise LabelConfigError("no classes given: list at least one class name")
    if any(not c for c in classes):
        raise LabelConfigError("a class name is empty")
    seen, dups = set(), []
    for c in classes:
        if c.casefold() in seen:
            dups.append(c)
        seen.add(c.casefold())
    if dups:
        raise LabelConfigError(f"duplicate class name(s) {dups} (compared case-insensitively): "
                               "each class must appear once")
