"""Plane keys: ``cells.tif#z3`` names Z plane 3 of ``cells.tif`` (each plane its own image); the path arithmetic, no pixels read."""
from __future__ import annotations

import os
from pathlib import Path

from trainer.io.formats import _PLANE_SUFFIX, ZARR_SUFFIX


def split_plane(path) -> tuple[Path, int | None]:
    """(file, Z index) of a plane path ``<file>#z<k>``; (path, None) for any other path, and for
    a file that really is named ``...#z<k>`` (an existing file wins)."""
    p = Path(path)
    m = _PLANE_SUFFIX.search(p.name)
    if m is None or p.exists() or m.start() == 0:
        return p, None
    return p.with_name(p.name[:m.start()]), int(m.group(1))


def plane_path(path, z: int) -> Path:
    """The path naming Z plane `z` of `path` (``<path>#z<z>``), read by every reader here."""
    return Path(f"{os.fspath(path)}#z{int(z)}")


def image_exists(path) -> bool:
    """Whether `path` names an image: a file, an OME-Zarr folder, or a plane ``<file>#z<k>`` of one."""
    p, _ = split_plane(path)
    return p.is_file() or (p.suffix.lower() == ZARR_SUFFIX and p.is_dir())
