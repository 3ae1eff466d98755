"""The labeled dataset export: an ImageFolder of the labeled images, manifest, group-aware splits, label map and datasheet."""
from __future__ import annotations

import copy
import csv
import json
import re
import time
from collections import Counter
from pathlib import Path, PurePosixPath
from typing import Callable, Sequence

from trainer.io.groups import group_of
from trainer.reports.export_paths import (
    MANIFEST_FIELDS,
    MARKER,
    ExportError,
    _inside,
    _place,
    class_folders,
    key_problem,
    prepare_out,
    safe_name,
)
from trainer.store.atomic import atomic_path


def _plane_file(key: str) -> str:
    """The exported file name of a key: a Z plane ``dir/a.tif#z3`` becomes ``dir/a_z3.tif``."""
    m = re.fullmatch(r"(.*?)(\.[^./]*)?#z(\d+)", key)
    return f"{m.group(1)}_z{m.group(3)}.tif" if m else key


def _chosen_annotation(task: dict) -> dict:
    """The annotation that gave the task its label: the last updated one with that label."""
    anns = sorted(task.get("annotations") or [], key=lambda a: (a.get("updated_at") or a.get("created_at") or "", a.get("id", 0)))
    same = [a for a in anns if a.get("label") == task.get("label")]
    return (same or anns or [{}])[-1]


def split_labels(labels: Sequence[str], groups: Sequence | None, val_fraction: float, test_fraction: float,
                 seed: int = 0) -> list[str]:
    """"train"/"val"/"test" per row, stratified by class; whole groups stay on one side."""
    from trainer.models.data import stratified_split

    n = len(labels)
    rest, test = (stratified_split(labels, test_fraction, seed, groups) if test_fraction > 0 else (list(range(n)), []))
    sub_groups = [groups[r] for r in rest] if groups is not None else None
    frac = val_fraction / max(1e-9, 1 - test_fraction)
    tr, va = stratified_split([labels[r] for r in rest], frac, seed + 1, sub_groups) if val_fraction > 0 else (rest, [])
    out = ["train"] * n
    for r in test:
        out[r] = "test"
    for i in va:
        out[rest[i]] = "val"
    return out


def _group_of(task: dict, key: str, pattern: re.Pattern | None, groups: dict | None) -> str:
    if groups is not None and key in groups:
        return str(groups[key])
    if task.get("group") is not None:
        return str(task["group"])
    return group_of(key, pattern, unmatched="shared") if pattern is not None else ""


