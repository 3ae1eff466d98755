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
    """The current model's linear head and its embedding space (None before any model).

    A current version whose head or config cannot be loaded (a truncated head.pt) is set aside
    (`ModelRegistry.mark_bad`) and the newest valid version is served and read instead."""
    import torch

    from trainer.models.head import LinearHead

    reg = ws.registry
    for _ in range(len(reg.versions()) + 1):
        path = reg.current_path()
        if path is None:
            return None, None
        try:
            sd = torch.load(path / "head.pt", map_location="cpu", weights_only=True)
            cfg = json.loads((path / "config.json").read_text())
            head = LinearHead(sd["weight"].numpy(), sd["bias"].numpy())
        except Exception as e:  # noqa: BLE001 - torch's unpickling errors have no common base
            reg.mark_bad(path.name, f"its head cannot be loaded ({type(e).__name__}: {str(e)[:120]})")
            continue
        return head, read_json(path / "provenance.json", {}).get("embedding_space") or space_id_of(cfg)
    return None, None
