"""Export of the labeled dataset and of a model, for use outside the project.

Dataset: an ImageFolder directory a biologist can hand to anyone (original files, TIFF stays
TIFF), a manifest, a train/val/test split, the label map and a datasheet. Three rules:

* snapshot: the export is built from ONE labels snapshot (read once, copied), so labels that
  change in Label Studio during the export never produce a mixed result; the same labels give
  byte-identical manifests (rows sorted by task id, no time stamps in them).
* nothing is silently lost: a labeled task whose image is missing, whose key is unsafe or whose
  label is not a project class is left out BY NAME (left_out.csv, datasheet, return value).
* nothing is written outside the export folder: keys are checked (no absolute paths, no `..`,
  no control characters), file and class names are sanitised, every destination is verified to
  lie inside the folder, and an existing folder is only replaced when it is an earlier export.

Model: the version folder plus a model card, preprocessing description, OOD reference, the
backbone weights (so it loads without the weights package) and TorchScript for non-Python use.
"""
from __future__ import annotations

import copy
import csv
import json
import os
import re
import shutil
import time
import warnings
from collections import Counter
from pathlib import Path, PurePosixPath
from typing import Callable, Sequence

MARKER = "export.json"
_UNSAFE = re.compile(r'[\x00-\x1f\x7f<>:"/\\|?*]')  # not allowed in a file name we write
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
MANIFEST_FIELDS = ["task_id", "key", "original_path", "file", "label", "split", "group", "annotator",
                   "annotated_at", "n_annotations", "annotators", "annotators_disagree", "model_version",
                   "predicted", "confidence", "qc_verdict", "qc_reason"]


class ExportError(ValueError):
    """A problem with the export the user can fix (printed as one line by the CLI)."""


# ------------------------------------------------------------------ path safety
def key_problem(key) -> str | None:
    """Why an image key cannot be exported safely, or None. Keys come from Label Studio tasks."""
    if not isinstance(key, str) or not key.strip():
        return "empty image key"
    if _CONTROL.search(key):
        return "image key contains control characters"
    if "\\" in key:
        return "image key contains backslashes (keys use '/')"
    if key.startswith(("/", "~")) or re.match(r"^[A-Za-z]:/", key):
        return "image key is an absolute path"
    if ".." in PurePosixPath(key).parts:
        return "image key leaves the images folder ('..')"
    return None


def safe_name(name: str, max_len: int = 150) -> str:
    """One path component safe on Linux, macOS and Windows, visible (no leading dot), suffix kept."""
    name = _UNSAFE.sub("_", str(name)).strip().strip(".") if name not in (".", "..") else ""
    name = name.lstrip(".") or "_"
    if len(name.encode()) > max_len:
        stem, suffix = os.path.splitext(name)
        name = stem.encode()[: max_len - len(suffix.encode())].decode(errors="ignore") + suffix
    return name


def _inside(path: Path, root: Path) -> bool:
    return path.resolve().is_relative_to(root.resolve())


def prepare_out(out, overwrite: bool, kind: str, protect: Sequence = ()) -> Path:
    """Create an empty export folder. An existing non-empty one is replaced only when it holds
    an earlier export (our marker) and `overwrite` is set; `protect` (e.g. the images root) may
    be neither inside nor around it."""
    out = Path(out).expanduser().absolute()
    for p in protect:
        p = Path(p).resolve()
        if _inside(out, p) or _inside(p, out):
            raise ExportError(f"export folder '{out}' must not be inside or around '{p}': choose another folder")
    if out.exists():
        if not out.is_dir():
            raise ExportError(f"'{out}' exists and is not a folder")
        if any(out.iterdir()):
            if not (out / MARKER).is_file():
                raise ExportError(f"'{out}' is not empty and not an earlier scopeloop export: choose a new folder")
            if not overwrite:
                raise ExportError(f"'{out}' holds an earlier export: pass --overwrite to replace it")
            shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text(json.dumps({"kind": kind, "complete": False}))
    return out


