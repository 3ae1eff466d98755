"""Z planes as images: `cells.tif#z3` is plane 3 of a Z-stack when a project reads each plane as its own image (stack="planes")."""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

from trainer.io.decode import _UnnamedAxes, decode
from trainer.io.errors import ImageReadError
from trainer.io.formats import PIL_SUFFIXES, TIFF_SUFFIXES
from trainer.io.plane_keys import plane_path
from trainer.io.settings import as_preprocessing


def z_planes(path) -> int:
    """Number of Z planes of a file (1 without a Z axis or when unreadable). TIFF: from the
    header (no pixels read) when its metadata names the axes; otherwise the file is decoded."""
    path = Path(path)
    if path.suffix.lower() in PIL_SUFFIXES:
        return 1
    if path.suffix.lower() in TIFF_SUFFIXES:
        try:
            import tifffile

            with tifffile.TiffFile(path) as tf:
                series = tf.series[0]
                axes = series.axes.replace("I", "Z") if tf.is_imagej else series.axes
                if "Q" not in axes and not ("I" in axes):
                    return int(series.shape[axes.index("Z")]) if "Z" in axes else 1
        except Exception:  # noqa: BLE001 - unreadable: one image (reading it reports the problem)
            return 1
    try:
        dec = decode(path)
    except (ImageReadError, _UnnamedAxes):
        return 1
    return int(dec.data.shape[dec.axes.index("Z")]) if "Z" in dec.axes else 1


def expand_planes(paths: Iterable, prep=None) -> list[Path]:
    """The images of a project: with ``stack="planes"`` every Z-stack of n planes becomes n plane
    paths ``<file>#z0`` ... ``<file>#z<n-1>`` (one task each); otherwise `paths` unchanged."""
    if as_preprocessing(prep).stack != "planes":
        return [Path(p) for p in paths]
    out: list[Path] = []
    for p in paths:
        n = z_planes(p)
        out.extend([plane_path(p, z) for z in range(n)] if n > 1 else [Path(p)])
    return out