def export_dataset(workspace, out, snapshot: dict | None = None, mode: str = "copy", overwrite: bool = False,
                   val_fraction: float = 0.15, test_fraction: float = 0.15, seed: int = 0,
                   group_pattern: str | None = None, groups: dict | None = None, formats: Sequence[str] = (),
                   ls_export: Callable[[Path], object] | None = None, exclude_flagged: bool = False) -> dict:
    """Write the labeled images of `snapshot` (default: the workspace's last labels, read once).

    Returns a summary: counts per class and split, `left_out` [{task_id, key, reason}], paths.
    Image quality (trainer.quality, the project's last pass): every row carries its verdict
    (`qc_verdict`, `qc_reason`; "" when not judged). Labeled images are exported whatever their
    verdict unless `exclude_flagged`, which leaves every non-ok one out by name. Images an
    annotator answered "unusable image" are never exported: left out as such.
    `ls_export(path)`, when given, writes Label Studio's own JSON export to `path`.
    """
    if mode not in ("copy", "symlink", "hardlink"):
        raise ExportError(f"unknown mode '{mode}': use copy, symlink or hardlink")
    from trainer.io.plane_keys import image_exists
    snap = copy.deepcopy(snapshot if snapshot is not None else workspace.labels)
    project = workspace.project
    images_root = Path(workspace.images_root)
    from label_config import UNUSABLE  # the answer "unusable image": never a class (issue 14)
    from trainer.quality.project import load_verdicts

    classes = list(project.get("classes") or sorted({t.get("label") for t in snap["tasks"].values()
                                                     if t.get("label") and t["label"] != UNUSABLE}))
    # (Workspace.registry creates registry/ on access: without a model, do not touch it)
    preds = workspace.load_predictions() if (workspace.root / "registry").is_dir() else None
    pattern = re.compile(group_pattern) if group_pattern else None
    out = prepare_out(out, overwrite, "dataset", protect=[images_root])

    folders = class_folders(classes)  # the real class names stay in the manifest and label_map.json
    pred_of = {}
    if preds is not None:
        pcls = [str(c) for c in preds["classes"]]
        for k, p in zip(preds["keys"].tolist(), preds["probs"]):
            pred_of[str(k)] = (pcls[int(p.argmax())], f"{float(p.max()):.4f}")

    verdicts = load_verdicts(workspace.root)
    rows, left_out, seen = [], [], {}
    for tid in sorted(snap["tasks"], key=lambda t: (len(str(t)), str(t))):
        task = snap["tasks"][tid]
        key, label = task.get("key"), task.get("label")
        if label is None:
            continue  # not labeled (yet): not part of the dataset
        problem = key_problem(key)
        qc = verdicts.get(key) or {}
        if problem is None and label == UNUSABLE:
            problem = f"answered '{UNUSABLE}' by an annotator (not a class, not exported)"
        elif problem is None and exclude_flagged and qc.get("verdict", "ok") != "ok":
            problem = f"image quality: {qc['verdict']} ({qc.get('reason', '')}); left out by --exclude-flagged"
        if problem is None and label not in folders:
            problem = f"label '{label}' is not a project class ({', '.join(classes)})"
        if problem is None and key in seen:
            problem = f"same image as task {seen[key]} (exported once)"
        src = images_root / key if problem is None else None
        if problem is None and not image_exists(src):
            problem = "image file missing"
        if problem:
            left_out.append({"task_id": str(tid), "key": str(key), "reason": problem})
            continue
        seen[key] = tid
        ann = _chosen_annotation(task)
        who = sorted({a.get("annotator") or "" for a in task.get("annotations") or []} - {""})
        pv = pred_of.get(key, ("", ""))
        rows.append({"task_id": str(tid), "key": key, "original_path": str(images_root / key), "file": "",
                     "label": label, "split": "", "group": _group_of(task, key, pattern, groups),
                     "annotator": ann.get("annotator") or "", "annotated_at": ann.get("updated_at") or ann.get("created_at") or "",
                     "n_annotations": len(task.get("annotations") or []), "annotators": ";".join(who),
                     "annotators_disagree": "yes" if task.get("disagreement") else "no",
                     "model_version": preds["version"] if preds is not None and key in pred_of else "",
                     "predicted": pv[0], "confidence": pv[1],
                     "qc_verdict": qc.get("verdict", ""), "qc_reason": qc.get("reason", ""),
                     **_consensus_columns(task)})

    # file names: the image's own name; the folders of its key are prepended only on a clash
    names = Counter((r["label"], safe_name(PurePosixPath(_plane_file(r["key"])).name)) for r in rows)
    used: set = set()
    for r in rows:
        name = safe_name(PurePosixPath(_plane_file(r["key"])).name)
        if names[(r["label"], name)] > 1:
            name = safe_name("__".join(PurePosixPath(_plane_file(r["key"])).parts))
        while (r["label"], name) in used:
            name = "_" + name
        used.add((r["label"], name))
        r["file"] = f"images/{folders[r['label']]}/{name}"
    has_groups = any(r["group"] for r in rows)
    splits = split_labels([r["label"] for r in rows], [r["group"] or r["key"] for r in rows] if has_groups else None,
                          val_fraction, test_fraction, seed) if rows else []
    placed = Counter()
    for c in classes:
        (out / "images" / folders[c]).mkdir(parents=True, exist_ok=True)
    for r, s in zip(rows, splits):
        r["split"] = s
        dst = out / r["file"]
        if not _inside(dst.parent, out):  # defence in depth: never write outside `out`
            raise ExportError(f"refusing to write '{dst}' outside the export folder")
        placed[_place(images_root / r["key"], dst, mode)] += 1

    _write_csv(out / "manifest.csv", MANIFEST_FIELDS, rows)
    _write_csv(out / "split.csv", ["file", "label", "group", "split"], rows)
    _write_csv(out / "left_out.csv", ["task_id", "key", "reason"], left_out)
    _write_csv(out / "annotations.csv", ANNOTATION_FIELDS, annotation_rows(snap, rows))
    (out / "label_map.json").write_text(json.dumps({str(i): c for i, c in enumerate(classes)}, indent=1))
    counts = {c: Counter(r["split"] for r in rows if r["label"] == c) for c in classes}
    summary = {
        "kind": "dataset", "complete": True, "exported": len(rows), "left_out": left_out,
        "counts": {c: sum(v.values()) for c, v in counts.items()},
        "splits": {c: {s: v.get(s, 0) for s in ("train", "val", "test")} for c, v in counts.items()},
        "class_folders": folders, "mode": dict(placed), "project_id": snap.get("project_id"),
        "labels_cursor": snap.get("cursor"), "images_root": str(images_root),
        "model_version": preds["version"] if preds is not None else None,
        "split_settings": {"val_fraction": val_fraction, "test_fraction": test_fraction, "seed": seed,
                           "grouped_by": ("groups given" if groups else group_pattern or ("task group" if has_groups else None))},
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "out": str(out),
        "image_quality": {"judged": bool(verdicts), "exclude_flagged": exclude_flagged,
                          "exported": dict(Counter(r["qc_verdict"] or "not judged" for r in rows)),
                          "unusable": sum(x["reason"].startswith(f"answered '{UNUSABLE}'") for x in left_out),
                          "flagged_left_out": sum(x["reason"].startswith("image quality:") for x in left_out)},
    }
    if "json" in formats:
        (out / "manifest.json").write_text(json.dumps({"classes": classes, "images": rows}, indent=1))
    if "ls-json" in formats:
        if ls_export is None:
            raise ExportError("Label Studio's own export needs a connection to Label Studio (not available here)")
        ls_export(out / "label_studio_export.json")
    if project.get("cells"):  # fields of view: each cell's field, position and box; the masks
        from trainer.reports.cell_export import export_cells

        summary["cells"] = export_cells(workspace, rows, out)
    (out / "README.md").write_text(dataset_datasheet(summary, rows, project))
    (out / MARKER).write_text(json.dumps(summary, indent=1))
    return summary