def _place(src: Path, dst: Path, mode: str) -> str:
    """Copy or link `src` to `dst`; returns what was done (hard links fall back to copies).
    A Z plane ``<file>#z<k>`` (project stack "planes") is written as its own TIFF (raw pixels)."""
    from trainer.images import read_raw, split_plane

    if split_plane(src)[1] is not None:
        import tifffile

        tifffile.imwrite(dst, read_raw(src))
        return "plane"
    if src.is_dir():  # an OME-Zarr folder is one image
        shutil.copytree(src, dst, symlinks=True)
        return "copy"
    if mode == "symlink":
        dst.symlink_to(src.resolve())
        return "symlink"
    if mode == "hardlink":
        try:
            os.link(src, dst)
            return "hardlink"
        except OSError:
            pass
    shutil.copy2(src, dst)
    return "copy"


# ------------------------------------------------------------------ dataset
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
    from trainer.data import stratified_split

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
    if pattern is not None:
        m = pattern.search(PurePosixPath(key).name)
        if m:
            return m.group(m.lastindex or 0)
    return ""


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
    from trainer.images import image_exists
    snap = copy.deepcopy(snapshot if snapshot is not None else workspace.labels)
    project = workspace.project
    images_root = Path(workspace.images_root)
    from label_config import UNUSABLE  # the answer "unusable image": never a class (issue 14)
    from trainer.quality import load_verdicts

    classes = list(project.get("classes") or sorted({t.get("label") for t in snap["tasks"].values()
                                                     if t.get("label") and t["label"] != UNUSABLE}))
    # (Workspace.registry creates registry/ on access: without a model, do not touch it)
    preds = workspace.load_predictions() if (workspace.root / "registry").is_dir() else None
    pattern = re.compile(group_pattern) if group_pattern else None
    out = prepare_out(out, overwrite, "dataset", protect=[images_root])

    folders = {c: safe_name(c) for c in classes}
    if len(set(folders.values())) < len(folders):
        raise ExportError(f"class names {classes} collide after making them safe folder names")
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
                     "qc_verdict": qc.get("verdict", ""), "qc_reason": qc.get("reason", "")})

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
    (out / "README.md").write_text(dataset_datasheet(summary, rows, project))
    (out / MARKER).write_text(json.dumps(summary, indent=1))
    return summary


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
        "- `left_out.csv`: labeled tasks not exported, with the reason\n- `export.json`: this summary, machine-readable",
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
        tmp = path.with_name(path.name + ".part")
        with open(tmp, "wb") as f:
            for chunk in client.sdk.projects.exports.download_sync(project_id, export_type=export_type):
                f.write(chunk)
        os.replace(tmp, path)
        return path
    return write


# ------------------------------------------------------------------ model
class _Packaged:
    """Built lazily (torch import): input [0, 1] RGB (B, 3, S, S) -> class probabilities."""

    @staticmethod
    def build(net, mean, std):
        import torch

        class Packaged(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.net = net
                self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
                self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))

            def forward(self, x):
                return torch.softmax(self.net((x - self.mean) / self.std), dim=1)

        return Packaged().eval()


def export_torchscript(model, path, tol: float = 1e-4) -> float:
    """Trace the classifier (with normalisation and softmax) on CPU; verify it reproduces the
    Python model on other inputs and batch sizes. Returns the largest difference seen."""
    import torch

    size = model.config.image_size
    net = model.net.cpu().eval().to(memory_format=torch.contiguous_format)
    wrapped = _Packaged.build(net, model.config.mean, model.config.std)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch 2.x deprecates jit; libtorch still loads it
        traced = torch.jit.trace(wrapped, torch.rand(2, 3, size, size, generator=g), check_trace=False)
        traced.save(str(path))
        loaded = torch.jit.load(str(path))
        worst = 0.0
        for b in (1, 3):
            x = torch.rand(b, 3, size, size, generator=g)
            worst = max(worst, float((loaded(x) - wrapped(x)).abs().max()))
    if worst > tol:
        raise RuntimeError(f"TorchScript export differs from the model by {worst:.2e} (> {tol}); not usable")
    return worst


