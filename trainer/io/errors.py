"""What goes wrong reading an image: `ImageReadError` (names the file and the reason) and `SkipReport` (the files a batch skipped)."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path


class ImageReadError(Exception):
    """An image file that cannot be turned into pixels; the message names file and reason."""

    def __init__(self, path, reason: str):
        self.path = display_path(path)
        self.reason = reason
        super().__init__(f"cannot read image '{self.path}': {reason}")


def display_path(path) -> str:
    """`path` as valid UTF-8 text: undecodable bytes of a non-UTF-8 name written as \\xNN."""
    s = os.fspath(path)
    if isinstance(s, bytes):
        return s.decode("utf-8", "backslashreplace")
    try:
        s.encode("utf-8")
        return s
    except UnicodeEncodeError:
        return os.fsencode(s).decode("utf-8", "backslashreplace")


@dataclass
class SkipReport:
    """Images a batch job skipped, with the reason: reported, never silently dropped."""

    skipped: list[dict] = field(default_factory=list)

    def add(self, path, reason: str) -> None:
        self.skipped.append({"path": display_path(path), "reason": reason})

    def __len__(self) -> int:
        return len(self.skipped)

    def summary(self) -> str:
        if not self.skipped:
            return "no image skipped"
        lines = [f"{len(self.skipped)} image(s) skipped:"]
        lines += [f"  {s['path']}: {s['reason']}" for s in self.skipped[:20]]
        if len(self.skipped) > 20:
            lines.append(f"  ... and {len(self.skipped) - 20} more (see the JSON report)")
        return "\n".join(lines)

    def write_json(self, path) -> None:
        Path(path).write_text(json.dumps({"count": len(self.skipped), "skipped": self.skipped}, indent=1))