ANNOTATION_FIELDS = ["task_id", "key", "annotation_id", "annotator", "label", "annotated_at", "consensus_label",
                     "consensus_confidence", "consensus_rule", "agrees_with_consensus"]


def _consensus_columns(task: dict) -> dict:
    """The manifest's consensus columns (issue 26): the task's label is its consensus; with two or
    more annotators, the posterior probability of that label and the rule that decided it
    (ml_backend.labelstudio.sync.apply_consensus: reviewer, unanimous, majority, posterior); one
    annotator: "single", confidence empty."""
    c = task.get("consensus") or {}
    if c:
        return {"consensus_confidence": f"{float(c.get('confidence', 1.0)):.4f}", "consensus_rule": c.get("rule", "")}
    n = len({a.get("annotator") or a.get("id") for a in task.get("annotations") or []})
    return {"consensus_confidence": "", "consensus_rule": "single" if n <= 1 else "last annotation"}


def annotation_rows(snapshot: dict, rows: list[dict]) -> list[dict]:
    """annotations.csv: every annotation of every exported task (oldest first), beside the task's
    consensus label and its confidence, and whether this annotation agrees with it."""
    out = []
    for r in rows:
        task = snapshot["tasks"].get(r["task_id"]) or {}
        anns = sorted(task.get("annotations") or [],
                      key=lambda a: (a.get("updated_at") or a.get("created_at") or "", a.get("id", 0)))
        for a in anns:
            out.append({"task_id": r["task_id"], "key": r["key"], "annotation_id": a.get("id", ""),
                        "annotator": a.get("annotator") or "", "label": a.get("label") or "",
                        "annotated_at": a.get("updated_at") or a.get("created_at") or "", "consensus_label": r["label"],
                        "consensus_confidence": r["consensus_confidence"], "consensus_rule": r["consensus_rule"],
                        "agrees_with_consensus": "yes" if a.get("label") == r["label"] else "no"})
    return out


def _quality_lines(q: dict) -> str:
    if not q["judged"]:
        return "No image quality check was run on this project (`qc_verdict` is empty)."
    flagged = {v: n for v, n in q["exported"].items() if v not in ("ok", "not judged")}
    return "\n".join([
        "- `manifest.csv` columns `qc_verdict` / `qc_reason`: each image's verdict (ok, blank, out_of_focus, "
        "saturated, too_dark, duplicate, unusual) and the score that decided it",
        f"- exported per verdict: {', '.join(f'{v} {n}' for v, n in sorted(q['exported'].items())) or 'none'}"
        + (" (flagged images an annotator labeled anyway are exported as labeled)" if flagged else ""),
        f"- flagged images left out (`--exclude-flagged`): {q['flagged_left_out']}" if q["exclude_flagged"]
        else "- flagged images left out: none (`scopeloop export dataset --exclude-flagged` leaves them out)",
        f"- images annotators answered 'unusable': {q['unusable']} (in left_out.csv, never a class)"])