def export_model(model_dir, out, workspace=None, overwrite: bool = False, torchscript: bool = True) -> dict:
    """A self-contained model folder: loadable by `scopeloop predict --model <out>` anywhere."""
    import torch

    from trainer.model import ScopeModel
    from trainer.ood import OODReference

    model_dir = Path(model_dir)
    model = ScopeModel.load(model_dir)
    out = prepare_out(out, overwrite, "model", protect=[model_dir])
    for p in sorted(model_dir.iterdir()):
        if p.is_file() and p.name != MARKER:
            shutil.copy2(p, out / p.name)
    if not (out / "backbone.pt").is_file():  # frozen backbone: ship its weights too
        torch.save(model.net.backbone.state_dict(), out / "backbone.pt")
    ood = OODReference.load(out)
    if ood is None and workspace is not None:
        ood = _reference_from_workspace(model, workspace)
        if ood is not None:
            ood.save(out)
    cfg = model.config
    (out / "preprocessing.json").write_text(json.dumps({
        "image_size": cfg.image_size, "channels": cfg.channels, "mean": cfg.mean, "std": cfg.std,
        "reading": cfg.reader.to_dict(),  # stack, plane, timepoint, normalisation, ranges, bit_depth
        "steps": [f"read (trainer.images): {cfg.reader.describe()}",
                  "channels -> RGB: 1 channel copied to R,G,B; 2 channels -> R,G,0; >3 -> first three or `channels`",
                  "pad to a square (reflect), resize bilinear to image_size",
                  "(x - mean) / std per channel (done inside model.torchscript.pt, which takes [0, 1] input)"],
    }, indent=1))
    ts_diff = export_torchscript(model, out / "model.torchscript.pt") if torchscript else None
    (out / "MODEL_CARD.md").write_text(model_card(out, model, ood, ts_diff))
    info = {"kind": "model", "complete": True, "source": str(model_dir), "classes": cfg.classes,
            "torchscript_max_diff": ts_diff, "ood_reference": ood is not None, "out": str(out)}
    (out / MARKER).write_text(json.dumps(info, indent=1))
    return info


def _reference_from_workspace(model, workspace):
    """OOD reference from the project's labeled images (cached embeddings when they fit)."""
    from trainer.ood import reference_for_model

    tasks = [t for t in workspace.labels.get("tasks", {}).values() if t.get("label") in model.classes]
    keys = sorted({t["key"] for t in tasks if key_problem(t.get("key")) is None})
    label_of = {t["key"]: t["label"] for t in tasks}
    if len(keys) < 2:
        return None
    ckeys, emb = workspace.embeddings(model.config.backbone_id).load()
    row = {k: i for i, k in enumerate(ckeys)}
    if emb is not None and not model.backbone_finetuned and all(k in row for k in keys):
        return reference_for_model(model, keys, [label_of[k] for k in keys], emb[[row[k] for k in keys]])
    root = Path(workspace.images_root)
    keys = [k for k in keys if (root / k).is_file()]
    return reference_for_model(model, [root / k for k in keys], [label_of[k] for k in keys]) if len(keys) > 1 else None


def _num(x) -> str:
    return "-" if x is None else f"{x:.4f}"


