"""Bad state files are set aside where they are read, never fatal for the project or the backend.

A state file that cannot be read as what it should be (an empty or junk `registry/current`, a
truncated prediction cache, an empty `status.json`, a 0-byte `head.pt`) is renamed beside itself
with the suffix `.bad-<UTC time>` (kept for a person to look at, never read again), a warning
names it and why, and the reader goes on as if the file were absent: the caller rebuilds it or
falls back to the newest valid version (`ModelRegistry.current`)."""
from __future__ import annotations

import logging
import os
import time
from pathlib import Path

log = logging.getLogger(__name__)

BAD_SUFFIX = ".bad-"


def set_aside(path, why: str) -> Path | None:
    """Rename `path` to `<path>.bad-<UTC time>` and log it; the new path, or None when the file
    was already gone (another process set it aside first)."""
    path = Path(path)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    target = path.with_name(f"{path.name}{BAD_SUFFIX}{stamp}")
    n = 1
    while target.exists():
        n += 1
        target = path.with_name(f"{path.name}{BAD_SUFFIX}{stamp}-{n}")
    try:
        os.rename(path, target)
    except FileNotFoundError:
        return None
    log.warning("%s is unusable (%s): set aside as %s", path, why, target.name)
    return target


def is_set_aside(name: str) -> bool:
    return BAD_SUFFIX in name
