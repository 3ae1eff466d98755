"""Cells from fields of view: find (or import) every cell, write cells.csv, crops and masks.

Torch-free (numpy, scipy, scikit-image, tifffile, Pillow). Modules: `params` (CellSettings),
`reading` (fields as pixels, large TIFFs by bands), `auto` (modality, signal, threshold and
diameter measured per field), `segment` (the classical pipeline), `tiling` (large fields),
`importers` (cellpose / StarDist / CellProfiler masks, QuPath GeoJSON, points and boxes),
`table` (the cells.csv contract), `find` (`find_cells` over a folder), `synthetic` (fields with
known nuclei, for tests and benchmarks).
"""
from trainer.cells.find import CellReport, find_cells
from trainer.cells.importers import CellInputError
from trainer.cells.params import CellSettings
from trainer.cells.segment import segment_field
from trainer.cells.table import COLUMNS

__all__ = ["COLUMNS", "CellInputError", "CellReport", "CellSettings", "find_cells", "segment_field"]
