"""The file types scopeloop reads and the reader limits (suffixes, percentiles, memory bounds)."""
from __future__ import annotations

import re

TIFF_SUFFIXES = {".tif", ".tiff", ".btf", ".tf8", ".svs", ".ndpi"}
PIL_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp"}
# vendor formats read through the bioio family: suffix -> (format name, bioio plugin)
BIOIO_FORMATS = {
    ".czi": ("Zeiss CZI", "bioio-czi"),
    ".nd2": ("Nikon ND2", "bioio-nd2"),
    ".lif": ("Leica LIF", "bioio-lif"),
}
ZARR_SUFFIX = ".zarr"  # OME-Zarr (NGFF): a folder, read through bioio-ome-zarr
ZARR_FORMAT = ("OME-Zarr", "bioio-ome-zarr")
IMAGE_SUFFIXES = PIL_SUFFIXES | TIFF_SUFFIXES | set(BIOIO_FORMATS) | {ZARR_SUFFIX}
FORMATS_EXTRA = "pip install 'scopeloop[formats]'"
PERCENTILES = (0.5, 99.8)
MAX_CHANNEL_AXIS = 16
MEMMAP_BYTES = 64 << 20  # uncompressed TIFF series larger than this are memory-mapped, not read whole
MAX_DECODE_BYTES = 2 << 30  # a compressed series larger than this (whole-slide images) is refused
NORMALISATIONS = ("per-image", "per-dataset", "bit-depth", "both")
STACK_MODES = ("mip", "plane", "planes", "best-focus")  # best-focus: trainer.io.best_focus (brightfield)
_PLANE_SUFFIX = re.compile(r"#z(\d+)$")  # "cells.tif#z3": plane 3 of cells.tif (stack="planes")
