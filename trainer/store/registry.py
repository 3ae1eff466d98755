"""Versioned models with atomic publishing and rollback.

<root>/versions/NNN/   one folder per trained model (weights, label map, config, metrics, ...)
<root>/current         text file: the version being served
<root>/promotions.jsonl the history of `current` switches (for rollback and the report)
<root>/versions.jsonl   one line per published version (labels, quality estimate, promoted or
                        held back): the learning curve outlives pruned candidates

Held-back candidates are pruned (`prune_candidates`): the last few are kept for inspection,
every version that was ever served is kept for rollback.

A version is written completely in a temporary folder next to `versions/` and then renamed
into place: rename is atomic on one file system, so a reader sees a whole version or none.
Renaming onto an existing (non-empty) version folder fails, which also makes two publishers
pick different numbers. `current` is replaced atomically the same way.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

from trainer.store.atomic import write_text_atomic


class RegistryError(RuntimeError):
    pass


class ModelRegistry:
    def __init__(self, root):
        self.root = Path(root)
        self.versions_dir = self.root / "versions"
        self.versions_dir.mkdir(parents=True, exist_ok=True)

    # ------------------------------------------------------------ reading
    def versions(self) -> list[str]:
        return sorted(p.name for p in self.versions_dir.iterdir() if p.is_dir() and p.name.isdigit())

    def path(self, version: str) -> Path:
        p = self.versions_dir / version
        if not p.is_dir():
            raise RegistryError(f"model version '{version}' does not exist (known: {', '.join(self.versions()) or 'none'})")
        return p

    def current(self) -> str | None:
        try:
            v = (self.root / "current").read_text().strip()
        except FileNotFoundError:
            return None
        return v or None

    def current_path(self) -> Path | None:
        v = self.current()
        return self.path(v) if v else None

    def read_json(self, version: str, name: str) -> dict:
        p = self.path(version) / name
        return json.loads(p.read_text()) if p.is_file() else {}

    def version_log(self) -> list[dict]:
        """One record per published version, oldest first (pruned versions included)."""
        p = self.root / "versions.jsonl"
        if not p.is_file():
            return []
        return [json.loads(line) for line in p.read_text().splitlines() if line.strip()]

    def _last_logged(self) -> list[str]:
        """The last version number in versions.jsonl (reads only the file's tail)."""
        p = self.root / "versions.jsonl"
        if not p.is_file():
            return []
        with open(p, "rb") as f:
            f.seek(max(0, p.stat().st_size - 65536))
            lines = [ln for ln in f.read().splitlines() if ln.strip()]
        try:
            return [json.loads(lines[-1])["version"]] if lines else []
        except (ValueError, KeyError):
            return []

    def history(self) -> list[dict]:
        p = self.root / "promotions.jsonl"
        if not p.is_file():
            return []
        return [json.loads(line) for line in p.read_text().splitlines() if line.strip()]

    # ------------------------------------------------------------ writing
    @contextmanager
    def staging(self):
        """Yield an empty folder to write a version into; nothing is visible until publish."""
        tmp = Path(tempfile.mkdtemp(prefix=".staging-", dir=self.root))
        try:
            yield tmp
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)

    def publish(self, staged: Path, make_current: bool = True, reason: str = "", record: dict | None = None) -> str:
        """Move a fully written staging folder into versions/NNN atomically; return NNN.

        `record` (JSON-able) is appended to versions.jsonl with the version number."""
        staged = Path(staged)
        if not any(staged.iterdir()):
            raise RegistryError("refusing to publish an empty model folder")
        for _ in range(1000):
            existing = self.versions() + self._last_logged()  # numbers of pruned versions stay used
            n = max(map(int, existing)) + 1 if existing else 1
            target = self.versions_dir / f"{n:03d}"
            try:
                os.rename(staged, target)
                break
            except OSError:
                time.sleep(0.01)
        else:
            raise RegistryError("could not allocate a version number")
        if record is not None:
            with open(self.root / "versions.jsonl", "a") as f:
                f.write(json.dumps(dict(record, version=target.name, time=time.time(), promoted=make_current)) + "\n")
        if make_current:
            self.set_current(target.name, reason or "published")
        return target.name

    def prune_candidates(self, keep: int = 3) -> list[str]:
        """Delete held-back candidates but the newest `keep`; never a version that was ever served.

        Returns the deleted version numbers. Call it under the project's lock (the refresh
        holds it): a candidate is then never being promoted while it is deleted."""
        served = {h["version"] for h in self.history()} | {self.current()}
        candidates = [v for v in self.versions() if v not in served]
        doomed = candidates[:-keep] if keep > 0 else candidates
        for v in doomed:
            trash = self.root / f".pruned-{v}-{os.getpid()}"
            try:
                os.rename(self.versions_dir / v, trash)  # gone from versions() at once, atomically
            except OSError:
                continue
            shutil.rmtree(trash, ignore_errors=True)
        return doomed

    def set_current(self, version: str, reason: str = "set by user") -> None:
        self.path(version)
        write_text_atomic(self.root / "current", version + "\n")
        with open(self.root / "promotions.jsonl", "a") as f:
            f.write(json.dumps({"version": version, "time": time.time(), "reason": reason}) + "\n")

    def rollback(self) -> str:
        """Serve the newest earlier version that was once current (held-back candidates never are)."""
        cur = self.current()
        served = {h["version"] for h in self.history()}
        earlier = sorted(v for v in served if cur is None or v < cur)
        if not earlier:
            raise RegistryError(f"nothing to roll back to: no version before '{cur}' was ever served")
        self.set_current(earlier[-1], reason=f"rollback from {cur}")
        return earlier[-1]

    def clean_stale_staging(self, older_than_s: float = 3600) -> int:
        """Remove staging folders left by killed trainings (never visible as versions)."""
        n = 0
        for p in [*self.root.glob(".staging-*"), *self.root.glob(".pruned-*")]:
            if time.time() - p.stat().st_mtime > older_than_s:
                shutil.rmtree(p, ignore_errors=True)
                n += 1
        return n
