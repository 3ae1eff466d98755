"""An image's group (its slide, well, patient) from a regular expression on its file name.

Whole groups share a fold, a bootstrap draw and a train/val/test split, so crops of one slide
never judge each other. The group is the pattern's first capture group (else the whole match)
on the file name. What an image whose name does not match gets differs between the three
callers today and is kept, under explicit names, until a benchmark decides (docs/architecture.md,
follow-ups): ``"own-key"`` (its own group, named by its key: the refresh's estimate),
``"own-name"`` (its own group, named by its file name: `scopeloop train`) and ``"shared"`` (one
group "" for every unmatched image: the dataset export's split).
"""
from __future__ import annotations

import os
import re
from pathlib import PurePosixPath

UNMATCHED = ("own-key", "own-name", "shared")


def group_of(key: str | os.PathLike, pattern: str | re.Pattern, unmatched: str = "own-key") -> str:
    """The group of the image `key` (a key or a path; only its file name is matched).

    Raises ValueError for an `unmatched` rule not in `UNMATCHED`; re.error for a bad pattern."""
    if unmatched not in UNMATCHED:
        raise ValueError(f"unmatched={unmatched!r}: one of {', '.join(UNMATCHED)}")
    text = os.fspath(key)
    name = PurePosixPath(text.replace(os.sep, "/")).name
    m = (pattern if isinstance(pattern, re.Pattern) else re.compile(pattern)).search(name)
    if m:
        return m.group(m.lastindex or 0)
    return {"own-key": text, "own-name": name, "shared": ""}[unmatched]
