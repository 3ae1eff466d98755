"""A scopeloop project = a Label Studio project + a work directory (trainer.workspace).

`init` creates/updates the Label Studio side (ml_backend.project_setup) and records in the
work directory what the worker and the backend need: images root, classes, Label Studio ids,
the labeling config's tag names and the model settings.
"""
from __future__ import annotations

import os
from pathlib import Path

from label_config import parse_config
from ml_backend.labelstudio import LabelStudioClient
from ml_backend.project_setup import init_project_from_settings
from trainer.workspace import Workspace

DEFAULT_MODEL = {"backbone": "tf_efficientnet_lite0", "weights": "imagenet", "image_size": 224, "channels": None}


def init(settings, name: str, images, classes=None, labels=None, backend_url: str | None = None,
         model: dict | None = None):
    """Create or update project `name`; returns (Workspace, InitReport)."""
    images = Path(images).resolve()
    if not images.is_dir():
        raise FileNotFoundError(f"--images '{images}' is not a folder")
    ws = Workspace(settings.project_dir(name))
    report = init_project_from_settings(settings, name, images, classes, labels=labels, backend_url=backend_url)
    client = LabelStudioClient(settings.label_studio_url, settings.label_studio_api_key)
    cfg = parse_config(client.get_project(report.project_id)["label_config"])
    ws.update_project(name=name, images_root=str(images), classes=list(cfg.classes), ls_project_id=report.project_id,
                      from_name=cfg.from_name, to_name=cfg.to_name,
                      model=dict(DEFAULT_MODEL, **(model or ws.project.get("model") or {})),
                      n_tasks=report.created + report.existing,
                      document_root=os.environ.get("LOCAL_FILES_DOCUMENT_ROOT", "/"))
    return ws, report
