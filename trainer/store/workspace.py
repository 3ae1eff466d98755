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
from trainer.store.registry import ModelRegistry
from trainer.store.space import DEFAULT_FEATURES


def read_json(path, default=None):
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
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
        return read_json(self.root / "labels.json", {"cursor": None, "tasks": {}})

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
        version = version or self.registry.current()
        if version is None or not self.predictions_path(version).is_file():
            return None
        with np.load(self.predictions_path(version), allow_pickle=False) as z:
            return {k: z[k] for k in z.files} | {"version": version}

    @property
    def status(self) -> dict:
        return read_json(self.root / "status.json", {})

    def update_status(self, **fields) -> None:
        write_json_atomic(self.root / "status.json", dict(self.status, **fields))
