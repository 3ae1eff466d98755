"""Export path safety: file names any file system accepts, keys that cannot escape the export, an export folder replaced only when it is one."""
from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path, PurePosixPath
from typing import Sequence

MARKER = "export.json"
_UNSAFE = re.compile(r'[\x00-\x1f\x7f<>:"/\\|?*]')  # not allowed in a file name we write
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
MANIFEST_FIELDS = ["task_id", "key", "original_path", "file", "label", "split", "group", "annotator",
                   "annotated_at", "n_annotations", "annotators", "annotators_disagree", "model_version",
                   "predicted", "confidence", "qc_verdict", "qc_reason", "consensus_confidence", "consensus_rule"]


class ExportError(ValueError):
    """A problem with the export the user can fix (printed as one line by the CLI)."""


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


def class_folders(classes: Sequence[str]) -> dict:
    """A folder name per class, distinct even on case-insensitive file systems: `safe_name` of
    the class; classes that meet on one name ('CD4/CD8' and 'CD4:CD8' both give 'CD4_CD8', or
    'Blast' and 'blast') each get that name plus 6 hex digits of the SHA-1 of the real name."""
    import hashlib
    from collections import Counter

    base = {c: safe_name(c) for c in classes}
    seen = Counter(v.casefold() for v in base.values())
    out = {}
    for c in classes:
        name = base[c]
        if seen[name.casefold()] > 1:
            name = safe_name(f"{name[:140]}-{hashlib.sha1(str(c).encode()).hexdigest()[:6]}")
        out[c] = name
    if len({v.casefold() for v in out.values()}) < len(out):  # a hashed name met another class's plain one
        out = {c: f"class{i:03d}-{hashlib.sha1(str(c).encode()).hexdigest()[:6]}" for i, c in enumerate(classes)}
    return out


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
    from trainer.io.decode import read_raw
    from trainer.io.plane_keys import split_plane

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
