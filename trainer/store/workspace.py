"""A project's work directory: everything that can be rebuilt from images + labels.

Labels live in Label Studio; this folder holds what we derive from them, each file written
atomically (temp file + rename) so a crash never leaves a half-written one:

  project.json                 images root, classes, backbone settings, Label Studio ids
  labels.json                  last snapshot of labels read from Label Studio (+ sync cursor)
  embeddings/<backbone_id>/    EmbeddingCache: embeddings.npy, keys.json
  registry/                    ModelRegistry: versions/NNN, current
  predictions/<version>.npz    keys, probs (N, C), classes: what the ML backend serves
  index/<backbone_id>/         the sampler's FAISS index
  status.json                  last refresh times and outcomes (for `scopeloop status`)
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from trainer.store.atomic import atomic_path, write_json_atomic
from trainer.store.embeddings import EmbeddingCache
from trainer.store.heal import set_aside
from trainer.store.registry import ModelRegistry
from trainer.store.space import DEFAULT_FEATURES


def read_json(path, default=None, heal: bool = False):
    """The JSON in `path`, `default` when it is absent. `heal=True` (state files the loop
    rebuilds: status.json, labels.json, ...): a file that is not JSON (empty, cut short) is set
    aside (`trainer.store.heal`) and read as absent, instead of failing every reader."""
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        return default
    except (ValueError, UnicodeDecodeError) as e:
        if not heal:
            raise
        set_aside(path, f"not JSON: {type(e).__name__}: {str(e)[:120]}")
        return default


# a project's model settings when project.json names none (scopeloop init writes them)
DEFAULT_MODEL = {"backbone": "tf_efficientnet_lite0", "weights": "imagenet", "image_size": 224, "channels": None}


def model_settings(project: dict) -> dict:
    """The project's model settings (backbone, weights, image_size, channels, features, reading
    `preprocessing`), defaults filled in: the one place they are read with their defaults."""
    cfg = dict(project.get("model") or DEFAULT_MODEL)
    for k, v in dict(DEFAULT_MODEL, features=DEFAULT_FEATURES).items():
        cfg.setdefault(k, v)
    return cfg


PROJECTS_DIR = "projects"  # <home>/projects/<name>/: one work directory per project


def project_dirs(home) -> list[Path]:
    """Work directories under `<home>/projects` that hold a project.json, sorted by name: the one
    listing of a home's projects (CLI, backend, scheduler)."""
    return [pj.parent for pj in sorted(Path(home).glob(f"{PROJECTS_DIR}/*/project.json"))]


@dataclass
class Workspace:
    root: Path

    def __post_init__(self):
        self.root = Path(self.root)
        self.root.mkdir(parents=True, exist_ok=True)

    # project description ------------------------------------------------------
    @property
    def project(self) -> dict:
        return read_json(self.root / "project.json", {})

    def update_project(self, **fields) -> dict:
        data = dict(self.project, **fields)
        write_json_atomic(self.root / "project.json", data)
        return data

    @property
    def images_root(self) -> Path:
        root = self.project.get("images_root")
        if not root:
            raise FileNotFoundError(f"project in '{self.root}' has no images folder yet: run `scopeloop init` first")
        return Path(root)

    # derived state --------------------------------------------------------------
    @property
    def registry(self) -> ModelRegistry:
        return ModelRegistry(self.root / "registry")

    def embeddings(self, backbone_id: str) -> EmbeddingCache:
        return EmbeddingCache(self.root / "embeddings" / backbone_id)

    def index_dir(self, backbone_id: str) -> Path:
        return self.root / "index" / backbone_id

    @property
    def labels(self) -> dict:
        """{"cursor": ..., "tasks": {task_id: {"key", "label", "annotator", "updated_at", ...}}}"""
        return read_json(self.root / "labels.json", {"cursor": None, "tasks": {}}, heal=True)

    def save_labels(self, data: dict) -> None:
        write_json_atomic(self.root / "labels.json", data)

    def predictions_path(self, version: str) -> Path:
        return self.root / "predictions" / f"{version}.npz"

    def save_predictions(self, version: str, keys, probs: np.ndarray, classes, **extra) -> Path:
        path = self.predictions_path(version)
        with atomic_path(path) as tmp:
            np.savez(tmp, keys=np.asarray(keys), probs=np.asarray(probs, np.float32), classes=np.asarray(classes), **extra)
        return path

    def load_predictions(self, version: str | None = None) -> dict | None:
        """The prediction cache of `version` (default: current), None when there is none. A
        cache that cannot be read whole (truncated, keys and probabilities of different lengths)
        is set aside and read as absent: the backend then computes live, the next refresh
        writes a new one."""
        version = version or self.registry.current()
        path = self.predictions_path(version) if version else None
        if path is None or not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as z:
                data = {k: z[k] for k in z.files} | {"version": version}
            probs = data["probs"]
            if probs.ndim != 2 or len(data["keys"]) != len(probs) or len(data["classes"]) != probs.shape[1]:
                raise ValueError(f"keys {len(data['keys'])}, probs {probs.shape}, classes {len(data['classes'])} disagree")
        except FileNotFoundError:
            return None
        except Exception as e:  # noqa: BLE001 - zipfile.BadZipFile, EOFError, ValueError, KeyError, OSError, ...
            set_aside(path, f"prediction cache unreadable: {type(e).__name__}: {str(e)[:120]}")
            return None
        return data

    def prune_predictions(self, keep_served: int | None = None, stale_tmp_s: float = 3600) -> list[str]:
        """Delete the prediction caches of retired versions: kept are the current version's and
        those of the last `keep_served` versions served before it (what `scopeloop rollback` pushes
        from; default SCOPELOOP_KEEP_PREDICTIONS=3), so the footprint stays at most
        keep_served + 1 caches however many versions a project makes. Temp files of writes killed
        over `stale_tmp_s` ago go too. Returns the versions whose cache was deleted."""
        import os
        import time

        keep_served = int(os.environ.get("SCOPELOOP_KEEP_PREDICTIONS", "3")) if keep_served is None else keep_served
        folder = self.root / "predictions"
        if not folder.is_dir():
            return []
        reg = self.registry
        cur = reg.current()
        served = []
        for h in reversed(reg.history()):
            v = h.get("version")
            if v and v != cur and v not in served:
                served.append(v)
        keep = {cur, *served[:max(0, keep_served)]}
        gone = []
        for p in folder.iterdir():
            if p.name.startswith("."):
                if ".tmp" in p.name and time.time() - p.stat().st_mtime > stale_tmp_s:
                    p.unlink(missing_ok=True)
                continue
            if p.suffix == ".npz" and p.stem.isdigit() and p.stem not in keep:
                p.unlink(missing_ok=True)
                gone.append(p.stem)
        return sorted(gone)

    @property
    def status(self) -> dict:
        return read_json(self.root / "status.json", {}, heal=True)

    def update_status(self, **fields) -> None:
        write_json_atomic(self.root / "status.json", dict(self.status, **fields))
