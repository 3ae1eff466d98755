"""A scopeloop project = a Label Studio project + a work directory (trainer.store.workspace).

One project per image folder. `init` creates the project for a folder, or resumes it (the
project whose project.json names the same folder, or the one called `name`), then records in
the work directory what the worker and the backend need: images root, classes, Label Studio
ids, the labeling config's tag names and the model settings.

Label Studio serves local files from ONE root (LOCAL_FILES_DOCUMENT_ROOT). scopeloop never moves
that root: it owns a folder `<SCOPELOOP_HOME>/files` under it holding, per project, a link to the
image folder and one to the previews (`files/<name>/images`, `files/<name>/previews`), and
every task URL goes through those links. Any number of projects, from any folders, live side by
side; LS's default root for scopeloop is `<SCOPELOOP_HOME>/files` itself (the demo starts it so).

A failing `init` changes nothing: a Label Studio project it created is deleted again, and a work
directory or link it created is removed.
"""
from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from label_config import parse_config
from ml_backend.labelstudio.client import LabelStudioError
from ml_backend.labelstudio.project_setup import init_project
from ml_backend.labelstudio.qc_tasks import publish_verdicts, record_imported, task_fields
from ml_backend.security import inside
from trainer.store.atomic import write_json_atomic
from trainer.store.workspace import DEFAULT_MODEL, Workspace, project_dirs, read_json


class ProjectError(ValueError):
    """A project cannot be created or found; the message says what to do, in one sentence."""


def project_name(folder: Path) -> str:
    """Project name from an image folder's name: letters, digits, '.', '_' and '-' kept.

    >>> project_name(Path("/data/Plate 3 (DAPI)"))
    'Plate-3-DAPI'
    """
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", folder.name).strip("-.") or "images"
    return name[:64]


def list_projects(home) -> dict[str, dict]:
    """name -> project.json of every project under `<home>/projects`."""
    out = {}
    for d in project_dirs(home):
        data = read_json(d / "project.json", {}) or {}
        if isinstance(data, dict):
            out[d.name] = data
    return out


def document_root(settings) -> Path:
    """The LOCAL_FILES_DOCUMENT_ROOT Label Studio runs with (environment, else <home>/files)."""
    return Path(os.path.abspath(os.environ.get("LOCAL_FILES_DOCUMENT_ROOT") or links_root(settings)))


def links_root(settings) -> Path:
    """The folder under Label Studio's document root that scopeloop owns (links per project)."""
    return Path(os.path.abspath(Path(settings.home) / "files"))


def _resolve_name(settings, images: Path, name: str | None) -> str:
    projects = list_projects(settings.home)
    if name:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", name):
            raise ProjectError(f"project name {name!r}: use up to 64 letters, digits, '.', '_' or '-'")
        other = projects.get(name, {}).get("fields_root") or projects.get(name, {}).get("images_root")
        if other and Path(other).resolve() != images:
            raise ProjectError(f"project '{name}' already belongs to the folder {other}; "
                               f"give this folder its own name with --project")
        return name
    same = [n for n, p in projects.items() if (p.get("fields_root") or p.get("images_root"))
            and Path(p.get("fields_root") or p["images_root"]).resolve() == images]  # fields: cells project
    if same:
        return same[0]                     # resume this folder's project
    name, base, i = project_name(images), project_name(images), 2
    while name in projects:                # another folder with the same name
        name, i = f"{base}-{i}", i + 1
    return name


def _link(link: Path, target: Path) -> None:
    link.parent.mkdir(parents=True, exist_ok=True)
    if link.is_symlink() or link.exists():
        if link.is_symlink() and Path(os.readlink(link)) == target:
            return
        if link.is_symlink():
            link.unlink()
        else:
            raise ProjectError(f"{link} exists and is not a link made by scopeloop; move it away and retry")
    link.symlink_to(target, target_is_directory=True)


