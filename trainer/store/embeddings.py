"""The embedding cache: a project's embeddings in one embedding space, computed once, stored on disk (torch-free)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np

from trainer.io.errors import SkipReport
from trainer.store.atomic import atomic_path, write_text_atomic


class EmbeddingCache:
    """Embeddings of a project's images in one embedding space, computed once, stored on disk.

    <root>/embeddings.npy (N, D) float32 and <root>/keys.json (row -> image key). Adding images
    embeds only the new keys; a different backbone id is a different folder.
    """

    def __init__(self, root):
        self.root = Path(root)

    def load(self) -> tuple[list[str], np.ndarray | None]:
        kp, ep = self.root / "keys.json", self.root / "embeddings.npy"
        if not (kp.is_file() and ep.is_file()):
            return [], None
        return json.loads(kp.read_text()), np.load(ep)

    def update(self, keys: Sequence[str], paths: Sequence, embed_fn) -> tuple[list[str], np.ndarray, SkipReport]:
        """Make sure every key is embedded. embed_fn(paths) -> InferenceResult. Returns all."""
        known, emb = self.load()
        have = set(known)
        todo = [(k, p) for k, p in zip(keys, paths) if k not in have]
        report = SkipReport()
        if todo:
            res = embed_fn([p for _, p in todo])
            report = res.skipped
            new_keys = [todo[r][0] for r in res.rows]
            if len(new_keys):
                known = known + new_keys
                emb = res.embeddings if emb is None else np.concatenate([emb, res.embeddings])
                self._save(known, emb)
        return known, (emb if emb is not None else np.zeros((0, 0), np.float32)), report

    def _save(self, keys, emb) -> None:
        with atomic_path(self.root / "embeddings.npy") as tmp:
            np.save(tmp, emb.astype(np.float32))
        write_text_atomic(self.root / "keys.json", json.dumps(list(keys)))
