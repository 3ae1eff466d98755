"""Atomic file writes: a reader sees the old file or the new one, never half of one.

Every state file of a project (JSON, arrays, the registry's `current` pointer, chunks) is written
to a temp file next to its destination (same folder: same file system) and moved over it with
`os.replace`; a failed write removes its temp file and leaves the old file untouched."""
from __future__ import annotations

import json
import os
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


@contextmanager
def atomic_path(path) -> Iterator[Path]:
    """Yields a temp path ``.<name>.<pid>.<random>.tmp<suffix>`` beside `path` (the suffix kept, as
    numpy's savers want it); on success it replaces `path`, on any error it is deleted."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:6]}.tmp{path.suffix}")
    try:
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
