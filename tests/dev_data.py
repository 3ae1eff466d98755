"""Where the real dev data set (bccd_wbc: 351 white blood cell crops, 5 classes) is.

Looked up in order: $SCOPELOOP_DEV_DATA, ../shared/data/bccd_wbc next to the checkout, and
/work/shared/data/bccd_wbc (these machines), so a clone anywhere on the machine finds it.
"""
from __future__ import annotations

import os
from pathlib import Path

_CANDIDATES = [
    os.environ.get("SCOPELOOP_DEV_DATA", ""),
    str(Path(__file__).resolve().parents[2] / "shared" / "data" / "bccd_wbc"),
    "/work/shared/data/bccd_wbc",
]
BCCD = next((Path(c) for c in _CANDIDATES if c and Path(c).is_dir()), Path(_CANDIDATES[-1]))