def _write_csv(path: Path, fields: list[str], rows: list[dict]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fields, extrasaction="ignore", lineterminator="\n")
        w.writeheader()
        w.writerows(rows)


def _table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(str(x) for x in r) + " |" for r in rows])


def dataset_datasheet(summary: dict, rows: list[dict], project: dict) -> str:
    """README.md: what is in the export, where it came from, and how to use it."""
    sp = summary["splits"]
    times = sorted(r["annotated_at"] for r in rows if r["annotated_at"])
    who = Counter(a for r in rows for a in r["annotators"].split(";") if a)
    counts_table = _table(["class", "folder", "images", "train", "val", "test"],
                          [[c, summary["class_folders"][c], summary["counts"][c], *sp[c].values()] for c in sp]
                          + [["**total**", "", summary["exported"], *[sum(v[s] for v in sp.values()) for s in ("train", "val", "test")]]])
    left = summary["left_out"]
    parts = [
        f"# Labeled dataset: {project.get('name') or project.get('title') or 'scopeloop project'}",
        f"Exported {summary['created']} by scopeloop from Label Studio project {summary['project_id']} "
        f"(labels snapshot cursor `{summary['labels_cursor']}`). Original images: `{summary['images_root']}`.",
        "## Class counts", counts_table,
        "## Annotation",
        f"- annotators: {', '.join(f'{a} ({n})' for a, n in who.most_common()) or 'not recorded'}",
        f"- images where annotators disagreed: {sum(r['annotators_disagree'] == 'yes' for r in rows)} (column `annotators_disagree`)",
        f"- images labeled by several annotators: {sum(r['consensus_rule'] not in ('single', '') for r in rows)}; their label "
        "is the consensus of all annotations (columns `consensus_confidence`, `consensus_rule`; every annotation in "
        "`annotations.csv`)",
        f"- labels given between {times[0] if times else '?'} and {times[-1] if times else '?'}",
        f"- model predictions in the manifest: model version {summary['model_version'] or 'none (no model yet)'}",
        "## Split",
        f"Stratified by class; validation {summary['split_settings']['val_fraction']:.0%}, test "
        f"{summary['split_settings']['test_fraction']:.0%}, seed {summary['split_settings']['seed']}; grouped by: "
        f"{summary['split_settings']['grouped_by'] or 'none (each image on its own)'}. Classes with very few "
        "images keep them in train.",
        "## Files",
        "- `images/<class>/<file>`: the original image files (ImageFolder layout; TIFF stays TIFF)\n"
        "- `manifest.csv`: one row per image (task id, original path, label, annotator, time, model prediction)\n"
        "- `split.csv`: train / val / test of every image\n- `label_map.json`: class index -> name\n"
        "- `annotations.csv`: every annotation of every exported image (annotator, label, time) beside the consensus "
        "label, its confidence and whether the annotation agrees with it\n"
        "- `left_out.csv`: labeled tasks not exported, with the reason\n- `export.json`: this summary, machine-readable"
        + ("\n- `cells.csv`: per exported cell its field of view, cell_id, centroid, box, area and edge; "
           "`masks/`: the fields' label images (a cell's value is its cell_id); `cell_settings.json`: how cells "
           f"were found and cropped (fields: `{summary['cells']['fields_root']}`)" if summary.get("cells") else ""),
        "## Image quality",
        _quality_lines(summary["image_quality"]),
        "## Use", "`scopeloop train --data <this folder>/images` trains on it (all labels; use split.csv for a fixed test set).",
        f"## Left out ({len(left)})",
        "\n".join(f"- task {x['task_id']} `{x['key']}`: {x['reason']}" for x in left[:200]) or "none",
    ]
    return "\n\n".join(parts) + "\n"


def label_studio_exporter(client, project_id: int, export_type: str = "JSON") -> Callable[[Path], Path]:
    """`ls_export` for export_dataset: Label Studio's own export via its SDK, streamed to a file."""
    def write(path: Path) -> Path:
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            for chunk in client.sdk.projects.exports.download_sync(project_id, export_type=export_type):
                f.write(chunk)
        return path
    return write