def init(settings, name: str | None, images, classes=None, labels=None, backend_url: str | None = None,
         model: dict | None = None, reading: dict | None = None, cells: dict | None = None):
    """Create or resume the project for image folder `images`; returns (Workspace, InitReport).

    `name`: the project name (default: the folder's project, else a name made from the folder's
    name). `reading`: the project's reading choices (`trainer.io.project_reading.READING_CHOICES`: stack,
    plane, timepoint, normalisation, bit_depth; None = keep the project's, else the defaults),
    made into ``model["preprocessing"]`` once here (per-dataset ranges from a sample of the
    folder) and used by previews, the refresh, the models and so /predict and export. Raises ProjectError / LabelStudioError / FileNotFoundError with a message that says
    what to do; on any failure Label Studio and the disk are left as they were.

    `cells`: `images` holds fields of view and each cell is a task (`scopeloop.cells_project`): {"mode":
    "auto" | "masks" | "points", "masks": folder, "points": CSV, "border": "label" | "skip",
    "diameter": pixels or None}; None keeps what the project has (a cells project stays one).
    The cells' crops become the project's images (``images_root`` = ``<work>/cells/crops``, keys
    ``<field key>/<stem>_cell<id>.png``, `trainer.cells.project`); the fields stay where they are
    (``fields_root``); the annotator sees each cell's context view.
    """
    from trainer.io.folders import list_images
    from trainer.io.project_reading import project_reading

    images = Path(images).expanduser().resolve()
    if not images.is_dir():
        raise FileNotFoundError(f"--images '{images}' is not a folder; give the folder that holds your images")
    pool = list_images(images)
    if not pool:
        raise ProjectError(f"no images (PNG, JPEG, TIFF, BMP) found under '{images}'; check the folder")
    name = _resolve_name(settings, images, name)
    old_project = read_json(settings.project_dir(name) / "project.json", {}) or {}
    old_model = old_project.get("model") or {}
    model = dict(DEFAULT_MODEL, **(model or old_model))
    if cells is None and old_project.get("cells"):
        cells = {"mode": old_project["cells"].get("mode", "auto")}  # resume as a cells project
    field_reading = None
    if cells is not None:  # the fields' reading settings make the crops; the model reads 8-bit PNG crops
        field_reading = {k: v for k, v in dict(reading or {}, channels=model.get("channels")).items()
                         if k in ("stack", "plane", "timepoint", "channels") and v is not None} or None
        model["channels"], reading, old_model = None, None, {}
    try:
        reader = project_reading(pool, reading, old_model.get("preprocessing"), model.get("channels"))
    except ValueError as exc:
        raise ProjectError(f"reading settings: {exc}") from None
    model["preprocessing"] = reader.to_dict()
    docroot, links = document_root(settings), links_root(settings)
    if not links.is_relative_to(docroot):
        raise ProjectError(f"Label Studio serves local files only under {docroot} (LOCAL_FILES_DOCUMENT_ROOT) but "
                           f"scopeloop keeps its links in {links}: start Label Studio with "
                           f"LOCAL_FILES_DOCUMENT_ROOT={links} or set SCOPELOOP_HOME to a folder under {docroot}")
    work = settings.project_dir(name)
    work_existed, link_dir = work.exists(), links / name
    links_existed = link_dir.exists()
    known = read_json(work / "project.json", {}) or {}
    client = settings.label_studio_client()
    client.check()
    before = known.get("ls_project_id")
    if before is not None and not _ls_project_exists(client, before):
        before = None                      # deleted in Label Studio: make a new one
    created_pid = None
    try:
        (work / "previews").mkdir(parents=True, exist_ok=True)
        cell_index = None
        if cells is not None:  # fields of view: one task per cell, its crop is the image (trainer.cells.project)
            from scopeloop.cells_project import prepare

            cell_index, cell_record, cells_summary = prepare(work, images, cells, old_project.get("cells"), field_reading)
            model["cells"] = cell_record
        label_root = (work / "cells" / "crops").resolve() if cells is not None else images
        _link(link_dir / "images", label_root)
        _link(link_dir / "previews", (work / "previews").resolve())
        if before is None:
            existing = client.find_project(ls_title(name))
            if existing is None:
                from label_config import build_config
                from ml_backend.labelstudio.project_setup import _read_labels

                cls = classes
                if not cls and labels and str(labels).lower() == "imagefolder":
                    cls = sorted(set(_read_labels(labels, images).values()))
                if not cls:
                    raise ProjectError("no classes: give the cell types with --classes \"A,B,C\" "
                                       "(or --labels imagefolder to take the sub-folder names)")
                created_pid = before = client.create_project(ls_title(name), build_config(list(cls)))
            else:
                before = existing
        label_config = None if created_pid else client.get_project(before)["label_config"]
        if cell_index is None:
            verdicts, qc = _quality_pass(work, images)  # issue 14: every image judged before it reaches the queue
        else:  # a blank / out-of-focus field marks its cells
            from scopeloop.cells_project import quality

            verdicts, qc = quality(work, images, cell_index)
            labels = labels or qc.pop("labels", None)  # classes an importer gave (points CSV, GeoJSON)
        shown: dict = {}  # key -> the verdict fields a new task carries in its import

        def task_data(key):
            shown[key] = task_fields(verdicts.get(key))
            if cell_index is not None and key in cell_index:
                from trainer.cells.project import task_fields as cell_fields

                return dict(shown[key], **cell_fields(cell_index[key]))
            return shown[key]

        report = init_project(client, label_root, classes, labels=labels, backend_url=backend_url, label_config=label_config,
                              document_root=docroot, previews_dir=work / "previews", title=ls_title(name),
                              task_data=task_data if verdicts is not None else None,
                              project_id=before, served_root=link_dir / "images",
                              served_previews=link_dir / "previews", reader=reader,
                              backend_token=_backend_token(settings) if backend_url else "",
                              shown_file=None if cell_index is None else
                              (lambda key: work / "previews" / (key + ".png")))
        if cell_index is not None:
            report.cells = cells_summary
        if report.created + report.existing == 0 and report.skipped:
            first = report.skipped[0]
            raise ProjectError(f"none of the {len(report.skipped)} image(s) under '{images}' could be read (first: "
                               f"{first['path']}: {first['reason']}); fix or convert them and run init again")
        project = client.get_project(report.project_id)
        cfg = parse_config(project["label_config"])
        # the refresh's key -> task map, from the import itself: the first refresh lists no task
        # (listing 100,000 tasks costs Label Studio minutes; scopeloop.refresh.Refresher.task_ids)
        write_json_atomic(work / "tasks.json", {"count": int(project.get("task_number") or 0), "tasks": report.task_ids})
        if verdicts is not None:
            # new tasks carry their verdict: recorded, not read back; tasks from before: changed
            # verdicts and flagged ones from before QC, read by id (ml_backend.qc_tasks)
            record_imported(work, report.project_id, {k: f for k, f in shown.items() if k in report.task_ids})
            if qc.get("stored"):
                qc["written"] = publish_verdicts(client, report.project_id, work, report.task_ids, verdicts,
                                                 log=lambda *_: None)["updated"]
        report.qc = qc
    except BaseException as exc:
        if created_pid is not None:
            try:
                client.sdk.projects.delete(id=created_pid)
            except Exception:
                pass  # reported below: the original error is what the user needs
        if not links_existed:
            shutil.rmtree(link_dir, ignore_errors=True)
        if not work_existed:
            shutil.rmtree(work, ignore_errors=True)
        if isinstance(exc, LabelStudioError) and not isinstance(exc, ProjectError):
            raise LabelStudioError(f"project '{name}' was not created (nothing changed): {_first_line(exc)}") from None
        raise
    ws = Workspace(work)
    if cells is not None:
        ws.update_project(fields_root=str(images), cells=model["cells"])
    ws.update_project(name=name, images_root=str(label_root), classes=list(cfg.classes), ls_project_id=report.project_id,
                      from_name=cfg.from_name, to_name=cfg.to_name,
                      model=model,
                      n_tasks=report.created + report.existing, document_root=str(docroot),
                      served_root=str(link_dir / "images"))
    return ws, report


