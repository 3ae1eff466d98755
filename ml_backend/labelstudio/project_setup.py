"""`scopeloop init`: turn an image folder into a Label Studio project (idempotent).

* One task per image, identified by its key (path relative to the image root). Re-running on
  the same folder imports only images whose key has no task yet.
* The browser gets a URL LS serves through local-files storage: the original for 8-bit
  PNG/JPEG/BMP, a contrast-stretched PNG preview (trainer.io.preview.save_preview) for TIFF and
  16-bit PNG, which browsers cannot show. The original path stays in the task for training.
* Existing labels (CSV `file,label` or ImageFolder: folder name = class) become annotations:
  inside the bulk task import for new tasks (one request), one `annotations.create` each for
  tasks that already existed unlabeled (LS CE has no bulk annotation API).
* A corrupt image is skipped and reported, never fatal.
* `task_data(key)` adds fields to each new task's data: `scopeloop.projects.init` passes the
  image quality verdict (ml_backend.qc_tasks: `qc`, `qc_score`, `qc_note`), so a flagged image
  shows its verdict in Label Studio from the start, at no extra request.
"""
from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from PIL import Image

from label_config import build_config, choice_result, parse_config
from ml_backend.labelstudio.client import LabelStudioClient, LabelStudioError, local_files_url
from ml_backend.security import inside

BROWSER_SAFE = {".png", ".jpg", ".jpeg", ".bmp"}
BROWSER_MODES = {"1", "L", "LA", "P", "RGB", "RGBA"}   # 8-bit PIL modes


@dataclass
class InitReport:
    project_id: int
    created: int = 0            # new tasks
    existing: int = 0           # images that already had a task
    skipped: list[dict] = field(default_factory=list)         # {"path", "reason"}
    labels_imported: int = 0
    labels_skipped: list[dict] = field(default_factory=list)  # {"key", "reason"}
    previews: int = 0           # PNG previews written
    qc: dict | None = None      # image quality: {"counts": {verdict: n}, "csv": path} or {"error": ...}
    task_ids: dict[str, int] = field(default_factory=dict)  # image key -> task id, every task (no re-listing)
    refused: list[str] = field(default_factory=list)  # keys of links whose real file is outside the folder
    cells: str | None = None    # fields of view: what finding the cells gave (one line per problem)

    def refused_line(self) -> str:
        """One line naming the links refused (not imported), or ""."""
        if not self.refused:
            return ""
        names = ", ".join(self.refused[:10]) + (f" and {len(self.refused) - 10} more" if len(self.refused) > 10 else "")
        return (f"refused {len(self.refused)} link(s) that leave the image folder (not imported, never read): "
                + names)

    def summary(self) -> str:
        s = (f"project {self.project_id}: {self.created} task(s) created, {self.existing} already "
             f"there, {len(self.skipped)} image(s) skipped, {self.labels_imported} label(s) imported")
        if self.cells:
            s += "\ncells: " + self.cells
        if self.qc and self.qc.get("counts") is not None:
            c = self.qc["counts"]
            flagged = {v: n for v, n in c.items() if v != "ok" and n}
            s += (f"\nimage quality: {sum(flagged.values())} of {sum(c.values())} image(s) flagged"
                  + (" (" + ", ".join(f"{v} {n}" for v, n in flagged.items()) + "): kept out of the suggested order, "
                     "verdict in the task data (column qc)" if flagged else "")
                  + f"; scores per image: {self.qc.get('csv')}")
        elif self.qc and self.qc.get("error"):
            s += f"\nimage quality not checked: {self.qc['error']} (the worker's first refresh checks again)"
        if self.refused:
            s += "\n" + self.refused_line()
        for item in self.skipped[:20]:
            s += f"\n  skipped {item['path']}: {item['reason']}"
        for item in self.labels_skipped[:20]:
            s += f"\n  label not imported for {item['key']}: {item['reason']}"
        return s


