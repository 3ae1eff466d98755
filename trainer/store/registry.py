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

Read defensively (issue 22): a `current` that is empty, holds junk, or names a missing or broken
version (an empty model file, an unreadable config.json) is set aside (`trainer.store.heal`) and
replaced by the newest valid version that was once served, else the newest valid one; a version
found broken when loaded (`mark_bad`) is set aside as `versions/NNN.bad-<time>` (its number is
never reused) and `current` moves the same way.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

from trainer.store.atomic import explain_disk_full, write_text_atomic
from trainer.store.heal import BAD_SUFFIX, set_aside

log = logging.getLogger(__name__)
MODEL_FILE_SUFFIXES = (".pt", ".pth", ".json", ".npz", ".npy")  # never legitimately 0 bytes


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

    def problem(self, version: str) -> str | None:
        """Why version `version` cannot be served (missing, an empty model file, an unreadable
        config.json), or None when it looks whole. Cheap: a listing, sizes, one small JSON."""
        p = self.versions_dir / str(version)
        if not str(version).isdigit() or not p.is_dir():
            return f"model version {str(version)[:40]!r} does not exist"
        return _folder_problem(p, f"model version {version}")

    def current(self) -> str | None:
        """The served version, None before any. A `current` that is empty, junk or names a
        missing or broken version is set aside and healed (`heal_current`)."""
        try:
            v = (self.root / "current").read_bytes().decode("utf-8", "replace").strip()
        except FileNotFoundError:
            return None
        if not v:
            why = "is empty"
        elif not v.isdigit():
            why = f"holds {v[:40]!r}, not a version number"
        else:
            why = self.problem(v)
            if why is None:
                return v
            why = f"names a version that cannot be served ({why})"
        return self.heal_current(why)

    def heal_current(self, why: str, exclude: tuple[str, ...] = ()) -> str | None:
        """Set the bad `current` aside and serve the newest valid version that was once served
        (else the newest valid one at all); None, with no `current`, when there is none."""
        set_aside(self.root / "current", f"registry `current` {why}")
        served = {h.get("version") for h in self.history()} - {None}
        others = set(self.versions()) - served
        for v in sorted(served, reverse=True) + sorted(others, reverse=True):
            if v not in exclude and self.problem(v) is None:
                self.set_current(v, reason=f"healed: the previous `current` {why}")
                log.warning("registry %s: serving version %s instead", self.root, v)
                return v
        log.warning("registry %s: no valid model version left to serve", self.root)
        return None

    def mark_bad(self, version: str, why: str) -> str | None:
        """A version that failed to load: set its folder aside (`versions/NNN.bad-<time>`) and,
        when it was current, serve the newest valid version instead. Returns the version now
        current (None: none)."""
        try:
            cur = (self.root / "current").read_text().strip()
        except (FileNotFoundError, UnicodeDecodeError):
            cur = None
        if (self.versions_dir / version).is_dir():
            set_aside(self.versions_dir / version, why)
        if cur == version:
            return self.heal_current(f"names version {version}, set aside: {why}", exclude=(version,))
        return self.current()

    def current_path(self) -> Path | None:
        v = self.current()
        return self.path(v) if v else None

    def read_json(self, version: str, name: str) -> dict:
        """A JSON file of a version ({} when absent or unreadable: a warning names it)."""
        p = self.path(version) / name
        if not p.is_file():
            return {}
        try:
            return json.loads(p.read_text())
        except (ValueError, UnicodeDecodeError) as e:
            log.warning("%s is not JSON (%s): read as empty", p, type(e).__name__)
            return {}

    def version_log(self) -> list[dict]:
        """One record per published version, oldest first (pruned versions included)."""
        return _read_jsonl(self.root / "versions.jsonl")

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
        return _read_jsonl(self.root / "promotions.jsonl")

    def _set_aside_numbers(self) -> list[str]:
        """Numbers of versions set aside as broken (never given to a new version)."""
        return [p.name.split(BAD_SUFFIX)[0] for p in self.versions_dir.glob(f"*{BAD_SUFFIX}*")
                if p.name.split(BAD_SUFFIX)[0].isdigit()]

    # ------------------------------------------------------------ writing
    @contextmanager
    def staging(self):
        """Yield an empty folder to write a version into; nothing is visible until publish."""
        with explain_disk_full(self.root):
            tmp = Path(tempfile.mkdtemp(prefix=".staging-", dir=self.root))
        try:
            with explain_disk_full(tmp):  # torch.save on a full disk says only "enforce fail at ..."
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
        why = _folder_problem(staged, "the model folder to publish")
        if why is not None:
            raise RegistryError(f"refusing to publish {why}")
        for _ in range(1000):
            # numbers of pruned and set-aside versions stay used
            existing = self.versions() + self._last_logged() + self._set_aside_numbers()
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
            _append_jsonl(self.root / "versions.jsonl",
                          dict(record, version=target.name, time=time.time(), promoted=make_current))
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
        why = self.problem(version)
        if why is not None:
            raise RegistryError(f"refusing to serve {why}")
        # the record first: a write that fails (a full disk) leaves `current` as it was
        _append_jsonl(self.root / "promotions.jsonl", {"version": version, "time": time.time(), "reason": reason})
        write_text_atomic(self.root / "current", version + "\n")

    def rollback(self, version: str | None = None) -> str:
        """Serve `version`, or the newest earlier valid version that was once current (held-back
        candidates never are)."""
        cur = self.current()
        if version is not None:
            version = f"{int(version):03d}" if str(version).isdigit() else str(version)
            self.set_current(version, reason=f"rollback from {cur} to {version}")
            return version
        served = {h.get("version") for h in self.history()} - {None}
        earlier = sorted(v for v in served if (cur is None or v < cur) and self.problem(v) is None)
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


def _folder_problem(p: Path, name: str) -> str | None:
    """Why a model folder is not whole (empty, a 0-byte model file, config.json not a JSON object)."""
    try:
        files = [f for f in p.iterdir() if f.is_file()]
        if not files:
            return f"{name} is an empty folder"
        for f in files:
            if f.suffix in MODEL_FILE_SUFFIXES and f.stat().st_size == 0:
                return f"{name}: {f.name} is empty (0 bytes)"
        cfg = p / "config.json"
        if cfg.is_file() and not isinstance(json.loads(cfg.read_text()), dict):
            raise ValueError("config.json is not a JSON object")
    except (OSError, ValueError) as e:
        return f"{name}: unreadable ({type(e).__name__}: {str(e)[:120]})"
    return None


def _append_jsonl(path: Path, record: dict) -> None:
    """One line appended; after a line cut short (a crash, a full disk) the record starts a new
    line, so only the cut line is lost."""
    with explain_disk_full(path), open(path, "a+b") as f:
        f.seek(0, os.SEEK_END)
        cut = False
        if f.tell():
            f.seek(-1, os.SEEK_END)
            cut = f.read(1) != b"\n"
        f.write((b"\n" if cut else b"") + json.dumps(record).encode() + b"\n")


def _read_jsonl(path: Path) -> list[dict]:
    """The JSON objects of a .jsonl file; a line that is not one (a write cut short by a crash or
    a full disk) is skipped with a warning."""
    if not path.is_file():
        return []
    out = []
    for i, line in enumerate(path.read_text(errors="replace").splitlines()):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except ValueError:
            rec = None
        if isinstance(rec, dict):
            out.append(rec)
        else:
            log.warning("%s line %d is not a JSON object: skipped", path, i + 1)
    return out
