"""Image folders: listing, keys (path relative to the image root, `/`-separated) and back."""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Iterable

from trainer.io.errors import display_path
from trainer.io.formats import IMAGE_SUFFIXES, ZARR_SUFFIX


def _visible(p: Path, root: Path) -> bool:
    return not any(part.startswith(".") for part in p.relative_to(root).parts)


def list_images(folder, recursive: bool = True) -> list[Path]:
    """Image files under `folder` (by suffix), sorted, hidden files and folders left out; an
    OME-Zarr folder (``*.zarr``) is one image (its chunks are not listed)."""
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder '{folder}' does not exist or is not a folder")
    it: Iterable[Path] = root.rglob("*") if recursive else root.iterdir()
    return sorted(p for p in it if p.suffix.lower() in IMAGE_SUFFIXES and _visible(p, root)
                  and (p.is_file() or (p.suffix.lower() == ZARR_SUFFIX and p.is_dir()))
                  and not any(part.lower().endswith(ZARR_SUFFIX) for part in p.relative_to(root).parts[:-1]))


def image_key(path, root) -> str:
    """The image's identity everywhere in scopeloop: its path relative to the image root.

    Symbolic links are not resolved: labs often link images in from other folders. Always valid
    UTF-8: bytes of a non-UTF-8 name are written \\xNN (`display_path`); `path_for_key` inverts."""
    return display_path(Path(os.path.abspath(path)).relative_to(os.path.abspath(root)).as_posix())


_ESCAPED = re.compile(r"\\x([0-9a-fA-F]{2})")


def path_for_key(root, key: str) -> Path:
    """The file an image key names under `root` (inverse of `image_key`, non-UTF-8 names too)."""
    p = Path(root) / key
    if p.exists() or "\\x" not in key:
        return p
    raw = _ESCAPED.sub(lambda m: chr(0xDC00 + int(m.group(1), 16)) if int(m.group(1), 16) >= 0x80
                       else m.group(0), key)
    return Path(root) / raw  # lone surrogates = the original bytes (os.fsencode surrogateescape)


def scan_imagefolder(root) -> tuple[list[tuple[Path, str]], list[str]]:
    """ImageFolder layout (one sub-folder per class) -> [(path, class)], sorted class names."""
    root = Path(root)
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise FileNotFoundError(
            f"'{root}' has no class sub-folders; expected ImageFolder layout <root>/<class>/<image>"
        )
    items = [(p, c) for c in classes for p in list_images(root / c)]
    return items, classes