def init_project(client: LabelStudioClient, images: str | Path, classes: list[str] | None = None,
                 *, document_root: str | Path, previews_dir: str | Path,
                 title: str | None = None, labels: str | Path | None = None,
                 backend_url: str | None = None, label_config: str | None = None,
                 project_id: int | None = None, served_root: str | Path | None = None,
                 task_data: Callable[[str], dict] | None = None,
                 served_previews: str | Path | None = None, reader=None, backend_token: str = "",
                 shown_file: Callable[[str], Path | None] | None = None) -> InitReport:
    """Create or update the project for `images`; see the module docstring.

    `labels`: a CSV path (`file,label`; file relative to `images` or a unique file name), or
    the word "imagefolder". `classes` may be omitted with "imagefolder" (folder names are used).
    `document_root` must be the LOCAL_FILES_DOCUMENT_ROOT Label Studio runs with; `images` and
    `previews_dir` must lie under it. `project_id` (from the work dir's project.json) wins over
    looking the project up by `title` (default: the folder name).
    `served_root` / `served_previews`: the paths Label Studio reaches `images` / `previews_dir`
    by (links under its root, see scopeloop.projects); default: the folders themselves.
    `task_data(key)`: extra data fields for each new task (see the module docstring).
    `shown_file(key)`: the file the annotator sees for `key` instead of the image itself (a PNG
    under `previews_dir`, e.g. a cell's context view, `trainer.cells.project`), or None for the usual.
    `backend_token`: the ML backend's token, handed to Label Studio when connecting it ("" = none).
    `reader`: the project's reading settings (`trainer.io.settings.Preprocessing`): previews show
    what the model sees, and with ``stack="planes"`` each Z plane is its own task (key
    ``<file>#z<k>``). Previews made under other settings are remade in place (same URLs).
    """
    from trainer.io.folders import image_key, list_images  # imports torch: only when needed
    from trainer.io.planes import expand_planes
    from trainer.io.settings import as_preprocessing

    reader = as_preprocessing(reader)

    root, previews = Path(images).resolve(), Path(previews_dir).resolve()
    # served paths are compared unresolved: a link under the root may point anywhere
    docroot = Path(os.path.abspath(document_root))
    served = Path(os.path.abspath(served_root or root))
    served_prev = Path(os.path.abspath(served_previews or previews))
    for p, what in ((served, "image folder"), (served_prev, "previews folder")):
        if not p.is_relative_to(docroot):
            raise LabelStudioError(f"{what} {p} is outside Label Studio's LOCAL_FILES_DOCUMENT_ROOT "
                                   f"{docroot}: Label Studio could not serve it; run `scopeloop init`, "
                                   "which links each image folder under the root")
    known = _read_labels(labels, root) if labels else {}
    if not classes and labels and str(labels).lower() == "imagefolder":
        classes = sorted(set(known.values()))
    cfg = parse_config(label_config or build_config(list(classes or [])))

    client.check()
    title = title or root.name
    pid = project_id or client.find_project(title) or client.create_project(title, cfg.xml)
    report = InitReport(project_id=pid)
    previews.mkdir(parents=True, exist_ok=True)  # LS refuses a storage path that does not exist
    client.ensure_local_storage(pid, str(served), title="images")
    client.ensure_local_storage(pid, str(served_prev), title="previews")

    existing = client.task_keys(pid)
    stale = _previews_stale(previews, reader)
    new_tasks, new_keys = [], []
    from tqdm.auto import tqdm  # a progress bar on a terminal: 100,000 images take minutes

    listed = [p for p in list_images(root) if not p.is_relative_to(previews)]
    # (previews kept inside the image folder are not images to label); a symlink whose real file
    # is outside the folder is refused: Label Studio would serve it to every annotator
    report.refused = [image_key(p, root) for p in listed if not inside(p, root)]
    refused = set(report.refused)
    for path in tqdm(expand_planes((p for p in listed if image_key(p, root) not in refused), reader),
                     desc="reading images", unit="img", disable=None):
        key = image_key(path, root)
        if key in existing:
            report.existing += 1
            if stale and shown_file is None and (previews / (key + ".png")).is_file():
                try:  # same URL, remade as the model now reads it
                    report.previews += _browser_file(path, previews / (key + ".png"), reader, stale=True)[1]
                except Exception:  # noqa: BLE001 - the old preview stays; reading reports it later
                    pass
            continue
        try:
            own = shown_file(key) if shown_file is not None else None
            shown, made_preview = (Path(own).resolve(), False) if own is not None and Path(own).is_file() \
                else _browser_file(path, previews / (key + ".png"), reader, stale)
        except Exception as e:  # any decoder error: report and go on
            report.skipped.append({"path": str(path), "reason": str(e) or e.__class__.__name__})
            continue
        report.previews += made_preview
        shown = (served_prev / shown.relative_to(previews)) if shown.is_relative_to(previews) \
            else served / shown.relative_to(root)
        task = {cfg.value_key: local_files_url(shown.relative_to(docroot).as_posix()),
                "key": key, "path": str(path)}
        if task_data is not None:
            task.update({k: v for k, v in task_data(key).items() if k not in task})
        label = _checked_label(known.get(key), key, cfg.classes, report)
        if label is not None:
            task = {"data": task, "annotations": [{"result": [_choice(cfg, label)]}]}
            report.labels_imported += 1
        new_tasks.append(task)
        new_keys.append(key)
    report.task_ids = dict(existing)
    if new_tasks:
        ids = client.import_tasks(pid, new_tasks)  # in input order
        report.created = len(ids)
        report.task_ids.update(zip(new_keys, ids))
    (previews / PREVIEW_STAMP).write_text(reader.tag() or "default")

    # labels for tasks that existed before this run and have no annotation yet
    if known and existing:
        labeled = client.read_labels(pid, from_name=cfg.from_name)
        for key, task_id in existing.items():
            label = _checked_label(known.get(key), key, cfg.classes, report)
            if label is not None and key not in labeled:
                client.create_annotation(task_id, label, cfg.from_name, cfg.to_name)
                report.labels_imported += 1
    if backend_url:
        client.connect_ml_backend(pid, backend_url, token=backend_token)
    client.setup_ordering(pid)
    return report


