"""Atomic file writes: a reader sees the old file or the new one, never half of one.

Every state file of a project (JSON, arrays, the registry's `current` pointer, chunks) is written
to a temp file next to its destination (same folder: same file system) and moved over it with
`os.replace`; a failed write removes its temp file and leaves the old file untouched.

A write that fails for want of space raises `DiskFullError` ("disk full at <folder>: free N GB"),
also when the writer hid the errno (torch.save says "enforce fail at inline_container.cc")."""
from __future__ import annotations

import errno
import json
import os
import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

LOW_SPACE_BYTES = 64 << 20  # a failed write with less free than this is blamed on the full disk


class DiskFullError(OSError):
    """No space left where a state file was being written; the message names the place and the free space."""


def free_bytes(path) -> int | None:
    """Free bytes on the file system holding `path` (its nearest existing parent)."""
    p = Path(path)
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        return shutil.disk_usage(p).free
    except OSError:
        return None


def disk_full_error(path, exc: BaseException) -> DiskFullError | None:
    """`exc` as a DiskFullError when it is one (ENOSPC/EDQUOT, or any write error with the disk
    nearly full), else None."""
    if isinstance(exc, DiskFullError):
        return exc
    free = free_bytes(path)
    nospace = isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)
    if not nospace and not (isinstance(exc, (OSError, RuntimeError)) and free is not None and free < LOW_SPACE_BYTES):
        return None
    folder = Path(path) if Path(path).is_dir() else Path(path).parent
    gb = "?" if free is None else f"{free / 1e9:.2f}"
    return DiskFullError(errno.ENOSPC, f"disk full at {folder}: free {gb} GB; make room (old prediction caches "
                                       f"and embeddings of retired versions can go) and run again "
                                       f"({type(exc).__name__}: {str(exc)[:120]})")


@contextmanager
def explain_disk_full(path) -> Iterator[None]:
    """Re-raise a write failure inside the block as DiskFullError when the disk at `path` is full."""
    try:
        yield
    except Exception as exc:
        full = disk_full_error(path, exc)
        if full is None or full is exc:
            raise
        raise full from exc


@contextmanager
def atomic_path(path) -> Iterator[Path]:
    """Yields a temp path ``.<name>.<pid>.<random>.tmp<suffix>`` beside `path` (the suffix kept, as
    numpy's savers want it); on success it replaces `path`, on any error it is deleted."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:6]}.tmp{path.suffix}")
    try:
        with explain_disk_full(path):
            yield tmp
            os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_bytes_atomic(path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text_atomic(path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json_atomic(path, data) -> None:
    """`data` as indented JSON (non-JSON values as their str)."""
    write_text_atomic(path, json.dumps(data, indent=1, default=str))
