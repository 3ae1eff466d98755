"""The real dev data set the tests use: bccd_wbc, 351 white blood cell crops in 5 classes.

It ships inside the repository (tests/data/bccd_wbc, 2.3 MB, MIT; sources, licences and
citations in its README.md), so a fresh clone needs nothing outside itself.
"""
from __future__ import annotations

from pathlib import Path

BCCD = Path(__file__).resolve().parent / "data" / "bccd_wbc"