def model_card(folder: Path, model, ood, ts_diff) -> str:
    """MODEL_CARD.md: what the model is, what it was trained on, how good it is, where it fails."""
    def load(name):
        p = folder / name
        return json.loads(p.read_text()) if p.is_file() else {}

    cfg, metrics, hist, prov = model.config, load("metrics.json"), load("history.json"), load("provenance.json")
    from trainer.estimate import from_metrics, headline

    counts = metrics.get("counts", {})
    tr, va = counts.get("train", {}), counts.get("validation", counts.get("evaluated", {}))
    est = from_metrics(metrics)  # the same estimator as status and the report
    per = (est or {}).get("per_class", {})

    def cells(c):
        r = per.get(c)
        if not r or not r["evaluated"]:
            return ["no evaluated images", "", ""]
        if not est.get("enough"):  # no per-class score from too few labels
            return ["not estimated yet", "", ""]
        return [f"{r['precision']:.2f}", f"{r['recall']:.2f} ({r['recall_low']:.2f}-{r['recall_high']:.2f})", f"{r['f1']:.2f}"]

    rows = [[c, tr.get(c, "?"), va.get(c, "?"), *cells(c)] for c in cfg.classes]
    epochs = hist.get("epochs", [])
    kept = next((e for e in epochs if e.get("epoch") == hist.get("best_epoch")), epochs[-1] if epochs else {})
    tc = prov.get("train_config", {})
    scores = headline(est)
    rare = [c for c in cfg.classes if (tr.get(c, 0) or 0) + (va.get(c, 0) or 0) < 10]
    parts = [
        f"# Model card: {', '.join(cfg.classes)} classifier",
        f"Backbone `{cfg.backbone}` ({cfg.weights_source or cfg.weights}), input {cfg.image_size} px"
        f"{', channels ' + str(cfg.channels) if cfg.channels else ''}; trained {prov.get('created', '?')} in "
        f"mode `{tc.get('mode', '?')}` on {prov.get('device', '?')} ({prov.get('seconds', '?')} s)"
        + (f"; data from `{prov['source']}`." if prov.get("source") else "."),
        "## Data (labeled images per class)",
        _table(["class", "train", "validation" if "validation" in counts else "evaluated (out-of-fold)",
                "precision", "recall (95% interval)", "F1"], rows),
        f"Quality: {scores}. Skipped unreadable images: {counts.get('skipped_images', 0)}.",
        "## Training history",
        f"{len(epochs)} rounds/epochs; kept {hist.get('best_epoch')}: training loss {_num(kept.get('train_loss'))}, "
        f"validation loss {_num(kept.get('val_loss'))}. See loss_curves.png and confusion_matrix.png.",
        "## Use",
        "- Python with scopeloop: `scopeloop predict --model <this folder> --input <images> --out predictions.csv`\n"
        "- without scopeloop: `torch.jit.load('model.torchscript.pt')(x)` with x float (B, 3, S, S) RGB in [0, 1] "
        "prepared as in preprocessing.json; returns class probabilities in label_map.json order"
        + (f" (verified to match the Python model within {ts_diff:.1e})" if ts_diff is not None else ""),
        "## Limits",
        "- It always answers with one of the classes above; cell types it never saw get one of these names.\n"
        "- Trained on one image source: another microscope, stain, magnification or camera can silently "
        "lower accuracy. " + ("`scopeloop predict` flags images far from every training image (`out_of_distribution`, "
                              f"threshold = {ood.quantile:.0%} quantile of training images' own distances); check them."
                              if ood is not None else "No out-of-distribution reference is stored with this model.") + "\n"
        "- Predictions with confidence below 0.5 are flagged `low_confidence`: review them.\n"
        + (f"- Few labeled images (<10) for: {', '.join(rare)}: their scores are uncertain.\n" if rare else "")
        + "- Quality is measured on images from the same labeling project (not an independent test set); "
        "a cross-validated estimate judges each image by a model that did not train on it.",
    ]
    return "\n\n".join(parts) + "\n"


# ------------------------------------------------------------------ command line
def _workspace(args):
    """The project's work directory from --workdir, or --project NAME under SCOPELOOP_HOME."""
    from scopeloop.settings import load_settings
    from trainer.workspace import Workspace

    if not args.workdir:
        return Workspace(load_settings().existing_project(args.project))
    root = Path(args.workdir)
    if not (root / "project.json").is_file():
        raise ExportError(f"no scopeloop project in '{root}': run `scopeloop init` first or pass --workdir")
    return Workspace(root)


def _sync_labels(workspace) -> dict:
    """Fresh labels from Label Studio, read in full once: the export's snapshot."""
    from ml_backend.labelstudio import LabelStudioClient
    from ml_backend.sync import sync_labels
    from scopeloop.settings import load_settings

    s = load_settings()
    return sync_labels(LabelStudioClient(s.label_studio_url, s.label_studio_api_key), workspace, full=True)


def _ls_exporter(snapshot: dict, workspace):
    from scopeloop.settings import load_settings

    from ml_backend.labelstudio import LabelStudioClient

    s = load_settings()
    pid = snapshot.get("project_id") or workspace.project.get("ls_project_id")
    if not pid:
        raise ExportError("no Label Studio project id in the labels snapshot: sync labels first")
    return label_studio_exporter(LabelStudioClient(s.label_studio_url, s.label_studio_api_key), int(pid))