PREVIEW_STAMP = ".reading"  # in the previews folder: the reading tag the previews were made with


def _previews_stale(previews: Path, reader) -> bool:
    """Whether previews were made under other reading settings than `reader`'s (no stamp: the defaults)."""
    stamp = previews / PREVIEW_STAMP
    return (stamp.read_text().strip() if stamp.is_file() else "default") != (reader.tag() or "default")


def _browser_file(path: Path, preview: Path, reader=None, stale: bool = False) -> tuple[Path, bool]:
    """(file the browser gets, whether a preview was written); raises on a corrupt image.

    An 8-bit PNG/JPEG/BMP is shown as is only where the model reads it as is (per-image
    normalisation, default channels); everything else gets a preview read by `reader`."""
    from trainer.io.plane_keys import split_plane
    from trainer.io.preview import save_preview
    from trainer.io.settings import as_preprocessing

    reader = as_preprocessing(reader)
    as_is = reader.normalisation == "per-image" and reader.channels is None
    if path.suffix.lower() in BROWSER_SAFE and as_is:
        with Image.open(path) as im:
            mode = im.mode
            im.load()  # full decode: catches truncated files, not only bad headers
        if mode in BROWSER_MODES:
            return path, False
    source, _ = split_plane(path)
    if not stale and preview.exists() and preview.stat().st_mtime >= source.stat().st_mtime:
        return preview, False
    return save_preview(path, preview, channels=reader), True


def _choice(cfg, label: str) -> dict:
    return choice_result(cfg.from_name, cfg.to_name, label)


def _checked_label(label, key, classes, report) -> str | None:
    if label is None:
        return None
    if label not in classes:
        report.labels_skipped.append({"key": key, "reason": f"class {label!r} is not in the "
                                      f"project's classes {classes}"})
        return None
    return label


def _read_labels(labels: str | Path, root: Path) -> dict[str, str]:
    """key -> class from a CSV (`file,label`, header optional) or the ImageFolder layout."""
    if str(labels).lower() == "imagefolder":
        from trainer.io.folders import image_key, scan_imagefolder
        items, _ = scan_imagefolder(root)
        return {image_key(p, root): c for p, c in items}
    path = Path(labels)
    if not path.is_file():
        raise FileNotFoundError(f"labels file {path} not found (give a CSV `file,label` or "
                                "the word imagefolder)")
    with path.open(newline="", encoding="utf-8-sig") as f:
        rows = [r for r in csv.reader(f) if r and any(c.strip() for c in r)]
    if rows and rows[0][0].strip().lower() in {"file", "path", "key", "image", "filename"}:
        header = [c.strip().lower() for c in rows[0]]
        col = next((header.index(n) for n in ("label", "class") if n in header), 1)
        rows = [[r[0], r[col]] for r in rows[1:]]
    by_name: dict[str, list[str]] = {}
    for p in root.rglob("*"):
        by_name.setdefault(p.name, []).append(p.relative_to(root).as_posix())
    out = {}
    for row in rows:
        if len(row) < 2:
            raise ValueError(f"{path}: row {row} needs two columns: file,label")
        file, label = row[0].strip().replace("\\", "/"), row[1].strip()
        if not (root / file).is_file() and len(by_name.get(Path(file).name, [])) == 1:
            file = by_name[Path(file).name][0]   # a bare, unique file name
        out[file] = label
    return out