def _quality_pass(work: Path, images: Path) -> tuple[dict | None, dict]:
    """(verdicts {key: {verdict, reason}}, summary) of every image of the folder (trainer.quality,
    kept in <work>/qc/; images measured before are not read again). Without embeddings yet: near
    duplicates and `unusual` are judged by the worker's first refresh. Never fatal: a failure gives
    (None, {"error": ...}) and the first refresh tries again."""
    from trainer.io.folders import image_key, list_images
    from trainer.quality.project import QC_DIR, project_qc

    try:
        keys = [image_key(p, images) for p in list_images(images)
                if not p.is_relative_to(work) and inside(p, images)]  # links leaving the folder: never read
        # a project whose last pass had embeddings (the worker's): judge the new images for their
        # import without overwriting those verdicts (near duplicates, unusual) with pixel-only ones;
        # the refresh that the new tasks start judges everything again and updates Label Studio
        last = read_json(work / QC_DIR / "verdicts.json", {}) or {}
        keep = bool(last.get("embeddings"))
        verdicts = project_qc(work, images, keys, None, log=lambda *_: None, store=not keep)
    except Exception as exc:  # noqa: BLE001 - QC is advisory: the project is made all the same
        return None, {"error": f"{type(exc).__name__}: {exc}"}
    counts = {}
    for v in verdicts.values():
        counts[v["verdict"]] = counts.get(v["verdict"], 0) + 1
    return verdicts, {"counts": counts, "csv": str(work / QC_DIR / "qc.csv"), "stored": not keep}


def _backend_token(settings) -> str:
    """The ML backend's token Label Studio is given ("" when SCOPELOOP_BACKEND_AUTH=off)."""
    from ml_backend.security import auth_disabled, backend_token

    if auth_disabled():
        return ""
    return settings.backend_token or backend_token(settings.home)


def _ls_project_exists(client, pid) -> bool:
    try:
        client.get_project(pid)
        return True
    except LabelStudioError:
        return False


def ls_title(name: str) -> str:
    """The Label Studio project title of project `name` (LS wants at least 3 characters)."""
    return name if len(name) >= 3 else f"{name} (scopeloop)"


def _first_line(exc: Exception) -> str:
    """The error in one plain line: Label Studio's JSON answer reduced to its messages."""
    import json

    text = str(exc).strip() or type(exc).__name__
    if "{" in text:
        head, _, rest = text.partition("{")
        try:
            body = json.loads("{" + rest)
        except ValueError:
            body = None
        if isinstance(body, dict):
            errs = body.get("validation_errors") or {}
            msg = "; ".join(f"{k}: {' '.join(map(str, v)) if isinstance(v, list) else v}" for k, v in errs.items()) \
                if isinstance(errs, dict) and errs else str(body.get("detail") or "")
            text = head.strip().rstrip(":") + (f": {msg}" if msg else "")
    return text.splitlines()[0][:300]