def cmd_export(args, sync: Callable | None = None) -> int:
    """`scopeloop export dataset|model`; `sync(workspace) -> snapshot` is injectable for tests."""
    if args.what == "model":
        from trainer.inference import resolve_model_dir

        ws = None if args.model else _workspace(args)
        model_dir = resolve_model_dir(args.model or ws.registry.root, args.version)
        info = export_model(model_dir, args.out, workspace=ws, overwrite=args.overwrite, torchscript=not args.no_torchscript)
        print(f"model {model_dir.name} exported to {info['out']} (classes: {', '.join(info['classes'])})")
        if info["torchscript_max_diff"] is not None:
            print(f"TorchScript: model.torchscript.pt (matches the model within {info['torchscript_max_diff']:.1e})")
        if not info["ood_reference"]:
            print("note: no out-of-distribution reference could be stored (no labeled images found)")
        print(f"use it anywhere: scopeloop predict --model {info['out']} --input <images> --out predictions.csv")
        return 0
    ws = _workspace(args)
    snapshot = None if args.offline else (sync or _sync_labels)(ws)
    snapshot = snapshot if snapshot is not None else ws.labels
    formats = set(args.format or [])
    s = export_dataset(ws, args.out, snapshot, mode=args.mode, overwrite=args.overwrite, val_fraction=args.val_fraction,
                       test_fraction=args.test_fraction, seed=args.seed, group_pattern=args.group_pattern,
                       exclude_flagged=args.exclude_flagged,
                       formats=formats, ls_export=_ls_exporter(snapshot, ws) if "ls-json" in formats else None)
    print(f"{s['exported']} labeled images exported to {s['out']} ({', '.join(f'{c} {n}' for c, n in s['counts'].items())})")
    if s["left_out"]:
        print(f"{len(s['left_out'])} labeled image(s) left out (see left_out.csv):")
        for x in s["left_out"][:20]:
            print(f"  task {x['task_id']} {x['key']}: {x['reason']}")
        if len(s["left_out"]) > 20:
            print(f"  ... and {len(s['left_out']) - 20} more")
    print(f"datasheet: {Path(s['out']) / 'README.md'}; train on it: scopeloop train --data {Path(s['out']) / 'images'}")
    return 0


def cmd_report(args) -> int:
    from trainer.report import build_report

    ws = _workspace(args)
    s = build_report(ws, args.out, version=args.version)
    print(f"QC report of model version {s['version'] or '(none yet)'} written in {s['seconds']:.1f} s: {s['path']}")
    return 0


def _project_args(p) -> None:
    p.add_argument("--project", default="default", help="project name under SCOPELOOP_HOME (default: %(default)s)")
    p.add_argument("--workdir", help="the project's work directory (overrides --project)")


def add_cli(subparsers) -> None:
    """Register `export` and `report` on the `scopeloop` command's subparsers."""
    e = subparsers.add_parser("export", help="export the labeled dataset or a model for use outside the project",
                              description="dataset: ImageFolder copy of the labeled images + manifest, split, label map "
                                          "and datasheet. model: a self-contained model folder (+ TorchScript).")
    e.add_argument("what", choices=["dataset", "model"])
    e.add_argument("--out", required=True, help="export folder (new, empty, or an earlier export with --overwrite)")
    _project_args(e)
    e.add_argument("--overwrite", action="store_true", help="replace an earlier export in --out")
    d = e.add_argument_group("dataset")
    d.add_argument("--mode", choices=["copy", "symlink", "hardlink"], default="copy", help="how image files are placed (default: copy)")
    d.add_argument("--offline", action="store_true", help="export the labels synced last, without contacting Label Studio")
    d.add_argument("--format", action="append", choices=["json", "ls-json"],
                   help="also write manifest.json (json) or Label Studio's own JSON export (ls-json); repeatable")
    d.add_argument("--val-fraction", type=float, default=0.15)
    d.add_argument("--test-fraction", type=float, default=0.15)
    d.add_argument("--group-pattern", help="regex on the file name giving the image's group (e.g. 'BloodImage_\\d+'): "
                                           "a group never straddles train/val/test")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--exclude-flagged", action="store_true",
                   help="leave out labeled images the image quality check flagged (blank, out of focus, ...); "
                        "by default they are exported as labeled, with their verdict in the manifest")
    m = e.add_argument_group("model")
    m.add_argument("--version", help="model version (default: current)")
    m.add_argument("--model", help="a model registry or version folder instead of the project's (e.g. scopeloop train --out)")
    m.add_argument("--no-torchscript", action="store_true", help="skip the TorchScript file")
    e.set_defaults(func=cmd_export)

    r = subparsers.add_parser("report", help="write the quality-control report (one HTML file)",
                              description="One self-contained HTML page: scores, confusions, learning curve, uncertain "
                                          "images and labels worth a second look. Built from stored results in seconds.")
    _project_args(r)
    r.add_argument("--out", default="scopeloop-report.html", help="HTML file to write (default: %(default)s)")
    r.add_argument("--version", help="model version (default: current)")
    r.set_defaults(func=cmd_report)
