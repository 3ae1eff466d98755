"""Model versions in the loop: the current head and its space, candidates kept, the labels each version trained on."""
from __future__ import annotations

import json
import os

from trainer.store.space import space_id_of
from trainer.store.workspace import Workspace, read_json

KEEP_CANDIDATES = int(os.environ.get("SCOPELOOP_KEEP_CANDIDATES", "3"))  # held-back versions kept
TRAINING_LABELS = "training_labels.json"  # {image key: class} a version was trained on (the gate refits its recipe)


def link_or_copy(src, dst) -> None:
    """Hard link (no extra disk) when on one file system, else a copy."""
    try:
        os.link(src, dst)
    except OSError:
        import shutil

        shutil.copy2(src, dst)


def current_head(ws: Workspace):
    """The current model's linear head and its embedding space (None before any model)."""
    import torch

    from trainer.models.head import LinearHead

    path = ws.registry.current_path()
    if path is None:
        return None, None
    sd = torch.load(path / "head.pt", map_location="cpu", weights_only=True)
    cfg = json.loads((path / "config.json").read_text())
    head = LinearHead(sd["weight"].numpy(), sd["bias"].numpy())
    return head, read_json(path / "provenance.json", {}).get("embedding_space") or space_id_of(cfg)
